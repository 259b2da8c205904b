import type { BlockDevice } from './block-device.js';
import { BLOCK_SIZE, type BlockKind } from './format/constants.js';
import { sealBlock, validateBlock } from './format/checksum.js';
import { nodeHeaderProblem } from './format/node.js';
import type { SpaceMap } from './space-map.js';
import { strataError } from '../errors.js';

/**
 * Copy-on-write access to metadata blocks (persistent-data/dm-transaction-manager.c).
 *
 * Nothing reachable from the last committed superblock is ever overwritten: to change a block the
 * caller *shadows* it. A block allocated in this transaction with a single reference is written
 * in place; anything else is copied to a newly allocated block and the original's count dropped.
 * Blocks changed in this transaction stay pinned in memory (`dirty`) until the commit writes them,
 * which bounds memory by the size of a transaction (the pool commits when it grows large); clean
 * blocks sit in an LRU cache of `cacheBlocks` entries.
 */
export class TransactionManager {
  /** The metadata space map; set once it is loaded or formatted. */
  sm!: SpaceMap;
  private readonly clean = new Map<number, Buffer>();
  private readonly dirty = new Map<number, { buf: Buffer; kind: BlockKind }>();
  /** Blocks allocated in this transaction (safe to write in place while their count is 1). */
  private readonly shadows = new Set<number>();
  /** I/O counters (blocks read from the device, write calls, blocks written). */
  reads = 0;
  writes = 0;
  blocksWritten = 0;

  constructor(readonly dev: BlockDevice, private readonly cacheBlocks = 8192) {}

  get dirtyCount(): number {
    return this.dirty.size;
  }

  /** Read a block, validated as `kind`. The buffer must not be modified (shadow it instead). */
  async read(b: number, kind: BlockKind): Promise<Buffer> {
    const d = this.dirty.get(b);
    if (d) return d.buf;
    const c = this.clean.get(b);
    if (c) {
      // refresh its LRU position
      this.clean.delete(b);
      this.clean.set(b, c);
      return c;
    }
    if (!Number.isSafeInteger(b) || b <= 0 && kind !== 'superblock' || b >= this.sm.nrBlocks) {
      throw strataError('METADATA_CORRUPT', `reference to metadata block ${b} outside the device (${this.sm.nrBlocks} blocks)`, { block: b });
    }
    const buf = Buffer.allocUnsafe(BLOCK_SIZE);
    await this.dev.read(buf, b * BLOCK_SIZE);
    this.reads++;
    const bad = validateBlock(buf, b, kind) ?? (kind === 'node' ? nodeHeaderProblem(buf) : null);
    if (bad) throw strataError('METADATA_CORRUPT', `metadata block ${b}: ${bad}`, { block: b });
    this.clean.set(b, buf);
    if (this.clean.size > this.cacheBlocks) {
      const oldest = this.clean.keys().next().value as number;
      this.clean.delete(oldest);
    }
    return buf;
  }

  /** A zeroed, writable new block with one reference. */
  newBlock(kind: BlockKind): { block: number; buf: Buffer } {
    const block = this.sm.alloc();
    const buf = Buffer.alloc(BLOCK_SIZE);
    this.clean.delete(block);
    this.dirty.set(block, { buf, kind });
    this.shadows.add(block);
    return { block, buf };
  }

  /** Make a block writable; `incChildren` tells the caller the original was shared. */
  async shadow(b: number, kind: BlockKind): Promise<{ block: number; buf: Buffer; incChildren: boolean }> {
    const shared = this.sm.get(b) > 1;
    if (this.shadows.has(b) && !shared) return { block: b, buf: this.dirty.get(b)!.buf, incChildren: false };
    const orig = await this.read(b, kind);
    const { block, buf } = this.newBlock(kind);
    orig.copy(buf);
    this.dec(b);
    return { block, buf, incChildren: shared };
  }

  refCount(b: number): number {
    return this.sm.get(b);
  }

  inc(b: number): void {
    this.sm.inc(b);
  }

  dec(b: number): void {
    if (this.sm.dec(b) === 0 && this.shadows.has(b)) {
      // allocated and released within this transaction: never needs writing
      this.dirty.delete(b);
      this.shadows.delete(b);
    }
  }

  /** Put a fully built block (e.g. a bitmap) into the transaction at a block this txn allocated. */
  install(b: number, buf: Buffer, kind: BlockKind): void {
    if (!this.shadows.has(b)) throw strataError('INTERNAL', `block ${b} was not allocated in this transaction`, { block: b });
    this.dirty.set(b, { buf, kind });
  }

  /** Write every dirty block (sealed, in block order, adjacent blocks in one write), then flush. */
  async writeDirty(): Promise<void> {
    const blocks = [...this.dirty.keys()].sort((a, b) => a - b);
    for (let i = 0; i < blocks.length;) {
      let j = i + 1;
      while (j < blocks.length && blocks[j] === blocks[j - 1]! + 1 && j - i < 256) j++;
      const run = Buffer.allocUnsafe((j - i) * BLOCK_SIZE);
      for (let k = i; k < j; k++) {
        const { buf, kind } = this.dirty.get(blocks[k]!)!;
        sealBlock(buf, blocks[k]!, kind);
        buf.copy(run, (k - i) * BLOCK_SIZE);
      }
      await this.dev.write(run, blocks[i]! * BLOCK_SIZE);
      this.writes++;
      this.blocksWritten += j - i;
      i = j;
    }
    await this.dev.flush();
  }

  /** The commit point: the superblock, written alone and flushed. */
  async writeSuperblock(sb: Buffer): Promise<void> {
    await this.dev.write(sb, 0);
    this.writes++;
    this.blocksWritten++;
    await this.dev.flush();
  }

  /** After a successful commit: dirty blocks become clean cache entries. */
  endTransaction(): void {
    for (const [b, { buf }] of this.dirty) {
      this.clean.set(b, buf);
    }
    while (this.clean.size > this.cacheBlocks) this.clean.delete(this.clean.keys().next().value as number);
    this.dirty.clear();
    this.shadows.clear();
    this.sm.commitDone();
  }

  /** Drop everything uncommitted (the caller reloads from the superblock). */
  abort(): void {
    this.dirty.clear();
    this.shadows.clear();
    this.clean.clear();
  }
}
