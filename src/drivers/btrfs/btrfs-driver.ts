/**
 * btrfs: every layer is a btrfs subvolume; a layer with a parent is a writable snapshot of the
 * parent's subvolume, so a child costs one copy-on-write snapshot whatever the image's size,
 * and `get` is the subvolume's path (nothing to mount). Docker's `btrfs` graphdriver layout
 * (moby daemon/graphdriver/btrfs/btrfs.go), diffs through the naive differ as moby's.
 *
 *   <root>/btrfs/
 *     subvolumes/<id>        the layer's complete root filesystem, a subvolume
 *     subvolumes/.new-*      a create in progress: made under this name, renamed into place
 *     subvolumes/.rm-*       a remove in progress: renamed out of the way, then deleted
 *     quotas/<id>            the layer's size limit in bytes (`--storage-opt size`), as moby's
 *     mountrefs/<id>         get/put reference counts (see mount-refs.ts)
 *
 * Unlike moby, the driver home is not bind-mounted onto itself to make it a private mount:
 * nothing is ever mounted below it, so there is no propagation to stop.
 */
import { access, mkdir, readFile, readdir, rename, rm, statfs } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { Change, CreateOptions, Driver, DriverCapabilities, DriverOptions } from '../driver.js';
import { strataError, isErrno } from '../../errors.js';
import { MountRefs, holderOf, type MountOptions, type MountUsage } from '../mount-refs.js';
import { checkLayerId } from '../layer-id.js';
import { layerIdsIn } from '../leftovers.js';
import { naiveApplyDiff, naiveChanges, naiveDiff, naiveDiffSize } from '../naive-diff.js';
import { writeFileAtomic } from '../../util/atomic.js';
import { backingFsName } from '../backing-fs.js';
import { deleteSubvolume, defaultSubvolumeOps, isSubvolume, type SubvolumeOps } from './subvolume.js';
import { parseDriverOptions, requestedSize, type BtrfsOptions } from './options.js';
import { btrfsToolVersion } from './cli-ops.js';
import { pathExists } from '../../util/path-exists.js';

/** statfs f_type of btrfs (BTRFS_SUPER_MAGIC, include/uapi/linux/magic.h). */
export const BTRFS_SUPER_MAGIC = 0x9123683e;
const STAGING = '.new-';
const DOOMED = '.rm-';

export class BtrfsDriver implements Driver {
  readonly name = 'btrfs';
  readonly home: string;
  readonly capabilities: DriverCapabilities = { nativeDiff: false, requiresRoot: true, directoryLayers: true };
  private readonly refs: MountRefs;
  private readonly subvolumes: string;
  private readonly quotas: string;
  private quotaOn: Promise<void> | null = null;

  constructor(opts: DriverOptions, private readonly ops: SubvolumeOps, private readonly options: BtrfsOptions) {
    this.home = join(opts.root, 'btrfs');
    this.subvolumes = join(this.home, 'subvolumes');
    this.quotas = join(this.home, 'quotas');
    this.refs = new MountRefs(this.home);
  }

  private path(id: string): string {
    checkLayerId(id);
    return join(this.subvolumes, id);
  }

  private quotaFile(id: string): string {
    return join(this.quotas, id);
  }

  /** Quotas are switched on for the whole filesystem once, when first needed (moby's enableQuota). */
  async ensureQuota(): Promise<void> {
    this.quotaOn ??= (async () => {
      await mkdir(this.home, { recursive: true, mode: 0o701 });
      try {
        await this.ops.enableQuota(this.home);
      } catch (err) {
        this.quotaOn = null;
        throw strataError('INVALID_OPTION', `btrfs: size limits need btrfs quotas, which could not be enabled on ${this.home}: ${(err as Error).message}`, { path: this.home }, err);
      }
    })();
    return this.quotaOn;
  }

  async create(id: string, parent: string | null, opts?: CreateOptions): Promise<void> {
    const target = this.path(id);
    const size = requestedSize(opts, this.options);
    if (await this.exists(id)) throw strataError('LAYER_EXISTS', `layer ${id} already exists`, { id });
    const source = parent === null ? null : this.path(parent);
    if (parent !== null && !(await this.exists(parent))) throw strataError('LAYER_NOT_FOUND', `parent layer ${parent} not found`, { id: parent });
    if (size !== null) await this.ensureQuota();
    await mkdir(this.subvolumes, { recursive: true, mode: 0o701 });
    // Made under a temporary name and renamed, so a crash never leaves a layer under a live id
    // that was not fully set up (its quota); sweep() deletes what a crash leaves.
    const staging = `${STAGING}${id}-${randomBytes(4).toString('hex')}`;
    let made = false;
    try {
      if (source === null) await this.ops.create(this.subvolumes, staging);
      else await this.ops.snapshot(source, this.subvolumes, staging);
      made = true;
      if (size !== null) {
        await this.ops.limitReferenced(join(this.subvolumes, staging), size);
        await mkdir(this.quotas, { recursive: true, mode: 0o700 });
        await writeFileAtomic(this.quotaFile(id), String(size));
      }
      // No fsync, as moby and overlay2: the layer store's intent marker decides after a crash
      // whether this layer is kept.
      await rename(join(this.subvolumes, staging), target);
    } catch (err) {
      if (size !== null) await rm(this.quotaFile(id), { force: true }).catch(() => undefined);
      if (made) await deleteSubvolume(this.ops, this.subvolumes, staging).catch(() => undefined);
      throw err;
    }
  }

  createReadWrite(id: string, parent: string | null, opts?: CreateOptions): Promise<void> {
    return this.create(id, parent, opts);
  }

  async remove(id: string): Promise<void> {
    const target = this.path(id);
    if (!(await this.exists(id))) throw strataError('LAYER_NOT_FOUND', `layer ${id} not found`, { id });
    if ((await this.refs.count(id)) > 0) throw strataError('LAYER_MOUNTED', `layer ${id} is mounted`, { id });
    const limited = await this.hasQuotaFile(id);
    // Renamed first: a crash mid-delete leaves a `.rm-*` subvolume for sweep(), not a torn layer.
    const doomed = `${DOOMED}${id}-${randomBytes(4).toString('hex')}`;
    await rename(target, join(this.subvolumes, doomed));
    await rm(this.quotaFile(id), { force: true });
    await this.refs.forget(id); // (what processes that died still had written there)
    await this.deleteLayerSubvolume(doomed, limited);
  }

  /**
   * Delete a layer's subvolume and, where this driver used quotas, its qgroup first (moby's
   * order; kernels from 6.7 refuse that while the subvolume exists and drop the qgroup
   * themselves once the subvolume is gone, so a refusal is fine).
   */
  private async deleteLayerSubvolume(name: string, limited: boolean): Promise<void> {
    if (limited || this.options.minSpace > 0) {
      try {
        const subvolId = await this.ops.subvolumeId(join(this.subvolumes, name));
        await this.ops.destroyQgroup(this.subvolumes, subvolId);
      } catch {
        // best effort, see above
      }
    }
    await deleteSubvolume(this.ops, this.subvolumes, name);
  }

  private async hasQuotaFile(id: string): Promise<boolean> {
    return (await this.readQuota(id)) !== null;
  }

  private async readQuota(id: string): Promise<number | null> {
    try {
      const size = Number.parseInt(await readFile(this.quotaFile(id), 'utf8'), 10);
      return Number.isSafeInteger(size) && size > 0 ? size : null;
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return null;
      throw err;
    }
  }

  async get(id: string, opts?: MountOptions): Promise<string> {
    const target = this.path(id);
    if (!(await this.exists(id))) throw strataError('LAYER_NOT_FOUND', `layer ${id} not found`, { id });
    await this.refs.change(id, 1, holderOf(opts), async () => {
      // As moby's Get: a recorded limit is applied again, in case quotas were switched off and
      // on since (which forgets every limit).
      const size = await this.readQuota(id);
      if (size !== null && size >= this.options.minSpace) {
        await this.ensureQuota();
        await this.ops.limitReferenced(target, size);
      }
    });
    return target;
  }

  async put(id: string, opts?: MountOptions): Promise<void> {
    this.path(id);
    await this.refs.change(id, -1, holderOf(opts));
  }

  mountRefs(id: string): Promise<MountUsage> {
    return this.refs.usage(id);
  }

  exists(id: string): Promise<boolean> {
    return pathExists(this.path(id));
  }

  /**
   * `docker info` shows Build Version and Library Version: the libbtrfs moby was compiled
   * against. Strata links no libbtrfs (ioctls, or the tool), so it reports the btrfs-progs tool's
   * version as the build version and says how subvolumes are made instead of a library version.
   */
  async status(): Promise<Array<[string, string]>> {
    const status: Array<[string, string]> = [];
    const version = await btrfsToolVersion();
    if (version !== null) status.push(['Build Version', version]);
    status.push(['Subvolume Operations', this.ops.via === 'ioctl' ? 'ioctl (no libbtrfs)' : 'btrfs-progs tool']);
    const fs = await statfs(await nearestExisting(this.home)).catch(() => null);
    if (fs) status.push(['Backing Filesystem', backingFsName(fs.type)]);
    if (this.options.minSpace > 0) status.push(['Min Space', String(this.options.minSpace)]);
    return status;
  }

  async metadata(id: string): Promise<Record<string, string>> {
    const meta: Record<string, string> = { Dir: this.path(id) };
    const size = await this.readQuota(id);
    if (size !== null) meta['Size'] = String(size);
    return meta;
  }

  /** Every layer id held (for fsck to find layers no record refers to). */
  layerIds(): Promise<string[]> {
    return layerIdsIn(this.subvolumes);
  }

  async cleanup(): Promise<void> {
    await this.sweep(); // nothing is ever mounted
  }

  /**
   * Subvolumes left under `.new-*`/`.rm-*` by an interrupted create or remove, and quota records
   * of layers that do not exist (a create that failed after writing one).
   */
  async sweep(): Promise<string[]> {
    const removed: string[] = [];
    for (const name of await readdir(this.subvolumes).catch(() => [] as string[])) {
      if (!name.startsWith(STAGING) && !name.startsWith(DOOMED)) continue;
      const path = join(this.subvolumes, name);
      if (await isSubvolume(path)) await deleteSubvolume(this.ops, this.subvolumes, name);
      else await rm(path, { recursive: true, force: true });
      removed.push(`removed ${path}, left by an interrupted ${name.startsWith(DOOMED) ? 'remove' : 'create'}`);
    }
    for (const name of await readdir(this.quotas).catch(() => [] as string[])) {
      const live = !name.startsWith('.') && (await this.exists(name).catch(() => false));
      if (live) continue;
      await rm(join(this.quotas, name), { force: true });
      removed.push(`removed ${join(this.quotas, name)}, the quota of a layer that does not exist`);
    }
    return removed;
  }

  diff(id: string, parent: string | null): Promise<Readable> {
    return naiveDiff(this, id, parent);
  }

  changes(id: string, parent: string | null): Promise<Change[]> {
    return naiveChanges(this, id, parent);
  }

  applyDiff(id: string, _parent: string | null, tar: Readable): Promise<number> {
    return naiveApplyDiff(this, id, tar);
  }

  diffSize(id: string, parent: string | null): Promise<number> {
    return naiveDiffSize(this, id, parent);
  }
}

async function nearestExisting(path: string): Promise<string> {
  let dir = path;
  for (;;) {
    try {
      await access(dir);
      return dir;
    } catch {
      const up = dirname(dir);
      if (up === dir) return dir;
      dir = up;
    }
  }
}

/** Why the btrfs driver cannot work under `root`, or null when it can (no side effects). */
export async function probeBtrfs(root: string): Promise<string | null> {
  if (process.platform !== 'linux') return 'btrfs needs Linux';
  if (process.getuid?.() !== 0) return 'btrfs subvolume snapshots and deletes need root (running as an unprivileged user)';
  const dir = await nearestExisting(join(root, 'btrfs'));
  const fs = await statfs(dir).catch(() => null);
  if (!fs) return `cannot statfs ${dir}`;
  if (fs.type !== BTRFS_SUPER_MAGIC) return `${dir} is on ${backingFsName(fs.type)}, not btrfs`;
  if ((await defaultSubvolumeOps()) === null) return 'no way to make subvolumes: koffi cannot load libc and the btrfs tool (btrfs-progs) is not installed';
  return null;
}

/** Open the driver; `ops` picks the kernel interface (tests run both), by default ioctls. */
export async function createBtrfsDriver(opts: DriverOptions, ops?: SubvolumeOps): Promise<Driver> {
  const options = parseDriverOptions(opts.options);
  const chosen = ops ?? (await defaultSubvolumeOps());
  if (!chosen) throw strataError('DRIVER_NOT_SUPPORTED', 'btrfs: koffi cannot load libc and the btrfs tool (btrfs-progs) is not installed');
  const driver = new BtrfsDriver(opts, chosen, options);
  // btrfs.min_space turns quotas on at start, as moby's Init does.
  if (options.minSpace > 0) await driver.ensureQuota();
  return driver;
}
