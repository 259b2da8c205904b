import { constants } from 'node:os';

const MESSAGES: Record<string, string> = {
  ENOENT: 'no such file or directory',
  EEXIST: 'file already exists',
  ENOTDIR: 'not a directory',
  EISDIR: 'illegal operation on a directory',
  ENOTEMPTY: 'directory not empty',
  EXDEV: 'cross-device link not permitted',
  ELOOP: 'too many symbolic links encountered',
  EROFS: 'read-only file system',
  EINVAL: 'invalid argument',
  EPERM: 'operation not permitted',
  EOPNOTSUPP: 'operation not supported',
  EBUSY: 'resource busy or locked',
};

export type UnionErrnoCode = 'ENOENT' | 'EEXIST' | 'ENOTDIR' | 'EISDIR' | 'ENOTEMPTY' | 'EXDEV' | 'ELOOP' | 'EROFS' | 'EINVAL' | 'EPERM' | 'EOPNOTSUPP' | 'EBUSY';

/**
 * An error shaped like the ones node:fs/promises throws (`code`, `errno`, `syscall`, `path`), so
 * callers of the union engine handle it exactly as they handle a real filesystem's. `path` is the
 * union path the caller passed, never a branch path.
 */
export function errnoError(code: UnionErrnoCode, syscall: string, path: string, dest?: string): NodeJS.ErrnoException {
  const where = dest === undefined ? `'${path}'` : `'${path}' -> '${dest}'`;
  const err = new Error(`${code}: ${MESSAGES[code] ?? code}, ${syscall} ${where}`) as NodeJS.ErrnoException & { dest?: string };
  err.code = code;
  err.errno = -((constants.errno as Record<string, number>)[code] ?? 0);
  err.syscall = syscall;
  err.path = path;
  if (dest !== undefined) err.dest = dest;
  return err;
}
