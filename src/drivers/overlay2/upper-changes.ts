import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Change } from '../driver.js';
import { getXattr, readXattrs } from '../../util/xattr.js';

/**
 * `docker diff` for overlay2, read from the upper directory (cost follows the changes, not the
 * image), with the answer Docker 20.10 gives: its overlay2 Changes is the naive tree comparison
 * of the layer with its parent, so this reproduces that comparison from the upper dir plus point
 * lookups in the lowers:
 * - an upper entry is added when the parent has nothing there, changed when the parent's entry
 *   differs (moby's statDifferent: type and mode, owner, rdev, and for non-directories size and
 *   mtime; plus symlink target and xattrs, as Strata's naive differ);
 * - a 0/0 character device deletes what the parent has there;
 * - an opaque directory deletes every entry the parent has in it that the upper dir lacks;
 * - every directory holding a change is listed as changed (unless it was added).
 */

export interface Attrs {
  isDir: boolean;
  /** Full st_mode (type and permission bits). */
  mode: number;
  uid: number;
  gid: number;
  rdev: bigint;
  size: bigint;
  mtimeNs: bigint;
  linkTarget: string | null;
  /** xattrs other than overlay's own, base64 values. */
  xattrs: Record<string, string>;
}

export interface UpperEntry {
  /** `/etc/hosts`, in pre-order (a directory before its children). */
  path: string;
  attrs: Attrs;
  /** A 0/0 character device (overlay's whiteout). */
  whiteout: boolean;
  /** A directory carrying trusted.overlay.opaque=y. */
  opaque: boolean;
}

/** What the parent (the merged lowers) holds, answered by the I/O side. */
export interface ParentView {
  /** The parent's entry at `path`, or null when it has none. */
  lookup(path: string): Attrs | null;
  /** Names the parent has in directory `path` (asked for opaque directories only). */
  children(path: string): string[];
}

/** Go's sameFsTimeSpec: equal seconds, and equal nanoseconds unless either side has none. */
function sameTime(a: bigint, b: bigint): boolean {
  if (a / 1_000_000_000n !== b / 1_000_000_000n) return false;
  const an = a % 1_000_000_000n;
  const bn = b % 1_000_000_000n;
  return an === bn || an === 0n || bn === 0n;
}

/** moby's statDifferent (directories: no size or mtime), plus symlink target and xattrs. */
export function attrsDiffer(before: Attrs, after: Attrs): boolean {
  if (before.mode !== after.mode || before.uid !== after.uid || before.gid !== after.gid || before.rdev !== after.rdev) return true;
  if (!after.isDir && (!sameTime(before.mtimeNs, after.mtimeNs) || before.size !== after.size)) return true;
  if (before.linkTarget !== after.linkTarget) return true;
  const a = Object.keys(before.xattrs);
  const b = Object.keys(after.xattrs);
  return a.length !== b.length || a.some((k) => before.xattrs[k] !== after.xattrs[k]);
}

const parentOf = (path: string): string => path.slice(0, path.lastIndexOf('/'));

/** Pure: the change list from the upper entries and the parent's view. */
export function classifyUpper(entries: UpperEntry[], parent: ParentView): Change[] {
  const kinds = new Map<string, Change['kind']>();
  const upperPaths = new Set(entries.map((e) => e.path));
  for (const e of entries) {
    const below = parent.lookup(e.path);
    if (e.whiteout) {
      if (below) kinds.set(e.path, 'D');
      continue;
    }
    if (!below) kinds.set(e.path, 'A');
    else if (attrsDiffer(below, e.attrs)) kinds.set(e.path, 'C');
    if (e.opaque && below?.isDir) {
      for (const name of parent.children(e.path)) {
        const child = `${e.path}/${name}`;
        if (!upperPaths.has(child)) kinds.set(child, 'D');
      }
    }
  }
  // A directory with a change inside is changed, as the naive differ reports it.
  for (const path of [...kinds.keys()]) {
    for (let dir = parentOf(path); dir !== ''; dir = parentOf(dir)) {
      if (kinds.has(dir)) break;
      kinds.set(dir, 'C');
    }
  }
  return [...kinds].map(([path, kind]) => ({ path, kind })).sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

// ---- I/O: reading the upper dir and looking up the lowers --------------------------------------

const OPAQUE = 'trusted.overlay.opaque';

async function attrsOf(full: string): Promise<{ attrs: Attrs; whiteout: boolean; opaque: boolean } | null> {
  const st = await lstat(full, { bigint: true }).catch(() => null);
  if (!st) return null;
  const xattrs: Record<string, string> = {};
  for (const [k, v] of await readXattrs(full)) if (!k.startsWith('trusted.overlay.')) xattrs[k] = v.toString('base64');
  const isDir = st.isDirectory();
  return {
    attrs: {
      isDir,
      mode: Number(st.mode),
      uid: Number(st.uid),
      gid: Number(st.gid),
      rdev: st.rdev,
      size: st.size,
      mtimeNs: st.mtimeNs,
      linkTarget: st.isSymbolicLink() ? await readlink(full) : null,
      xattrs,
    },
    whiteout: st.isCharacterDevice() && st.rdev === 0n,
    opaque: isDir && (await getXattr(full, OPAQUE).catch(() => null))?.toString() === 'y',
  };
}

/** Walk `upper` in lexical pre-order. */
export async function readUpper(upper: string): Promise<UpperEntry[]> {
  const out: UpperEntry[] = [];
  async function walk(rel: string): Promise<void> {
    for (const name of (await readdir(join(upper, rel))).sort()) {
      const path = `${rel}/${name}`;
      const found = await attrsOf(join(upper, path));
      if (!found) continue;
      out.push({ path, ...found });
      if (found.attrs.isDir) await walk(path);
    }
  }
  await walk('');
  return out;
}

/**
 * The merged view of the lowers (nearest first), by point lookups: an entry is hidden by a
 * whiteout or a non-directory on its path in a nearer lower, and an opaque directory hides what
 * farther lowers hold below it.
 */
class LowerView {
  private readonly cache = new Map<string, Awaited<ReturnType<typeof attrsOf>>>();

  constructor(private readonly lowers: string[]) {}

  private async at(i: number, path: string) {
    const key = `${i}:${path}`;
    if (!this.cache.has(key)) this.cache.set(key, await attrsOf(this.lowers[i] + path));
    return this.cache.get(key)!;
  }

  async lookup(path: string): Promise<Attrs | null> {
    const parts = path.split('/').slice(1);
    for (let i = 0; i < this.lowers.length; i++) {
      let opaqueAbove = false;
      let missing = false;
      let prefix = '';
      for (const part of parts.slice(0, -1)) {
        prefix += `/${part}`;
        const a = await this.at(i, prefix);
        if (!a) {
          missing = true;
          break;
        }
        if (a.whiteout || !a.attrs.isDir) return null;
        if (a.opaque) opaqueAbove = true;
      }
      if (!missing) {
        const a = await this.at(i, path);
        if (a) return a.whiteout ? null : a.attrs;
      }
      if (opaqueAbove) return null;
    }
    return null;
  }

  async children(path: string): Promise<string[]> {
    const names = new Set<string>();
    for (const lower of this.lowers) {
      for (const name of await readdir(lower + path).catch(() => [] as string[])) names.add(name);
    }
    const out: string[] = [];
    for (const name of [...names].sort()) if (await this.lookup(`${path}/${name}`)) out.push(name);
    return out;
  }
}

export async function upperChanges(upper: string, lowers: string[]): Promise<Change[]> {
  const entries = await readUpper(upper);
  const view = new LowerView(lowers);
  const looked = new Map<string, Attrs | null>();
  const kids = new Map<string, string[]>();
  for (const e of entries) {
    const below = await view.lookup(e.path);
    looked.set(e.path, below);
    if (e.opaque && below?.isDir) kids.set(e.path, await view.children(e.path));
  }
  return classifyUpper(entries, { lookup: (p) => looked.get(p) ?? null, children: (p) => kids.get(p) ?? [] });
}
