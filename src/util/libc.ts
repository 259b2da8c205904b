import { createRequire } from 'node:module';
import { constants } from 'node:os';

/**
 * The libc calls Node's fs lacks (mount, ioctl, fallocate), through koffi: an FFI whose prebuilt
 * binary ships in its npm package, so no compiler is needed on the host. null where it cannot
 * load (another platform, a missing binary); callers then fall back to a host tool or go without.
 */
export interface Libc {
  /** A C function from its declaration, e.g. `int umount2(const char *target, int flags)`. */
  func(decl: string): unknown;
  /** errno of the calling thread's last call (koffi carries a worker's errno to its callback). */
  errno(): number;
}

let libc: Libc | null | undefined;

export function loadLibc(): Libc | null {
  if (libc !== undefined) return libc;
  try {
    if (process.platform !== 'linux') throw new Error('not linux');
    const require = createRequire(import.meta.url);
    const koffi = require('koffi') as { load(name: string): { func(decl: string): unknown }; errno(): number };
    const lib = koffi.load('libc.so.6');
    libc = { func: (decl) => lib.func(decl), errno: () => koffi.errno() };
  } catch {
    libc = null;
  }
  return libc;
}

/**
 * A lazily made set of libc functions: `bind(libc)` runs on the first call of the returned
 * getter, which then always gives its result, or null where libc cannot load or `usable` is
 * false (say, an ABI the callers' argument layouts do not fit).
 */
export function libcBinding<T>(bind: (lib: Libc) => T, usable = true): () => T | null {
  let bound: T | null | undefined;
  return () => {
    if (bound === undefined) {
      const lib = usable ? loadLibc() : null;
      bound = lib && bind(lib);
    }
    return bound;
  };
}

/** x86-64 and arm64: 64-bit little-endian, where the ioctl argument layouts here hold. */
export const LP64_LITTLE_ENDIAN = ['x64', 'arm64'].includes(process.arch);

export function errnoName(code: number): string {
  return Object.entries(constants.errno).find(([, v]) => v === code)?.[0] ?? `errno ${code}`;
}

/** A Node-shaped errno error (`code`, `errno`, `syscall`, `path`), as fs calls throw. */
export function errnoError(errno: number, syscall: string, path: string): NodeJS.ErrnoException {
  const code = errnoName(errno);
  return Object.assign(new Error(`${code}: ${syscall} '${path}'`), { code, errno: -errno, syscall, path });
}
