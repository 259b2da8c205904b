import { FileBlockDevice, type BlockDevice } from './block-device.js';
import { ThinMetadata } from './metadata.js';
import { Mutex } from './mutex.js';
import { normaliseFeatures, type PoolFeatures } from './features.js';
import { parseMessage, type PoolMessage } from './message.js';
import { formatPoolStatus, type PoolStatus } from './status.js';
import { ThinDevice } from './thin-device.js';
import { DATA_BLOCK_SIZE_MAX_SECTORS, DATA_BLOCK_SIZE_MIN_SECTORS, SECTOR_SIZE } from './format/constants.js';
import { lockFile, type FileLock } from '../util/file-lock.js';
import { isStrataError, strataError } from '../errors.js';

/**
 * A thin pool: one metadata device and one data device carved into data blocks, holding thin
 * devices that get blocks only when written, and snapshots that share blocks until one side
 * writes (Linux dm-thin's `thin-pool` target, in user space).
 *
 * Lifecycle: `Pool.open` (formats blank metadata) → messages (`create_thin`, `create_snap`, …,
 * each committed) → `openThin(id, size)` for I/O → `commit()` (data flushed first, superblock
 * written last) → `close()`. One process at a time opens a pool for writing: `open` takes an
 * exclusive flock on the metadata file (shared for `read_only`), which the kernel drops if the
 * process dies.
 *
 *     const pool = await Pool.open({ metadataPath, dataPath, dataBlockSectors: 128 });
 *     await pool.message('create_thin 0');
 *     const dev = await pool.openThin(0, 10 * 2 ** 30);
 *     await dev.write(buf, 4096);
 *     await dev.flush();
 *     await pool.close();
 *
 * All metadata work is serialised through one mutex; metadata stays on disk behind a block
 * cache, only the space-map counts are resident (a byte per block).
 */
export interface PoolOptions {
  metadataPath?: string;
  dataPath?: string;
  /** Or bring your own devices (tests: MemoryBlockDevice). */
  metadataDevice?: BlockDevice;
  dataDevice?: BlockDevice;
  /** Data block size in 512-byte sectors: 128 (64 KiB) .. 2097152 (1 GiB), a multiple of 128. */
  dataBlockSectors: number;
  /** Data blocks in the pool; default: the data device's size / block size. */
  nrDataBlocks?: number;
  /** Free data blocks at or below which `onLowWater` fires (once per crossing). */
  lowWaterMark?: number;
  features?: Partial<PoolFeatures> | readonly string[];
  onLowWater?: () => void;
  /** How long writes wait for space without `error_if_no_space` (no_space_timeout, 60 s). */
  noSpaceTimeoutMs?: number;
  /** Commit once this many metadata blocks are dirty (bounds memory and replay). Default 4096. */
  autoCommitBlocks?: number;
  /** Periodic commit like the kernel's COMMIT_PERIOD (ms; 0 = off). Default 0. */
  commitIntervalMs?: number;
  lockTimeoutMs?: number;
  cacheBlocks?: number;
}

export type PoolMode = 'rw' | 'out_of_data_space' | 'ro';

/** Leases are only given while this many times the lease is free besides them. */
const LEASE_SPARE_FACTOR = 4;

export class Pool {
  readonly features: PoolFeatures;
  readonly blockBytes: number;
  readonly blockSectors: number;
  private readonly mutex = new Mutex();
  /**
   * Counts changes to the metadata, in memory shared with readers on other threads (read-map.ts):
   * each step that may change a mapping, free a block or hand one out adds one before it runs.
   * Writers outside the pool (ThinDevice.adopt's) add one once they have published writes,
   * before they answer them.
   */
  readonly mapEpoch = new Int32Array(new SharedArrayBuffer(4));
  private readonly open = new Map<number, ThinDevice>();
  private dataDirty = false;
  private lowWaterFired = false;
  private failedMode: PoolMode | null = null;
  private outOfSpace = false;
  private spaceWaiters: Array<() => void> = [];
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  /** Data reads and writes running outside the mutex (ThinDevice.read/write), and their waiters. */
  private unlockedIo = 0;
  private ioDrained: Array<() => void> = [];
  /** Discards reach the data device (false when the features say no or the device cannot). */
  private passdown: boolean;
  /** Data blocks discards freed in this transaction, as [first, end) runs, passed down once a
   *  commit has made them free for good. */
  private discardedRuns: Array<[number, number]> = [];

  private constructor(
    readonly md: ThinMetadata,
    readonly metadataDevice: BlockDevice,
    readonly dataDevice: BlockDevice,
    private readonly opts: PoolOptions,
    private readonly lock: FileLock | null,
  ) {
    this.features = normaliseFeatures(opts.features);
    this.passdown = !this.features.ignoreDiscard && !this.features.noDiscardPassdown && dataDevice.discard !== undefined;
    // metadata that failed a transaction stays read-only until checked (thin_check --clear-needs-check-flag)
    if (md.needsCheck) this.failedMode = 'ro';
    this.blockSectors = opts.dataBlockSectors;
    this.blockBytes = opts.dataBlockSectors * SECTOR_SIZE;
    if (opts.commitIntervalMs && !this.features.readOnly) {
      this.timer = setInterval(() => void this.commit().catch(() => undefined), opts.commitIntervalMs);
      this.timer.unref();
    }
  }

  static async open(opts: PoolOptions): Promise<Pool> {
    const s = opts.dataBlockSectors;
    if (!Number.isInteger(s) || s < DATA_BLOCK_SIZE_MIN_SECTORS || s > DATA_BLOCK_SIZE_MAX_SECTORS || s % DATA_BLOCK_SIZE_MIN_SECTORS !== 0) {
      throw strataError('INVALID_TABLE', `data block size ${s} sectors is not a multiple of 128 in 128..2097152`);
    }
    const features = normaliseFeatures(opts.features);
    let lock: FileLock | null = null;
    let meta = opts.metadataDevice;
    let data = opts.dataDevice;
    try {
      if (!meta) {
        if (!opts.metadataPath) throw strataError('INVALID_ARGUMENT', 'a pool needs a metadata path or device');
        lock = await lockFile(opts.metadataPath, { shared: features.readOnly, timeoutMs: opts.lockTimeoutMs });
        meta = await FileBlockDevice.open(opts.metadataPath, { readOnly: features.readOnly });
      }
      if (!data) {
        if (!opts.dataPath) throw strataError('INVALID_ARGUMENT', 'a pool needs a data path or device');
        data = await FileBlockDevice.open(opts.dataPath, { readOnly: features.readOnly });
      }
      const blockBytes = s * SECTOR_SIZE;
      const dataSize = await data.size();
      const nrDataBlocks = opts.nrDataBlocks ?? Math.floor(dataSize / blockBytes);
      if (nrDataBlocks * blockBytes > dataSize) {
        throw strataError('INVALID_TABLE', `data device holds ${dataSize} bytes, less than ${nrDataBlocks} blocks of ${blockBytes}`);
      }
      const md = await ThinMetadata.open(meta, { dataBlockSize: s, nrDataBlocks, readOnly: features.readOnly, cacheBlocks: opts.cacheBlocks });
      if (md.changed && !md.needsCheck) await md.commit(); // a grown data space map
      return new Pool(md, meta, data, opts, lock);
    } catch (err) {
      if (!opts.metadataDevice) await meta?.close().catch(() => undefined);
      if (!opts.dataDevice) await data?.close().catch(() => undefined);
      await lock?.release();
      throw err;
    }
  }

  get mode(): PoolMode {
    if (this.features.readOnly) return 'ro';
    return this.failedMode ?? (this.outOfSpace ? 'out_of_data_space' : 'rw');
  }

  /** Run `fn` holding the pool's mutex (every metadata access goes through it; thin devices' data
   *  I/O starts under it and may finish after it, see `unlockedIoRun`). */
  locked<T>(fn: () => Promise<T>): Promise<T> {
    // what writers on other threads have reported goes first (beforeEachLock)
    for (const hook of this.lockHooks) hook();
    return this.mutex.run(async () => {
      if (this.closed) throw strataError('INVALID_ARGUMENT', 'the pool is closed');
      return fn();
    });
  }

  private readonly lockHooks = new Set<() => void>();

  /**
   * Call `hook` (synchronously) each time before anything takes the mutex, until the returned
   * function is called. A connection thread that writes leased blocks (ThinDevice.adopt) reports
   * them in shared memory: the hook takes those in first, so whatever comes after a write's reply
   * (a read on another connection, a flush) finds the write mapped.
   */
  beforeEachLock(hook: () => void): () => void {
    this.lockHooks.add(hook);
    return () => void this.lockHooks.delete(hook);
  }

  /**
   * Lend up to `max` free data blocks to a writer that fills them before they are mapped
   * (ThinDevice.adopt), none when that would bring the pool near its low-water mark or its
   * metadata near full: a write already answered must not fail to be mapped for want of space.
   * Blocks not adopted go back with `returnLease`; a commit meanwhile records them free.
   */
  leaseDataBlocks(max: number): number[] {
    if (this.closed || this.mode !== 'rw') return [];
    const data = this.md.dataSm;
    const spare = data.nrFree - data.nrReserved - (this.opts.lowWaterMark ?? 0);
    if (spare < LEASE_SPARE_FACTOR * max || !this.md.metadataRoomFor(data.nrReserved + max)) return [];
    return data.reserve(max);
  }

  returnLease(blocks: readonly number[]): void {
    this.md.dataSm.unreserve(blocks);
  }

  /**
   * Data I/O that runs outside the mutex, on blocks looked up (or mapped) under it: call with the
   * mutex held, so that no commit comes between the lookup and the count. Such a block cannot
   * be handed out again while the I/O runs: a block freed in a transaction is only allocatable
   * after the commit (SpaceMap), and every commit first waits for these (`drainIo`).
   */
  async unlockedIoRun<T>(fn: () => Promise<T>): Promise<T> {
    this.unlockedIo++;
    try {
      return await fn();
    } finally {
      if (--this.unlockedIo === 0) {
        const waiters = this.ioDrained;
        this.ioDrained = [];
        for (const w of waiters) w();
      }
    }
  }

  /**
   * Data blocks whose new contents are still being written outside the mutex (ThinDevice.write):
   * reading one, or writing into it again, must wait for that write first.
   */
  private readonly landing = new Map<number, Promise<void>>();

  /** Record that `done` writes data blocks [first, last]. */
  dataLanding(first: number, last: number, done: Promise<void>): void {
    for (let b = first; b <= last; b++) this.landing.set(b, done);
    const clear = (): void => {
      for (let b = first; b <= last; b++) if (this.landing.get(b) === done) this.landing.delete(b);
    };
    done.then(clear, clear);
  }

  /** Writes still landing on data blocks [first, last]. */
  landingOn(first: number, last: number, into: Set<Promise<void>>): void {
    if (this.landing.size === 0) return;
    for (let b = first; b <= last; b++) {
      const p = this.landing.get(b);
      if (p) into.add(p);
    }
  }

  /** Whether a write is still landing on data block `block`. */
  isLanding(block: number): boolean {
    return this.landing.has(block);
  }

  /** Wait until no data I/O started outside the mutex is in flight (with the mutex held, none
   *  can start meanwhile). */
  drainIo(): Promise<void> {
    if (this.unlockedIo === 0) return Promise.resolve();
    return new Promise((resolve) => this.ioDrained.push(resolve));
  }

  assertWritable(): void {
    if (this.mode === 'ro') {
      throw strataError('POOL_READ_ONLY', this.failedMode ? 'the pool is read-only: its metadata needs checking (needs_check)' : 'the pool is read-only');
    }
  }

  /**
   * Wrap a metadata-changing step. Refusals raised before anything changed pass through; any
   * other failure drops the open transaction and turns the pool read-only, as the kernel's
   * metadata_operation_failed does.
   */
  async mutate<T>(fn: () => Promise<T>): Promise<T> {
    this.assertWritable();
    Atomics.add(this.mapEpoch, 0, 1);
    try {
      return await fn();
    } catch (err) {
      // refusals raised before anything changed pass through; anything else may have left a
      // half-applied b-tree operation behind, so the transaction is dropped
      const refusal = isStrataError(err) && err.category !== 'Internal' && err.category !== 'DataLoss' &&
        (err.code !== 'METADATA_NO_SPACE' || err.context.reserve === true);
      if (refusal) throw err;
      this.failedMode = 'ro';
      this.discardedRuns = [];
      await this.md.abort().then(() => this.md.persistNeedsCheck()).catch(() => undefined);
      throw err;
    }
  }

  /**
   * Allocate a data block. When only blocks released in this transaction remain, commit first so
   * they become reusable (as the kernel does); `beforeCommit` lets the caller issue data writes for
   * blocks it already mapped, so a commit never publishes a mapping whose data is not written.
   */
  async allocDataBlock(beforeCommit?: () => Promise<void>): Promise<number> {
    try {
      return this.md.allocDataBlock();
    } catch (err) {
      if (!isStrataError(err, 'POOL_NO_SPACE')) throw err;
      if (this.md.dataSm.hasPendingFrees) {
        await beforeCommit?.();
        await this.commitLocked();
        return this.md.allocDataBlock();
      }
      this.outOfSpace = true;
      throw err;
    } finally {
      this.checkLowWater();
    }
  }

  private checkLowWater(): void {
    const free = this.md.dataSm.nrFree;
    const mark = this.opts.lowWaterMark ?? 0;
    if (free <= mark && !this.lowWaterFired) {
      this.lowWaterFired = true;
      this.opts.onLowWater?.();
    } else if (free > mark) this.lowWaterFired = false;
  }

  /**
   * Out of data space: with `error_if_no_space` the caller's I/O fails; otherwise it waits for a
   * resize (up to noSpaceTimeoutMs) and then retries.
   */
  async waitForSpace(): Promise<void> {
    if (this.features.errorIfNoSpace) throw strataError('POOL_NO_SPACE', 'thin pool is out of data space (error_if_no_space)');
    const timeout = this.opts.noSpaceTimeoutMs ?? 60_000;
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => {
        this.spaceWaiters = this.spaceWaiters.filter((w) => w !== wake);
        reject(strataError('POOL_NO_SPACE', `thin pool stayed out of data space for ${timeout} ms`));
      }, timeout);
      const wake = (): void => {
        clearTimeout(t);
        resolve();
      };
      this.spaceWaiters.push(wake);
    });
  }

  markDataDirty(): void {
    this.dataDirty = true;
  }

  /** Flush data, then commit metadata (superblock last). Call with the mutex held. */
  async commitLocked(): Promise<void> {
    if (this.features.readOnly) return;
    // reads outside the mutex may still use blocks freed in this transaction
    await this.drainIo();
    if (this.dataDirty) {
      await this.dataDevice.flush();
      this.dataDirty = false;
    }
    const discarded = this.discardedRuns;
    this.discardedRuns = [];
    // blocks passed down are lent to nobody meanwhile: a leased block is written outside the mutex
    const sm = this.md.dataSm;
    for (const [first, end] of discarded) sm.hold(first, end);
    try {
      await this.mutate(() => this.md.commit());
      if (discarded.length > 0) await this.passDown(discarded);
    } finally {
      for (const [first, end] of discarded) sm.unhold(first, end);
    }
    if (this.outOfSpace && this.md.dataSm.nrFree > 0) this.spaceAvailable();
  }

  /** A discard dropped the last reference to `dataBlock`: pass it down at the next commit. */
  noteDiscarded(dataBlock: number): void {
    if (!this.passdown) return;
    const last = this.discardedRuns.at(-1);
    if (last && last[1] === dataBlock) last[1]++;
    else this.discardedRuns.push([dataBlock, dataBlock + 1]);
  }

  /**
   * Discard passdown, as dm-thin does it: the freed blocks go back to the data device (a sparse
   * file gets its space back). Run right after the commit, with the mutex still held: the blocks
   * are free in the committed metadata and nothing has reallocated them yet. Each block's count is
   * checked again, since only a block nobody maps may lose its bytes. A data device that refuses
   * turns passdown off, as the kernel does, and the status says so.
   */
  private async passDown(runs: Array<[number, number]>): Promise<void> {
    const discard = this.dataDevice.discard!.bind(this.dataDevice);
    const bs = this.blockBytes;
    try {
      for (const [first, end] of runs) {
        let start = -1;
        for (let b = first; b <= end; b++) {
          const free = b < end && this.md.dataSm.get(b) === 0;
          if (free && start < 0) start = b;
          if (!free && start >= 0) {
            await discard(start * bs, (b - start) * bs);
            start = -1;
          }
        }
      }
    } catch {
      this.passdown = false;
    }
  }

  async maybeAutoCommit(): Promise<void> {
    if (this.md.tm.dirtyCount >= (this.opts.autoCommitBlocks ?? 4096)) await this.commitLocked();
  }

  private spaceAvailable(): void {
    this.outOfSpace = false;
    const waiters = this.spaceWaiters;
    this.spaceWaiters = [];
    for (const w of waiters) w();
  }

  commit(): Promise<void> {
    return this.locked(() => this.commitLocked());
  }

  // --- messages -----------------------------------------------------------------------------

  /** A dm `message`: `create_thin N`, `create_snap N ORIGIN`, `delete N`, `set_transaction_id A B`,
   * `reserve_metadata_snap`, `release_metadata_snap`. Committed before it returns. */
  async message(text: string): Promise<void> {
    await this.apply(parseMessage(text));
  }

  async apply(msg: PoolMessage): Promise<void> {
    switch (msg.kind) {
      case 'create_thin': return this.createThin(msg.id);
      case 'create_snap': return this.createSnap(msg.id, msg.origin);
      case 'delete': return this.deleteDevice(msg.id);
      case 'set_transaction_id': return this.setTransactionId(msg.current, msg.next);
      case 'reserve_metadata_snap': await this.reserveMetadataSnap(); return;
      case 'release_metadata_snap': return this.releaseMetadataSnap();
    }
  }

  private messageOp(fn: () => Promise<void>): Promise<void> {
    return this.locked(async () => {
      await this.mutate(fn);
      await this.commitLocked();
    });
  }

  createThin(id: number): Promise<void> {
    return this.messageOp(() => this.md.createThin(id));
  }

  /** Snapshot `origin` as `id`. The origin should be quiesced (suspended) by the caller, as dm asks. */
  createSnap(id: number, origin: number): Promise<void> {
    return this.messageOp(() => this.md.createSnap(id, origin));
  }

  deleteDevice(id: number): Promise<void> {
    return this.messageOp(async () => {
      if (this.open.has(id)) throw strataError('DEVICE_BUSY', `thin device ${id} is open`, { id: String(id) });
      await this.md.deleteDevice(id);
    });
  }

  setTransactionId(current: number, next: number): Promise<void> {
    return this.messageOp(async () => this.md.setTransactionId(current, next));
  }

  async reserveMetadataSnap(): Promise<number> {
    let held = 0;
    await this.messageOp(async () => {
      if (this.dataDirty) {
        await this.dataDevice.flush();
        this.dataDirty = false;
      }
      held = await this.md.reserveMetadataSnap();
    });
    return held;
  }

  releaseMetadataSnap(): Promise<void> {
    return this.messageOp(() => this.md.releaseMetadataSnap());
  }

  /** Ids of the pool's thin devices. */
  devices(): number[] {
    return [...this.md.details.keys()].sort((a, b) => a - b);
  }

  // --- devices ------------------------------------------------------------------------------

  /** Open thin device `id` for I/O; `sizeBytes` is the table length (dm stores no size). */
  async openThin(id: number, sizeBytes?: number): Promise<ThinDevice> {
    return this.locked(async () => {
      this.md.deviceDetails(id);
      if (this.open.has(id)) throw strataError('DEVICE_BUSY', `thin device ${id} is already open`, { id: String(id) });
      const dev = new ThinDevice(this, id, sizeBytes ?? Number.MAX_SAFE_INTEGER - (Number.MAX_SAFE_INTEGER % this.blockBytes));
      this.open.set(id, dev);
      return dev;
    });
  }

  /** Called by ThinDevice.close. */
  released(id: number): void {
    this.open.delete(id);
  }

  /**
   * Pick up a grown data device (or grow to `nrDataBlocks`) and a grown metadata device, like a
   * table reload + resume.
   */
  async resize(nrDataBlocks?: number): Promise<void> {
    await this.locked(async () => {
      const n = nrDataBlocks ?? Math.floor((await this.dataDevice.size()) / this.blockBytes);
      await this.mutate(() => this.md.growMetadataToDevice());
      await this.mutate(() => this.md.resizeData(n));
      await this.commitLocked();
      if (this.md.dataSm.nrFree > 0) this.spaceAvailable();
      this.checkLowWater();
    });
  }

  async status(): Promise<PoolStatus> {
    return this.locked(async () => {
      if (this.mode !== 'ro') await this.commitLocked();
      const total = this.md.metadataSm.nrBlocks;
      // dm-thin-metadata.c __set_metadata_reserve: free counts exclude min(4096, total/10) blocks
      const reserve = Math.min(4096, Math.floor(total / 10));
      const free = Math.max(0, this.md.metadataSm.nrFree - reserve);
      const f = this.features;
      return formatPoolStatus({
        transactionId: this.md.transactionId,
        usedMetadataBlocks: total - free,
        totalMetadataBlocks: total,
        usedDataBlocks: this.md.dataSm.nrAllocated,
        totalDataBlocks: this.md.dataSm.nrBlocks,
        heldRoot: this.md.heldRoot || null,
        mode: this.mode,
        discard: f.ignoreDiscard ? 'ignore_discard' : this.passdown ? 'discard_passdown' : 'no_discard_passdown',
        noSpace: f.errorIfNoSpace ? 'error_if_no_space' : 'queue_if_no_space',
        needsCheck: this.md.needsCheck,
        metadataLowWatermark: Math.min(1024, Math.floor(total / 4)),
      });
    });
  }

  /** Commit and release everything. Open thin devices are closed. */
  async close(): Promise<void> {
    if (this.closed) return;
    if (this.timer) clearInterval(this.timer);
    await this.locked(async () => {
      if (this.failedMode === null) await this.commitLocked();
      this.closed = true;
    }).finally(async () => {
      this.closed = true;
      await this.drainIo();
      this.open.clear();
      for (const w of this.spaceWaiters) w();
      if (!this.opts.metadataDevice) await this.metadataDevice.close().catch(() => undefined);
      if (!this.opts.dataDevice) await this.dataDevice.close().catch(() => undefined);
      await this.lock?.release();
    });
  }
}
