import type { Pool } from './pool.js';
import { runsFromMap, UNKNOWN, UNMAPPED, type ReadMap } from './read-map.js';
import { formatThinStatus, type ThinStatus } from './status.js';
import { isStrataError, strataError } from '../errors.js';

/** A run of a thin device's address space, mapped to data or not (NBD block status). */
export interface Extent {
  offset: number;
  length: number;
  mapped: boolean;
}

interface PendingWrite {
  offset: number;
  data: Buffer;
}

/** A run of a request's bytes and where they are on the pool's data device. */
export interface DataRun {
  /** Offset within the request's buffer. */
  at: number;
  dataOffset: number;
  length: number;
}

export type BatchRequest =
  | { kind: 'read'; offset: number; length: number }
  | { kind: 'write'; offset: number; data: Buffer };

/**
 * What to do with one request of a batch (ThinDevice.planBatch). Runs: carry out its data I/O (a
 * read fills these runs from the data device and zeros the rest; a write writes these runs of its
 * data, and may have none left to write). 'later': not planned, ask again in a later batch.
 * 'alone': do it the ordinary way (`read`/`write`), which also answers any error it meets.
 */
export type RequestPlan = DataRun[] | 'later' | 'alone';

export interface PlannedBatch {
  plans: RequestPlan[];
  /** The caller's I/O is done (or abandoned): the blocks it wrote may be read, commits go on. */
  settle(): void;
}

/** Zero the parts of a read's buffer that no run fills: unmapped blocks read as zeros. */
export function zeroOutside(buf: Buffer, runs: readonly DataRun[]): void {
  let pos = 0;
  for (const r of runs) {
    if (r.at > pos) buf.fill(0, pos, r.at);
    pos = r.at + r.length;
  }
  if (pos < buf.length) buf.fill(0, pos);
}

/**
 * The gate of writes made outside the pool (into leased blocks, then `adopt`ed), in shared
 * memory: `[FAST_OPEN]` is 1 while they may start, `[FAST_INFLIGHT]` counts those started and
 * not yet reported. A writer adds itself to INFLIGHT, then checks OPEN; suspend and close clear
 * OPEN, then wait for INFLIGHT to drain: with sequentially consistent atomics one of the two sees
 * the other, so no write slips past a suspend.
 */
export const FAST_OPEN = 0;
export const FAST_INFLIGHT = 1;

/** A batch member that cannot be planned now (it would need a commit mid-batch). */
class NotNow extends Error {}

/**
 * One thin device of a pool (dm's `thin` target): a virtual block device of `size` bytes whose
 * blocks are provisioned from the pool on first write.
 *
 * - Reads of unmapped blocks return zeros; reads and writes may have any size and alignment.
 * - The first write to a block allocates it (zeroing the rest of the block unless the pool has
 *   `skip_block_zeroing`); a write to a block shared with a snapshot copies it first (a full-block
 *   write skips the copy).
 * - Writes are volatile until `flush()` (or a `fua` write), which flushes data and then commits
 *   the pool's metadata: like a disk with a write cache.
 * - `suspend()` waits for in-flight I/O and holds new I/O until `resume()`.
 */
export class ThinDevice {
  private gate: { promise: Promise<void>; open: () => void } | null = null;
  private closed = false;
  /** The gate of writes into leased blocks (FAST_OPEN, FAST_INFLIGHT), shared with their threads. */
  readonly fastWriteGate = new Int32Array(new SharedArrayBuffer(8));
  /** Blocks mapped by `adopt` so far (written into leased blocks, outside the pool). */
  adoptedBlocks = 0;

  constructor(readonly pool: Pool, readonly id: number, readonly size: number) {
    Atomics.store(this.fastWriteGate, FAST_OPEN, 1);
  }

  get suspended(): boolean {
    return this.gate !== null;
  }

  private async enter(offset: number, length: number): Promise<void> {
    while (this.gate) await this.gate.promise;
    if (this.closed) throw strataError('DEVICE_NOT_FOUND', `thin device ${this.id} is closed`, { id: String(this.id) });
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw strataError('OUT_OF_RANGE', `range ${offset}+${length} is outside the ${this.size}-byte device`, { id: String(this.id) });
    }
  }

  /** vblock -> data block and time for every mapped block overlapping [offset, end). */
  private async mappings(offset: number, end: number): Promise<Map<number, { block: number; time: number }>> {
    const bs = this.pool.blockBytes;
    const out = new Map<number, { block: number; time: number }>();
    if (end <= offset) return out;
    await this.pool.md.mappingsInRange(this.id, Math.floor(offset / bs), Math.floor((end - 1) / bs) + 1, (vb, m) => void out.set(vb, m));
    return out;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    await this.enter(offset, buf.length);
    const pool = this.pool;
    const landing = new Set<Promise<void>>();
    // Look up under the mutex; read the data after it, concurrently with other requests, once
    // writes still landing on those blocks are done (Pool.landingOn). The blocks stay ours until
    // the next commit, which waits for these reads (Pool.drainIo).
    const issue = await pool.locked(async () => {
      const runs = await this.planRead(offset, buf.length, landing);
      zeroOutside(buf, runs);
      if (runs.length === 0) return { reading: undefined };
      // counted before the mutex is let go, so no commit slips in between (and wrapped: a
      // promise returned as is would be awaited with the mutex held)
      return {
        reading: pool.unlockedIoRun(async () => {
          if (landing.size > 0) await Promise.all(landing);
          await Promise.all(runs.map((r) => pool.dataDevice.read(buf.subarray(r.at, r.at + r.length), r.dataOffset)));
        }),
      };
    });
    await issue.reading;
  }

  /**
   * Where a read of [offset, offset+length) finds its data: runs of consecutive data blocks, the
   * rest unmapped (zeros). Writes still landing on those blocks are added to `landing`. Mutex held.
   */
  private async planRead(offset: number, length: number, landing: Set<Promise<void>>): Promise<DataRun[]> {
    if (length <= 0) return [];
    const bs = this.pool.blockBytes;
    const firstBlock = Math.floor(offset / bs);
    const map = { firstBlock, blocks: await this.dataBlocks(firstBlock, Math.floor((offset + length - 1) / bs) + 1 - firstBlock) };
    const runs = runsFromMap(map, bs, offset, length)!; // (every block covered, none UNKNOWN)
    for (const r of runs) this.pool.landingOn(Math.floor(r.dataOffset / bs), Math.floor((r.dataOffset + r.length - 1) / bs), landing);
    return runs;
  }

  /** The data block of each of `count` virtual blocks from `firstBlock`, UNMAPPED where none. Mutex held. */
  private async dataBlocks(firstBlock: number, count: number): Promise<Float64Array> {
    const blocks = new Float64Array(count).fill(UNMAPPED);
    await this.pool.md.mappingsInRange(this.id, firstBlock, firstBlock + count, (vb, m) => void (blocks[vb - firstBlock] = m.block));
    return blocks;
  }

  async write(buf: Buffer, offset: number, opts: { fua?: boolean } = {}): Promise<void> {
    await this.enter(offset, buf.length);
    for (;;) {
      try {
        const { landed } = await this.pool.locked(() => this.writeLocked(buf, offset));
        await landed;
        break;
      } catch (err) {
        if (!isStrataError(err, 'POOL_NO_SPACE') || this.pool.features.errorIfNoSpace || this.pool.mode !== 'out_of_data_space') throw err;
        await this.pool.waitForSpace();
      }
    }
    if (opts.fua) await this.pool.commit();
  }

  /**
   * The write path, mutex held. Provisions and breaks sharing block by block, then starts writing
   * the data: `landed` resolves once it is written. The mutex is let go before that, so the next
   * request's metadata work overlaps this one's I/O; until then the data blocks written are
   * marked landing (Pool.dataLanding): reads and later writes of them wait, and so does a commit
   * (the data is counted as unlocked I/O).
   */
  private async writeLocked(buf: Buffer, offset: number): Promise<{ landed: Promise<void> | undefined }> {
    const pool = this.pool;
    const writes = await this.mapForWrite(buf, offset, true);
    let landed: Promise<void> | undefined;
    if (writes.length > 0) {
      landed = pool.unlockedIoRun(() => writeCoalesced(pool.dataDevice, writes));
      this.markLanding(writes, landed);
    }
    await pool.maybeAutoCommit(); // (a commit waits for `landed`)
    return { landed };
  }

  /**
   * Provision and break sharing for a write of `buf` at `offset`, mutex held: the data writes it
   * needs, not yet issued. Where allocating needs a commit (only blocks freed in this transaction
   * are left) and `mayCommit` is false, throws NotNow first; data of blocks mapped by then is
   * written before anything throws, so no mapping ever points at a block without its data.
   */
  private async mapForWrite(buf: Buffer, offset: number, mayCommit: boolean): Promise<PendingWrite[]> {
    const pool = this.pool;
    pool.assertWritable();
    const md = pool.md;
    const bs = pool.blockBytes;
    const end = offset + buf.length;
    const map = await this.mappings(offset, end);
    // a block still being written by an earlier request: let that land first (rewrites in place,
    // or copies it to break sharing)
    const earlier = new Set<Promise<void>>();
    for (const m of map.values()) pool.landingOn(m.block, m.block, earlier);
    if (earlier.size > 0) await Promise.allSettled(earlier);
    const details = md.deviceDetails(this.id);
    const writes: PendingWrite[] = [];
    const issue = async (): Promise<void> => {
      if (writes.length === 0) return;
      pool.markDataDirty();
      await writeCoalesced(pool.dataDevice, writes.splice(0));
    };
    const beforeCommit = async (): Promise<void> => {
      if (!mayCommit) throw new NotNow();
      await issue();
    };
    try {
      for (let pos = offset; pos < end;) {
        const vb = Math.floor(pos / bs);
        const within = pos - vb * bs;
        const n = Math.min(bs - within, end - pos);
        const piece = buf.subarray(pos - offset, pos - offset + n);
        pos += n;
        const m = map.get(vb);
        // dm-thin's sharing test: mapped before the device's last snapshot means maybe shared
        if (m && !(details.snapshottedTime > m.time)) {
          writes.push({ offset: m.block * bs + within, data: piece });
          continue;
        }
        // what the new block will hold, prepared before allocating so nothing can fail in between
        let data = piece;
        let at = within;
        if (n < bs && (m || !pool.features.skipBlockZeroing)) {
          data = Buffer.alloc(bs);
          // breaking sharing copies the old block; a fresh block is zeroed around the write
          if (m) await pool.dataDevice.read(data, m.block * bs);
          piece.copy(data, within);
          at = 0;
        }
        md.ensureMetadataSpace();
        const block = await pool.allocDataBlock(beforeCommit);
        writes.push({ offset: block * bs + at, data });
        await pool.mutate(() => md.insertMapping(this.id, vb, block));
      }
    } catch (err) {
      // blocks mapped so far must get their bytes (a copied block its copy) before anyone reads them
      await issue();
      throw err;
    }
    if (writes.length > 0) pool.markDataDirty();
    return writes;
  }

  /** Mark the data blocks `writes` cover as landing until `landed`. */
  private markLanding(writes: readonly PendingWrite[], landed: Promise<void>): void {
    const bs = this.pool.blockBytes;
    for (const w of writes) this.pool.dataLanding(Math.floor(w.offset / bs), Math.floor((w.offset + w.data.length - 1) / bs), landed);
  }

  /**
   * Plan a batch of reads and writes whose data I/O the caller carries out itself on the data
   * device's file (an NBD connection's thread: transmission-threads.ts), so that a batch costs
   * the caller one round trip and the metadata work one mutex hold.
   *
   * Requests are planned in order. Planning stops, leaving the rest 'later', at a request that
   * touches a block an earlier one of the batch touches (whose I/O has not happened yet), or that
   * needs a commit once earlier ones have I/O pending (the commit would wait for this batch).
   * Blocks that must be built here (copied to break sharing, zeroed around a partial write) are
   * written before the plan is returned. Until `settle()`, blocks the caller writes are landing
   * and commits wait, as for `write`'s own I/O; every batch must be settled, used or not.
   */
  async planBatch(requests: readonly BatchRequest[]): Promise<PlannedBatch> {
    while (this.gate) await this.gate.promise;
    const pool = this.pool;
    const plans: RequestPlan[] = requests.map(() => 'later');
    let settle!: () => void;
    const ioDone = new Promise<void>((resolve) => (settle = resolve));
    const landing = new Set<Promise<void>>();
    const builtHere: Array<{ index: number; written: Promise<void> }> = [];
    await pool.locked(async () => {
      if (this.closed) {
        plans.fill('alone');
        return;
      }
      // (a commit here waits for other batches' I/O, never for this one's)
      await pool.maybeAutoCommit();
      const bs = pool.blockBytes;
      const touched = new Set<number>();
      const callerWrites: PendingWrite[] = [];
      let ioPending = false;
      for (let i = 0; i < requests.length; i++) {
        const r = requests[i]!;
        const length = r.kind === 'read' ? r.length : r.data.length;
        if (length === 0 || r.offset < 0 || r.offset + length > this.size) {
          plans[i] = 'alone';
          continue;
        }
        const first = Math.floor(r.offset / bs);
        const last = Math.floor((r.offset + length - 1) / bs);
        let overlaps = false;
        for (let vb = first; vb <= last && !overlaps; vb++) overlaps = touched.has(vb);
        if (overlaps) break;
        for (let vb = first; vb <= last; vb++) touched.add(vb);
        try {
          if (r.kind === 'read') {
            const runs = await this.planRead(r.offset, length, landing);
            plans[i] = runs;
            ioPending ||= runs.length > 0;
            continue;
          }
          const writes = await this.mapForWrite(r.data, r.offset, !ioPending);
          const runs: DataRun[] = [];
          const here: PendingWrite[] = [];
          for (const w of writes) {
            const at = w.data.byteOffset - r.data.byteOffset;
            if (w.data.buffer === r.data.buffer && at >= 0 && at + w.data.length <= r.data.length) {
              // consecutive blocks that landed on consecutive data blocks: one pwrite
              const prev = runs[runs.length - 1];
              if (prev && prev.at + prev.length === at && prev.dataOffset + prev.length === w.offset) prev.length += w.data.length;
              else runs.push({ at, dataOffset: w.offset, length: w.data.length });
              callerWrites.push(w);
            } else {
              here.push(w);
            }
          }
          plans[i] = runs;
          ioPending ||= writes.length > 0;
          if (here.length > 0) {
            const written = writeCoalesced(pool.dataDevice, here);
            written.catch(() => undefined);
            builtHere.push({ index: i, written });
            this.markLanding(here, written);
          }
        } catch (err) {
          if (err instanceof NotNow) {
            plans.fill('later', i);
            break;
          }
          // the ordinary path tries again and answers with the error it meets
          plans[i] = 'alone';
        }
      }
      // counted before the mutex is let go, so no commit slips in between
      const landed = Promise.allSettled([ioDone, ...builtHere.map((b) => b.written)]).then(() => undefined);
      void pool.unlockedIoRun(() => landed);
      this.markLanding(callerWrites, landed);
    });
    for (const { index, written } of builtHere) {
      await written.catch(() => void (plans[index] = 'alone'));
    }
    if (landing.size > 0) await Promise.allSettled(landing);
    return { plans, settle };
  }

  /**
   * Where the blocks covering [offset, offset+length) are now (read-map.ts), at most `maxBlocks`
   * of them: for a reader on another thread, valid while the pool's mapEpoch stays as it was
   * before asking. Blocks a write is still landing on are UNKNOWN.
   */
  async readMap(offset: number, length: number, maxBlocks = 4096): Promise<ReadMap> {
    while (this.gate) await this.gate.promise;
    const bs = this.pool.blockBytes;
    const firstBlock = Math.floor(Math.max(0, offset) / bs);
    const end = Math.min(this.size, offset + length, (firstBlock + maxBlocks) * bs);
    const count = Math.max(0, Math.ceil(end / bs) - firstBlock);
    const blocks = await this.pool.locked(async () => {
      if (this.closed) return new Float64Array(count).fill(UNKNOWN);
      const found = await this.dataBlocks(firstBlock, count);
      for (let i = 0; i < count; i++) if (found[i]! >= 0 && this.pool.isLanding(found[i]!)) found[i] = UNKNOWN;
      return found;
    });
    return { firstBlock, blocks };
  }

  /** Unmap whole blocks inside the range; their data blocks are freed when no longer shared. */
  async discard(offset: number, length: number): Promise<void> {
    await this.enter(offset, length);
    if (this.pool.features.ignoreDiscard) return;
    await this.pool.locked(() => this.unmapWhole(offset, offset + length));
  }

  private async unmapWhole(start: number, end: number): Promise<void> {
    const pool = this.pool;
    pool.assertWritable();
    const bs = pool.blockBytes;
    const first = Math.ceil(start / bs);
    const last = Math.floor(end / bs);
    if (last <= first) return;
    const mapped: Array<[number, number]> = [];
    await pool.md.mappingsInRange(this.id, first, last, (vb, m) => void mapped.push([vb, m.block]));
    for (const [vb, dataBlock] of mapped) {
      pool.md.ensureMetadataSpace(true);
      await pool.mutate(() => pool.md.removeMapping(this.id, vb));
      if (pool.md.dataSm.get(dataBlock) === 0) pool.noteDiscarded(dataBlock);
      await pool.maybeAutoCommit();
    }
  }

  /** Make the range read as zeros: whole blocks are unmapped, partial mapped blocks are written. */
  async writeZeroes(offset: number, length: number): Promise<void> {
    await this.enter(offset, length);
    const bs = this.pool.blockBytes;
    const end = offset + length;
    await this.pool.locked(async () => {
      const headEnd = Math.min(end, Math.ceil(offset / bs) * bs);
      const tailStart = Math.max(headEnd, Math.floor(end / bs) * bs);
      const map = await this.mappings(offset, end);
      for (const [s, e] of [[offset, headEnd], [tailStart, end]] as const) {
        if (e > s && map.has(Math.floor(s / bs))) await (await this.writeLocked(Buffer.alloc(e - s), s)).landed;
      }
      await this.unmapWhole(headEnd, tailStart);
    });
  }

  /** Flush data and commit the pool's metadata. */
  async flush(): Promise<void> {
    if (this.closed) throw strataError('DEVICE_NOT_FOUND', `thin device ${this.id} is closed`, { id: String(this.id) });
    await this.pool.commit();
  }

  /** Mapped and unmapped runs covering [offset, offset+length), in order. */
  async mapped(offset: number, length: number): Promise<Extent[]> {
    await this.enter(offset, length);
    const end = offset + length;
    const bs = this.pool.blockBytes;
    const vblocks: number[] = [];
    await this.pool.locked(async () => {
      if (length > 0) await this.pool.md.mappingsInRange(this.id, Math.floor(offset / bs), Math.floor((end - 1) / bs) + 1, (vb) => void vblocks.push(vb));
    });
    const out: Extent[] = [];
    const push = (s: number, e: number, mapped: boolean): void => {
      s = Math.max(s, offset);
      e = Math.min(e, end);
      if (e <= s) return;
      const last = out[out.length - 1];
      if (last && last.mapped === mapped && last.offset + last.length === s) last.length += e - s;
      else out.push({ offset: s, length: e - s, mapped });
    };
    let pos = offset;
    for (const vb of vblocks) {
      push(pos, vb * bs, false);
      push(vb * bs, (vb + 1) * bs, true);
      pos = Math.max(pos, (vb + 1) * bs);
    }
    push(pos, end, false);
    return out;
  }

  /** dm thin status: mapped sectors and the highest mapped sector. */
  async status(): Promise<ThinStatus> {
    return this.pool.locked(async () => {
      const d = this.pool.md.deviceDetails(this.id);
      const last = await this.pool.md.highestMapped(this.id);
      const spb = this.pool.blockSectors;
      return formatThinStatus(d.mappedBlocks * spb, last === undefined ? null : (last + 1) * spb - 1);
    });
  }

  /** Wait for in-flight I/O, then hold new I/O until resume(). */
  async suspend(): Promise<void> {
    if (!this.gate) {
      let open!: () => void;
      const promise = new Promise<void>((r) => (open = r));
      this.gate = { promise, open };
    }
    await this.closeFastWrites();
    // in-flight I/O: what holds the mutex (and the writes into leased blocks reported meanwhile,
    // taken in as it is taken), then data I/O running outside it
    await this.pool.locked(() => this.pool.drainIo());
  }

  resume(): void {
    const g = this.gate;
    this.gate = null;
    if (!this.closed) Atomics.store(this.fastWriteGate, FAST_OPEN, 1);
    g?.open();
  }

  /** Release the device (a later `delete` of it is allowed again). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true; // (first: resume() then leaves the gate of leased-block writes shut)
    this.resume();
    await this.closeFastWrites();
    this.pool.released(this.id);
  }

  /** Stop writes into leased blocks from starting; wait for those started to be reported. */
  private async closeFastWrites(): Promise<void> {
    Atomics.store(this.fastWriteGate, FAST_OPEN, 0);
    while (Atomics.load(this.fastWriteGate, FAST_INFLIGHT) > 0) await new Promise((r) => setTimeout(r, 1));
  }

  /**
   * Map virtual block `vblocks[i]` to `blocks[i]` (data blocks leased by Pool.leaseDataBlocks,
   * which already hold the data), in order: the end of writes made outside the pool, by a thread
   * that wrote whole blocks into leased ones and answered at once. A block mapped before is
   * replaced (its old block released, as a write that breaks sharing would), also by a later
   * entry of the same call; blocks not adopted (the device closed, a failure) go back to the pool.
   */
  async adopt(vblocks: readonly number[], blocks: readonly number[]): Promise<void> {
    const pool = this.pool;
    const md = pool.md;
    await pool.locked(async () => {
      let done = 0;
      try {
        if (this.closed) throw strataError('DEVICE_NOT_FOUND', `thin device ${this.id} is closed`, { id: String(this.id) });
        const outside = vblocks.find((vb) => (vb + 1) * pool.blockBytes > this.size);
        if (outside !== undefined) {
          throw strataError('OUT_OF_RANGE', `block ${outside} is outside the ${this.size}-byte device`, { id: String(this.id) });
        }
        pool.assertWritable();
        pool.markDataDirty();
        while (done < blocks.length) {
          md.ensureMetadataSpace();
          const mapped = await pool.mutate(() => md.insertMappings(this.id, vblocks, blocks, done, true));
          done += mapped;
          this.adoptedBlocks += mapped;
        }
      } finally {
        pool.returnLease(blocks.slice(done));
      }
      await pool.maybeAutoCommit();
    });
  }
}

/** Issue writes, merging neighbours that are adjacent both on the device and in memory. */
async function writeCoalesced(dev: Pool['dataDevice'], writes: PendingWrite[]): Promise<void> {
  for (let i = 0; i < writes.length;) {
    const first = writes[i]!;
    let len = first.data.length;
    let j = i + 1;
    while (j < writes.length) {
      const w = writes[j]!;
      const prev = writes[j - 1]!;
      const adjacentOnDisk = w.offset === first.offset + len;
      const adjacentInMemory = w.data.buffer === first.data.buffer && w.data.byteOffset === prev.data.byteOffset + prev.data.length;
      if (!adjacentOnDisk || !adjacentInMemory) break;
      len += w.data.length;
      j++;
    }
    const data = j === i + 1 ? first.data : Buffer.from(first.data.buffer, first.data.byteOffset, len);
    await dev.write(data, first.offset);
    i = j;
  }
}

