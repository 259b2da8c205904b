/**
 * devicemapper: Docker's driver on Strata's user-space dm-thin pool. A base device with a
 * filesystem; every layer a snapshot of its parent's device (of the base when it has none), its
 * diff applied on the mounted filesystem; every container a snapshot of its image.
 *
 *   <root>/devicemapper/
 *     devicemapper/data             pool data, sparse file of dm.loopdatasize (100G)
 *     devicemapper/metadata         pool metadata (dm-thin format), sparse, dm.loopmetadatasize (2G)
 *     metadata/<id>                 per-device JSON {device_id,size,transaction_id,initialized,deleted}
 *     metadata/base                 the base device's JSON
 *     metadata/deviceset-metadata   {next_device_id,BaseDeviceUUID,BaseDeviceFilesystem}
 *     metadata/transaction-metadata {open_transaction_id,device_hash,device_id}
 *     metadata/.lock                flock serialising device-set changes across processes
 *     mnt/<id>/                     the device's filesystem, mounted while referenced
 *     mnt/<id>/rootfs/              what get() returns: the layer's content
 *     mnt/<id>/id                   <id>, written at first mount
 *     mountrefs/<id>                get/put counts (mount-refs.ts)
 *     run/                          the pool service (pool-service.ts): service.lock,
 *                                     control.sock, nbd.sock, service.log, nbdfuse.log
 *     run/dev/<id>                  nbdfuse file a loop device sits on, with <id>.pid (nbdfuse)
 *                                   and <id>.loop (/dev/loopN) beside it (activation.ts)
 *     run/base-mnt/                 scratch mount for growing the base filesystem (xfs)
 *
 * Ids that collide with the driver's own names (a layer called `base`) are stored as `_<id>`.
 * The pool is held by one service process (pool-service.ts); this driver talks to it.
 */
import { mkdir, open, readdir, stat, statfs, writeFile, access } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { Change, CreateOptions, Driver, DriverCapabilities, DriverOptions } from '../driver.js';
import { isErrno, strataError } from '../../errors.js';
import { MountRefs, holderOf, type MountOptions, type MountUsage } from '../mount-refs.js';
import { checkLayerId } from '../layer-id.js';
import { naiveApplyDiff, naiveChanges, naiveDiff, naiveDiffSize } from '../naive-diff.js';
import { parseDmOptions, type DmOptions } from './options.js';
import { DeviceStore, type DeviceInfo } from './device-store.js';
import { DeviceSet, lockFileName } from './device-set.js';
import { PoolClient } from './pool-client.js';
import type { ServiceConfig } from './pool-service.js';
import { Activation, isMountpoint } from './activation.js';
import { growFilesystem, setupBaseDevice } from './base-device.js';
import { statusLines } from './status-figures.js';
import { detachBlockDevice } from './block-attach.js';
import { processAlive } from '../../util/process-alive.js';
import { run } from './exec.js';
import { withFileLock } from '../../util/file-lock.js';

const IDLE_MS = Number(process.env.STRATA_DM_IDLE_MS ?? 15_000);

export class DevicemapperDriver implements Driver {
  readonly name = 'devicemapper';
  readonly capabilities: DriverCapabilities = { nativeDiff: false, requiresRoot: true, directoryLayers: false };
  private readonly refs: MountRefs;
  private readonly set: DeviceSet;
  private readonly act: Activation;
  private clientPromise: Promise<PoolClient> | null = null;
  /** What recovery did at open (for tests and `strata info --debug`). */
  recovered: string | null = null;

  private constructor(readonly home: string, readonly options: DmOptions, readonly service: ServiceConfig, prefix: string) {
    this.refs = new MountRefs(home);
    const client = (): Promise<PoolClient> => this.client();
    this.set = new DeviceSet(new DeviceStore(join(home, 'metadata')), client, options, lockFileName(home));
    this.act = new Activation(service.runDir, client, options, prefix);
  }

  static async open(opts: DriverOptions): Promise<DevicemapperDriver> {
    const options = parseDmOptions(opts.options);
    const home = join(opts.root, 'devicemapper');
    await mkdir(join(home, 'devicemapper'), { recursive: true, mode: 0o700 });
    await mkdir(join(home, 'metadata'), { recursive: true, mode: 0o700 });
    await mkdir(join(home, 'mnt'), { recursive: true, mode: 0o700 });
    const dataPath = options.dataDev ?? join(home, 'devicemapper', 'data');
    const metadataPath = options.metadataDev ?? join(home, 'devicemapper', 'metadata');
    if (options.dataDev === null) {
      await createSparse(dataPath, options.loopDataSize);
      await createSparse(metadataPath, options.loopMetadataSize);
    }
    const st = await stat(home);
    const prefix = `strata-${Math.floor(st.dev / 256) & 0xfff}:${(st.dev & 0xff) | ((st.dev >> 12) & 0xfff00)}-${st.ino}`;
    const service: ServiceConfig = { runDir: join(home, 'run'), metadataPath, dataPath, blockSectors: options.blockSize / 512, idleMs: IDLE_MS };
    const d = new DevicemapperDriver(home, options, service, prefix);
    await d.set.store.init();
    await d.set.locked(async () => {
      const client = await d.client();
      // a fresh service means nothing is being served: whatever is still attached is stale
      if (client.started) await d.sweepStale();
      d.recovered = await d.set.recover();
      await d.set.sweepDeferred();
      await setupBaseDevice(d.set, d.act, options, join(service.runDir, 'base-mnt'));
    });
    return d;
  }

  private client(): Promise<PoolClient> {
    this.clientPromise ??= PoolClient.connect(this.service).catch((err: unknown) => {
      this.clientPromise = null;
      throw err;
    });
    return this.clientPromise;
  }

  private mountpoint(id: string): string {
    return join(this.home, 'mnt', id);
  }

  private async info(id: string): Promise<DeviceInfo> {
    checkLayerId(id);
    const info = await this.set.lookup(id);
    if (!info) throw strataError('LAYER_NOT_FOUND', `layer ${id} not found`, { id });
    return info;
  }

  async create(id: string, parent: string | null, opts?: CreateOptions): Promise<void> {
    checkLayerId(id);
    if (parent !== null) checkLayerId(parent);
    await this.set.locked(async () => {
      await this.set.sweepDeferred();
      const origin = parent === null ? await this.set.base() : await this.set.lookup(parent);
      if (!origin) throw strataError('LAYER_NOT_FOUND', `parent layer ${parent} not found`, { id: parent ?? 'base' });
      const size = Math.max(origin.size, opts?.size ?? 0);
      const originMount = parent === null ? null : this.mountpoint(parent);
      // the mount-count lock keeps the origin from being mounted or unmounted while it is frozen
      const quiesce = async <T>(fn: () => Promise<T>): Promise<T> => {
        if (originMount === null) return fn();
        await mkdir(join(this.home, 'mountrefs'), { recursive: true, mode: 0o700 });
        return withFileLock(join(this.home, 'mountrefs', '.lock'), () => this.act.withFrozen(originMount, fn));
      };
      const info = await this.set.create(id, origin, size, quiesce);
      // --storage-opt size= larger than the origin: grow the filesystem to the new size
      if (size > origin.size) await this.growFs(id, info);
    });
  }

  createReadWrite(id: string, parent: string | null, opts?: CreateOptions): Promise<void> {
    return this.create(id, parent, opts);
  }

  private async growFs(id: string, info: DeviceInfo): Promise<void> {
    await growFilesystem(this.act, id, info, this.options, this.mountpoint(id));
  }

  async remove(id: string): Promise<void> {
    checkLayerId(id);
    await this.set.locked(async () => {
      const info = await this.set.lookup(id);
      if (!info) throw strataError('LAYER_NOT_FOUND', `layer ${id} not found`, { id });
      if ((await this.refs.count(id)) > 0) throw strataError('LAYER_MOUNTED', `layer ${id} is mounted`, { id });
      await this.act.releaseLeftover(id);
      await this.set.delete(id, info);
      await this.refs.forget(id);
    });
  }

  async get(id: string, opts?: MountOptions): Promise<string> {
    const info = await this.info(id);
    const mp = this.mountpoint(id);
    await this.refs.change(id, 1, holderOf(opts), async () => {
      await this.act.mount(id, info, mp);
      try {
        // as moby: the layer lives in rootfs/, and the device remembers whose it is
        await mkdir(join(mp, 'rootfs'), { recursive: true, mode: 0o755 });
        await writeFile(join(mp, 'id'), id, { flag: 'wx', mode: 0o600 }).catch((err: unknown) => {
          if (!isErrno(err, 'EEXIST')) throw err;
        });
      } catch (err) {
        await this.act.unmount(id, mp).catch(() => undefined);
        throw err;
      }
    });
    return join(mp, 'rootfs');
  }

  async put(id: string, opts?: MountOptions): Promise<void> {
    checkLayerId(id);
    await this.refs.change(id, -1, holderOf(opts), () => this.act.unmount(id, this.mountpoint(id)));
  }

  mountRefs(id: string): Promise<MountUsage> {
    return this.refs.usage(id);
  }

  async exists(id: string): Promise<boolean> {
    checkLayerId(id);
    return (await this.set.lookup(id)) !== null;
  }

  async status(): Promise<Array<[string, string]>> {
    const client = await this.client();
    const { pool, blockBytes } = await client.status();
    const base = await this.set.base();
    const hostData = await statfs(join(this.service.dataPath, '..'));
    const hostMeta = await statfs(join(this.service.metadataPath, '..'));
    return statusLines({
      poolName: `${this.act.prefix}-pool`,
      options: this.options,
      baseDeviceSize: base?.size ?? this.options.baseSize,
      // as moby's BaseDeviceFS: the filesystem on the base device (not the one holding the pool's files)
      backingFilesystem: (await this.set.store.getDeviceSet())?.BaseDeviceFilesystem || this.options.fs,
      dataFile: this.service.dataPath,
      metadataFile: this.service.metadataPath,
      loopback: this.options.dataDev === null,
      blockBytes,
      usedDataBlocks: pool.usedDataBlocks,
      totalDataBlocks: pool.totalDataBlocks,
      usedMetadataBlocks: pool.usedMetadataBlocks,
      totalMetadataBlocks: pool.totalMetadataBlocks,
      hostFreeForData: hostData.bavail * hostData.bsize,
      hostFreeForMetadata: hostMeta.bavail * hostMeta.bsize,
      deferredDeletedCount: await this.set.deferredCount(),
      libraryVersion: 'strata-thin (user-space dm-thin, metadata v2)',
    });
  }

  async metadata(id: string): Promise<Record<string, string>> {
    const info = await this.info(id);
    return { DeviceId: String(info.device_id), DeviceSize: String(info.size), DeviceName: this.act.deviceName(id) };
  }

  /** Unmount everything, stop serving, and stop the pool service (moby's Shutdown). */
  async cleanup(): Promise<void> {
    for (const id of await this.refs.mounted()) {
      await this.act.unmount(id, this.mountpoint(id)).catch(() => undefined);
      await this.refs.forget(id);
    }
    await this.sweepStale();
    const own = this.clientPromise ? await this.clientPromise.catch(() => null) : null;
    const client = own ?? (await PoolClient.connectExisting(this.service));
    if (client) {
      const pid = (await client.request({ op: 'hello' }).catch(() => ({ pid: undefined }))).pid;
      await client.request({ op: 'shutdown', force: true }).catch(() => undefined);
      client.close();
      // wait for the pool to be closed (committed, unlocked) before the caller looks at its files
      for (let i = 0; pid !== undefined && i < 500 && processAlive(pid); i++) await new Promise((r) => setTimeout(r, 20));
    }
    this.clientPromise = null;
  }

  /** Drop this process's connection to the pool service (which keeps running). */
  disconnect(): void {
    void this.clientPromise?.then((c) => c.close(), () => undefined);
    this.clientPromise = null;
  }

  /** Mounts and attachments whose service is gone (a crash): undo them, forget their counts. */
  async layerIds(): Promise<string[]> {
    const ids: string[] = [];
    for (const [hash, info] of await this.set.store.allDevices()) if (hash !== '' && !info.deleted) ids.push(hash);
    return ids.sort();
  }

  async sweep(): Promise<string[]> {
    const done: string[] = [];
    if (this.recovered !== null) done.push(`devicemapper: ${this.recovered}`);
    this.recovered = null;
    const before = await this.set.deferredCount();
    const left = await this.set.locked(() => this.set.sweepDeferred());
    if (before > left) done.push(`devicemapper: completed ${before - left} deferred device deletion(s)`);
    return done;
  }

  private async sweepStale(): Promise<void> {
    const dev = join(this.service.runDir, 'dev');
    const names = await readdir(dev).catch(() => [] as string[]);
    for (const name of names) {
      if (name.endsWith('.pid')) continue;
      const id = name.startsWith('_') ? name.slice(1) : name;
      const mp = this.mountpoint(id);
      if (await isMountpoint(mp)) await run('umount', ['-l', mp]).catch(() => undefined);
      await detachBlockDevice(join(dev, name), { lazy: true }).catch(() => undefined);
      await this.refs.forget(id);
    }
    const scratch = join(this.service.runDir, 'base-mnt');
    if (await isMountpoint(scratch)) await run('umount', ['-l', scratch]).catch(() => undefined);
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


/** A sparse file of `size` bytes, unless the file already exists (its size is then kept). */
async function createSparse(path: string, size: number): Promise<void> {
  try {
    await access(path);
    return;
  } catch (err) {
    if (!isErrno(err, 'ENOENT')) throw err;
  }
  const h = await open(path, 'wx', 0o600);
  try {
    await h.truncate(size);
    await h.sync();
  } finally {
    await h.close();
  }
}

export async function createDevicemapperDriver(opts: DriverOptions): Promise<Driver> {
  return DevicemapperDriver.open(opts);
}

/** Why the driver cannot work here, or null. */
export async function probeDevicemapper(): Promise<string | null> {
  if (process.getuid?.() !== 0) return 'needs root (losetup and mount)';
  try {
    await access('/dev/fuse');
  } catch {
    return 'no /dev/fuse (nbdfuse needs FUSE)';
  }
  // one shell for all the tools: the probe runs on every driver open (every CLI call)
  const tools = ['nbdfuse', 'fusermount3', 'losetup', 'mount', 'umount', 'mkfs.ext4', 'blkid', 'fsfreeze'];
  const missing = (await run('sh', ['-c', `for t in ${tools.join(' ')}; do command -v $t >/dev/null || echo $t; done`])).trim();
  if (missing) return `not found: ${missing.split('\n').join(', ')}`;
  return null;
}

