/**
 * aufs' whiteout convention, as pure functions over names and directory listings.
 *
 * - `.wh.<name>` (an empty file) hides `<name>` in every lower branch;
 * - `.wh..wh..opq` inside a directory hides all of that directory's lower content;
 * - other `.wh..wh.*` names are aufs housekeeping (`.wh..wh.plnk`, `.wh..wh.aufs`, `.wh..wh.orph`),
 *   never visible in the union and never part of a diff.
 * Names starting with `.wh.` are reserved (OCI image-spec layer.md "Whiteouts").
 */

import { WHITEOUT_LINK_DIR, WHITEOUT_META_PREFIX, WHITEOUT_OPAQUE, WHITEOUT_PREFIX } from '../archive/whiteouts.js';

// the names layer archives use too (one definition, in archive/)
export { WHITEOUT_PREFIX, WHITEOUT_META_PREFIX };
export const OPAQUE_MARKER = WHITEOUT_OPAQUE;
/** Pseudo-links: copies-up of hardlinked files, so later copy-ups of other names share the inode. */
export const PLINK_DIR = WHITEOUT_LINK_DIR;
/** aufs' marker file in a branch root (empty, read-only). */
export const AUFS_MARKER = '.wh..wh.aufs';
/** Orphans / staging area: copy-ups are built here and renamed into place. */
export const ORPH_DIR = '.wh..wh.orph';

export type EntryType = 'file' | 'dir' | 'symlink' | 'other';

/** How a layer directory records deletions: aufs' `.wh.` files, or OverlayFS' devices and xattrs. */
export type WhiteoutFormat = 'aufs' | 'overlay';

export function whiteoutName(name: string): string {
  return WHITEOUT_PREFIX + name;
}

/** `.wh.*` of any kind: never visible through the union. */
export function isReservedName(name: string): boolean {
  return name.startsWith(WHITEOUT_PREFIX);
}

export function isMetaName(name: string): boolean {
  return name.startsWith(WHITEOUT_META_PREFIX);
}

/** The name a `.wh.<name>` entry deletes, or null for anything else (including housekeeping). */
export function whitedOutName(entry: string): string | null {
  if (!entry.startsWith(WHITEOUT_PREFIX) || entry.startsWith(WHITEOUT_META_PREFIX)) return null;
  const name = entry.slice(WHITEOUT_PREFIX.length);
  return name === '' || name === '.' || name === '..' ? null : name;
}

/** Housekeeping names that must not leak into a diff or export (everything `.wh..wh.*` but the opaque marker). */
export function isHousekeeping(name: string): boolean {
  return isMetaName(name) && name !== OPAQUE_MARKER;
}

/** One branch's view of one directory: visible entries, whiteouts, opacity. */
export interface DirListing {
  entries: Map<string, EntryType>;
  whiteouts: Set<string>;
  opaque: boolean;
}

/** Classify raw directory entries of one branch directory. */
export function classifyEntries(raw: Iterable<readonly [string, EntryType]>): DirListing {
  const listing: DirListing = { entries: new Map(), whiteouts: new Set(), opaque: false };
  for (const [name, type] of raw) {
    if (name === OPAQUE_MARKER) listing.opaque = true;
    else if (isMetaName(name)) continue;
    else if (name.startsWith(WHITEOUT_PREFIX)) {
      const hidden = whitedOutName(name);
      if (hidden !== null) listing.whiteouts.add(hidden);
    } else listing.entries.set(name, type);
  }
  return listing;
}

/**
 * The same for a directory in OverlayFS' format (overlay2 diff dirs): a whiteout is a 0/0
 * character device named after the victim, opacity is the `trusted.overlay.opaque=y` xattr of
 * the directory (kernel Documentation/filesystems/overlayfs.rst, "whiteouts and opaque
 * directories"). `.wh.` names mean nothing special there but are still hidden, as in aufs.
 */
export function classifyOverlayEntries(raw: Iterable<readonly [string, EntryType, boolean]>, opaque: boolean): DirListing {
  const listing: DirListing = { entries: new Map(), whiteouts: new Set(), opaque };
  for (const [name, type, isWhiteoutDevice] of raw) {
    if (isWhiteoutDevice) listing.whiteouts.add(name);
    else if (!isReservedName(name)) listing.entries.set(name, type);
  }
  return listing;
}

/**
 * Merge the listings of one directory, top branch first. The caller passes only the branches that
 * contribute (the lookup already stopped at an opaque dir or a whiteout of the directory itself).
 * Within one branch an entry wins over its own whiteout; a whiteout hides lower branches only.
 */
export function mergeListings(listings: readonly DirListing[]): Map<string, EntryType> {
  const out = new Map<string, EntryType>();
  const shadowed = new Set<string>();
  for (const listing of listings) {
    for (const [name, type] of listing.entries) {
      if (shadowed.has(name)) continue;
      out.set(name, type);
      shadowed.add(name);
    }
    for (const name of listing.whiteouts) shadowed.add(name);
  }
  return out;
}

/** What one branch says about one name in one directory. */
export interface Probe {
  type: EntryType | null;
  whiteout: boolean;
}

export interface LookupResult {
  type: EntryType;
  /** Branch indexes (top first) that contribute: exactly one for a non-directory. */
  branches: number[];
}

/**
 * Top-down lookup of one name across the branches where its parent directory exists. Stops at the
 * first non-directory, at a whiteout, and after a directory that is opaque in its branch. `probe`
 * and `opaque` are the only I/O, so the rule is testable in memory.
 */
export async function lookupName(
  parentBranches: readonly number[],
  probe: (branch: number) => Promise<Probe>,
  opaque: (branch: number) => Promise<boolean>,
): Promise<LookupResult | null> {
  const dirs: number[] = [];
  for (const branch of parentBranches) {
    const p = await probe(branch);
    if (dirs.length === 0) {
      if (p.type === null) {
        if (p.whiteout) return null;
        continue;
      }
      if (p.type !== 'dir') return { type: p.type, branches: [branch] };
      dirs.push(branch);
      if (p.whiteout || (await opaque(branch))) break;
      continue;
    }
    if (p.type === 'dir') {
      dirs.push(branch);
      if (p.whiteout || (await opaque(branch))) break;
      continue;
    }
    // a non-directory or a whiteout below a directory ends the merge
    if (p.type !== null || p.whiteout) break;
  }
  return dirs.length === 0 ? null : { type: 'dir', branches: dirs };
}
