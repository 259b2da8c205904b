/**
 * vfs: every layer is a full copy of its parent plus its own diff. Works anywhere, with no
 * mounts; copies are copy-on-write clones where the filesystem offers them (btrfs, xfs reflink).
 *
 *   <root>/vfs/
 *     dir/<id>/           the layer's complete root filesystem
 *     mountrefs/<id>      get/put reference counts (see mount-refs.ts)
 */
import { mkdir, rm, rename, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { Change, CreateOptions, Driver, DriverCapabilities, DriverOptions } from '../driver.js';
import { strataError } from '../../errors.js';
import { MountRefs, holderOf, type MountOptions, type MountUsage } from '../mount-refs.js';
import { checkLayerId } from '../layer-id.js';
import { layerIdsIn, sweepLeftovers } from '../leftovers.js';
import { naiveApplyDiff, naiveChanges, naiveDiff, naiveDiffSize } from '../naive-diff.js';
import { copyTree } from '../../util/copy-tree.js';
import { fsyncDir } from '../../util/atomic.js';
import { backingFsName } from '../backing-fs.js';
import { pathExists } from '../../util/path-exists.js';

export class VfsDriver implements Driver {
  readonly name = 'vfs';
  readonly home: string;
  readonly capabilities: DriverCapabilities = { nativeDiff: false, requiresRoot: false, directoryLayers: true };
  private readonly refs: MountRefs;

  constructor(opts: DriverOptions) {
    for (const key of Object.keys(opts.options)) {
      if (key !== 'size') throw strataError('INVALID_OPTION', `vfs: unknown option ${key}`);
    }
    this.home = join(opts.root, 'vfs');
    this.refs = new MountRefs(this.home);
  }

  private dir(id: string): string {
    checkLayerId(id);
    return join(this.home, 'dir', id);
  }

  async create(id: string, parent: string | null, _opts?: CreateOptions): Promise<void> {
    const target = this.dir(id);
    if (await this.exists(id)) throw strataError('LAYER_EXISTS', `layer ${id} already exists`, { id });
    const parentDir = parent === null ? null : this.dir(parent);
    if (parentDir !== null && !(await this.exists(parent!))) {
      throw strataError('LAYER_NOT_FOUND', `parent layer ${parent} not found`, { id: parent! });
    }
    // Build under a temporary name and rename, so a crash never leaves a half-copied layer
    // under a real id.
    const staging = join(this.home, 'dir', `.new-${id}-${randomBytes(4).toString('hex')}`);
    await mkdir(join(this.home, 'dir'), { recursive: true, mode: 0o700 });
    try {
      if (parentDir === null) await mkdir(staging, { mode: 0o755 });
      else await copyTree(parentDir, staging);
      await rename(staging, target);
      await fsyncDir(join(this.home, 'dir'));
    } catch (err) {
      await rm(staging, { recursive: true, force: true });
      throw err;
    }
  }

  createReadWrite(id: string, parent: string | null, opts?: CreateOptions): Promise<void> {
    return this.create(id, parent, opts);
  }

  async remove(id: string): Promise<void> {
    const target = this.dir(id);
    if (!(await this.exists(id))) throw strataError('LAYER_NOT_FOUND', `layer ${id} not found`, { id });
    if ((await this.refs.count(id)) > 0) throw strataError('LAYER_MOUNTED', `layer ${id} is mounted`, { id });
    // Rename first: a crash mid-delete leaves a `.rm-*` directory for cleanup, not a torn layer.
    const doomed = join(this.home, 'dir', `.rm-${id}-${randomBytes(4).toString('hex')}`);
    await rename(target, doomed);
    await this.refs.forget(id); // (what processes that died still had written there)
    await rm(doomed, { recursive: true, force: true });
  }

  async get(id: string, opts?: MountOptions): Promise<string> {
    const target = this.dir(id);
    if (!(await this.exists(id))) throw strataError('LAYER_NOT_FOUND', `layer ${id} not found`, { id });
    await this.refs.change(id, 1, holderOf(opts));
    return target;
  }

  async put(id: string, opts?: MountOptions): Promise<void> {
    this.dir(id);
    await this.refs.change(id, -1, holderOf(opts));
  }

  mountRefs(id: string): Promise<MountUsage> {
    return this.refs.usage(id);
  }

  exists(id: string): Promise<boolean> {
    return pathExists(this.dir(id));
  }

  async status(): Promise<Array<[string, string]>> {
    await mkdir(this.home, { recursive: true });
    const fs = await statfs(this.home);
    return [
      ['Backing Filesystem', backingFsName(fs.type)],
      ['Copy-on-write clones', 'used where the backing filesystem supports them (reflink)'],
    ];
  }

  async metadata(id: string): Promise<Record<string, string>> {
    return { Dir: this.dir(id) };
  }

  async cleanup(): Promise<void> {
    await this.sweep(); // nothing is ever mounted
  }

  layerIds(): Promise<string[]> {
    return layerIdsIn(join(this.home, 'dir'));
  }

  sweep(): Promise<string[]> {
    return sweepLeftovers(join(this.home, 'dir'), ['.new-', '.rm-']);
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

export async function createVfsDriver(opts: DriverOptions): Promise<Driver> {
  return new VfsDriver(opts);
}
