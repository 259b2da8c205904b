/**
 * A module of src/ as `npm run bench` has just compiled it into dist/. Benches take from here
 * whatever starts processes or threads of Strata's own (the NBD service, the pool service, an NBD
 * server), so that those run the code `strata` ships; imported from src/, they would run the
 * TypeScript sources through tsx, whose loader every process and worker thread pays for (a warm
 * 512 MiB NBD write measured ~15% slower that way). Types come from the sources.
 */
export function built<T>(srcPath: string): Promise<T> {
  return import(new URL(`../dist/${srcPath.replace(/\.ts$/, '.js')}`, import.meta.url).href) as Promise<T>;
}

/** The path of a compiled entry point (`nbd/serve-main.ts` → `<repo>/dist/nbd/serve-main.js`). */
export function builtPath(srcPath: string): string {
  return new URL(`../dist/${srcPath.replace(/\.ts$/, '.js')}`, import.meta.url).pathname;
}
