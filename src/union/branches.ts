import { lstat, readdir } from 'node:fs/promises';
import type { Dirent, Stats } from 'node:fs';
import { join } from 'node:path';
import { isErrno } from '../errors.js';
import { getXattr } from '../util/xattr.js';
import { classifyEntries, classifyOverlayEntries, whiteoutName, OPAQUE_MARKER, type DirListing, type EntryType, type Probe, type WhiteoutFormat } from './whiteout.js';

export interface Branch {
  /** Absolute directory of this branch. */
  root: string;
  writable: boolean;
}

export function entryTypeOf(d: Dirent | Stats): EntryType {
  if (d.isDirectory()) return 'dir';
  if (d.isFile()) return 'file';
  if (d.isSymbolicLink()) return 'symlink';
  return 'other';
}

export async function lstatOrNull(path: string): Promise<Stats | null> {
  try {
    return await lstat(path);
  } catch (err) {
    if (isErrno(err, 'ENOENT', 'ENOTDIR')) return null;
    throw err;
  }
}

/**
 * Read access to the branches, top first. Read-only branches must not change while the union is
 * open (as with OverlayFS lower dirs), so their directory listings are cached: after the first
 * visit a lookup costs one map probe per branch, never a syscall. The writable branch is always
 * read live, since the union itself changes it.
 */
export class Branches {
  readonly list: readonly Branch[];
  /** Index of the writable branch (always 0) or -1. */
  readonly top: number;
  private readonly cache = new Map<string, DirListing | null>();

  constructor(
    list: readonly Branch[],
    /** Whiteout convention of the read-only branches (the writable one is always aufs'). */
    private readonly format: WhiteoutFormat = 'aufs',
  ) {
    this.list = list;
    this.top = list[0]?.writable ? 0 : -1;
  }

  real(branch: number, rel: string): string {
    const b = this.list[branch];
    if (b === undefined) throw new Error(`no branch ${branch}`);
    return rel === '' ? b.root : join(b.root, rel);
  }

  /** The classified listing of directory `rel` in `branch`, or null if it is not a directory there. */
  async listing(branch: number, rel: string): Promise<DirListing | null> {
    if (branch === this.top) return this.readListing(branch, rel);
    const key = `${branch}\0${rel}`;
    const hit = this.cache.get(key);
    if (hit !== undefined) return hit;
    const listing = await this.readListing(branch, rel);
    this.cache.set(key, listing);
    return listing;
  }

  private async readListing(branch: number, rel: string): Promise<DirListing | null> {
    let dirents: Dirent[];
    const dir = this.real(branch, rel);
    try {
      dirents = await readdir(dir, { withFileTypes: true });
    } catch (err) {
      if (isErrno(err, 'ENOENT', 'ENOTDIR')) return null;
      throw err;
    }
    if (this.format === 'aufs' || branch === this.top) return classifyEntries(dirents.map((d) => [d.name, entryTypeOf(d)] as const));
    const raw: Array<[string, EntryType, boolean]> = [];
    for (const d of dirents) {
      // only character devices need the extra lstat (a whiteout is the 0/0 one)
      const whiteout = d.isCharacterDevice() && (await lstat(join(dir, d.name))).rdev === 0;
      raw.push([d.name, entryTypeOf(d), whiteout]);
    }
    return classifyOverlayEntries(raw, (await getXattr(dir, 'trusted.overlay.opaque'))?.toString() === 'y');
  }

  async probe(branch: number, dirRel: string, name: string): Promise<Probe> {
    if (branch !== this.top) {
      const listing = await this.listing(branch, dirRel);
      if (listing === null) return { type: null, whiteout: false };
      return { type: listing.entries.get(name) ?? null, whiteout: listing.whiteouts.has(name) };
    }
    // the writable branch: two lstats instead of listing a possibly large directory
    const dir = this.real(branch, dirRel);
    const st = await lstatOrNull(join(dir, name));
    const type = st === null ? null : entryTypeOf(st);
    if (type !== null && type !== 'dir') return { type, whiteout: false };
    const wh = await lstatOrNull(join(dir, whiteoutName(name)));
    return { type, whiteout: wh !== null };
  }

  async opaque(branch: number, dirRel: string): Promise<boolean> {
    if (branch !== this.top) return (await this.listing(branch, dirRel))?.opaque ?? false;
    return (await lstatOrNull(join(this.real(branch, dirRel), OPAQUE_MARKER))) !== null;
  }

  /** Forget cached listings (only needed if someone changed a read-only branch behind our back). */
  invalidate(): void {
    this.cache.clear();
  }
}
