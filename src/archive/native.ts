/**
 * What Node's fs lacks for layer archives: mknod(2) (libc through koffi; coreutils' mknod where
 * koffi cannot load) and extended attributes without following symlinks (@napi-rs/xattr:
 * lgetxattr and friends).
 */
import { execFileSync } from 'node:child_process';
import { constants } from 'node:os';
import type * as XattrModule from '@napi-rs/xattr';
import { errnoError, libcBinding, LP64_LITTLE_ENDIAN } from '../util/libc.js';
import { requireCommonJs } from '../util/require-cjs.js';

const { getAttributeSync, listAttributesSync, setAttributeSync } = requireCommonJs<typeof XattrModule>('@napi-rs/xattr');

export type NodeKind = 'char' | 'block' | 'fifo';

const osErrno = constants.errno;

const FILE_TYPE: Record<NodeKind, number> = { char: 0o020000, block: 0o060000, fifo: 0o010000 };

/** glibc's makedev: the device number as mknod(2) takes it (a 64-bit dev_t). */
export function makedev(major: number, minor: number): bigint {
  const ma = BigInt(major >>> 0);
  const mi = BigInt(minor >>> 0);
  return ((ma & 0xfffff000n) << 32n) | ((ma & 0xfffn) << 8n) | ((mi & 0xffffff00n) << 12n) | (mi & 0xffn);
}

// (a plain symbol since glibc 2.33; older ones only have __xmknod, and get the binary)
const libc = libcBinding((lib) => {
  try {
    return { mknod: lib.func('int mknod(const char *path, uint32_t mode, uint64_t dev)') as (path: string, mode: number, dev: bigint) => number, errno: () => lib.errno() };
  } catch {
    return null;
  }
}, LP64_LITTLE_ENDIAN);

/**
 * llistxattr into one reused buffer: one system call per path, whatever the answer (usually no
 * names at all). The binding's list asks for the size first, then for the names: two calls per
 * path, and an export of 300,000 files on overlayfs spent seconds in them.
 */
const listNames = libcBinding((lib) => {
  const llistxattr = lib.func('long llistxattr(const char *path, _Out_ uint8_t *list, size_t size)') as (path: string, list: Buffer, size: number) => number;
  const buf = Buffer.allocUnsafe(64 * 1024);
  /** The names (unsorted), or null where this cannot tell (then the binding's list is asked). */
  return (path: string): string[] | null => {
    const n = llistxattr(path, buf, buf.length);
    if (n === 0) return [];
    if (n < 0) {
      const errno = lib.errno();
      if (errno === osErrno.ENOTSUP || errno === osErrno.EPERM || errno === osErrno.EACCES) return [];
      if (errno === osErrno.ERANGE) return null; // (over 64 KiB of names: the binding sizes its own buffer)
      throw errnoError(errno, 'llistxattr', path);
    }
    return buf.toString('utf8', 0, n - 1).split('\0');
  };
}, LP64_LITTLE_ENDIAN);

/**
 * Create a device node or fifo at an absolute path (which must not exist), with permission bits
 * `perm` (the umask applies, as to any mknod). Called straight through libc: forking mknod(1)
 * from a large Node process took ~13 ms, and an overlay2 layer has one node per deleted file.
 */
export function mknodSync(path: string, kind: NodeKind, major = 0, minor = 0, perm = 0o600): void {
  const sys = libc();
  if (sys) {
    if (sys.mknod(path, FILE_TYPE[kind] | (perm & 0o7777), makedev(major, minor)) !== 0) throw errnoError(sys.errno(), 'mknod', path);
    return;
  }
  const args = kind === 'fifo' ? ['--', path, 'p'] : ['--', path, kind === 'char' ? 'c' : 'b', String(major), String(minor)];
  try {
    execFileSync('mknod', ['-m', (perm & 0o7777).toString(8), ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    const stderr = String((err as { stderr?: Buffer }).stderr ?? '').trim();
    const e = new Error(`mknod ${path}: ${stderr || (err as Error).message}`) as NodeJS.ErrnoException;
    e.code = /exists/i.test(stderr) ? 'EEXIST' : /not permitted/i.test(stderr) ? 'EPERM' : 'EIO';
    throw e;
  }
}

function isUnsupported(err: unknown): boolean {
  return /ENOTSUP|EOPNOTSUPP|not supported|ENODATA/i.test(String((err as Error)?.message ?? err));
}

function isPermission(err: unknown): boolean {
  return /EPERM|EACCES|not permitted|permission denied/i.test(String((err as Error)?.message ?? err));
}

/**
 * lsetxattr. Returns false (and sets nothing) where the filesystem or our privileges do not
 * allow the attribute — Docker ignores ENOTSUP and EPERM the same way.
 */
export function setXattrSync(path: string, name: string, value: Buffer): boolean {
  try {
    setAttributeSync(path, name, value);
    return true;
  } catch (err) {
    if (isUnsupported(err) || isPermission(err)) return false;
    throw err;
  }
}

/** All xattrs of a path (the link itself for symlinks), sorted by name. */
export function listXattrsSync(path: string): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let names: string[];
  try {
    names = listNames()?.(path) ?? listAttributesSync(path);
  } catch (err) {
    if (isUnsupported(err) || isPermission(err)) return out;
    throw err;
  }
  if (names.length === 0) return out;
  for (const name of names.sort()) {
    try {
      const v = getAttributeSync(path, name);
      if (v !== null) out.set(name, Buffer.from(v));
    } catch (err) {
      if (!isUnsupported(err) && !isPermission(err)) throw err;
    }
  }
  return out;
}

export function getXattrSync(path: string, name: string): Buffer | null {
  try {
    return getAttributeSync(path, name);
  } catch (err) {
    if (isUnsupported(err) || isPermission(err)) return null;
    throw err;
  }
}
