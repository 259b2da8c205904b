/**
 * The layer store: content identity (DiffID, ChainID) on top of a driver's layers (cache ids),
 * in Docker's layerdb layout, so Docker and Strata can read each other's roots.
 *
 *   image/<driver>/layerdb/
 *     sha256/<chainID hex>/{diff,size,cache-id,parent,tar-split.json.gz}
 *     mounts/<containerID>/{mount-id,init-id,parent}
 *     tmp/                      write sets, intent markers (`incomplete-*`), see recover()
 *
 * Every change is staged under tmp/ and renamed into place, so a crash leaves garbage in tmp/
 * (swept by recover) and never a half-registered layer. Mutating methods take a WriteTxn: the
 * caller must hold the root's write lock (store.ts), which also means any intent marker found by
 * recover() belongs to a dead process.
 */
import { readFile, readdir, rename, rm, stat } from 'node:fs/promises';
import { createReadStream, mkdirSync, openSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { PassThrough, type Readable } from 'node:stream';
import { mapLimit } from '../util/map-limit.js';
import { DigestVerifier } from '../util/digest-verifier.js';
import { pipeline } from 'node:stream/promises';
import type { Driver } from '../drivers/driver.js';
import { assembleTar, assembledTarSize, openLayerStream, recordTarSplit } from '../archive/index.js';
import { strataError, isErrno, isStrataError } from '../errors.js';
import { fsyncDir, writeFileSynced } from '../util/atomic.js';
import { releaseAfter } from '../util/release-after.js';
import { type Digest, hexOf, parseDigest, sha256 } from './digest.js';
import { diffDirInitTarget, mountedInitTarget, setupInitLayer } from './init-layer.js';
import type { WriteTxn } from './write-lock.js';

export interface LayerInfo {
  chainId: Digest;
  diffId: Digest;
  parent: Digest | null;
  cacheId: string;
  /** Bytes the driver's ApplyDiff reported. */
  size: number;
}

export interface MountInfo {
  containerId: string;
  mountId: string;
  initId: string | null;
  /** ChainID of the image's top layer; null for `scratch`. */
  parent: Digest | null;
}

const MOUNT_ID = /^[a-f0-9]{64}(-init)?$/;
const TAR_SPLIT = 'tar-split.json.gz';

/** Docker's limit (layer/layer_store.go maxLayerDepth): deeper chains are refused. */
export const MAX_LAYER_DEPTH = 125;

export class LayerStore {
  private readonly records = new Map<Digest, { version: string; info: LayerInfo }>();
  readonly dir: string;

  constructor(imageDir: string, readonly driver: Driver) {
    this.dir = join(imageDir, 'layerdb');
  }

  private layerDir(chainId: Digest): string {
    return join(this.dir, 'sha256', hexOf(chainId));
  }

  private get tmp(): string {
    return join(this.dir, 'tmp');
  }

  async has(chainId: Digest): Promise<boolean> {
    try {
      await readFile(join(this.layerDir(chainId), 'cache-id'));
      return true;
    } catch (err) {
      if (isErrno(err, 'ENOENT', 'ENOTDIR')) return false;
      throw err;
    }
  }

  /**
   * A layer's record. Records never change once committed (a write set is renamed into place
   * whole, and removal renames it away), so one read per directory is enough: later calls cost
   * a stat instead of four reads.
   */
  async get(chainId: Digest): Promise<LayerInfo> {
    const dir = this.layerDir(chainId);
    try {
      const st = await stat(dir, { bigint: true });
      // the inode number alone could be reused by a removed and re-registered layer
      const version = `${st.ino}:${st.ctimeNs}`;
      const cached = this.records.get(chainId);
      if (cached?.version === version) return { ...cached.info };
      const info = await this.readRecord(chainId, dir);
      this.records.set(chainId, { version, info });
      return { ...info };
    } catch (err) {
      if (isErrno(err, 'ENOENT', 'ENOTDIR')) throw strataError('LAYER_NOT_FOUND', `layer ${chainId} not found`, { id: chainId });
      throw err;
    }
  }

  private async readRecord(chainId: Digest, dir: string): Promise<LayerInfo> {
    const read = async (name: string) => (await readFile(join(dir, name), 'utf8')).trim();
    const cacheId = await read('cache-id');
    if (!cacheId) throw strataError('STORE_CORRUPT', `layer ${chainId} has an empty cache-id`, { id: chainId });
    const parentText = await read('parent').catch((err) => {
      if (isErrno(err, 'ENOENT')) return '';
      throw err;
    });
    return {
      chainId,
      diffId: parseDigest(await read('diff'), 'diff id'),
      parent: parentText ? parseDigest(parentText, 'parent chain id') : null,
      cacheId,
      size: Number.parseInt(await read('size'), 10) || 0,
    };
  }

  async list(): Promise<LayerInfo[]> {
    const names = await readdir(join(this.dir, 'sha256')).catch(() => [] as string[]);
    const out: LayerInfo[] = [];
    for (const name of names.sort()) {
      if (!/^[a-f0-9]{64}$/.test(name)) continue; // `-removing` leftovers, temp names
      out.push(await this.get(`sha256:${name}`));
    }
    return out;
  }

  /** Layers from the base up to `chainId`. */
  async chain(chainId: Digest): Promise<LayerInfo[]> {
    const out: LayerInfo[] = [];
    let next: Digest | null = chainId;
    while (next) {
      const info: LayerInfo = await this.get(next);
      out.unshift(info);
      next = info.parent;
      if (out.length > MAX_LAYER_DEPTH + 1) throw strataError('STORE_CORRUPT', `layer chain of ${chainId} loops or is too deep`);
    }
    return out;
  }

  /**
   * Apply a layer tar (plain, gzip or zstd) on top of `parent` and register it. Returns the
   * existing layer if the same chain is already stored (the new copy is thrown away).
   */
  async register(_txn: WriteTxn, input: Readable, parent: Digest | null): Promise<LayerInfo> {
    const parentInfo = parent ? await this.get(parent) : null;
    if (parent && (await this.chain(parent)).length >= MAX_LAYER_DEPTH) {
      throw strataError('INVALID_ARGUMENT', `max depth exceeded: a chain may hold at most ${MAX_LAYER_DEPTH} layers`);
    }
    const cacheId = randomHex();
    await this.markIncomplete(`incomplete-${cacheId}`, cacheId);
    const tarSplitTmp = join(this.tmp, `${cacheId}.${TAR_SPLIT}`);
    try {
      await this.driver.create(cacheId, parentInfo?.cacheId ?? null);
      // the recorder sees each chunk before the driver reads it (a plain tar file's lent buffers)
      const tar = await openLayerStream(input);
      const recorded = recordTarSplit(tar, tarSplitTmp);
      const size = await this.driver.applyDiff(cacheId, parentInfo?.cacheId ?? null, tar);
      // The driver stops at the end-of-archive marker; the DiffID covers trailing padding too.
      tar.resume();
      await new Promise<void>((resolve, reject) => {
        if (tar.readableEnded) return resolve();
        tar.once('end', resolve).once('error', reject);
      });
      const diffId = (await recorded).diffId as Digest;
      const chainId = parent ? sha256(`${parent} ${diffId}`) : diffId;
      if (await this.has(chainId)) {
        await this.driver.remove(cacheId);
        await rm(tarSplitTmp, { force: true });
        await this.clearIncomplete(`incomplete-${cacheId}`);
        return this.get(chainId);
      }
      const files: Record<string, string> = { diff: diffId, size: String(size), 'cache-id': cacheId };
      if (parent) files.parent = parent;
      await this.commitWriteSet(files, { [TAR_SPLIT]: tarSplitTmp }, this.layerDir(chainId));
      await this.clearIncomplete(`incomplete-${cacheId}`);
      return { chainId, diffId, parent, cacheId, size };
    } catch (err) {
      // Roll back now where we can; recover() finishes the job if we die first.
      input.destroy();
      await this.driver.remove(cacheId).catch(() => undefined);
      await rm(tarSplitTmp, { force: true });
      await this.clearIncomplete(`incomplete-${cacheId}`);
      throw err;
    }
  }

  /** Remove a layer the caller has checked nobody uses. */
  async remove(_txn: WriteTxn, chainId: Digest): Promise<void> {
    const info = await this.get(chainId);
    const doomed = `${this.layerDir(chainId)}-${randomHex().slice(0, 8)}-removing`;
    await rename(this.layerDir(chainId), doomed);
    await fsyncDir(join(this.dir, 'sha256'));
    if (await this.driver.exists(info.cacheId)) await this.driver.remove(info.cacheId);
    await rm(doomed, { recursive: true, force: true });
  }

  /** The layer's tar, reassembled byte for byte from tar-split and verified against its DiffID. */
  async tarStream(chainId: Digest): Promise<Readable> {
    const info = await this.get(chainId);
    const usesDiffDir = typeof this.driver.diffDirectory === 'function';
    const root = usesDiffDir ? await this.driver.diffDirectory!(info.cacheId) : await this.driver.get(info.cacheId);
    const verifier = new DigestVerifier(info.diffId, `layer data for ${info.diffId}`);
    const tarSplit = createReadStream(join(this.layerDir(chainId), TAR_SPLIT));
    const assembled = new PassThrough({ highWaterMark: 1 << 20 });
    assembleTar(tarSplit, (name) => openInside(root, name), assembled)
      .then(() => assembled.end())
      .catch((err: unknown) => assembled.destroy(err as Error));
    // (pipeline: a reader that gives up destroys the assembly too)
    pipeline(assembled, verifier).catch(() => undefined);
    return usesDiffDir ? verifier : releaseAfter(verifier, () => this.driver.put(info.cacheId));
  }

  /** Length of the layer's tar, from tar-split alone (a save must know it before streaming). */
  async tarSize(chainId: Digest): Promise<number> {
    return assembledTarSize(createReadStream(join(this.layerDir(chainId), TAR_SPLIT)));
  }

  // ---- container layers -------------------------------------------------------------------

  private mountDir(containerId: string): string {
    if (!/^[a-f0-9]{64}$/.test(containerId)) throw strataError('INVALID_ID', `invalid container id ${containerId}`);
    return join(this.dir, 'mounts', containerId);
  }

  /** A container's init layer and writable layer on top of `parent` (Docker's layout). */
  async createMount(_txn: WriteTxn, containerId: string, parent: Digest | null): Promise<MountInfo> {
    const parentInfo = parent ? await this.get(parent) : null;
    const mountId = randomHex();
    const initId = `${mountId}-init`;
    await this.markIncomplete(`incomplete-mount-${containerId}`, mountId);
    const files: Record<string, string> = { 'mount-id': mountId, 'init-id': initId };
    if (parent) files.parent = parent;
    // the record is written and synced while the driver works; only its rename waits for it
    const prepared = this.prepareWriteSet(files, {});
    prepared.catch(() => undefined);
    try {
      await this.driver.createReadWrite(initId, parentInfo?.cacheId ?? null);
      await this.fillInitLayer(initId, parent);
      await this.driver.createReadWrite(mountId, initId);
      await this.publishWriteSet(await prepared, this.mountDir(containerId));
      await this.clearIncomplete(`incomplete-mount-${containerId}`);
      return { containerId, mountId, initId, parent };
    } catch (err) {
      await prepared.then((set) => rm(set, { recursive: true, force: true }), () => undefined);
      for (const id of [mountId, initId]) if (await this.driver.exists(id)) await this.driver.remove(id).catch(() => undefined);
      await this.clearIncomplete(`incomplete-mount-${containerId}`);
      throw err;
    }
  }

  /**
   * Write the init layer's entries: straight into its diff directory where the driver stacks
   * plain directories in a known whiteout format (no mount needed), else through a mount.
   */
  private async fillInitLayer(initId: string, parent: Digest | null): Promise<void> {
    const format = this.driver.capabilities.whiteoutFormat;
    if (this.driver.diffDirectory && format !== undefined) {
      const image = parent === null ? [] : await this.chain(parent);
      const lowers = await Promise.all(image.map((l) => this.driver.diffDirectory!(l.cacheId)));
      await setupInitLayer(await diffDirInitTarget(await this.driver.diffDirectory(initId), lowers, format));
      return;
    }
    const root = await this.driver.get(initId);
    try {
      await setupInitLayer(mountedInitTarget(root));
    } finally {
      await this.driver.put(initId);
    }
  }

  async getMount(containerId: string): Promise<MountInfo> {
    const dir = this.mountDir(containerId);
    const read = async (name: string) => (await readFile(join(dir, name), 'utf8')).trim();
    try {
      const [mountId, initId, parent] = await Promise.all([read('mount-id'), read('init-id').catch(() => ''), read('parent').catch(() => '')]);
      if (!MOUNT_ID.test(mountId) || (initId && !MOUNT_ID.test(initId))) {
        throw strataError('STORE_CORRUPT', `container ${containerId} has an invalid mount id`);
      }
      return { containerId, mountId, initId: initId || null, parent: parent ? parseDigest(parent) : null };
    } catch (err) {
      if (isErrno(err, 'ENOENT')) throw strataError('CONTAINER_NOT_FOUND', `no layer for container ${containerId}`, { id: containerId });
      throw err;
    }
  }

  async listMounts(): Promise<MountInfo[]> {
    const names = await readdir(join(this.dir, 'mounts')).catch(() => [] as string[]);
    return mapLimit(names.filter((name) => /^[a-f0-9]{64}$/.test(name)).sort(), 16, (name) => this.getMount(name));
  }

  async removeMount(_txn: WriteTxn, containerId: string): Promise<void> {
    const info = await this.getMount(containerId);
    const doomed = `${this.mountDir(containerId)}-${randomHex().slice(0, 8)}-removing`;
    await rename(this.mountDir(containerId), doomed);
    await fsyncDir(join(this.dir, 'mounts'));
    for (const id of [info.mountId, info.initId]) if (id && (await this.driver.exists(id))) await this.driver.remove(id);
    await rm(doomed, { recursive: true, force: true });
  }

  // ---- crash safety -----------------------------------------------------------------------

  /**
   * Finish or roll back what a dead process left: intent markers without a committed record,
   * half-built write sets, half-removed layers and mounts. Returns what it did, for fsck.
   */
  async recover(_txn: WriteTxn): Promise<string[]> {
    const actions: string[] = [];
    const tmpNames = await readdir(this.tmp).catch(() => [] as string[]);
    const removing: Array<[string, string]> = [];
    for (const sub of ['sha256', 'mounts']) {
      for (const name of await readdir(join(this.dir, sub)).catch(() => [] as string[])) {
        if (name.endsWith('-removing')) removing.push([sub, name]);
      }
    }
    // Every write starts here: after a clean exit there is nothing to do, and reading every
    // record to learn which driver layers are referenced is left for when something is.
    if (tmpNames.length === 0 && removing.length === 0) return actions;
    const known = new Set((await this.list()).map((l) => l.cacheId));
    for (const m of await this.listMounts()) {
      known.add(m.mountId);
      if (m.initId) known.add(m.initId);
    }
    for (const name of tmpNames) {
      const path = join(this.tmp, name);
      if (name.startsWith('incomplete-')) {
        const cacheId = (await readFile(path, 'utf8')).trim();
        const ids = name.startsWith('incomplete-mount-') ? [cacheId, `${cacheId}-init`] : [cacheId];
        for (const id of ids) {
          if (!known.has(id) && /^[a-f0-9]{64}(-init)?$/.test(id) && (await this.driver.exists(id))) {
            await this.removeAbandoned(id);
            actions.push(`removed driver layer ${id} of an interrupted ${name.startsWith('incomplete-mount-') ? 'container create' : 'layer import'}`);
          }
        }
      } else {
        actions.push(`removed leftover ${name} from layerdb/tmp`);
      }
      await rm(path, { recursive: true, force: true });
    }
    for (const [sub, name] of removing) {
      const path = join(this.dir, sub, name);
      for (const file of ['cache-id', 'mount-id', 'init-id']) {
        const id = (await readFile(join(path, file), 'utf8').catch(() => '')).trim();
        if (id && !known.has(id) && (await this.driver.exists(id))) await this.removeAbandoned(id);
      }
      await rm(path, { recursive: true, force: true });
      actions.push(`finished removing ${sub}/${name.slice(0, 64)}`);
    }
    return actions;
  }

  /**
   * Remove a driver layer that no record refers to. The process that made it may have died
   * holding references (get without put); nobody else can hold one, since the layer was never
   * committed, so release them until the driver lets go.
   */
  async removeAbandoned(id: string): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await this.driver.remove(id);
        return;
      } catch (err) {
        if (!isStrataError(err, 'LAYER_MOUNTED') || attempt >= 64) throw err;
        await this.driver.put(id);
      }
    }
  }

  /**
   * Record which driver layer is being built, so recover() can remove it if this process dies.
   * Not fsynced: a killed process leaves it in the page cache, and what a power cut loses is a
   * layer directory nothing refers to (space, never a wrong record).
   */
  private async markIncomplete(name: string, id: string): Promise<void> {
    mkdirSync(this.tmp, { recursive: true });
    writeFileSync(join(this.tmp, name), id, { mode: 0o644 });
  }

  private async clearIncomplete(name: string): Promise<void> {
    rmSync(join(this.tmp, name), { force: true });
  }

  /** Write small files (and move staged ones) into a temp dir, fsync, rename it to `target`. */
  private async commitWriteSet(files: Record<string, string>, staged: Record<string, string>, target: string): Promise<void> {
    await this.publishWriteSet(await this.prepareWriteSet(files, staged), target);
  }

  /** The synced temp dir of a write set (under layerdb/tmp, which recover() empties). */
  private async prepareWriteSet(files: Record<string, string>, staged: Record<string, string>): Promise<string> {
    const set = join(this.tmp, `write-set-${randomHex().slice(0, 16)}`);
    mkdirSync(set, { recursive: true, mode: 0o700 });
    // fsyncs in parallel: the filesystem folds them into one journal commit
    await Promise.all(Object.entries(files).map(([name, content]) => writeFileSynced(join(set, name), content)));
    await Promise.all(Object.entries(staged).map(async ([name, from]) => {
      await fsyncDir(from);
      await rename(from, join(set, name));
    }));
    await fsyncDir(set);
    return set;
  }

  private async publishWriteSet(set: string, target: string): Promise<void> {
    mkdirSync(join(target, '..'), { recursive: true, mode: 0o700 });
    renameSync(set, target);
    await fsyncDir(join(target, '..'));
  }
}

export function randomHex(): string {
  return randomBytes(32).toString('hex');
}

/** Open a file of a layer for reassembly, refusing names that climb out of the layer. */
function openInside(root: string, name: string): number {
  const clean = name.replace(/^\/+/, '');
  if (clean.split('/').includes('..')) throw strataError('PATH_ESCAPE', `tar-split names a path outside the layer: ${name}`);
  return openSync(join(root, clean), 'r');
}
