import type { BlockDevice } from './block-device.js';
import { TransactionManager } from './transaction-manager.js';
import { SpaceMap } from './space-map.js';
import { BLOCK_SIZE, MAX_DATA_BLOCKS, MAX_DEV_ID, MAX_METADATA_BLOCKS, NEEDS_CHECK_FLAG, THIN_VERSION } from './format/constants.js';

export { packBlockTime, unpackBlockTime, type DeviceDetails, type Mapping };
import { isZeroBlock, packSuperblock, unpackSuperblock, type SmRoot, type Superblock } from './format/superblock.js';
import { readU64, writeU64 } from './format/int.js';
import { packBlockTime, packDetails, unpackBlockTime, unpackDetails, type DeviceDetails, type Mapping } from './format/mapping.js';
import { deleteTree, emptyTree, insert, insertRun, lastKey, lookup, remove, updateValue, walkRange, type ValueType } from './btree.js';
import {
  loadDataSpaceMap, loadMetadataSpaceMap, newSmLocation, storeDataSpaceMap, storeMetadataSpaceMap, type SmLocation,
} from './space-map-disk.js';
import { nrBitmapsFor } from './format/space-map-codec.js';
import { strataError } from '../errors.js';

/**
 * The pool's metadata: superblock, device details, the two-level mapping tree and both space
 * maps, with transactions (the user-space counterpart of drivers/md/dm-thin-metadata.c).
 * Not safe for concurrent calls; the Pool serialises access.
 */

const u64 = (n: number): Buffer => {
  const b = Buffer.alloc(8);
  writeU64(b, 0, n);
  return b;
};

export interface MetadataOptions {
  /** Data block size in sectors; checked against an existing superblock (default: accept it). */
  dataBlockSize?: number;
  /** Data blocks the pool spans (grows the data space map; shrinking is refused). Default: as recorded. */
  nrDataBlocks?: number;
  readOnly?: boolean;
  cacheBlocks?: number;
}

export class ThinMetadata {
  readonly tm: TransactionManager;
  dataSm!: SpaceMap;
  private dataLoc!: SmLocation;
  private metaLoc!: SmLocation;
  private sb!: Superblock;
  readonly details = new Map<number, DeviceDetails>();
  private readonly dirtyDetails = new Set<number>();
  /** Something changed since the last commit. */
  changed = false;
  readonly dataVt: ValueType;
  readonly topVt: ValueType;
  readonly detailsVt: ValueType = { size: 24 };

  private constructor(readonly dev: BlockDevice, private readonly opts: MetadataOptions) {
    this.tm = new TransactionManager(dev, opts.cacheBlocks);
    this.dataVt = {
      size: 8,
      inc: (v) => this.dataSm.inc(unpackBlockTime(v).block),
      dec: (v) => void this.dataSm.dec(unpackBlockTime(v).block),
      equal: (a, b) => unpackBlockTime(a).block === unpackBlockTime(b).block,
    };
    this.topVt = { size: 8, inc: (v) => this.tm.inc(readU64(v, 0)), equal: (a, b) => a.equals(b) };
  }

  /** Open existing metadata, or format it if block 0 is all zeros (as the kernel does). */
  static async open(dev: BlockDevice, opts: MetadataOptions): Promise<ThinMetadata> {
    const md = new ThinMetadata(dev, opts);
    const block0 = Buffer.alloc(BLOCK_SIZE);
    await dev.read(block0, 0);
    if (isZeroBlock(block0)) {
      if (opts.dataBlockSize === undefined || opts.nrDataBlocks === undefined) {
        throw strataError('METADATA_CORRUPT', 'metadata is blank (block 0 is all zeros)');
      }
      if (opts.readOnly) throw strataError('POOL_READ_ONLY', 'cannot format blank metadata in read-only mode');
      await md.format();
    } else {
      await md.load(block0);
      if (opts.dataBlockSize !== undefined && md.sb.dataBlockSize !== opts.dataBlockSize) {
        throw strataError('INVALID_TABLE', `data block size ${opts.dataBlockSize} does not match the metadata's ${md.sb.dataBlockSize} sectors`);
      }
      if (!opts.readOnly) await md.growMetadataToDevice();
      const want = opts.nrDataBlocks ?? md.dataSm.nrBlocks;
      if (!opts.readOnly && want > md.dataSm.nrBlocks) await md.resizeData(want);
      else if (want < md.dataSm.nrBlocks) {
        throw strataError('INVALID_TABLE', `pool is ${opts.nrDataBlocks} data blocks but the metadata records ${md.dataSm.nrBlocks}; shrinking is not supported`);
      }
    }
    return md;
  }

  private async format(): Promise<void> {
    const nrMeta = Math.min(Math.floor((await this.dev.size()) / BLOCK_SIZE), MAX_METADATA_BLOCKS);
    if (nrMeta < 16) throw strataError('METADATA_NO_SPACE', `metadata device of ${nrMeta} blocks is too small`);
    const msm = new SpaceMap(nrMeta, 'METADATA_NO_SPACE');
    this.tm.sm = msm;
    msm.inc(0); // the superblock
    this.metaLoc = await newSmLocation(this.tm, msm, false);
    this.dataSm = new SpaceMap(this.opts.nrDataBlocks!, 'POOL_NO_SPACE');
    this.dataLoc = await newSmLocation(this.tm, this.dataSm, true);
    this.sb = {
      flags: 0, version: THIN_VERSION, time: 0, transId: 0, heldRoot: 0,
      dataSmRoot: { nrBlocks: 0, nrAllocated: 0, bitmapRoot: 0, refCountRoot: 0 },
      metadataSmRoot: { nrBlocks: 0, nrAllocated: 0, bitmapRoot: 0, refCountRoot: 0 },
      dataMappingRoot: await emptyTree(this.tm, this.topVt),
      deviceDetailsRoot: await emptyTree(this.tm, this.detailsVt),
      dataBlockSize: this.opts.dataBlockSize!, metadataNrBlocks: nrMeta,
      compatFlags: 0, compatRoFlags: 0, incompatFlags: 0,
    };
    this.changed = true;
    await this.commit();
  }

  private async load(block0: Buffer): Promise<void> {
    this.sb = unpackSuperblock(block0);
    if (this.sb.compatRoFlags !== 0 && !this.opts.readOnly) {
      throw strataError('POOL_READ_ONLY', `metadata has compat_ro flags ${this.sb.compatRoFlags}; open it read-only`);
    }
    this.metaLoc = await loadMetadataSpaceMap(this.tm, this.sb.metadataSmRoot);
    const data = await loadDataSpaceMap(this.tm, this.sb.dataSmRoot);
    this.dataSm = data.sm;
    this.dataLoc = data.loc;
    this.details.clear();
    this.dirtyDetails.clear();
    await walkRange(this.tm, this.sb.deviceDetailsRoot, 0, Infinity, (id, v) => void this.details.set(id, unpackDetails(v)));
    this.changed = false;
  }

  /** Drop the open transaction and go back to the last commit. */
  async abort(): Promise<void> {
    this.tm.abort();
    const block0 = Buffer.alloc(BLOCK_SIZE);
    await this.dev.read(block0, 0);
    await this.load(block0);
  }

  get superblock(): Readonly<Superblock> {
    return this.sb;
  }
  get transactionId(): number {
    return this.sb.transId;
  }
  get time(): number {
    return this.sb.time;
  }
  get heldRoot(): number {
    return this.sb.heldRoot;
  }
  get needsCheck(): boolean {
    return (this.sb.flags & NEEDS_CHECK_FLAG) !== 0;
  }
  get metadataSm(): SpaceMap {
    return this.tm.sm;
  }
  get mappingRoot(): number {
    return this.sb.dataMappingRoot;
  }

  /**
   * Metadata blocks kept back so that a commit can always complete: every bitmap may move (data
   * bitmaps also shadow the index tree), plus path shadows and splits for one operation. An
   * operation that grows the metadata refuses to start unless `growthHeadroom` more are free;
   * operations that free space (delete, discard, releasing the metadata snapshot) may dig into
   * the headroom, so a full pool can always be emptied. Running out is an error, never a
   * half-applied transaction.
   */
  get metadataReserve(): number {
    return 32 + nrBitmapsFor(this.tm.sm.nrBlocks) + 2 * nrBitmapsFor(this.dataSm.nrBlocks);
  }
  static readonly growthHeadroom = 16;

  /**
   * Whether `mappings` more can surely be inserted before the reserve is reached: a generous
   * estimate, a new leaf per 64 mappings and a path of 4 blocks shadowed for each leaf.
   */
  metadataRoomFor(mappings: number): boolean {
    return this.tm.sm.nrFree >= this.metadataReserve + ThinMetadata.growthHeadroom + 4 * (Math.ceil(mappings / 64) + 4);
  }

  ensureMetadataSpace(freeing = false): void {
    const free = this.tm.sm.nrFree;
    const need = this.metadataReserve + (freeing ? 0 : ThinMetadata.growthHeadroom);
    if (free < need) {
      throw strataError('METADATA_NO_SPACE', `metadata space exhausted (${free} blocks free, ${need} needed)`, { reserve: true });
    }
  }

  private touch(): void {
    this.changed = true;
  }

  setTransactionId(oldId: number, newId: number): void {
    if (oldId !== this.sb.transId) {
      throw strataError('TRANSACTION_MISMATCH', `transaction id is ${this.sb.transId}, not ${oldId}`, { current: this.sb.transId });
    }
    this.sb.transId = newId;
    this.touch();
  }

  /**
   * After a failed transaction (and abort): record `needs_check` in the superblock. Only the
   * superblock is rewritten; its roots are the last commit's, so no other block is touched.
   */
  async persistNeedsCheck(): Promise<void> {
    if (this.changed) throw strataError('INTERNAL', 'needs_check can only be recorded on an aborted transaction');
    this.sb.flags |= NEEDS_CHECK_FLAG;
    await this.tm.writeSuperblock(packSuperblock(this.sb));
  }

  /** `thin_check --clear-needs-check-flag`, once the metadata checks clean. */
  async clearNeedsCheck(): Promise<void> {
    this.sb.flags &= ~NEEDS_CHECK_FLAG;
    this.touch();
    await this.commit();
  }

  private checkDevId(id: number): void {
    if (!Number.isInteger(id) || id < 0 || id > MAX_DEV_ID) throw strataError('OUT_OF_RANGE', `device id ${id} is not in 0..${MAX_DEV_ID}`, { id: String(id) });
  }

  private newDetails(): DeviceDetails {
    return { mappedBlocks: 0, transactionId: this.sb.transId, creationTime: this.sb.time, snapshottedTime: this.sb.time };
  }

  async createThin(id: number): Promise<void> {
    this.checkDevId(id);
    if (this.details.has(id)) throw strataError('DEVICE_EXISTS', `thin device ${id} already exists`, { id: String(id) });
    this.ensureMetadataSpace();
    const sub = await emptyTree(this.tm, this.dataVt);
    this.sb.dataMappingRoot = (await insert(this.tm, this.sb.dataMappingRoot, id, u64(sub), this.topVt)).root;
    this.details.set(id, this.newDetails());
    this.dirtyDetails.add(id);
    this.touch();
  }

  async createSnap(id: number, origin: number): Promise<void> {
    this.checkDevId(id);
    if (this.details.has(id)) throw strataError('DEVICE_EXISTS', `thin device ${id} already exists`, { id: String(id) });
    const o = this.details.get(origin);
    if (!o) throw strataError('DEVICE_NOT_FOUND', `origin device ${origin} does not exist`, { id: String(origin) });
    this.ensureMetadataSpace();
    const originRoot = readU64((await lookup(this.tm, this.sb.dataMappingRoot, origin))!, 0);
    this.tm.inc(originRoot);
    this.sb.dataMappingRoot = (await insert(this.tm, this.sb.dataMappingRoot, id, u64(originRoot), this.topVt)).root;
    this.sb.time = (this.sb.time + 1) >>> 0;
    o.snapshottedTime = this.sb.time;
    this.dirtyDetails.add(origin);
    this.details.set(id, { ...this.newDetails(), mappedBlocks: o.mappedBlocks });
    this.dirtyDetails.add(id);
    this.touch();
  }

  async deleteDevice(id: number): Promise<void> {
    if (!this.details.has(id)) throw strataError('DEVICE_NOT_FOUND', `thin device ${id} does not exist`, { id: String(id) });
    this.ensureMetadataSpace(true);
    this.sb.deviceDetailsRoot = (await remove(this.tm, this.sb.deviceDetailsRoot, id, this.detailsVt)).root;
    const { root, removed } = await remove(this.tm, this.sb.dataMappingRoot, id, this.topVt);
    this.sb.dataMappingRoot = root;
    if (removed) await deleteTree(this.tm, readU64(removed, 0), (v) => this.dataVt.dec!(v));
    this.details.delete(id);
    this.dirtyDetails.delete(id);
    this.touch();
  }

  deviceDetails(id: number): DeviceDetails {
    const d = this.details.get(id);
    if (!d) throw strataError('DEVICE_NOT_FOUND', `thin device ${id} does not exist`, { id: String(id) });
    return d;
  }

  private async subtreeRoot(dev: number): Promise<number> {
    const v = await lookup(this.tm, this.sb.dataMappingRoot, dev);
    if (!v) throw strataError('DEVICE_NOT_FOUND', `thin device ${dev} has no mapping tree`, { id: String(dev) });
    return readU64(v, 0);
  }

  async lookupMapping(dev: number, vblock: number): Promise<Mapping | undefined> {
    const v = await lookup(this.tm, await this.subtreeRoot(dev), vblock);
    return v ? unpackBlockTime(v) : undefined;
  }

  /** Visit the mappings of `dev` with lo <= vblock < hi, in order. */
  async mappingsInRange(dev: number, lo: number, hi: number, fn: (vblock: number, m: Mapping) => boolean | void): Promise<void> {
    await walkRange(this.tm, await this.subtreeRoot(dev), lo, hi, (k, v) => fn(k, unpackBlockTime(v)));
  }

  async highestMapped(dev: number): Promise<number | undefined> {
    return lastKey(this.tm, await this.subtreeRoot(dev));
  }

  /** Map `vblock` of `dev` to `block` (which the caller allocated; the mapping owns that reference). */
  async insertMapping(dev: number, vblock: number, block: number): Promise<void> {
    await this.insertMappings(dev, [vblock], [block], 0, false);
  }

  /**
   * Map `vblocks[i]` of `dev` to `blocks[i]` from `from` on, in order, as far as one descent of
   * the device's tree takes them (b-tree insertRun: neighbouring virtual blocks share a leaf);
   * returns how many were mapped (at least one). With `claim`, the blocks are leased ones
   * (Pool.leaseDataBlocks), each taken into use as it is mapped; otherwise the caller allocated
   * them. A virtual block mapped twice ends mapped to the later block.
   */
  async insertMappings(dev: number, vblocks: readonly number[], blocks: readonly number[], from: number, claim: boolean): Promise<number> {
    const d = this.deviceDetails(dev);
    const time = this.sb.time;
    const valueFor = (i: number): Buffer => {
      if (claim) this.dataSm.claim(blocks[i]!);
      return packBlockTime(blocks[i]!, time);
    };
    let run = { root: 0, taken: 0, inserted: 0 };
    const root = await updateValue(this.tm, this.sb.dataMappingRoot, dev, this.topVt, async (old) => {
      run = await insertRun(this.tm, readU64(old, 0), vblocks, valueFor, from, this.dataVt);
      return u64(run.root);
    });
    if (root === null) throw strataError('DEVICE_NOT_FOUND', `thin device ${dev} has no mapping tree`, { id: String(dev) });
    this.sb.dataMappingRoot = root;
    if (run.inserted > 0) {
      d.mappedBlocks += run.inserted;
      this.dirtyDetails.add(dev);
    }
    this.touch();
    return run.taken;
  }

  /** Unmap `vblock`; the data block's count drops (freed at zero). Returns whether it was mapped. */
  async removeMapping(dev: number, vblock: number): Promise<boolean> {
    const d = this.deviceDetails(dev);
    if (!(await this.lookupMapping(dev, vblock))) return false;
    const root = await updateValue(this.tm, this.sb.dataMappingRoot, dev, this.topVt, async (old) => {
      return u64((await remove(this.tm, readU64(old, 0), vblock, this.dataVt)).root);
    });
    this.sb.dataMappingRoot = root!;
    d.mappedBlocks--;
    this.dirtyDetails.add(dev);
    this.touch();
    return true;
  }

  // --- restore (thin_restore): exact details, times and data blocks from a dump ---------------

  /** Set superblock fields a dump records. */
  restoreSuperblock(f: { time: number; transId: number; flags: number }): void {
    this.sb.time = f.time;
    this.sb.transId = f.transId;
    this.sb.flags = f.flags;
    this.touch();
  }

  async restoreDevice(id: number, d: DeviceDetails): Promise<void> {
    await this.createThin(id);
    this.details.set(id, { ...d, mappedBlocks: 0 });
  }

  /** Map with an explicit time; takes a new reference on `block`. */
  async restoreMapping(dev: number, vblock: number, block: number, time: number): Promise<void> {
    if (block >= this.dataSm.nrBlocks) throw strataError('OUT_OF_RANGE', `data block ${block} is beyond the pool's ${this.dataSm.nrBlocks}`, { block });
    this.dataSm.inc(block);
    const saved = this.sb.time;
    this.sb.time = time;
    try {
      await this.insertMapping(dev, vblock, block);
    } finally {
      this.sb.time = saved;
    }
  }

  allocDataBlock(): number {
    const b = this.dataSm.alloc();
    this.touch();
    return b;
  }

  /**
   * Take in a metadata device that has grown, as dm-thin does on resume: the metadata space map
   * gets the new blocks (its new bitmaps are written at the next commit). A device smaller than
   * the metadata records is refused, as the kernel refuses it.
   */
  async growMetadataToDevice(): Promise<void> {
    const sm = this.tm.sm;
    const devBlocks = Math.min(Math.floor((await this.dev.size()) / BLOCK_SIZE), MAX_METADATA_BLOCKS);
    if (devBlocks < sm.nrBlocks) {
      throw strataError('INVALID_TABLE', `metadata device holds ${devBlocks} blocks, fewer than the ${sm.nrBlocks} its metadata records; shrinking is not supported`);
    }
    if (devBlocks === sm.nrBlocks) return;
    sm.extend(devBlocks);
    this.sb.metadataNrBlocks = devBlocks;
    this.touch();
  }

  async resizeData(nrBlocks: number): Promise<void> {
    if (nrBlocks > MAX_DATA_BLOCKS) throw strataError('OUT_OF_RANGE', `${nrBlocks} data blocks exceed the 40-bit limit`);
    if (nrBlocks === this.dataSm.nrBlocks) return;
    this.dataSm.extend(nrBlocks);
    this.touch();
  }

  /**
   * Commit (__commit_transaction): changed device details, data space map, metadata space map,
   * then every other dirty block, flush, and the superblock last with its own flush.
   */
  async commit(): Promise<void> {
    if (!this.changed) return;
    if (this.opts.readOnly) throw strataError('POOL_READ_ONLY', 'metadata is read-only');
    for (const id of [...this.dirtyDetails].sort((a, b) => a - b)) {
      this.sb.deviceDetailsRoot = (await insert(this.tm, this.sb.deviceDetailsRoot, id, packDetails(this.details.get(id)!), this.detailsVt)).root;
    }
    this.dirtyDetails.clear();
    const dataRoot: SmRoot = await storeDataSpaceMap(this.tm, this.dataSm, this.dataLoc);
    const metaRoot: SmRoot = await storeMetadataSpaceMap(this.tm, this.metaLoc);
    this.sb.dataSmRoot = dataRoot;
    this.sb.metadataSmRoot = metaRoot;
    const sbBuf = packSuperblock(this.sb);
    await this.tm.writeDirty();
    await this.tm.writeSuperblock(sbBuf);
    this.tm.endTransaction();
    this.dataSm.commitDone();
    this.changed = false;
  }

  /** reserve_metadata_snap: a frozen copy of the superblock whose trees stay readable. */
  async reserveMetadataSnap(): Promise<number> {
    if (this.sb.heldRoot) throw strataError('DEVICE_BUSY', `a metadata snapshot is already held at block ${this.sb.heldRoot}`);
    this.ensureMetadataSpace();
    this.changed = true;
    await this.commit();
    const { block } = this.tm.newBlock('superblock');
    const copy = packSuperblock({
      ...this.sb,
      heldRoot: 0,
      dataSmRoot: { nrBlocks: 0, nrAllocated: 0, bitmapRoot: 0, refCountRoot: 0 },
      metadataSmRoot: { nrBlocks: 0, nrAllocated: 0, bitmapRoot: 0, refCountRoot: 0 },
    }, block);
    this.tm.install(block, copy, 'superblock');
    this.tm.inc(this.sb.dataMappingRoot);
    this.tm.inc(this.sb.deviceDetailsRoot);
    this.sb.heldRoot = block;
    this.touch();
    await this.commit();
    return block;
  }

  async releaseMetadataSnap(): Promise<void> {
    const held = this.sb.heldRoot;
    if (!held) throw strataError('INVALID_MESSAGE', 'no metadata snapshot is held');
    const copy = unpackSuperblock(await this.tm.read(held, 'superblock'), held);
    const subs: number[] = [];
    await deleteTree(this.tm, copy.dataMappingRoot, (v) => void subs.push(readU64(v, 0)));
    for (const s of subs) await deleteTree(this.tm, s, (v) => this.dataVt.dec!(v));
    await deleteTree(this.tm, copy.deviceDetailsRoot);
    this.tm.dec(held);
    this.sb.heldRoot = 0;
    this.touch();
    await this.commit();
  }
}
