import { requireCommonJs } from './require-cjs.js';
import type * as XattrModule from '@napi-rs/xattr';

const { getAttribute, listAttributes, removeAttribute, setAttribute } = requireCommonJs<typeof XattrModule>('@napi-rs/xattr');

// Extended attributes without following symlinks (lgetxattr and friends): @napi-rs/xattr wraps
// the Rust `xattr` crate, whose plain calls are the l* variants. Node has no xattr API of its own.

/** All xattrs of `path` (the link itself if it is a symlink), names sorted for determinism. */
export async function readXattrs(path: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  let names: string[];
  try {
    names = await listAttributes(path);
  } catch (err) {
    if (isUnsupported(err)) return out;
    throw err;
  }
  for (const name of names.sort()) {
    const value = await getAttribute(path, name);
    if (value !== null) out.set(name, value);
  }
  return out;
}

export async function getXattr(path: string, name: string): Promise<Buffer | null> {
  try {
    return await getAttribute(path, name);
  } catch (err) {
    if (isUnsupported(err)) return null;
    throw err;
  }
}

export async function setXattr(path: string, name: string, value: Buffer | string): Promise<void> {
  await setAttribute(path, name, value);
}

export async function removeXattr(path: string, name: string): Promise<void> {
  await removeAttribute(path, name);
}

function isUnsupported(err: unknown): boolean {
  const text = String((err as Error)?.message ?? err);
  return /ENOTSUP|EOPNOTSUPP|not supported/i.test(text);
}
