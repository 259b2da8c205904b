/**
 * Walking a directory tree for diffs and exports: Go's filepath.Walk order (names sorted
 * bytewise, a directory before its contents), lstat only, never following symlinks.
 */
import { lstatSync, readdirSync, type BigIntStats } from 'node:fs';
import { isErrno } from '../errors.js';

/** Sort names by their UTF-8 bytes, as Go's sort.Strings does. */
export function sortBytewise(names: string[]): string[] {
  // UTF-16 order equals byte order unless surrogates are involved
  if (!names.some((n) => /[\ud800-\udfff]/.test(n))) return names.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return names.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
}

export function compareBytewise(a: string, b: string): number {
  if (!/[\ud800-\udfff]/.test(a) && !/[\ud800-\udfff]/.test(b)) return a < b ? -1 : a > b ? 1 : 0;
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

export function readdirSorted(dir: string): string[] {
  try {
    return sortBytewise(readdirSync(dir));
  } catch (err) {
    if (isErrno(err, 'ENOENT', 'ENOTDIR')) return [];
    throw err;
  }
}

export function lstatBig(path: string): BigIntStats | undefined {
  return lstatSync(path, { bigint: true, throwIfNoEntry: false });
}

export interface WalkItem {
  /** '/a/b' */
  path: string;
  abs: string;
  st: BigIntStats;
}

/**
 * Depth-first walk of `root` (not included). `skip(item)` returning true leaves out an item and,
 * for a directory, everything under it.
 */
export function* walk(root: string, skip?: (item: WalkItem) => boolean): Generator<WalkItem> {
  const stack: Array<{ dir: string; rel: string; names: string[]; i: number }> = [
    { dir: root, rel: '', names: readdirSorted(root), i: 0 },
  ];
  while (stack.length > 0) {
    const top = stack[stack.length - 1]!;
    if (top.i >= top.names.length) {
      stack.pop();
      continue;
    }
    const name = top.names[top.i++]!;
    const abs = `${top.dir}/${name}`;
    const st = lstatBig(abs);
    if (!st) continue; // vanished
    const item = { path: `${top.rel}/${name}`, abs, st };
    if (skip?.(item)) continue;
    yield item;
    if (st.isDirectory()) stack.push({ dir: abs, rel: item.path, names: readdirSorted(abs), i: 0 });
  }
}
