/**
 * Reports of writes into leased blocks, from a connection's thread to the event loop, in shared
 * memory: the thread appends records and publishes them with one atomic store, before it answers
 * the writes; the event loop takes in everything published whenever it looks (before anything
 * takes the pool's mutex, and when the thread asks for more blocks). A postMessage per report
 * cost each thread ~60 µs and woke the event loop as often, for every one or two WRITEs.
 *
 * Records: a run written is [first virtual block, n, n data blocks]; blocks given back unwritten
 * are [-1, n, n data blocks]. Two counters, as uint32 that wrap: slots published (HEAD, only the
 * thread stores it) and slots taken in (TAIL, only the event loop stores it). The capacity is a
 * power of two, so a slot is `counter & mask` across the wrap.
 */

const HEAD = 0;
const TAIL = 1;
const HEADER_BYTES = 8;
const UNUSED = -1;

export class ReportRing {
  private readonly counters: Int32Array;
  private readonly slots: Float64Array;
  private readonly mask: number;

  /** Memory for a ring of at least `slots` slots. */
  static create(slots: number): SharedArrayBuffer {
    let capacity = 16;
    while (capacity < slots) capacity *= 2;
    return new SharedArrayBuffer(HEADER_BYTES + 8 * capacity);
  }

  constructor(memory: SharedArrayBuffer) {
    this.counters = new Int32Array(memory, 0, 2);
    this.slots = new Float64Array(memory, HEADER_BYTES);
    this.mask = this.slots.length - 1;
  }

  /** Slots free for `publish`. */
  room(): number {
    const used = (Atomics.load(this.counters, HEAD) - Atomics.load(this.counters, TAIL)) >>> 0;
    return this.slots.length - used;
  }

  /** Slots `publish(written, unused)` takes. */
  static slotsFor(written: readonly number[], unused: readonly number[]): number {
    return written.length + (unused.length > 0 ? 2 + unused.length : 0);
  }

  /**
   * Thread side: append the runs written (flat, as records) and the blocks given back, then make
   * them visible. false (nothing appended) if they do not fit.
   */
  publish(written: readonly number[], unused: readonly number[]): boolean {
    if (ReportRing.slotsFor(written, unused) > this.room()) return false;
    const { slots, mask } = this;
    let at = Atomics.load(this.counters, HEAD);
    for (const v of written) slots[at++ & mask] = v;
    if (unused.length > 0) {
      slots[at++ & mask] = UNUSED;
      slots[at++ & mask] = unused.length;
      for (const b of unused) slots[at++ & mask] = b;
    }
    // (the slots' plain stores are visible to whoever loads this counter)
    Atomics.store(this.counters, HEAD, at | 0);
    return true;
  }

  /**
   * Event-loop side: everything published so far, in order and flat: each block of the runs
   * written beside its virtual block, and the blocks given back. Their slots are free once this
   * returns.
   */
  takeAll(): Taken {
    const { slots, mask } = this;
    const head = Atomics.load(this.counters, HEAD) >>> 0;
    let tail = Atomics.load(this.counters, TAIL) >>> 0;
    const taken: Taken = { vblocks: [], blocks: [], unused: [] };
    while (tail !== head) {
      const first = slots[tail & mask]!;
      const n = slots[(tail + 1) & mask]!;
      for (let i = 0; i < n; i++) {
        const block = slots[(tail + 2 + i) & mask]!;
        if (first === UNUSED) {
          taken.unused.push(block);
        } else {
          taken.vblocks.push(first + i);
          taken.blocks.push(block);
        }
      }
      tail = (tail + 2 + n) >>> 0;
    }
    Atomics.store(this.counters, TAIL, tail | 0);
    return taken;
  }
}

/** What ReportRing.takeAll gives: `blocks[i]` was written at virtual block `vblocks[i]`. */
export interface Taken {
  vblocks: number[];
  blocks: number[];
  unused: number[];
}
