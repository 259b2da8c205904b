/**
 * overlay2: layers stacked by the kernel's OverlayFS, in Docker's exact on-disk layout, so a
 * Docker daemon and Strata can share a data root.
 *
 *   <root>/overlay2/
 *     l/<LINK> -> ../<id>/diff     26-char base32 short names: 128 lowers fit in one page of options
 *     <id>/diff/                   the layer's own files (overlay upper dir): whiteouts are 0/0
 *                                  char devices, opaque dirs carry trusted.overlay.opaque=y
 *     <id>/link                    the layer's LINK
 *     <id>/lower                   "l/<parent LINK>:l/<grandparent LINK>:…", nearest first;
 *                                  absent for a base layer (which is never mounted: get returns diff/)
 *     <id>/work/                   overlay workdir (layers with a parent)
 *     <id>/merged/                 mount point, only while mounted (removed again on the last put)
 *     <id>/committed               empty marker: the layer has children, so it mounts read-only
 *     mountrefs/<id>               Strata's get/put counts across processes (mount-refs.ts)
 *     .mounts.lock                 serialises mount/unmount with those counts
 *     .native-diff                 cached answer of the native-diff kernel check
 *
 * A container is `<mount-id>-init` (Docker's init layer) under `<mount-id>`, both made by
 * createReadWrite. Diffs against the direct parent read only diff/ (cost of the changes, not of
 * the image); anything else falls back to comparing mounted trees (naive-diff.ts).
 */
import { mkdir, readlink, rm, rmdir, stat, writeFile, rename } from 'node:fs/promises';
import { existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { Change, CreateOptions, Driver, DriverCapabilities, DriverOptions } from '../driver.js';
import { strataError, isErrno } from '../../errors.js';
import { MountRefs, holderOf, type MountOptions, type MountUsage } from '../mount-refs.js';
import { checkLayerId } from '../layer-id.js';
import { layerIdsIn, sweepLeftovers } from '../leftovers.js';
import { withFileLock } from '../../util/file-lock.js';
import { generateLinkId } from './link-id.js';
import { LINK_DIR, buildMountSpec, childLower, splitLower } from './mount-options.js';
import { isMountPoint, mountOverlay, unmount } from './kernel-mount.js';
import { directorySize } from './dir-size.js';
import { upperChanges } from './upper-changes.js';
import { backingFilesystem, inUserNamespace, kernelKnowsIndex, nativeDiffProblem, supportsDType } from './overlay-support.js';

const PAGE_SIZE = 4096;
const RESERVED = new Set([LINK_DIR, 'mountrefs']);

// Loaded on first use: `strata mount` and friends never pay for the tar code.
const archive = () => import('../../archive/index.js');
const naive = () => import('../naive-diff.js');

export class Overlay2Driver implements Driver {
  readonly name = 'overlay2';
  readonly home: string;
  readonly capabilities: DriverCapabilities = { nativeDiff: true, requiresRoot: true, directoryLayers: true, whiteoutFormat: 'overlay' };
  private readonly refs: MountRefs;
  private indexOff: boolean | null = null;
  private userxattr: boolean | null = null;
  private nativeProblem: Promise<string | null> | null = null;

  constructor(opts: DriverOptions) {
    for (const key of Object.keys(opts.options)) {
      // overlay2.size needs xfs project quotas, which Strata does not set up
      throw strataError('INVALID_OPTION', `overlay2: unknown option ${key}`);
    }
    // (a home whose path holds ':' or ',' is mounted through relative paths: mount-options.ts)
    this.home = join(opts.root, 'overlay2');
    this.refs = new MountRefs(this.home);
  }

  async init(): Promise<void> {
    this.ensureHome();
  }

  /** The home and its short-link dir (synchronous: create calls it too, util/atomic.ts says why). */
  private ensureHome(): void {
    mkdirSync(this.home, { recursive: true, mode: 0o710 });
    mkdirSync(join(this.home, LINK_DIR), { recursive: true, mode: 0o700 });
  }

  private dir(id: string): string {
    checkLayerId(id);
    // Names of the driver's own entries in the home (Docker's ids are 64 hex, never these).
    if (RESERVED.has(id)) throw strataError('INVALID_ID', `layer id ${JSON.stringify(id)} is reserved by overlay2`, { id });
    return join(this.home, id);
  }

  // ---- layers -------------------------------------------------------------------------------

  async create(id: string, parent: string | null, opts?: CreateOptions): Promise<void> {
    if (opts?.size !== undefined || Object.keys(opts?.storageOpt ?? {}).length > 0) {
      throw strataError('INVALID_OPTION', 'overlay2: --storage-opt size is only supported for read-write layers, and needs xfs project quotas');
    }
    return this.createLayer(id, parent);
  }

  async createReadWrite(id: string, parent: string | null, opts?: CreateOptions): Promise<void> {
    if (opts?.size !== undefined || Object.keys(opts?.storageOpt ?? {}).length > 0) {
      throw strataError('INVALID_OPTION', 'overlay2: --storage-opt is supported only for overlay over xfs with pquota, which Strata does not set up');
    }
    return this.createLayer(id, parent);
  }

  /**
   * moby's overlay2 create, step for step, so Docker finds exactly what it would have made.
   * Synchronous calls: a dozen tiny metadata calls on every container create (util/atomic.ts says why).
   */
  private async createLayer(id: string, parent: string | null): Promise<void> {
    const dir = this.dir(id);
    if (existsSync(dir)) throw strataError('LAYER_EXISTS', `layer ${id} already exists`, { id });
    let lower: string | null = null;
    if (parent !== null) {
      const parentDir = this.dir(parent);
      const parentLink = readOptionalSync(join(parentDir, 'link'));
      if (parentLink === null) throw strataError('LAYER_NOT_FOUND', `parent layer ${parent} not found`, { id: parent });
      lower = childLower(parentLink.trim(), readOptionalSync(join(parentDir, 'lower')));
    }
    this.ensureHome();
    mkdirSync(dir, { mode: 0o710 });
    try {
      mkdirSync(join(dir, 'diff'), { mode: 0o755 });
      const link = generateLinkId();
      symlinkSync(join('..', id, 'diff'), join(this.home, LINK_DIR, link));
      writeFileSync(join(dir, 'link'), link, { mode: 0o644 });
      if (parent !== null && lower !== null) {
        mkdirSync(join(dir, 'work'), { mode: 0o700 });
        writeFileSync(join(this.dir(parent), 'committed'), '', { mode: 0o600 });
        writeFileSync(join(dir, 'lower'), lower, { mode: 0o644 });
      }
      // No fsync, as moby: the layer store's intent marker and its own synced record decide
      // after a crash whether this layer is kept or removed.
    } catch (err) {
      await this.removeFiles(id).catch(() => undefined);
      throw err;
    }
  }

  async remove(id: string): Promise<void> {
    if (!(await this.exists(id))) throw strataError('LAYER_NOT_FOUND', `layer ${id} not found`, { id });
    if ((await this.refs.count(id)) > 0) throw strataError('LAYER_MOUNTED', `layer ${id} is mounted`, { id });
    await this.removeFiles(id);
    await this.refs.forget(id); // (what processes that died still had written there)
  }

  private async removeFiles(id: string): Promise<void> {
    const dir = this.dir(id);
    const merged = join(dir, 'merged');
    // Never recurse into a live mount: that would delete the files of the layers below.
    if (await isMountPoint(merged)) await unmount(merged);
    const link = readOptionalSync(join(dir, 'link'))?.trim();
    if (link && !link.includes('/')) await rm(join(this.home, LINK_DIR, link), { force: true });
    // Rename first, so a crash mid-delete leaves a hidden directory rather than a torn layer.
    const doomed = join(this.home, `.rm-${id}-${randomBytes(4).toString('hex')}`);
    try {
      await rename(dir, doomed);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return;
      throw err;
    }
    await rm(doomed, { recursive: true, force: true });
  }

  async exists(id: string): Promise<boolean> {
    try {
      await stat(this.dir(id));
      return true;
    } catch (err) {
      if (isErrno(err, 'ENOENT', 'ENOTDIR')) return false;
      throw err;
    }
  }

  // ---- mounts -------------------------------------------------------------------------------

  private withMountLock<T>(fn: () => Promise<T>): Promise<T> {
    return withFileLock(join(this.home, '.mounts.lock'), fn);
  }

  async get(id: string, opts?: MountOptions): Promise<string> {
    const dir = this.dir(id);
    if (!(await this.exists(id))) throw strataError('LAYER_NOT_FOUND', `layer ${id} not found`, { id });
    const lower = readOptionalSync(join(dir, 'lower'));
    await this.init();
    return this.withMountLock(async () => {
      // A layer without lowers is never mounted: its diff/ is the whole filesystem (as Docker).
      if (lower === null) {
        await this.refs.change(id, 1, holderOf(opts));
        return join(dir, 'diff');
      }
      const merged = join(dir, 'merged');
      const count = await this.refs.change(id, 1, holderOf(opts), async () => {
        // Already mounted by someone else (dockerd on a shared root, which counts it the same
        // way): use it, and leave it mounted on our last put.
        if (await isMountPoint(merged)) await writeFile(this.borrowedMarker(id), '');
        else await this.mountLayer(id, lower);
      });
      // A count without a mount (reboot, cleanup elsewhere, the lender unmounted): mount again.
      if (count > 1 && !(await isMountPoint(merged))) {
        await this.mountLayer(id, lower);
        await rm(this.borrowedMarker(id), { force: true });
      }
      return merged;
    });
  }

  /** Marks a mount Strata found in place rather than made (kept beside the counts). */
  private borrowedMarker(id: string): string {
    return join(this.home, 'mountrefs', `.borrowed-${id}`);
  }

  /** Undo our mount of `id`, unless it was borrowed. */
  private async release(id: string): Promise<void> {
    const marker = this.borrowedMarker(id);
    if (readOptionalSync(marker) !== null) {
      await rm(marker, { force: true });
      return;
    }
    const merged = join(this.dir(id), 'merged');
    if (await isMountPoint(merged)) await unmount(merged);
    // Docker removes the mount point too, which unmounts copies in other mount namespaces.
    await rmdir(merged).catch(() => undefined);
  }

  private async mountLayer(id: string, lower: string): Promise<void> {
    const dir = this.dir(id);
    const merged = join(dir, 'merged');
    if (await isMountPoint(merged)) return;
    await mkdir(merged, { mode: 0o700 }).catch((err) => {
      if (!isErrno(err, 'EEXIST')) throw err;
    });
    const readonly = readOptionalSync(join(dir, 'committed')) !== null;
    this.indexOff ??= await kernelKnowsIndex();
    this.userxattr ??= await inUserNamespace();
    const spec = buildMountSpec({ home: this.home, id, lower, readonly, indexOff: this.indexOff, userxattr: this.userxattr, pageSize: PAGE_SIZE });
    try {
      await mountOverlay(spec, id);
    } catch (err) {
      await rmdir(merged).catch(() => undefined);
      throw err;
    }
  }

  async put(id: string, opts?: MountOptions): Promise<void> {
    this.dir(id);
    await this.withMountLock(async () => {
      await this.refs.change(id, -1, holderOf(opts), () => this.release(id));
    });
  }

  mountRefs(id: string): Promise<MountUsage> {
    return this.refs.usage(id);
  }

  /**
   * Unmount every layer Strata counted as mounted (also what a crashed process left: its counts
   * are on disk) and forget the counts. Overlay mounts Strata did not make are left alone: on a
   * root shared with a running dockerd they are Docker's containers.
   */
  async cleanup(): Promise<void> {
    await mkdir(this.home, { recursive: true });
    await this.withMountLock(async () => {
      for (const id of await this.refs.mounted()) {
        await this.release(id);
        await this.refs.forget(id);
      }
    });
    await this.sweep();
  }

  async layerIds(): Promise<string[]> {
    return (await layerIdsIn(this.home)).filter((name) => !RESERVED.has(name));
  }

  sweep(): Promise<string[]> {
    return sweepLeftovers(this.home, ['.rm-']);
  }

  // ---- information --------------------------------------------------------------------------

  async status(): Promise<Array<[string, string]>> {
    await this.init();
    return [
      ['Backing Filesystem', await backingFilesystem(this.home)],
      ['Supports d_type', String(await supportsDType(this.home))],
      ['Native Overlay Diff', String((await this.nativeDiffProblem()) === null)],
      ['userxattr', String(await inUserNamespace())],
    ];
  }

  async metadata(id: string): Promise<Record<string, string>> {
    const dir = this.dir(id);
    if (!(await this.exists(id))) throw strataError('LAYER_NOT_FOUND', `layer ${id} not found`, { id });
    const out: Record<string, string> = {};
    const lowers = await this.lowerDirs(id);
    if (lowers.length > 0) out.LowerDir = lowers.join(':');
    out.MergedDir = join(dir, 'merged');
    out.UpperDir = join(dir, 'diff');
    out.WorkDir = join(dir, 'work');
    return out;
  }

  /** Absolute diff directories of the lowers, nearest first (links resolved, as moby's getLowerDirs). */
  private async lowerDirs(id: string): Promise<string[]> {
    const lower = readOptionalSync(join(this.dir(id), 'lower'));
    const out: string[] = [];
    for (const entry of splitLower(lower)) {
      const target = await readlink(join(this.home, entry));
      out.push(join(this.home, LINK_DIR, target));
    }
    return out;
  }

  /** `parent` is the layer directly below `id` (or both are "none"): diff/ alone is the change set. */
  private async isParent(id: string, parent: string | null): Promise<boolean> {
    const lowers = splitLower(readOptionalSync(join(this.dir(id), 'lower')));
    if (parent === null) return lowers.length === 0;
    if (lowers.length === 0) return false;
    const parentLink = readOptionalSync(join(this.dir(parent), 'link'))?.trim();
    return parentLink !== undefined && lowers[0] === `${LINK_DIR}/${parentLink}`;
  }

  private nativeDiffProblem(): Promise<string | null> {
    this.nativeProblem ??= this.init().then(() => nativeDiffProblem(this.home));
    return this.nativeProblem;
  }

  private async native(id: string, parent: string | null): Promise<boolean> {
    if (!(await this.exists(id))) throw strataError('LAYER_NOT_FOUND', `layer ${id} not found`, { id });
    return (await this.nativeDiffProblem()) === null && (await this.isParent(id, parent));
  }

  // ---- diffs --------------------------------------------------------------------------------

  async diffDirectory(id: string): Promise<string> {
    if (!(await this.exists(id))) throw strataError('LAYER_NOT_FOUND', `layer ${id} not found`, { id });
    return join(this.dir(id), 'diff');
  }

  async diff(id: string, parent: string | null): Promise<Readable> {
    if (!(await this.native(id, parent))) return (await naive()).naiveDiff(this, id, parent);
    // Whiteouts go back to OCI form: 0/0 char devices → .wh.<name>, opaque xattr → .wh..wh..opq.
    return (await archive()).tarUpperDir(join(this.dir(id), 'diff'), 'overlay');
  }

  async changes(id: string, parent: string | null): Promise<Change[]> {
    if (!(await this.native(id, parent))) return (await naive()).naiveChanges(this, id, parent);
    return upperChanges(join(this.dir(id), 'diff'), await this.lowerDirs(id));
  }

  async applyDiff(id: string, parent: string | null, tar: Readable): Promise<number> {
    if (!(await this.native(id, parent))) return (await naive()).naiveApplyDiff(this, id, tar);
    const diffDir = join(this.dir(id), 'diff');
    // lowerDirs: a hardlink to a file of a lower layer is copied up, as overlay itself would.
    const applied = await (await archive()).applyLayerTar(diffDir, tar, { whiteouts: 'overlay', lowerDirs: await this.lowerDirs(id) });
    // the size a walk of the diff dir gives (what dockerd records), known without the walk
    // unless the apply replaced something
    return applied.diskSize ?? directorySize(diffDir);
  }

  async diffSize(id: string, parent: string | null): Promise<number> {
    if (!(await this.native(id, parent))) return (await naive()).naiveDiffSize(this, id, parent);
    return directorySize(join(this.dir(id), 'diff'));
  }
}

export async function createOverlay2Driver(opts: DriverOptions): Promise<Driver> {
  const driver = new Overlay2Driver(opts);
  await driver.init();
  return driver;
}

/** A small file of the layer's (link, lower, a marker), or null where it has none. */
function readOptionalSync(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return null;
    throw err;
  }
}
