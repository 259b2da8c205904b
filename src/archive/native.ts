/**
 * What Node's fs lacks for layer archives: mknod(2) (through coreutils' mknod, the portable
 * way without a native addon; only devices, fifos and overlay whiteouts need it) and
 * extended attributes without following symlinks (@napi-rs/xattr: lgetxattr and friends).
 */
import { execFileSync } from 'node:child_process';
import type * as XattrModule from '@napi-rs/xattr';
import { requireCommonJs } from '../util/require-cjs.js';

const { getAttributeSync, listAttributesSync, setAttributeSync } = requireCommonJs<typeof XattrModule>('@napi-rs/xattr');

export type NodeKind = 'char' | 'block' | 'fifo';

/** Create a device node or fifo at an absolute path (which must not exist). */
export function mknodSync(path: string, kind: NodeKind, major = 0, minor = 0): void {
  const args = kind === 'fifo' ? ['--', path, 'p'] : ['--', path, kind === 'char' ? 'c' : 'b', String(major), String(minor)];
  try {
    execFileSync('mknod', args, { stdio: ['ignore', 'ignore', 'pipe'] });
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
    names = listAttributesSync(path);
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
