/**
 * The library API: one Strata object per (root, driver). The CLI is a thin shell over it.
 *
 *   const strata = await Strata.open({ root: '/tmp/root', driver: 'vfs' });
 *   const image = await strata.importImage('rootfs.tar', { ref: 'base:1' });
 *   const ctr = await strata.createContainer('base:1', { name: 'web' });
 *   const dir = await strata.mount('web');   // change files under dir …
 *   await strata.unmount('web');
 *   await strata.commit('web', { ref: 'web:1' });
 */
import { mkdir, mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { Change, Driver } from './drivers/driver.js';
import { chooseDefaultDriver, openDriver } from './drivers/registry.js';
import { strataError, isStrataError } from './errors.js';
import { openFileInput, tarDirectory } from './archive/index.js';
import { releaseAfter } from './util/release-after.js';
import { type Digest, chainId, chainIds, goJson, goTime, hexOf } from './store/digest.js';
import { LayerStore, randomHex, type LayerInfo } from './store/layer-store.js';
import { ImageStore, type ImageConfig, type HistoryEntry } from './store/image-store.js';
import { ContainerStore, type ContainerRecord } from './store/container-store.js';
import { withWriteLock, type WriteTxn } from './store/write-lock.js';
import { defaultRoot } from './store/paths.js';
import { generateName } from './store/names.js';
import { UnionFs } from './union/index.js';
import { mapLimit } from './util/map-limit.js';

export interface OpenOptions {
  root?: string;
  /** Driver name; default: the driver that already has state under the root, else overlay2 where it can mount, else vfs. */
  driver?: string;
  storageOpts?: Record<string, string>;
}

export interface ImageSummary {
  id: Digest;
  repoTags: string[];
  created: string;
  size: number;
}

export interface ContainerSummary {
  id: string;
  name: string;
  image: string;
  imageId: Digest;
  created: string;
  mountId: string;
}

export interface FsckReport {
  problems: string[];
  repaired: string[];
  checkedLayers: number;
  checkedImages: number;
}

/** sha256 of an empty layer tar (1024 NUL bytes): `docker commit` of an unchanged container. */
export const EMPTY_LAYER_DIFF_ID: Digest = 'sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef';

export class Strata {
  readonly layers: LayerStore;
  readonly images: ImageStore;
  readonly containers: ContainerStore;

  private constructor(readonly root: string, readonly driver: Driver, readonly defaultReasons: Array<[string, string]>) {
    const imageDir = join(root, 'image', driver.name);
    this.layers = new LayerStore(imageDir, driver);
    this.images = new ImageStore(imageDir);
    this.containers = new ContainerStore(root);
  }

  static async open(options: OpenOptions = {}): Promise<Strata> {
    const root = options.root ?? defaultRoot();
    await mkdir(root, { recursive: true, mode: 0o711 });
    let name = options.driver;
    let reasons: Array<[string, string]> = [];
    if (!name) {
      const existing = await existingDrivers(root);
      if (existing.length > 1) {
        throw strataError('DRIVER_MISMATCH', `${root} holds state of several drivers (${existing.join(', ')}); choose one with --storage-driver`);
      }
      if (existing.length === 1) name = existing[0]!;
      else ({ name, passedOver: reasons } = await chooseDefaultDriver(root));
    }
    const driver = await openDriver(name, { root, options: options.storageOpts ?? {} });
    return new Strata(root, driver, reasons);
  }

  /** Run a mutation under the root's write lock, after finishing what a crashed writer left. */
  private write<T>(fn: (txn: WriteTxn) => Promise<T>): Promise<T> {
    return withWriteLock(this.root, async (txn) => {
      await this.layers.recover(txn);
      return fn(txn);
    });
  }

  // ---- images -------------------------------------------------------------------------------

  /**
   * `docker import`: one layer from a tar (plain, gzip or zstd) given as a stream or a file's
   * path (read into recycled buffers, the fastest way in: see FileChunks), or from a directory's
   * path (its tree, as `tar -C DIR -c .` would give it).
   */
  async importImage(input: Readable | string, opts: { ref?: string; message?: string; source?: string } = {}): Promise<Digest> {
    let tar = input as Readable;
    if (typeof input === 'string') tar = (await stat(input)).isDirectory() ? tarDirectory(input) : await openFileInput(input);
    return this.write(async (txn) => {
      const layer = await this.layers.register(txn, tar, null);
      const created = goTime();
      const history: HistoryEntry = { created, comment: opts.message ?? `Imported from ${opts.source ?? '-'}` };
      const config = sortedKeys({
        architecture: hostArchitecture(),
        comment: opts.message,
        config: emptyContainerConfig(),
        container_config: emptyContainerConfig(),
        created,
        docker_version: 'strata',
        history: [history],
        os: 'linux',
        rootfs: { type: 'layers', diff_ids: [layer.diffId] },
      });
      const id = await this.images.put(txn, Buffer.from(goJson(config)));
      if (opts.ref) await this.tagLocked(txn, opts.ref, id);
      return id;
    }).catch((err: unknown) => {
      tar.destroy(); // (also an input never read: the lock was not had)
      throw err;
    });
  }

  /** Store an image whose config and layers came from an archive (load). Layers base first. */
  async addImage(txn: WriteTxn, configBytes: Buffer, layerTars: Array<() => Promise<Readable>>, refs: string[] = []): Promise<Digest> {
    const config = JSON.parse(configBytes.toString('utf8')) as ImageConfig;
    const expected = config.rootfs?.diff_ids ?? [];
    if (expected.length !== layerTars.length) {
      throw strataError('INVALID_ARCHIVE', `image config lists ${expected.length} layers but the archive has ${layerTars.length}`);
    }
    let parent: Digest | null = null;
    const chain = chainIds(expected);
    for (let i = 0; i < layerTars.length; i++) {
      if (await this.layers.has(chain[i]!)) {
        parent = chain[i]!;
        continue;
      }
      const layer: LayerInfo = await this.layers.register(txn, await layerTars[i]!(), parent);
      if (layer.diffId !== expected[i]) {
        await this.gcLayers(txn);
        throw strataError('DIGEST_MISMATCH', `layer ${i + 1} has diff ID ${layer.diffId}, but the config says ${expected[i]}`);
      }
      parent = layer.chainId;
    }
    const id = await this.images.put(txn, configBytes);
    for (const ref of refs) await this.tagLocked(txn, ref, id);
    return id;
  }

  /** For loaders that add several images under one lock. */
  withWriteLock<T>(fn: (txn: WriteTxn) => Promise<T>): Promise<T> {
    return this.write(fn);
  }

  async tag(source: string, target: string): Promise<void> {
    await this.write(async (txn) => this.tagLocked(txn, target, await this.images.resolve(source)));
  }

  private async tagLocked(txn: WriteTxn, ref: string, id: Digest): Promise<void> {
    await this.images.tag(txn, ref, id);
    await this.images.setMetadata(txn, id, 'lastUpdated', new Date().toISOString());
  }

  async listImages(): Promise<ImageSummary[]> {
    const tags = await this.images.references();
    const out: ImageSummary[] = [];
    for (const id of await this.images.list()) {
      const { config } = await this.images.get(id);
      out.push({
        id,
        repoTags: [...tags].filter(([, v]) => v === id).map(([k]) => k).sort(),
        created: config.created ?? '',
        size: await this.imageSize(config),
      });
    }
    return out.sort((a, b) => b.created.localeCompare(a.created) || a.id.localeCompare(b.id));
  }

  private async imageSize(config: ImageConfig): Promise<number> {
    let total = 0;
    for (const id of chainIds(config.rootfs.diff_ids)) total += (await this.layers.get(id).catch(() => null))?.size ?? 0;
    return total;
  }

  async inspectImage(ref: string): Promise<Record<string, unknown>> {
    const id = await this.images.resolve(ref);
    const { config } = await this.images.get(id);
    const tags = [...(await this.images.references())].filter(([, v]) => v === id).map(([k]) => k).sort();
    const top = chainId(config.rootfs.diff_ids);
    const size = await this.imageSize(config);
    return {
      Id: id,
      RepoTags: tags,
      RepoDigests: [],
      Parent: (await this.images.getMetadata(id, 'parent')) ?? '',
      Comment: config.comment ?? '',
      Created: config.created ?? '',
      Container: config.container ?? '',
      ContainerConfig: config.container_config ?? {},
      DockerVersion: config.docker_version ?? '',
      Author: config.author ?? '',
      Config: config.config ?? null,
      Architecture: config.architecture ?? '',
      Os: config.os ?? '',
      Size: size,
      VirtualSize: size,
      GraphDriver: { Name: this.driver.name, Data: top ? await this.driver.metadata((await this.layers.get(top)).cacheId) : null },
      RootFS: { Type: config.rootfs.type, Layers: config.rootfs.diff_ids },
      Metadata: { LastTagTime: (await this.images.getMetadata(id, 'lastUpdated')) ?? '0001-01-01T00:00:00Z' },
    };
  }

  /** `docker history`: newest first, with the size of the layer each step made. */
  async history(ref: string): Promise<Array<HistoryEntry & { id: string; size: number }>> {
    const id = await this.images.resolve(ref);
    const { config } = await this.images.get(id);
    const chain = chainIds(config.rootfs.diff_ids);
    let layerIndex = 0;
    const rows = (config.history ?? []).map((h) => {
      const size = h.empty_layer ? 0 : -1;
      return { ...h, id: '<missing>', size, layer: h.empty_layer ? null : chain[layerIndex++] ?? null };
    });
    for (const row of rows) if (row.layer) row.size = (await this.layers.get(row.layer).catch(() => null))?.size ?? 0;
    if (rows.length > 0) rows[rows.length - 1]!.id = id;
    return rows.reverse().map(({ layer: _layer, ...rest }) => rest);
  }

  /** `docker rmi`: untag, and delete the image (and unused layers) when no tag is left. */
  async removeImage(ref: string, opts: { force?: boolean } = {}): Promise<{ untagged: string[]; deleted: string[] }> {
    return this.write(async (txn) => {
      const id = await this.images.resolve(ref);
      const tags = [...(await this.images.references())].filter(([, v]) => v === id).map(([k]) => k);
      const untagged: string[] = [];
      const byTag = tags.find((t) => t === ref || t === `${ref}:latest`);
      if (byTag && tags.length > 1 && !opts.force) {
        await this.images.untag(txn, byTag);
        return { untagged: [byTag], deleted: [] };
      }
      const users = (await this.containers.list()).filter((c) => c.Image === id && c.Driver === this.driver.name);
      if (users.length > 0) {
        throw strataError('IMAGE_IN_USE', `unable to remove image ${ref}: container ${users[0]!.ID.slice(0, 12)} (${users[0]!.Name.slice(1)}) uses it`, { id });
      }
      for (const other of await this.images.list()) {
        if (other !== id && (await this.images.getMetadata(other, 'parent')) === id && !opts.force) {
          throw strataError('IMAGE_IN_USE', `unable to remove image ${ref}: image ${hexOf(other).slice(0, 12)} is its child`, { id });
        }
      }
      for (const tag of tags) {
        await this.images.untag(txn, tag);
        untagged.push(tag);
      }
      await this.images.remove(txn, id);
      const deleted = [id as string, ...(await this.gcLayers(txn))];
      return { untagged, deleted };
    });
  }

  /** Remove every layer no image, container or child layer needs. Returns their chain IDs. */
  private async gcLayers(txn: WriteTxn): Promise<string[]> {
    const needed = new Set<string>();
    for (const id of await this.images.list()) {
      const { config } = await this.images.get(id);
      for (const c of chainIds(config.rootfs.diff_ids)) needed.add(c);
    }
    for (const m of await this.layers.listMounts()) {
      if (m.parent) for (const l of await this.layers.chain(m.parent)) needed.add(l.chainId);
    }
    const removed: string[] = [];
    // children before parents: repeat until nothing more goes
    for (let changed = true; changed; ) {
      changed = false;
      const all = await this.layers.list();
      const parents = new Set(all.map((l) => l.parent).filter((p): p is Digest => p !== null));
      for (const layer of all) {
        if (needed.has(layer.chainId) || parents.has(layer.chainId)) continue;
        await this.layers.remove(txn, layer.chainId);
        removed.push(layer.chainId);
        changed = true;
      }
    }
    return removed;
  }

  /** The image's layers as tars, base first, each rebuilt byte for byte (for save). */
  async imageLayers(id: Digest): Promise<Array<{ diffId: Digest; chainId: Digest; size: number; open: () => Promise<Readable> }>> {
    const { config } = await this.images.get(id);
    const chain = chainIds(config.rootfs.diff_ids);
    return Promise.all(chain.map(async (c, i) => {
      const info = await this.layers.get(c);
      return { diffId: config.rootfs.diff_ids[i]!, chainId: c, size: info.size, open: () => this.layers.tarStream(c) };
    }));
  }

  /**
   * A read-only view of an image's filesystem without extracting or mounting it: the union
   * engine over the layers' diff directories (aufs, overlay2), or over the top layer's directory
   * from `get` (vfs' full copy; devicemapper mounts). Call `release` when done.
   */
  async imageFs(ref: string): Promise<{ fs: UnionFs; release: () => Promise<void> }> {
    const { config } = await this.images.get(await this.images.resolve(ref));
    const chain = await Promise.all(chainIds(config.rootfs.diff_ids).map((c) => this.layers.get(c)));
    const top = chain.at(-1);
    if (!top) {
      // an image with no layers (FROM scratch, nothing added) is an empty directory
      const empty = await mkdtemp(join(tmpdir(), 'strata-empty-'));
      return { fs: await UnionFs.open({ lowers: [empty] }), release: () => rm(empty, { recursive: true, force: true }) };
    }
    const format = this.driver.capabilities.whiteoutFormat;
    if (this.driver.diffDirectory && format !== undefined) {
      const lowers = await Promise.all(chain.map((l) => this.driver.diffDirectory!(l.cacheId)));
      return { fs: await UnionFs.open({ lowers, format }), release: async () => undefined };
    }
    const dir = await this.driver.get(top.cacheId);
    return { fs: await UnionFs.open({ lowers: [dir] }), release: () => this.driver.put(top.cacheId) };
  }

  // ---- containers ---------------------------------------------------------------------------

  async createContainer(ref: string, opts: { name?: string } = {}): Promise<string> {
    return this.write(async (txn) => {
      const imageId = await this.images.resolve(ref);
      const { config } = await this.images.get(imageId);
      const taken = await this.containers.names();
      let name = opts.name ?? generateName();
      while (!opts.name && taken.has(`/${name}`)) name = generateName();
      if (taken.has(`/${name.replace(/^\//, '')}`)) {
        throw strataError('CONTAINER_EXISTS', `the container name "/${name}" is already in use`, { id: name });
      }
      const id = randomHex();
      const record = ContainerStore.newRecord(id, name, imageId, ref, this.driver.name);
      // written and synced beside the layers; published only once they are (a crash between
      // the two leaves layers without a record, which fsck removes, never a record without layers)
      const prepared = this.containers.prepare(txn, record);
      prepared.catch(() => undefined);
      try {
        await this.layers.createMount(txn, id, chainId(config.rootfs.diff_ids));
      } catch (err) {
        await prepared.then((p) => p.discard(), () => undefined);
        await this.containers.remove(txn, id);
        throw err;
      }
      await (await prepared).publish();
      return id;
    });
  }

  async listContainers(): Promise<ContainerSummary[]> {
    const mine = (await this.containers.list()).filter((c) => c.Driver === this.driver.name);
    // (one at a time, 200 containers' mount records kept `ps` waiting on 2,400 reads in a row)
    const mounts = await mapLimit(mine, 16, (c) => this.layers.getMount(c.ID).catch(() => null));
    const out = mine.map((c, i): ContainerSummary => ({
      id: c.ID, name: c.Name.slice(1), image: c.Config.Image, imageId: c.Image, created: c.Created, mountId: mounts[i]?.mountId ?? '',
    }));
    return out.sort((a, b) => b.created.localeCompare(a.created));
  }

  async inspectContainer(nameOrId: string): Promise<ContainerRecord> {
    return this.containers.resolve(nameOrId, this.driver.name);
  }

  async removeContainer(nameOrId: string, opts: { force?: boolean } = {}): Promise<string> {
    return this.write(async (txn) => {
      const record = await this.containers.resolve(nameOrId, this.driver.name);
      const mount = await this.layers.getMount(record.ID).catch((err) => {
        if (isStrataError(err, 'CONTAINER_NOT_FOUND')) return null;
        throw err;
      });
      if (mount) {
        let refs = await this.driver.mountRefs(mount.mountId);
        for (; opts.force && refs.kept > 0; refs = await this.driver.mountRefs(mount.mountId)) {
          await this.driver.put(mount.mountId, { keep: true });
        }
        if (refs.kept > 0) {
          throw strataError('LAYER_MOUNTED', `container ${record.Name.slice(1)} is mounted: run strata unmount ${record.Name.slice(1)} first, or rm -f`, { id: record.ID });
        }
        if (refs.total > 0) {
          throw strataError('LAYER_MOUNTED', `container ${record.Name.slice(1)} is in use by another strata process (an export or diff of it)`, { id: record.ID });
        }
        await this.layers.removeMount(txn, record.ID);
      }
      await this.containers.remove(txn, record.ID);
      return record.ID;
    });
  }

  private async mountOf(nameOrId: string) {
    const record = await this.containers.resolve(nameOrId, this.driver.name);
    return { record, mount: await this.layers.getMount(record.ID) };
  }

  /** Mount the container's filesystem and return its path (kept until unmount). */
  async mount(nameOrId: string): Promise<string> {
    const { mount } = await this.mountOf(nameOrId);
    return this.driver.get(mount.mountId, { keep: true });
  }

  async unmount(nameOrId: string): Promise<void> {
    const { mount } = await this.mountOf(nameOrId);
    await this.driver.put(mount.mountId, { keep: true });
  }

  /** `docker diff`. */
  async diff(nameOrId: string): Promise<Change[]> {
    const { mount } = await this.mountOf(nameOrId);
    return this.driver.changes(mount.mountId, mount.initId);
  }

  /** `docker commit`: the container's changes become a new layer on its image. */
  async commit(nameOrId: string, opts: { ref?: string; message?: string; author?: string } = {}): Promise<Digest> {
    return this.write(async (txn) => {
      const { record, mount } = await this.mountOf(nameOrId);
      const parent = await this.images.get(record.Image);
      const layer = await this.layers.register(txn, await this.driver.diff(mount.mountId, mount.initId), mount.parent);
      const empty = layer.diffId === EMPTY_LAYER_DIFF_ID;
      const created = goTime();
      const history: HistoryEntry = { created, ...(opts.author ? { author: opts.author } : {}), ...(opts.message ? { comment: opts.message } : {}), ...(empty ? { empty_layer: true } : {}) };
      const config = sortedKeys({
        ...parent.config,
        author: opts.author,
        comment: opts.message,
        container: record.ID,
        container_config: { ...(parent.config.container_config ?? {}), Hostname: record.ID.slice(0, 12), Image: record.Config.Image },
        created,
        docker_version: 'strata',
        history: [...(parent.config.history ?? []), history],
        rootfs: { type: 'layers', diff_ids: empty ? parent.config.rootfs.diff_ids : [...parent.config.rootfs.diff_ids, layer.diffId] },
      });
      const id = await this.images.put(txn, Buffer.from(goJson(config)));
      await this.images.setMetadata(txn, id, 'parent', record.Image);
      if (opts.ref) await this.tagLocked(txn, opts.ref, id);
      if (empty) await this.gcLayers(txn);
      return id;
    });
  }

  /** `docker export`: the container's whole filesystem as a tar. */
  async exportContainer(nameOrId: string): Promise<Readable> {
    const { mount } = await this.mountOf(nameOrId);
    const dir = await this.driver.get(mount.mountId);
    return releaseAfter(tarDirectory(dir), () => this.driver.put(mount.mountId));
  }

  // ---- system -------------------------------------------------------------------------------

  async info(): Promise<Array<[string, string]>> {
    const images = await this.images.list();
    const containers = await this.listContainers();
    const rows: Array<[string, string]> = [
      ['Containers', String(containers.length)],
      ['Images', String(images.length)],
      ['Storage Driver', this.driver.name],
      ...(await this.driver.status()).map(([k, v]): [string, string] => [` ${k}`, v]),
      ['Strata Root Dir', this.root],
    ];
    for (const [name, reason] of this.defaultReasons) rows.push([`Default driver is not ${name}`, reason]);
    return rows;
  }

  async systemDf(): Promise<Array<{ type: string; total: number; active: number; size: number; reclaimable: number }>> {
    const images = await this.listImages();
    const containers = await this.listContainers();
    const usedImages = new Set(containers.map((c) => c.imageId));
    const layers = await this.layers.list();
    const layerSize = layers.reduce((s, l) => s + l.size, 0);
    const usedChains = new Set<string>();
    for (const id of usedImages) for (const c of chainIds((await this.images.get(id)).config.rootfs.diff_ids)) usedChains.add(c);
    const reclaimable = layers.filter((l) => !usedChains.has(l.chainId)).reduce((s, l) => s + l.size, 0);
    const sizes = await mapLimit(containers, 8, async (c) => {
      const m = await this.layers.getMount(c.id);
      return this.driver.diffSize(m.mountId, m.initId);
    });
    const containerSize = sizes.reduce((a, b) => a + b, 0);
    return [
      { type: 'Images', total: images.length, active: usedImages.size, size: layerSize, reclaimable },
      { type: 'Containers', total: containers.length, active: 0, size: containerSize, reclaimable: containerSize },
    ];
  }

  /** Re-verify every layer against its DiffID and every config against its ID; repair what a crash left. */
  async fsck(opts: { repair?: boolean } = {}): Promise<FsckReport> {
    return withWriteLock(this.root, async (txn) => {
      const report: FsckReport = { problems: [], repaired: [], checkedLayers: 0, checkedImages: 0 };
      report.repaired.push(...(await this.layers.recover(txn)));
      const layers = await this.layers.list();
      for (const layer of layers) {
        report.checkedLayers++;
        if (!(await this.driver.exists(layer.cacheId))) {
          report.problems.push(`layer ${layer.chainId}: driver layer ${layer.cacheId} is missing`);
          continue;
        }
        try {
          const stream = await this.layers.tarStream(layer.chainId);
          // the stream verifies itself against the DiffID and fails at the end on a mismatch
          for await (const _chunk of stream) void _chunk;
        } catch (err) {
          report.problems.push(`layer ${layer.chainId}: ${(err as Error).message}`);
        }
      }
      for (const id of await this.images.list()) {
        report.checkedImages++;
        try {
          const { config } = await this.images.get(id);
          for (const c of chainIds(config.rootfs.diff_ids)) {
            if (!(await this.layers.has(c))) report.problems.push(`image ${id}: layer ${c} is missing`);
          }
        } catch (err) {
          report.problems.push(`image ${id}: ${(err as Error).message}`);
        }
      }
      const records = new Set((await this.containers.list()).map((c) => c.ID));
      for (const m of await this.layers.listMounts()) {
        if (records.has(m.containerId)) continue;
        if (opts.repair !== false) {
          await this.layers.removeMount(txn, m.containerId);
          report.repaired.push(`removed the layers of container ${m.containerId}, whose create never finished`);
        } else report.problems.push(`container layer ${m.containerId} has no container record`);
      }
      for (const c of await this.containers.list()) {
        if (c.Driver !== this.driver.name) continue;
        if (!(await this.layers.getMount(c.ID).then(() => true, () => false))) {
          if (opts.repair !== false) {
            await this.containers.remove(txn, c.ID);
            report.repaired.push(`removed container record ${c.ID}, whose layers were already removed`);
          } else report.problems.push(`container ${c.ID} has no layers`);
        }
      }
      for (const name of await readdir(this.containers.dir).catch(() => [] as string[])) {
        if (/^[a-f0-9]{64}$/.test(name) && !records.has(name) && opts.repair !== false) {
          if (!(await this.layers.getMount(name).then(() => true, () => false))) {
            await this.containers.remove(txn, name);
            report.repaired.push(`removed empty container directory ${name}`);
          }
        }
      }
      await this.checkOrphanLayers(report, opts.repair !== false);
      // not cleanup(): that would unmount what users mounted with `strata mount`
      report.repaired.push(...(await this.driver.sweep()));
      return report;
    });
  }

  /**
   * Driver layers that no layer record or container refers to: what a create cut short by a
   * power loss leaves (its intent marker is not synced), or a foreign tool. Removed on repair.
   * Called under the write lock, which every create holds, so none is in the making.
   */
  private async checkOrphanLayers(report: FsckReport, repair: boolean): Promise<void> {
    if (!this.driver.layerIds) return;
    const referenced = new Set((await this.layers.list()).map((l) => l.cacheId));
    for (const m of await this.layers.listMounts()) {
      referenced.add(m.mountId);
      if (m.initId) referenced.add(m.initId);
    }
    for (const id of await this.driver.layerIds()) {
      if (referenced.has(id)) continue;
      if (!repair) {
        report.problems.push(`driver layer ${id} is not referenced by any layer or container`);
        continue;
      }
      await this.layers.removeAbandoned(id);
      report.repaired.push(`removed driver layer ${id}, which no layer or container refers to`);
    }
  }

  async close(): Promise<void> {
    // Mounts stay until unmount (they are reference-counted on disk, across processes).
  }
}

async function existingDrivers(root: string): Promise<string[]> {
  const names = await readdir(join(root, 'image')).catch(() => [] as string[]);
  const out: string[] = [];
  for (const name of names) {
    const layers = await readdir(join(root, 'image', name, 'layerdb', 'sha256')).catch(() => [] as string[]);
    const images = await readdir(join(root, 'image', name, 'imagedb', 'content', 'sha256')).catch(() => [] as string[]);
    if (layers.length > 0 || images.length > 0) out.push(name);
  }
  return out.sort();
}

function hostArchitecture(): string {
  const map: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };
  return map[process.arch] ?? process.arch;
}

/** A zeroed container.Config as Docker serializes it (Go struct order; omitempty fields left out). */
function emptyContainerConfig(): Record<string, unknown> {
  return { Hostname: '', Domainname: '', User: '', AttachStdin: false, AttachStdout: false, AttachStderr: false, Tty: false, OpenStdin: false, StdinOnce: false, Env: null, Cmd: null, Image: '', Volumes: null, WorkingDir: '', Entrypoint: null, OnBuild: null, Labels: null };
}

/** Docker sorts an image config's top-level keys and drops undefined ones (Image.MarshalJSON). */
function sortedKeys(obj: Record<string, unknown>): ImageConfig {
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(obj).sort()) if (obj[key] !== undefined) out[key] = obj[key];
  return out as ImageConfig;
}

