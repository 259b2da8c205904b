/**
 * Apply an uncompressed OCI layer tar to a directory, as Docker's UnpackLayer (vfs: 'apply'),
 * overlay2's whiteout converter ('overlay') or aufs' plain untar ('aufs') do — but confined:
 * every path is resolved chroot-style inside the target (see paths.ts), so neither `..`,
 * absolute names, symlinks (planted earlier in this tar or by a lower layer) nor hardlinks can
 * reach outside it.
 *
 * Hot path: metadata calls are synchronous (one syscall each, no thread-pool round trip),
 * files are created with O_EXCL|O_NOFOLLOW and replaced only on EEXIST, and directories already
 * resolved are cached, so a fresh tree costs no lstat per entry.
 */
import {
  chmodSync, chownSync, closeSync, constants, copyFileSync, fchmodSync, fchownSync, futimesSync,
  linkSync, lchownSync, lstatSync, lutimesSync, mkdirSync, mkdtempSync, open as openCb, openSync, readdirSync,
  realpathSync, rmSync, symlinkSync, unlinkSync, utimesSync, writeSync,
} from 'node:fs';
import { isUtf8 } from 'node:buffer';
import { tmpdir } from 'node:os';
import type { Readable } from 'node:stream';
import { isErrno, isStrataError, strataError } from '../errors.js';
import { MAX_FILE, SmallFileWriter } from './file-writer.js';
import { mknodSync, setXattrSync } from './native.js';
import { PathSet } from './path-set.js';
import { RootResolver, baseOf, dirOf, entryPath, goClean } from './paths.js';
import { TYPE, type TarHeader } from './tar/header.js';
import { readTar, type TarEntry } from './tar/reader.js';
import { WHITEOUT_LINK_DIR, classifyWhiteout } from './whiteouts.js';

export type WhiteoutMode = 'apply' | 'overlay' | 'aufs';

export interface ApplyOptions {
  /**
   * 'apply': target is a full copy of the parent (vfs): `.wh.x` deletes x, an opaque marker
   * empties its directory of entries not from this layer. 'overlay': target is an overlay upper
   * dir: `.wh.x` becomes a 0/0 char device, an opaque marker the xattr trusted.overlay.opaque=y.
   * 'aufs': whiteout files are written as they are.
   */
  whiteouts: WhiteoutMode;
  /** Lower layer roots (top first), where hardlink targets missing from target may live. */
  lowerDirs?: string[];
  /** Set owners (default: when running as root). */
  chown?: boolean;
  /** Device nodes: create (default as root), skip, or fail (default otherwise). */
  devices?: 'create' | 'skip' | 'error';
  /** Accept the same cleaned path twice (default false: DUPLICATE_PATH, as Docker's tar-split). */
  allowDuplicates?: boolean;
  /**
   * Small new files written concurrently on the thread pool (default 8; 1 = strictly one at a
   * time). Only files that cannot exist yet (in a directory this apply created) are pipelined;
   * everything else waits for them first, so the result is the same as in tar order.
   */
  concurrency?: number;
}

export interface ApplyResult {
  /** Sum of the entries' header sizes, what Docker's ApplyLayer returns. */
  size: number;
  /**
   * What a walk of the target would now count as its size (moby's directory.Size: the lstat
   * size of every non-directory, each inode once), where the apply can tell without that walk:
   * the target was empty and nothing this apply made was replaced or removed. Else undefined.
   */
  diskSize?: number;
}

const O_CREATE_FILE = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
/** Largest file written by the pipelined path (its data is held until written). */
const PIPELINE_MAX = MAX_FILE;
/** Small files before the file writer's thread is started: a small layer is done sooner without. */
const WRITER_AFTER_FILES = 256;
const WRITER_BATCHES_IN_FLIGHT = 3;
/** PathSet flags of the applier's paths. */
const SEEN = 1;
const CREATED = 2;
const UNPACKED = 4;
const IS_ROOT = typeof process.getuid === 'function' && process.getuid() === 0;

interface PlnkFile { header: TarHeader; tmp: string }

class Applier {
  private readonly resolver: RootResolver;
  private readonly lowerResolvers: RootResolver[];
  /**
   * Every path the apply has met, kept once (real paths, without the root): entry names under
   * the root flagged SEEN, and real paths CREATED (none existed before: directories,
   * implicit parents, files) and UNPACKED (whiteouts and opaque directories spare them).
   */
  private readonly paths: PathSet;
  private readonly dirTimes: Array<[string, number, number]> = [];
  private readonly plnk = new Map<string, PlnkFile>();
  private plnkDir: string | null = null;
  private readonly chown: boolean;
  private readonly devices: 'create' | 'skip' | 'error';
  /** Directories this apply created: whatever is in them, this apply put there. */
  private readonly freshDirs = new Set<string>();
  private readonly inflight = new Set<Promise<void>>();
  private failure: unknown = null;
  private readonly concurrency: number;
  /** Started once the layer has shown many small files (undefined: not yet). */
  private writer: SmallFileWriter | null | undefined;
  private smallFiles = 0;
  size = 0;
  /** The target's directory.Size so far, while `sizeKnown` (see ApplyResult.diskSize). */
  diskSize = 0;
  sizeKnown: boolean;

  constructor(readonly root: string, private readonly opts: ApplyOptions) {
    this.paths = new PathSet(`${root}/`);
    this.resolver = new RootResolver(root, {
      create: true,
      onCreate: (real) => {
        this.paths.add(real, CREATED);
        this.freshDirs.add(real);
      },
    });
    this.concurrency = Math.max(1, opts.concurrency ?? 8);
    if (readdirSync(root).length === 0) this.freshDirs.add(root);
    this.sizeKnown = this.freshDirs.has(root);
    this.lowerResolvers = (opts.lowerDirs ?? []).map((d) => new RootResolver(realpathSync(d), { create: false }));
    this.chown = opts.chown ?? IS_ROOT;
    this.devices = opts.devices ?? (IS_ROOT ? 'create' : 'error');
  }

  /** Wait for every pipelined file; rethrow the first failure. */
  async drain(): Promise<void> {
    const queued = this.writer?.send();
    if (queued) this.track(queued);
    while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
    if (this.failure) throw this.failure;
  }

  /** Whether `path` (in real dir `parent`) cannot exist: nothing but this apply wrote there. */
  private isNew(parent: string | null, path: string): boolean {
    return parent !== null && this.freshDirs.has(parent) && !this.paths.has(path, CREATED);
  }

  async entry(entry: TarEntry): Promise<void> {
    if (this.failure) await this.drain();
    const h = entry.header;
    this.size += h.size;
    if (h.typeflag === TYPE.paxGlobal) return; // ignored, as Docker does
    if (!isUtf8(h.nameRaw) || !isUtf8(h.linknameRaw)) {
      throw strataError('UNSUPPORTED_ARCHIVE', `non-UTF-8 file names are not supported: ${JSON.stringify(h.name)}`, { path: h.name });
    }
    const rel = entryPath(h.name);
    if (!this.opts.allowDuplicates) {
      if (this.paths.hasUnder(rel, SEEN)) {
        throw strataError('DUPLICATE_PATH', `duplicates of file paths not supported: ${h.name}`, { path: h.name });
      }
      this.paths.addUnder(rel, SEEN);
    }
    const wo = rel === '' ? { kind: 'none' as const } : classifyWhiteout(rel);
    if (wo.kind === 'meta') return;
    if (wo.kind !== 'none' || h.typeflag === TYPE.link) await this.drain();
    if (wo.kind === 'plnk') {
      if (h.typeflag === TYPE.file || h.typeflag === TYPE.contiguous) await this.stashPlnk(wo.name, entry);
      return;
    }
    const mode = this.opts.whiteouts;
    if (wo.kind === 'opaque' && mode !== 'aufs') {
      const dir = this.resolver.resolveDir(dirOf(rel), rel)!;
      if (mode === 'overlay') {
        if (!setXattrSync(dir, 'trusted.overlay.opaque', Buffer.from('y'))) {
          throw strataError('NOT_IMPLEMENTED', `cannot set trusted.overlay.opaque on ${dirOf(rel) || '/'} (needs root and a filesystem with trusted xattrs)`, { path: rel });
        }
      } else {
        this.emptyOpaque(dir);
      }
      return;
    }
    if (wo.kind === 'whiteout' && mode !== 'aufs') {
      const dir = this.resolver.resolveDir(dirOf(rel), rel)!;
      const victim = `${dir}/${wo.target}`;
      this.removeExisting(victim);
      if (mode === 'overlay') {
        mknodSync(victim, 'char', 0, 0, 0); // (mode 0, as moby makes them)
        if (this.chown) lchownSync(victim, h.uid, h.gid);
        // the header's times (moby leaves the apply time): re-diffing gives the same whiteout
        lutimesSync(victim, h.atime ?? h.mtime, h.mtime);
        this.paths.add(victim, CREATED | UNPACKED);
      }
      return;
    }
    await this.create(rel, entry);
  }

  /** Docker's opaque handling for a full copy: remove what this layer did not unpack. */
  private emptyOpaque(dir: string): void {
    const walk = (d: string) => {
      let names: string[];
      try {
        names = readdirSync(d);
      } catch (err) {
        if (isErrno(err, 'ENOENT', 'ENOTDIR')) return;
        throw err;
      }
      for (const name of names) {
        const p = `${d}/${name}`;
        if (!this.paths.has(p, UNPACKED)) {
          this.sizeKnown = false;
          rmSync(p, { recursive: true, force: true });
          this.resolver.invalidate();
        } else if (lstatSync(p).isDirectory()) {
          walk(p);
        }
      }
    };
    walk(dir);
  }

  /** Remove whatever is at an absolute real path (nothing if absent). */
  private removeExisting(path: string): void {
    const st = lstatSync(path, { throwIfNoEntry: false });
    if (!st) return;
    this.sizeKnown = false; // what went may have been counted
    if (st.isDirectory()) {
      rmSync(path, { recursive: true, force: true });
      this.resolver.invalidate();
    } else {
      unlinkSync(path);
      if (st.isSymbolicLink()) this.resolver.invalidate();
    }
  }

  private async stashPlnk(name: string, entry: TarEntry): Promise<void> {
    this.plnkDir ??= mkdtempSync(`${tmpdir()}/strata-plnk-`);
    const tmp = `${this.plnkDir}/${this.plnk.size}`;
    const fd = openSync(tmp, O_CREATE_FILE, 0o600);
    try {
      for await (const chunk of entry.chunks()) writeAll(fd, chunk);
    } finally {
      closeSync(fd);
    }
    this.plnk.set(name, { header: entry.header, tmp });
  }

  cleanup(): void {
    this.writer?.close();
    if (this.plnkDir) rmSync(this.plnkDir, { recursive: true, force: true });
  }

  private async create(rel: string, entry: TarEntry): Promise<void> {
    const h = entry.header;
    const parent = rel === '' ? null : this.resolver.resolveDir(dirOf(rel), rel)!;
    const path = parent === null ? this.root : `${parent}/${baseOf(rel)}`;
    const perm = h.mode & 0o7777;
    if (h.typeflag !== TYPE.file && h.typeflag !== TYPE.contiguous && !this.isNew(parent, path)) await this.drain();
    switch (h.typeflag) {
      case TYPE.file:
      case TYPE.contiguous: {
        const fresh = this.isNew(parent, path);
        this.diskSize += entry.dataSize;
        if (fresh && this.concurrency > 1 && entry.dataSize <= PIPELINE_MAX) {
          this.paths.add(path, CREATED | UNPACKED);
          await this.pipeline(path, rel, entry);
          return;
        }
        if (!fresh) await this.drain();
        const fd = this.openNew(path, rel);
        try {
          for await (const chunk of entry.chunks()) writeAll(fd, chunk);
          if (this.chown) fchownSync(fd, h.uid, h.gid);
          fchmodSync(fd, perm);
          this.xattrs(path, h);
          futimesSync(fd, h.atime ?? h.mtime, h.mtime);
        } finally {
          closeSync(fd);
        }
        break;
      }
      case TYPE.dir: {
        if (parent === null) {
          // the root itself: merge attributes
        } else {
          try {
            mkdirSync(path, 0o700);
            this.paths.add(path, CREATED);
            this.freshDirs.add(path);
            this.resolver.remember(rel, path);
          } catch (err) {
            if (!isErrno(err, 'EEXIST')) throw err;
            const st = lstatSync(path);
            if (!st.isDirectory()) {
              this.removeExisting(path);
              mkdirSync(path, 0o700);
              this.paths.add(path, CREATED);
              this.freshDirs.add(path);
            }
          }
        }
        if (this.chown) chownSync(path, h.uid, h.gid);
        chmodSync(path, perm);
        this.xattrs(path, h);
        this.dirTimes.push([path, h.atime ?? h.mtime, h.mtime]);
        break;
      }
      case TYPE.symlink: {
        this.checkSymlink(rel, h.linkname);
        if (parent === null) throw strataError('INVALID_ARCHIVE', 'the layer root cannot be a symlink', { path: h.name });
        this.retryOnExists(path, () => symlinkSync(h.linkname, path));
        this.diskSize += h.linknameRaw.length; // a symlink's lstat size: its target's bytes
        if (this.chown) lchownSync(path, h.uid, h.gid);
        this.xattrs(path, h);
        lutimesSync(path, h.atime ?? h.mtime, h.mtime);
        break;
      }
      case TYPE.link: {
        if (parent === null) throw strataError('INVALID_ARCHIVE', 'the layer root cannot be a hardlink', { path: h.name });
        this.hardlink(rel, path, h);
        break;
      }
      case TYPE.char:
      case TYPE.block:
      case TYPE.fifo: {
        if (parent === null) throw strataError('INVALID_ARCHIVE', 'the layer root must be a directory', { path: h.name });
        if (h.typeflag !== TYPE.fifo) {
          if (this.devices === 'skip') return;
          if (this.devices === 'error') {
            throw strataError('UNSUPPORTED_ARCHIVE', `device node ${h.name} can only be created as root`, { path: h.name });
          }
        }
        const kind = h.typeflag === TYPE.char ? 'char' : h.typeflag === TYPE.block ? 'block' : 'fifo';
        this.retryOnExists(path, () => mknodSync(path, kind, h.devmajor, h.devminor));
        if (this.chown) lchownSync(path, h.uid, h.gid);
        chmodSync(path, perm);
        this.xattrs(path, h);
        utimesSync(path, h.atime ?? h.mtime, h.mtime);
        break;
      }
      default:
        throw strataError('UNSUPPORTED_ARCHIVE',
          `unhandled tar entry type ${JSON.stringify(h.typeflag)} for ${h.name}`, { path: h.name });
    }
    this.paths.add(path, CREATED | UNPACKED);
  }

  /**
   * Write a new small file off this thread: batched to the file writer's thread once the layer
   * has shown it has many (file-writer.ts), else (and for files with xattrs) its open on the
   * thread pool. At most `concurrency` opens or batches in flight.
   */
  private async pipeline(path: string, rel: string, entry: TarEntry): Promise<void> {
    const h = entry.header;
    while (this.inflight.size >= this.concurrency) await Promise.race(this.inflight);
    if (this.failure) await this.drain();
    const writer = this.smallFileWriter(h);
    if (writer) {
      // two batches queued behind the one being written keep the thread busy; more only cost memory
      while (writer.inFlight >= WRITER_BATCHES_IN_FLIGHT) await Promise.race(this.inflight);
      // one copy, from the stream's chunks (which may be lent) straight into the batch
      await readInto(entry, writer.reserve(entry.dataSize));
      const sent = writer.add(path, rel, entry.dataSize, h);
      if (sent) this.track(sent);
      return;
    }
    const data = await readInto(entry, Buffer.allocUnsafe(entry.dataSize));
    // only the open (path lookup, inode allocation: the slow part) goes to the thread pool;
    // the writes and metadata calls on the new fd are cheap and stay synchronous
    const task = new Promise<void>((resolve, reject) => {
      openCb(path, O_CREATE_FILE, 0o600, (err, fd) => {
        if (err) {
          reject(mapError(wrapFsError(err, rel), rel));
          return;
        }
        try {
          writeAll(fd, data);
          if (this.chown) fchownSync(fd, h.uid, h.gid);
          fchmodSync(fd, h.mode & 0o7777);
          this.xattrs(path, h);
          futimesSync(fd, h.atime ?? h.mtime, h.mtime);
          resolve();
        } catch (e) {
          reject(e);
        } finally {
          closeSync(fd);
        }
      });
    });
    this.track(task);
  }

  private track(task: Promise<void>): void {
    const tracked: Promise<void> = task.then(
      () => { this.inflight.delete(tracked); },
      (err: unknown) => {
        this.inflight.delete(tracked);
        // it surfaces at a later entry: name the one that failed (the file writer says which)
        const rel = (err as { rel?: string }).rel;
        this.failure ??= rel === undefined ? err : mapError(wrapFsError(err, rel), rel);
      },
    );
    this.inflight.add(tracked);
  }

  private smallFileWriter(h: TarHeader): SmallFileWriter | null {
    if (h.xattrs !== undefined && h.xattrs.size > 0) return null;
    if (this.writer === undefined && ++this.smallFiles > WRITER_AFTER_FILES) this.writer = SmallFileWriter.start(this.chown);
    return this.writer ?? null;
  }

  /** Docker refuses symlinks whose target, taken lexically from the link's directory, climbs out. */
  private checkSymlink(rel: string, linkname: string): void {
    if (linkname.startsWith('/')) return;
    const c = goClean(`${dirOf(rel)}/${linkname}`.replace(/^\//, ''));
    if (c === '..' || c.startsWith('../')) {
      throw strataError('PATH_ESCAPE', `invalid symlink ${rel} -> ${linkname}: it points outside the layer root`, { path: rel });
    }
  }

  private openNew(path: string, rel: string): number {
    try {
      return openSync(path, O_CREATE_FILE, 0o600);
    } catch (err) {
      if (!isErrno(err, 'EEXIST')) throw wrapFsError(err, rel);
      this.removeExisting(path);
      return openSync(path, O_CREATE_FILE, 0o600);
    }
  }

  private retryOnExists(path: string, make: () => void): void {
    try {
      make();
    } catch (err) {
      if (!isErrno(err, 'EEXIST')) throw err;
      this.removeExisting(path);
      make();
    }
  }

  private hardlink(rel: string, path: string, h: TarHeader): void {
    const linkRel = entryPath(h.linkname, 'hardlink target');
    if (linkRel === '') throw strataError('INVALID_ARCHIVE', `hardlink ${h.name} points at the layer root`, { path: h.name });
    if (linkRel === rel) throw strataError('INVALID_ARCHIVE', `hardlink ${h.name} points at itself`, { path: h.name });
    // aufs: hardlinks into /.wh..wh.plnk come from the stashed copies
    if (linkRel.startsWith(`${WHITEOUT_LINK_DIR}/`)) {
      const stashed = this.plnk.get(baseOf(linkRel));
      if (!stashed) throw strataError('INVALID_ARCHIVE', `invalid aufs hardlink ${h.name} -> ${h.linkname}`, { path: h.name });
      this.removeExisting(path);
      copyFileSync(stashed.tmp, path, constants.COPYFILE_EXCL);
      this.diskSize += stashed.header.size;
      this.setMeta(path, stashed.header);
      return;
    }
    const targetParent = this.resolver.resolveDir(dirOf(linkRel), h.name, false);
    const target = targetParent === null ? null : `${targetParent}/${baseOf(linkRel)}`;
    const st = target === null ? undefined : lstatSync(target, { throwIfNoEntry: false });
    if (target !== null && st) {
      if (st.isDirectory()) throw strataError('INVALID_ARCHIVE', `hardlink ${h.name} points at a directory`, { path: h.name });
      if (target === path) throw strataError('INVALID_ARCHIVE', `hardlink ${h.name} points at itself`, { path: h.name });
      this.retryOnExists(path, () => linkSync(target, path));
      if (!st.isSymbolicLink()) this.setMeta(path, h);
      return;
    }
    // overlay/aufs: the target may live in a lower layer; copy it up
    for (const lower of this.lowerResolvers) {
      const lp = lower.resolveDir(dirOf(linkRel), h.name);
      if (lp === null) continue;
      const src = `${lp}/${baseOf(linkRel)}`;
      const ls = lstatSync(src, { throwIfNoEntry: false });
      if (!ls) continue;
      if (!ls.isFile()) throw strataError('INVALID_ARCHIVE', `hardlink ${h.name}: lower target ${h.linkname} is not a regular file`, { path: h.name });
      this.removeExisting(path);
      copyFileSync(src, path, constants.COPYFILE_EXCL | constants.COPYFILE_FICLONE);
      this.diskSize += ls.size;
      this.setMeta(path, h);
      return;
    }
    throw strataError('INVALID_ARCHIVE', `hardlink ${h.name} -> ${h.linkname}: target not found in the layer`, { path: h.name });
  }

  private setMeta(path: string, h: TarHeader): void {
    if (this.chown) lchownSync(path, h.uid, h.gid);
    chmodSync(path, h.mode & 0o7777);
    this.xattrs(path, h);
    utimesSync(path, h.atime ?? h.mtime, h.mtime);
  }

  private xattrs(path: string, h: TarHeader): void {
    if (!h.xattrs) return;
    for (const [name, value] of h.xattrs) {
      // never let a layer forge overlayfs' own metadata (opaque, redirect, origin, …)
      if (name.startsWith('trusted.overlay.')) continue;
      setXattrSync(path, name, value);
    }
  }

  /**
   * Directory times last, so creating their contents does not change them. lutimes: a later
   * entry may have replaced the directory (through another path aliasing it) with a symlink,
   * which must not be followed.
   */
  async finish(): Promise<void> {
    await this.drain();
    for (const [path, atime, mtime] of this.dirTimes) {
      try {
        lutimesSync(path, atime, mtime);
      } catch (err) {
        if (!isErrno(err, 'ENOENT', 'ENOTDIR')) throw err;
      }
    }
  }
}

function mapError(err: unknown, name?: string): unknown {
  if (isStrataError(err)) return err;
  if (isErrno(err, 'ENOTDIR', 'ELOOP', 'ENAMETOOLONG')) {
    const path = name ?? (err as NodeJS.ErrnoException).path ?? '';
    return strataError('INVALID_ARCHIVE', `cannot apply ${path}: ${(err as Error).message}`, { path }, err);
  }
  return err;
}

/** An entry's data copied into `into` (exactly its size). */
async function readInto(entry: TarEntry, into: Buffer): Promise<Buffer> {
  const whole = entry.dataAtHand();
  if (whole) {
    whole.copy(into);
    return into;
  }
  let at = 0;
  for await (const chunk of entry.chunks()) at += chunk.copy(into, at);
  return into;
}

function writeAll(fd: number, chunk: Buffer): void {
  let off = 0;
  while (off < chunk.length) off += writeSync(fd, chunk, off, chunk.length - off);
}

function wrapFsError(err: unknown, rel: string): unknown {
  if (isErrno(err, 'ENOTDIR')) {
    return strataError('INVALID_ARCHIVE', `parent of ${rel} is not a directory`, { path: rel }, err);
  }
  return err;
}

/**
 * Apply an uncompressed layer tar into `target` (which must exist). Streams with bounded
 * memory. Errors: PATH_ESCAPE, INVALID_ARCHIVE, TRUNCATED_ARCHIVE, DUPLICATE_PATH,
 * UNSUPPORTED_ARCHIVE. On error the target is left partly applied: callers throw it away.
 */
export async function applyLayerTar(target: string, tar: Readable, opts: ApplyOptions): Promise<ApplyResult> {
  const root = realpathSync(target);
  if (!lstatSync(root).isDirectory()) throw strataError('INVALID_ARGUMENT', `apply target ${target} is not a directory`);
  const applier = new Applier(root, opts);
  try {
    for await (const entry of readTar(tar)) {
      try {
        await applier.entry(entry);
      } catch (err) {
        throw mapError(err, entry.header.name);
      }
    }
    await applier.finish();
  } catch (err) {
    if (!tar.destroyed) tar.destroy();
    await applier.drain().catch(() => undefined);
    throw mapError(err);
  } finally {
    applier.cleanup();
  }
  return applier.sizeKnown ? { size: applier.size, diskSize: applier.diskSize } : { size: applier.size };
}
