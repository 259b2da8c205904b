import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Change } from '../driver.js';
import { getXattr } from '../../util/xattr.js';

/**
 * `docker diff` for overlay2 from the upper directory alone (moby 20.10's OverlayChanges): cost
 * follows the number of changed entries, not the size of the image. Each entry of the upper dir
 * is an addition, unless its path exists in a lower layer (then a change); a 0/0 character
 * device is a deletion; an opaque directory is reported deleted (its lower contents are gone)
 * and its surviving children follow. A directory that is only in the upper dir because a child
 * changed, with the same size, mode and mtime as below, is left out, but the parent of every
 * addition or deletion is listed as changed.
 */

export interface UpperEntry {
  /** `/etc/hosts`, in pre-order (a directory before its children). */
  path: string;
  isDir: boolean;
  /** A 0/0 character device (overlay's whiteout). */
  whiteout: boolean;
  /** A directory carrying trusted.overlay.opaque=y. */
  opaque: boolean;
  size: bigint;
  mode: number;
  mtimeNs: bigint;
}

export interface LowerStat {
  isDir: boolean;
  size: bigint;
  mode: number;
  mtimeNs: bigint;
}

/** Pure: the change list from the upper entries and what the lowers hold at each path. */
export function classifyUpper(entries: UpperEntry[], lowerOf: (path: string) => LowerStat | null): Change[] {
  const changes: Change[] = [];
  const changedDirs = new Set<string>();
  for (const e of entries) {
    let kind: Change['kind'];
    if (e.whiteout || e.opaque) kind = 'D';
    else {
      kind = 'A';
      const below = lowerOf(e.path);
      if (below) {
        if (below.isDir && e.isDir && below.size === e.size && below.mode === e.mode && below.mtimeNs === e.mtimeNs) continue;
        kind = 'C';
      }
    }
    changes.push({ path: e.path, kind });
    if (e.isDir) changedDirs.add(e.path);
    if (kind !== 'C') {
      const parent = e.path.slice(0, e.path.lastIndexOf('/')) || '/';
      if (parent !== '/' && !changedDirs.has(parent)) {
        changes.push({ path: parent, kind: 'C' });
        changedDirs.add(parent);
      }
    }
  }
  return changes.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

const OPAQUE = 'trusted.overlay.opaque';

/** Walk `upper` in lexical pre-order, as Go's filepath.Walk. */
export async function readUpper(upper: string): Promise<UpperEntry[]> {
  const out: UpperEntry[] = [];
  async function walk(rel: string): Promise<void> {
    const names = (await readdir(join(upper, rel))).sort();
    for (const name of names) {
      const path = `${rel}/${name}`;
      // aufs metadata never belongs in a change list
      if (rel === '' && name.startsWith('.wh..wh.')) continue;
      const full = join(upper, path);
      const st = await lstat(full, { bigint: true });
      const isDir = st.isDirectory();
      const whiteout = st.isCharacterDevice() && st.rdev === 0n;
      const opaque = isDir && (await getXattr(full, OPAQUE))?.toString() === 'y';
      out.push({ path, isDir, whiteout, opaque, size: st.size, mode: Number(st.mode), mtimeNs: st.mtimeNs });
      if (isDir) await walk(path);
    }
  }
  await walk('');
  return out;
}

/** Stat each upper path in the lowers (nearest first; the first hit wins), as moby does. */
export async function statLowers(entries: UpperEntry[], lowers: string[]): Promise<Map<string, LowerStat>> {
  const found = new Map<string, LowerStat>();
  for (const e of entries) {
    if (e.whiteout || e.opaque) continue;
    for (const lower of lowers) {
      const st = await lstat(join(lower, e.path), { bigint: true }).catch(() => null);
      if (st) {
        found.set(e.path, { isDir: st.isDirectory(), size: st.size, mode: Number(st.mode), mtimeNs: st.mtimeNs });
        break;
      }
    }
  }
  return found;
}

export async function upperChanges(upper: string, lowers: string[]): Promise<Change[]> {
  const entries = await readUpper(upper);
  const below = await statLowers(entries, lowers);
  return classifyUpper(entries, (p) => below.get(p) ?? null);
}
