/**
 * `docker diff`: what a layer changed against its parent, as moby's pkg/archive/changes.go
 * computes it. Two sources:
 * - changes(layerDir, parentDir): compare two full trees (vfs and other naive-diff drivers);
 * - changesFromUpper(upperDir, format): read a union upper dir (overlay or aufs), whose
 *   whiteouts say what was deleted, with point lookups in the lower dirs (no tree walk of them).
 * Results are sorted by path.
 */
import { readlinkSync, type BigIntStats } from 'node:fs';
import type { Change, ChangeKind } from '../drivers/driver.js';
import { getXattrSync, listXattrsSync } from './native.js';
import { RootResolver, baseOf, dirOf } from './paths.js';
import { compareBytewise, lstatBig, readdirSorted, walk } from './tree.js';
import { WHITEOUT_META_PREFIX, WHITEOUT_OPAQUE, WHITEOUT_PREFIX } from './whiteouts.js';

export type { Change, ChangeKind };

export function sortChanges<T extends Change>(changes: T[]): T[] {
  return changes.sort((a, b) => compareBytewise(a.path, b.path));
}

/**
 * Go's sameFsTimeSpec: equal seconds, and equal nanoseconds unless either side has none. Node
 * can only set times as a double (about 0.25 µs of precision today, then truncated to whole
 * microseconds), so times within 2 µs count as equal: a tree applied by us compares equal to its
 * source.
 */
export function sameTime(a: bigint, b: bigint): boolean {
  const as = a / 1_000_000_000n;
  const bs = b / 1_000_000_000n;
  if (as !== bs) return false;
  const an = a % 1_000_000_000n;
  const bn = b % 1_000_000_000n;
  if (an === bn || an === 0n || bn === 0n) return true;
  const d = an > bn ? an - bn : bn - an;
  return d < 2000n;
}

function isDir(st: BigIntStats): boolean {
  return st.isDirectory();
}

/** moby's statDifferent, plus the link target of symlinks. */
export function statDifferent(oldSt: BigIntStats, newSt: BigIntStats): boolean {
  if (oldSt.mode !== newSt.mode || oldSt.uid !== newSt.uid || oldSt.gid !== newSt.gid || oldSt.rdev !== newSt.rdev) return true;
  if (!isDir(oldSt) && (!sameTime(oldSt.mtimeNs, newSt.mtimeNs) || oldSt.size !== newSt.size)) return true;
  return false;
}

function xattrsDiffer(a: string, b: string): boolean {
  const xa = listXattrsSync(a);
  const xb = listXattrsSync(b);
  for (const k of [...xa.keys()]) if (k.startsWith('trusted.overlay.')) xa.delete(k);
  for (const k of [...xb.keys()]) if (k.startsWith('trusted.overlay.')) xb.delete(k);
  if (xa.size !== xb.size) return true;
  for (const [k, v] of xa) {
    const w = xb.get(k);
    if (!w || !w.equals(v)) return true;
  }
  return false;
}

function entryChanged(oldAbs: string, oldSt: BigIntStats, newAbs: string, newSt: BigIntStats): boolean {
  if (statDifferent(oldSt, newSt)) return true;
  if (newSt.isSymbolicLink() && readlinkSync(oldAbs) !== readlinkSync(newAbs)) return true;
  return xattrsDiffer(oldAbs, newAbs);
}

/**
 * Compare `layerDir` with `parentDir` (null: everything is added). A directory whose contents
 * changed is listed as C even when its own metadata did not, as docker diff does.
 */
export async function changes(layerDir: string, parentDir: string | null): Promise<Change[]> {
  return (await changesWithStats(layerDir, parentDir)).map(({ path, kind }) => ({ path, kind }));
}

/** changes(), keeping the lstat of each added or changed entry (diffTar reuses them). */
export async function changesWithStats(layerDir: string, parentDir: string | null): Promise<Array<Change & { st?: BigIntStats }>> {
  const out: Array<Change & { st?: BigIntStats }> = [];
  const visit = (rel: string, newAbs: string, oldAbs: string | null): void => {
    const newNames = readdirSorted(newAbs);
    const oldNames = oldAbs === null ? [] : readdirSorted(oldAbs);
    const oldSet = new Set(oldNames);
    const newSet = new Set(newNames);
    for (const name of newNames) {
      const path = `${rel}/${name}`;
      const nAbs = `${newAbs}/${name}`;
      const nSt = lstatBig(nAbs);
      if (!nSt) continue;
      const oAbs = oldAbs !== null && oldSet.has(name) ? `${oldAbs}/${name}` : null;
      const oSt = oAbs === null ? undefined : lstatBig(oAbs);
      const before = out.length;
      let listed = false;
      if (!oSt) {
        out.push({ path, kind: 'A', st: nSt });
        listed = true;
      } else if (entryChanged(oAbs!, oSt, nAbs, nSt)) {
        out.push({ path, kind: 'C', st: nSt });
        listed = true;
      }
      if (nSt.isDirectory()) {
        visit(path, nAbs, oSt?.isDirectory() ? oAbs : null);
        if (!listed && out.length > before) out.splice(before, 0, { path, kind: 'C', st: nSt });
      }
    }
    for (const name of oldNames) {
      if (!newSet.has(name)) out.push({ path: `${rel}/${name}`, kind: 'D' });
    }
  };
  visit('', layerDir, parentDir);
  return sortChanges(out);
}

export type UnionFormat = 'overlay' | 'aufs';

function isOverlayWhiteout(st: BigIntStats): boolean {
  return st.isCharacterDevice() && st.rdev === 0n;
}

function isOpaque(abs: string, st: BigIntStats, format: UnionFormat): boolean {
  if (!st.isDirectory()) return false;
  if (format === 'overlay') {
    const v = getXattrSync(abs, 'trusted.overlay.opaque');
    return v !== null && v.length === 1 && v[0] === 0x79;
  }
  return lstatBig(`${abs}/${WHITEOUT_OPAQUE}`) !== undefined;
}

/** aufs housekeeping (`.wh..wh.plnk`, `.wh..wh.aufs`, `.wh..wh.orph`), not content. */
export function isAufsMeta(name: string): boolean {
  return name.startsWith(WHITEOUT_META_PREFIX) && name !== WHITEOUT_OPAQUE;
}

/**
 * Changes recorded in a union upper dir (moby's OverlayChanges / aufs Changes). `lowerDirs`
 * (top first) tell an addition from a modification by point lookups; without them every
 * surviving entry counts as added.
 */
export async function changesFromUpper(
  upperDir: string,
  format: UnionFormat,
  opts: { lowerDirs?: string[] } = {},
): Promise<Change[]> {
  const lowers = (opts.lowerDirs ?? []).map((d) => new RootResolver(d, { create: false }));
  const lowerStat = (path: string): BigIntStats | undefined => {
    const rel = path.slice(1);
    for (const r of lowers) {
      let dir: string | null;
      try {
        dir = r.resolveDir(dirOf(rel));
      } catch {
        continue;
      }
      if (dir === null) continue;
      const st = lstatBig(`${dir}/${baseOf(rel)}`);
      if (st) return st;
    }
    return undefined;
  };
  const out: Change[] = [];
  const changedDirs = new Set<string>();
  const skip = (item: { path: string }) => {
    const name = baseOf(item.path);
    if (format === 'aufs' && (isAufsMeta(name) || name === WHITEOUT_OPAQUE)) return true;
    return false;
  };
  for (const { path, abs, st } of walk(upperDir, skip)) {
    let change: Change;
    const name = baseOf(path);
    if (format === 'overlay' && isOverlayWhiteout(st)) {
      change = { path, kind: 'D' };
    } else if (format === 'aufs' && name.startsWith(WHITEOUT_PREFIX)) {
      change = { path: `${dirOf(path)}/${name.slice(WHITEOUT_PREFIX.length)}`, kind: 'D' };
    } else if (isOpaque(abs, st, format)) {
      change = { path, kind: 'D' };
    } else {
      let kind: ChangeKind = 'A';
      const lst = lowerStat(path);
      if (lst) {
        if (lst.isDirectory() && st.isDirectory() && lst.size === st.size && lst.mode === st.mode && sameTime(lst.mtimeNs, st.mtimeNs)) {
          continue; // a directory only there because something below it changed
        }
        kind = 'C';
      }
      change = { path, kind };
    }
    if (st.isDirectory()) changedDirs.add(path);
    if (change.kind === 'A' || change.kind === 'D') {
      const parent = dirOf(change.path);
      if (parent !== '' && !changedDirs.has(parent)) {
        out.push({ path: parent, kind: 'C' });
        changedDirs.add(parent);
      }
    }
    out.push(change);
  }
  return sortChanges(out);
}
