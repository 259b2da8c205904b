import { ENTRIES_PER_BITMAP } from './format/constants.js';
import { strataError, type ErrorCode } from '../errors.js';

/**
 * Reference counts of one space map (metadata blocks or data blocks), held in memory as one byte
 * per block (255 = "look in `overflow`"): 1.6 MB for a 100 GiB pool of 64 KiB blocks. The b-trees
 * stay on disk behind the block cache; only these counts are resident. space-map-disk.ts loads and
 * stores them in the kernel's on-disk format (2-bit bitmaps, index, ref-count b-tree for counts > 2).
 *
 * Allocation follows the kernel's rule: a block freed in the current transaction is not handed out
 * again until the transaction commits, because the last committed metadata may still point at it.
 */
export class SpaceMap {
  private counts: Uint8Array;
  private readonly overflow = new Map<number, number>();
  /** Blocks whose count dropped to 0 in this transaction (bitset). */
  private freedNow: Uint8Array;
  private anyFreedNow = false;
  /** Free blocks lent out by `reserve` (bitset): alloc() passes them over until claimed or returned. */
  private reserved: Uint8Array;
  nrReserved = 0;
  private cursor = 0;
  nrAllocated = 0;
  /** Bitmaps (index = block / 16320) whose 2-bit encoding changed since the last store. */
  readonly dirtyBitmaps = new Set<number>();
  /** Blocks whose count is or was > 2 (the ref-count b-tree must be updated). */
  readonly dirtyOverflow = new Set<number>();

  constructor(public nrBlocks: number, private readonly noSpaceCode: ErrorCode) {
    this.counts = new Uint8Array(nrBlocks);
    this.freedNow = new Uint8Array(Math.ceil(nrBlocks / 8));
    this.reserved = new Uint8Array(Math.ceil(nrBlocks / 8));
  }

  get(b: number): number {
    const c = this.counts[b];
    if (c === undefined) throw strataError('OUT_OF_RANGE', `block ${b} is beyond the space map (${this.nrBlocks})`, { block: b });
    return c === 255 ? this.overflow.get(b)! : c;
  }

  /** Set a count without transaction bookkeeping (used when loading). */
  setLoaded(b: number, count: number): void {
    if (this.get(b) === 0 && count > 0) this.nrAllocated++;
    this.store(b, count);
  }

  private store(b: number, count: number): void {
    if (count >= 255) {
      this.counts[b] = 255;
      this.overflow.set(b, count);
    } else {
      this.counts[b] = count;
      this.overflow.delete(b);
    }
  }

  private change(b: number, count: number): void {
    const old = this.get(b);
    if (count < 0) throw strataError('INTERNAL', `reference count of block ${b} would go negative`, { block: b });
    this.store(b, count);
    if (Math.min(old, 3) !== Math.min(count, 3)) this.dirtyBitmaps.add(Math.floor(b / ENTRIES_PER_BITMAP));
    if (old > 2 || count > 2) this.dirtyOverflow.add(b);
    if (old === 0 && count > 0) this.nrAllocated++;
    else if (old > 0 && count === 0) {
      this.nrAllocated--;
      this.freedNow[b >> 3] = this.freedNow[b >> 3]! | (1 << (b & 7));
      this.anyFreedNow = true;
    }
  }

  inc(b: number, by = 1): void {
    this.change(b, this.get(b) + by);
  }

  /** Decrement; returns the new count. */
  dec(b: number): number {
    const n = this.get(b) - 1;
    this.change(b, n);
    return n;
  }

  private isFreeForAlloc(b: number): boolean {
    const bit = 1 << (b & 7);
    return this.counts[b] === 0 && ((this.freedNow[b >> 3]! | this.reserved[b >> 3]!) & bit) === 0;
  }

  private isReserved(b: number): boolean {
    return (this.reserved[b >> 3]! & (1 << (b & 7))) !== 0;
  }

  /**
   * Lend up to `max` blocks free now and at the last commit (so nothing committed points at
   * them, and they may be written before they are mapped): alloc() passes them over until they
   * are claimed or returned. Their counts stay 0, so a commit meanwhile records them free.
   */
  reserve(max: number): number[] {
    const out: number[] = [];
    const n = this.nrBlocks;
    for (let pass = 0; pass < 2 && out.length < max; pass++) {
      const start = pass === 0 ? this.cursor : 0;
      const end = pass === 0 ? n : this.cursor;
      for (let b = this.counts.indexOf(0, start); b !== -1 && b < end && out.length < max; b = this.counts.indexOf(0, b + 1)) {
        if (!this.isFreeForAlloc(b)) continue;
        this.setReserved(b, true);
        out.push(b);
      }
    }
    if (out.length > 0) this.cursor = out[out.length - 1]! + 1;
    return out;
  }

  /**
   * Keep blocks [first, end) from alloc() and reserve() until `unhold` (the pool's discard
   * passdown, while it discards them).
   */
  hold(first: number, end: number): void {
    for (let b = first; b < end; b++) this.setReserved(b, true);
  }

  unhold(first: number, end: number): void {
    for (let b = first; b < end; b++) this.setReserved(b, false);
  }

  /** Give back reserved blocks that were not claimed. */
  unreserve(blocks: readonly number[]): void {
    for (const b of blocks) this.setReserved(b, false);
  }

  private setReserved(b: number, on: boolean): void {
    if (this.isReserved(b) === on) return;
    this.reserved[b >> 3] = this.reserved[b >> 3]! ^ (1 << (b & 7));
    this.nrReserved += on ? 1 : -1;
  }

  /** Take a reserved block into use (count 1). */
  claim(b: number): void {
    if (!this.isReserved(b) || this.get(b) !== 0) {
      throw strataError('INTERNAL', `block ${b} was not lent out free`, { block: b });
    }
    this.unreserve([b]);
    this.change(b, 1);
  }

  /** Find a block free now and at the last commit, give it count 1, and return it. */
  alloc(): number {
    const n = this.nrBlocks;
    for (let pass = 0; pass < 2; pass++) {
      const start = pass === 0 ? this.cursor : 0;
      const end = pass === 0 ? n : this.cursor;
      for (let b = this.counts.indexOf(0, start); b !== -1 && b < end; b = this.counts.indexOf(0, b + 1)) {
        if (this.isFreeForAlloc(b)) {
          this.change(b, 1);
          this.cursor = b + 1;
          return b;
        }
      }
    }
    throw strataError(this.noSpaceCode, `no free blocks (${this.nrAllocated} of ${n} in use${this.anyFreedNow ? ', some freed until the next commit' : ''})`, {
      nrBlocks: n,
    });
  }

  /** Blocks free and allocatable now. */
  get nrFree(): number {
    return this.nrBlocks - this.nrAllocated;
  }

  /** Blocks released in this transaction that a commit would make allocatable. */
  get hasPendingFrees(): boolean {
    return this.anyFreedNow;
  }

  /** Start a new transaction: blocks freed in the last one become allocatable. */
  commitDone(): void {
    if (this.anyFreedNow) this.freedNow.fill(0);
    this.anyFreedNow = false;
  }

  /** Grow to `nrBlocks`; the new bitmaps are marked dirty so they are written. */
  extend(nrBlocks: number): void {
    if (nrBlocks < this.nrBlocks) {
      throw strataError('INVALID_ARGUMENT', `space map cannot shrink from ${this.nrBlocks} to ${nrBlocks} blocks`);
    }
    if (nrBlocks === this.nrBlocks) return;
    const counts = new Uint8Array(nrBlocks);
    counts.set(this.counts);
    const freed = new Uint8Array(Math.ceil(nrBlocks / 8));
    freed.set(this.freedNow);
    const reserved = new Uint8Array(Math.ceil(nrBlocks / 8));
    reserved.set(this.reserved);
    this.reserved = reserved;
    const firstNew = Math.floor(this.nrBlocks / ENTRIES_PER_BITMAP);
    this.counts = counts;
    this.freedNow = freed;
    this.nrBlocks = nrBlocks;
    for (let i = firstNew; i * ENTRIES_PER_BITMAP < nrBlocks; i++) this.dirtyBitmaps.add(i);
  }

  /** The counts of bitmap `i`, clamped to the 2-bit encoding (3 = see the ref-count tree). */
  bitmapValues(i: number): { values: Uint8Array; count: number; nrFree: number; firstFree: number } {
    const start = i * ENTRIES_PER_BITMAP;
    const count = Math.min(ENTRIES_PER_BITMAP, this.nrBlocks - start);
    const values = new Uint8Array(count);
    let used = 0;
    let firstFree = -1;
    for (let e = 0; e < count; e++) {
      const c = this.counts[start + e]!;
      values[e] = c > 3 ? 3 : c;
      if (c !== 0) used++;
      else if (firstFree < 0) firstFree = e;
    }
    // The kernel starts every bitmap at nr_free = entries_per_block and adjusts on each
    // 0 <-> non-zero transition, so a partial last bitmap still counts its missing tail as free.
    return { values, count, nrFree: ENTRIES_PER_BITMAP - used, firstFree: firstFree < 0 ? count : firstFree };
  }
}
