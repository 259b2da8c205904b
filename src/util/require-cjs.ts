import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

/**
 * A CommonJS package, loaded with `require` rather than `import`: importing CommonJS from ESM
 * makes Node lex the package's source for its export names (cjs-module-lexer, in JavaScript),
 * which cost every strata process ~70 ms of JIT compiling for a few packages' worth of exports.
 */
export function requireCommonJs<T>(id: string): T {
  return require(id) as T;
}
