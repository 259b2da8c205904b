import { copyFile, link, lstat, lutimes, lchown, chmod, mkdir, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { mknodSync } from '../archive/native.js';
import { isErrno } from '../errors.js';
import { readXattrs, setXattr } from '../util/xattr.js';
import type { Branches } from './branches.js';
import { lstatOrNull } from './branches.js';
import { errnoError } from './errno.js';
import type { Resolver, UnionNode } from './resolver.js';
import { parentRel } from './path.js';
import { ORPH_DIR, PLINK_DIR, mergeListings } from './whiteout.js';

/** Copy owner, mode, xattrs and times of `st`/`src` onto `dst` (times last: the others touch ctime only). */
export async function copyMetadata(src: string, st: Stats, dst: string): Promise<void> {
  await lchown(dst, st.uid, st.gid);
  if (!st.isSymbolicLink()) await chmod(dst, st.mode & 0o7777);
  for (const [name, value] of await readXattrs(src)) {
    try {
      await setXattr(dst, name, value);
    } catch (err) {
      // user.* xattrs cannot be set on symlinks; nothing else is expected to fail
      if (!st.isSymbolicLink()) throw err;
    }
  }
  await lutimes(dst, st.atime, st.mtime);
}

/** Create a copy of the single object `src` (not a directory's content) at `dst`. */
async function copyObject(src: string, st: Stats, dst: string, withData: boolean): Promise<void> {
  if (st.isFile()) {
    if (withData) await copyFile(src, dst);
    else await writeFile(dst, '');
  } else if (st.isDirectory()) {
    await mkdir(dst);
  } else if (st.isSymbolicLink()) {
    await symlink(await readlink(src), dst);
  } else if (st.isFIFO()) {
    mknodSync(dst, 'fifo');
  } else if (st.isCharacterDevice() || st.isBlockDevice()) {
    const major = Math.floor(st.rdev / 256) & 0xfff;
    const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
    mknodSync(dst, st.isCharacterDevice() ? 'char' : 'block', major, minor);
  } else {
    throw errnoError('EOPNOTSUPP', 'copyup', src);
  }
  await copyMetadata(src, st, dst);
}

/**
 * Copy-up into the writable branch, the way aufs does it: the copy is built in `.wh..wh.orph/`
 * with all metadata and then renamed into place, so a crash never leaves a half-copied file that
 * shadows the lower one. A file with several hard links gets a pseudo-link in `.wh..wh.plnk/`
 * (named after the lower inode): copying up another name of the same inode links to that copy,
 * and reads of a not-yet-copied name are redirected to it, so the hardlink group stays one file.
 */
export class CopyUp {
  /**
   * Copy-ups in progress, by destination path. Two callers copying up one object share the first
   * one's work: a second rename would replace the first copy, and a writer that already holds the
   * first one's path would then write into an unlinked file, or create a name in a dead directory.
   */
  private readonly inflight = new Map<string, Promise<void>>();

  constructor(
    private readonly branches: Branches,
    private readonly resolver: Resolver,
  ) {}

  private get top(): number {
    if (this.branches.top < 0) throw errnoError('EROFS', 'copyup', '/');
    return this.branches.top;
  }

  topReal(rel: string): string {
    return this.branches.real(this.top, rel);
  }

  async stagingPath(): Promise<string> {
    const dir = this.topReal(ORPH_DIR);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    return join(dir, `cu-${process.pid}-${randomBytes(6).toString('hex')}`);
  }

  plinkPath(st: Stats): string {
    return join(this.topReal(PLINK_DIR), `${st.dev}.${st.ino}`);
  }

  /** Where to read a non-directory from: the pseudo-link copy if another name was already copied up. */
  async readPath(node: UnionNode): Promise<string> {
    const branch = node.branches[0] as number;
    const real = this.branches.real(branch, node.rel);
    if (branch === this.branches.top || this.branches.top < 0 || node.type !== 'file') return real;
    const st = await lstat(real);
    if (st.nlink < 2) return real;
    const plink = this.plinkPath(st);
    return (await lstatOrNull(plink)) !== null ? plink : real;
  }

  /** Make sure directory `node` exists in the writable branch (metadata only); returns its real path. */
  async ensureDir(node: UnionNode): Promise<string> {
    const top = this.top;
    const dst = this.branches.real(top, node.rel);
    if (node.branches[0] === top) return dst;
    if (node.rel !== '') {
      const parent = await this.resolver.at(parentRel(node.rel));
      if (parent === null) throw errnoError('ENOENT', 'copyup', '/' + node.rel);
      await this.ensureDir(parent);
    }
    const src = this.branches.real(node.branches[0] as number, node.rel);
    await this.once(dst, async () => {
      if ((await lstatOrNull(dst))?.isDirectory() === true) return; // another caller made it already
      const stage = await this.stagingPath();
      await copyObject(src, await lstat(src), stage, false);
      await rename(stage, dst);
    });
    if (node.branches[0] !== top) node.branches = [top, ...node.branches];
    return dst;
  }

  private async once(dst: string, work: () => Promise<void>): Promise<void> {
    let pending = this.inflight.get(dst);
    if (pending === undefined) {
      pending = work().finally(() => this.inflight.delete(dst));
      this.inflight.set(dst, pending);
    }
    await pending;
  }

  /** Copy non-directory `node` up (with data unless `withData` is false); returns its real path in the top. */
  async copyUp(node: UnionNode, withData = true): Promise<string> {
    const top = this.top;
    if (node.type === 'dir') return this.ensureDir(node);
    const dst = this.branches.real(top, node.rel);
    if (node.branches[0] === top) return dst;
    const parent = await this.resolver.at(parentRel(node.rel));
    if (parent === null) throw errnoError('ENOENT', 'copyup', '/' + node.rel);
    await this.ensureDir(parent);
    const src = this.branches.real(node.branches[0] as number, node.rel);
    await this.once(dst, async () => {
      if ((await lstatOrNull(dst)) === null) await this.copyNonDirectory(src, dst, withData);
    });
    node.branches = [top];
    return dst;
  }

  private async copyNonDirectory(src: string, dst: string, withData: boolean): Promise<void> {
    const st = await lstat(src);
    if (st.isFile() && st.nlink > 1) {
      const plink = this.plinkPath(st);
      if ((await lstatOrNull(plink)) === null) {
        const stage = await this.stagingPath();
        await copyObject(src, st, stage, true);
        await mkdir(this.topReal(PLINK_DIR), { recursive: true, mode: 0o700 });
        try {
          await link(stage, plink);
        } catch (err) {
          if (!isErrno(err, 'EEXIST')) throw err;
        }
        await rm(stage, { force: true });
      }
      await link(plink, dst);
    } else {
      const stage = await this.stagingPath();
      await copyObject(src, st, stage, withData);
      await rename(stage, dst);
    }
  }

  /**
   * Build a full copy of the merged subtree at `node` in the staging area and return its path
   * (for directory rename). Names of one inode inside the subtree stay hard links of one copy.
   */
  async materialize(node: UnionNode): Promise<string> {
    const stage = await this.stagingPath();
    await this.copyTree(node, stage, new Map());
    return stage;
  }

  private async copyTree(node: UnionNode, dst: string, copied: Map<string, string>): Promise<void> {
    const src = node.type === 'dir' ? this.branches.real(node.branches[0] as number, node.rel) : await this.readPath(node);
    const st = await lstat(src);
    if (node.type !== 'dir') {
      const key = `${st.dev}:${st.ino}`;
      const first = st.nlink > 1 ? copied.get(key) : undefined;
      if (first !== undefined) await link(first, dst);
      else await copyObject(src, st, dst, true);
      if (st.nlink > 1 && first === undefined) copied.set(key, dst);
      return;
    }
    await mkdir(dst);
    const listings = [];
    for (const b of node.branches) {
      const l = await this.branches.listing(b, node.rel);
      if (l !== null) listings.push(l);
    }
    for (const name of mergeListings(listings).keys()) {
      const child = await this.resolver.child(node, name);
      if (child !== null) await this.copyTree(child, join(dst, name), copied);
    }
    await copyMetadata(src, st, dst);
  }
}
