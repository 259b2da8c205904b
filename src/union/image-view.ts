import type { Stats } from 'node:fs';
import type { ReadStream } from 'node:fs';
import type { UnionFs } from './union-fs.js';

/**
 * Reading an image without extracting it (`strata cat`, `strata ls [-l]`): the caller opens a
 * read-only UnionFs over the image's layer directories; these helpers follow symlinks inside the
 * image and format listings like ls(1).
 */

/** `-rwxr-xr-x`, `drwxrwxrwt`, `lrwxrwxrwx`… (setuid/setgid/sticky as ls shows them). */
export function formatMode(mode: number): string {
  const type = mode & 0o170000;
  const t = type === 0o040000 ? 'd' : type === 0o120000 ? 'l' : type === 0o020000 ? 'c' : type === 0o060000 ? 'b' : type === 0o010000 ? 'p' : type === 0o140000 ? 's' : '-';
  const bit = (b: number, c: string) => ((mode & b) !== 0 ? c : '-');
  const special = (x: boolean, s: boolean, lower: string, upper: string) => (s ? (x ? lower : upper) : x ? 'x' : '-');
  return (
    t +
    bit(0o400, 'r') + bit(0o200, 'w') + special((mode & 0o100) !== 0, (mode & 0o4000) !== 0, 's', 'S') +
    bit(0o040, 'r') + bit(0o020, 'w') + special((mode & 0o010) !== 0, (mode & 0o2000) !== 0, 's', 'S') +
    bit(0o004, 'r') + bit(0o002, 'w') + special((mode & 0o001) !== 0, (mode & 0o1000) !== 0, 't', 'T')
  );
}

export interface ListEntry {
  name: string;
  stats: Stats;
  /** Symlink target, for `ls -l`'s `name -> target`. */
  target?: string;
}

/** One `ls -l` line: mode, links, uid, gid, size (or major, minor), ISO mtime, name. */
export function formatLong(e: ListEntry): string {
  const st = e.stats;
  const size = st.isCharacterDevice() || st.isBlockDevice() ? `${Math.floor(st.rdev / 256) & 0xfff}, ${st.rdev & 0xff}` : String(st.size);
  const when = new Date(st.mtimeMs).toISOString().slice(0, 16).replace('T', ' ');
  return `${formatMode(st.mode)} ${String(st.nlink).padStart(3)} ${String(st.uid).padStart(5)} ${String(st.gid).padStart(5)} ${size.padStart(10)} ${when} ${e.name}${e.target === undefined ? '' : ` -> ${e.target}`}`;
}

/**
 * `ls PATH` inside the union: a directory (symlinks to one followed) lists its entries, sorted;
 * anything else lists itself.
 */
export async function listPath(u: UnionFs, path: string): Promise<ListEntry[]> {
  const st = await u.stat(path);
  if (!st.isDirectory()) {
    const lst = await u.lstat(path);
    return [{ name: path, stats: lst, ...(lst.isSymbolicLink() ? { target: await u.readlink(path) } : {}) }];
  }
  const out: ListEntry[] = [];
  const base = path.endsWith('/') ? path : `${path}/`;
  for (const name of await u.readdir(path)) {
    const lst = await u.lstat(base + name);
    out.push({ name, stats: lst, ...(lst.isSymbolicLink() ? { target: await u.readlink(base + name) } : {}) });
  }
  return out;
}

/** `cat PATH`: the file's bytes, symlinks followed inside the image. */
export function catPath(u: UnionFs, path: string): Promise<ReadStream> {
  return u.createReadStream(path);
}
