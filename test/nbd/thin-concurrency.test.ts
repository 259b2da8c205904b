// A thin device serving NBD gets many requests at once. Lookups and metadata changes take the
// pool's lock; data I/O runs after it (reads always; a write's data once its blocks are mapped).
// Whatever the interleaving: a read never sees bytes of another device (a freed and reused data
// block), concurrent writes into one block both land, and a commit waits for data I/O in flight.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Pool } from '../../src/thin/pool.js';
import { MemoryBlockDevice, type BlockDevice } from '../../src/thin/block-device.js';

const KiB = 1024;
const BLOCK = 64 * KiB;

/** A data device whose reads and writes take a while, each a different while. */
class SlowDevice implements BlockDevice {
  /** Extra ms on top of a random 1-8 ms; null: no delay at all. */
  readDelay: number | null = 0;
  writeDelay: number | null = 0;
  constructor(private readonly inner: MemoryBlockDevice) {}
  private pause(extra: number | null): Promise<void> {
    return extra === null ? Promise.resolve() : new Promise((r) => setTimeout(r, extra + 1 + Math.floor(Math.random() * 8)));
  }
  size(): Promise<number> { return this.inner.size(); }
  async read(buf: Buffer, offset: number): Promise<void> {
    await this.pause(this.readDelay);
    await this.inner.read(buf, offset);
  }
  async write(buf: Buffer, offset: number): Promise<void> {
    const copy = Buffer.from(buf); // what was asked, even if the caller's buffer changes later
    await this.pause(this.writeDelay);
    await this.inner.write(copy, offset);
  }
  flush(): Promise<void> { return this.inner.flush(); }
  close(): Promise<void> { return this.inner.close(); }
}

async function slowPool(dataBlocks: number): Promise<{ pool: Pool; data: SlowDevice }> {
  const data = new SlowDevice(new MemoryBlockDevice(dataBlocks * BLOCK));
  const pool = await Pool.open({ metadataDevice: new MemoryBlockDevice(4 << 20), dataDevice: data, dataBlockSectors: BLOCK / 512 });
  return { pool, data };
}

test('reads racing writes into blocks freed by another device never see that device\'s bytes', async () => {
  const blocks = 16;
  const { pool } = await slowPool(blocks);
  await pool.message('create_thin 0');
  await pool.message('create_thin 1');
  const a = await pool.openThin(0, blocks * BLOCK);
  const b = await pool.openThin(1, blocks * BLOCK);
  // device 0 fills every data block with 0xAA, then lets them all go
  await a.write(Buffer.alloc(blocks * BLOCK, 0xaa), 0);
  await a.discard(0, blocks * BLOCK);
  await pool.commit();
  // device 1 gets the same data blocks; reads of it run while its writes are landing
  const writes: Array<Promise<void>> = [];
  const reads: Array<Promise<Buffer>> = [];
  for (let i = 0; i < blocks; i++) {
    writes.push(b.write(Buffer.alloc(BLOCK, 0x11 + i), i * BLOCK));
    for (let j = 0; j < 3; j++) {
      const buf = Buffer.alloc(BLOCK);
      reads.push(b.read(buf, i * BLOCK).then(() => buf));
    }
  }
  await Promise.all(writes);
  for (const buf of await Promise.all(reads)) {
    assert.ok(!buf.includes(0xaa), 'a read saw a freed block of another device');
    const v = buf[0]!;
    assert.ok(buf.every((x) => x === v), 'a read saw a half-written block');
  }
  for (let i = 0; i < blocks; i++) {
    const buf = Buffer.alloc(BLOCK);
    await b.read(buf, i * BLOCK);
    assert.ok(buf.every((x) => x === 0x11 + i));
  }
  await a.close();
  await b.close();
  await pool.close();
});

test('concurrent writes to different parts of one block both land, fresh block or not', async () => {
  const { pool } = await slowPool(64);
  await pool.message('create_thin 0');
  const dev = await pool.openThin(0, 32 * BLOCK);
  const expected = Buffer.alloc(32 * BLOCK);
  const pieces: Array<{ at: number; data: Buffer }> = [];
  for (let blk = 0; blk < 32; blk++) {
    // 4 KiB pieces at scattered places in the block, sent all at once (the first allocates and
    // zero-fills the block, the others write into it in place)
    for (let k = 0; k < 6; k++) {
      const at = blk * BLOCK + ((k * 11 + blk) % 16) * 4096;
      if (pieces.some((p) => p.at === at)) continue;
      pieces.push({ at, data: Buffer.alloc(4096, 1 + ((blk * 7 + k) % 250)) });
    }
  }
  await Promise.all(pieces.map((p) => dev.write(p.data, p.at)));
  for (const p of pieces) p.data.copy(expected, p.at);
  const back = Buffer.alloc(32 * BLOCK);
  await dev.read(back, 0);
  assert.ok(back.equals(expected));
  // and again over the now-provisioned blocks, with a snapshot in between so some are shared
  await dev.suspend();
  await pool.message('create_snap 1 0');
  dev.resume();
  await Promise.all(pieces.map((p, i) => dev.write(Buffer.alloc(4096, 251 - (i % 250)), p.at)));
  pieces.forEach((p, i) => expected.fill(251 - (i % 250), p.at, p.at + 4096));
  await dev.read(back, 0);
  assert.ok(back.equals(expected));
  await dev.close();
  await pool.close();
});

test('a commit waits for reads still in flight on blocks the commit makes reusable', async () => {
  const { pool, data } = await slowPool(8);
  await pool.message('create_thin 0');
  await pool.message('create_thin 1');
  const a = await pool.openThin(0, 8 * BLOCK);
  const b = await pool.openThin(1, 8 * BLOCK);
  data.readDelay = null;
  data.writeDelay = null;
  await a.write(Buffer.alloc(8 * BLOCK, 0x5a), 0);
  await pool.commit();
  // reads of device 0 are in flight (and slow) while its blocks are discarded, committed and
  // reused by quick writes of device 1
  data.readDelay = 30;
  const reads = Array.from({ length: 8 }, (_, i) => {
    const buf = Buffer.alloc(BLOCK);
    return a.read(buf, i * BLOCK).then(() => buf);
  });
  await a.discard(0, 8 * BLOCK);
  await pool.commit();
  await b.write(Buffer.alloc(8 * BLOCK, 0xc3), 0);
  for (const buf of await Promise.all(reads)) {
    assert.ok(buf.every((x) => x === 0x5a || x === 0), 'a read in flight saw data written after a commit reused its block');
  }
  await a.close();
  await b.close();
  await pool.close();
});
