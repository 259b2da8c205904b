import { Worker } from 'node:worker_threads';

/**
 * Start the worker whose entry module sits beside `callerUrl` (pass `import.meta.url`) under
 * `name` (no extension): `.js` when running built, `.ts` under tsx (the tests), where the worker
 * does not inherit the loader and registers it first. Throws where no thread can be started.
 */
export function startWorker(name: string, callerUrl: string): Worker {
  const typescript = callerUrl.endsWith('.ts');
  const entry = new URL(`./${name}${typescript ? '.ts' : '.js'}`, callerUrl);
  return typescript
    ? new Worker(`import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then((api) => { api.register(); return import(${JSON.stringify(entry.href)}); });`, { eval: true })
    : new Worker(entry);
}
