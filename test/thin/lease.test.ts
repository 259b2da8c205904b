// Writes made outside the pool: a writer leases free data blocks (Pool.leaseDataBlocks), writes
// whole blocks into them, and has them mapped afterwards (ThinDevice.adopt), so an NBD thread can
// answer a write without waiting for the metadata. Checked in memory, doing the writer's part by hand.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SpaceMap } from '../../src/thin/space-map.js';
import { Pool } from '../../src/thin/pool.js';
import { FAST_INFLIGHT, FAST_OPEN } from '../../src/thin/thin-device.js';
import { checkMetadata } from '../../src/thin/check.js';
import { memPool, pattern } from './helpers.js';

const BLOCK = 64 * 1024;

test('reserved blocks are passed over by alloc until claimed or given back; blocks freed in the transaction are never lent', () => {
  const sm = new SpaceMap(16, 'POOL_NO_SPACE');
  const a = sm.alloc();
  sm.dec(a); // freed in this transaction: the last commit may still point at it
  const lent = sm.reserve(3);
  assert.equal(lent.includes(a), false);
  assert.equal(sm.nrReserved, 3);
  for (let i = 0; i < 16 - 1 - 3; i++) assert.equal(lent.includes(sm.alloc()), false);
  assert.throws(() => sm.alloc(), /no free blocks/);
  sm.claim(lent[0]!);
  assert.equal(sm.get(lent[0]!), 1);
  assert.throws(() => sm.claim(lent[0]!), /not lent out free/);
  assert.throws(() => sm.claim(a), /not lent out free/);
  sm.unreserve(lent.slice(1));
  assert.equal(sm.nrReserved, 0);
  assert.equal(lent.slice(1).includes(sm.alloc()), true);
  sm.extend(32);
  assert.deepEqual(sm.reserve(2).length, 2);
});

test('leased blocks written by hand and adopted read back, survive a commit and a reopen, and check clean', async () => {
  const { pool, meta, data } = await memPool();
  await pool.message('create_thin 0');
  const dev = await pool.openThin(0, 1 << 20);
  const lease = pool.leaseDataBlocks(4);
  assert.equal(lease.length, 4);
  // a commit while they are lent records them free (no leak), and keeps them lent
  await pool.commit();
  assert.deepEqual((await checkMetadata(pool.md)).issues, []);
  const payload = pattern(3 * BLOCK, 7);
  for (let i = 0; i < 3; i++) await data.write(payload.subarray(i * BLOCK, (i + 1) * BLOCK), lease[i]! * BLOCK);
  await dev.write(pattern(BLOCK, 1), 9 * BLOCK); // an ordinary write meanwhile gets another block
  await dev.adopt([2, 3, 4], lease.slice(0, 3));
  pool.returnLease(lease.slice(3));
  const back = Buffer.alloc(3 * BLOCK);
  await dev.read(back, 2 * BLOCK);
  assert.ok(back.equals(payload));
  assert.equal((await pool.status()).usedDataBlocks, 4);
  await dev.flush();
  assert.deepEqual((await checkMetadata(pool.md)).issues, []);
  await pool.close();
  const again = await Pool.open({ metadataDevice: meta, dataDevice: data, dataBlockSectors: 128 });
  const reopened = await again.openThin(0, 1 << 20);
  const read = Buffer.alloc(3 * BLOCK);
  await reopened.read(read, 2 * BLOCK);
  assert.ok(read.equals(payload));
  await again.close();
});

test('one adopt maps runs of two writers interleaved, across leaves, and a block written twice ends as written last', async () => {
  const { pool, data } = await memPool({ dataBytes: 2700 * BLOCK, metaBytes: 8 << 20 });
  await pool.message('create_thin 0');
  const dev = await pool.openThin(0, 2048 * BLOCK);
  // two connections' 4-block writes as they are taken in (A at 0, 8, 16, …; B at 1024, 1032, …;
  // 320 blocks each: more than a leaf holds), and block 5 written again at the end
  const vblocks: number[] = [];
  for (let w = 0; w < 80; w++) for (const base of [w * 8, 1024 + w * 8]) vblocks.push(base, base + 1, base + 2, base + 3);
  vblocks.push(5);
  const blocks = pool.leaseDataBlocks(vblocks.length);
  assert.equal(blocks.length, vblocks.length);
  for (let i = 0; i < blocks.length; i++) await data.write(pattern(BLOCK, i + 1), blocks[i]! * BLOCK);
  await dev.adopt(vblocks, blocks);
  assert.equal(dev.adoptedBlocks, vblocks.length);
  const last = new Map<number, number>();
  vblocks.forEach((vb, i) => last.set(vb, i + 1));
  const got = Buffer.alloc(BLOCK);
  for (const [vb, seed] of last) {
    await dev.read(got, vb * BLOCK);
    assert.ok(got.equals(pattern(BLOCK, seed)), `block ${vb}`);
  }
  // the block first written at 5 was released; the rest are mapped once each
  assert.equal((await pool.status()).usedDataBlocks, last.size);
  await pool.commit();
  assert.deepEqual((await checkMetadata(pool.md)).issues, []);
  await pool.close();
});

test('adopting over a block shared with a snapshot maps the new one and leaves the snapshot its own', async () => {
  const { pool, data } = await memPool();
  await pool.message('create_thin 0');
  const origin = await pool.openThin(0, 1 << 20);
  await origin.write(pattern(2 * BLOCK, 1), 0);
  await origin.flush();
  await origin.suspend();
  await pool.message('create_snap 1 0');
  origin.resume();
  const [leased] = pool.leaseDataBlocks(1);
  await data.write(pattern(BLOCK, 2), leased! * BLOCK);
  await origin.adopt([0], [leased!]);
  const snap = await pool.openThin(1, 1 << 20);
  const a = Buffer.alloc(2 * BLOCK);
  const b = Buffer.alloc(2 * BLOCK);
  await origin.read(a, 0);
  await snap.read(b, 0);
  assert.ok(a.subarray(0, BLOCK).equals(pattern(BLOCK, 2)));
  assert.ok(a.subarray(BLOCK).equals(pattern(2 * BLOCK, 1).subarray(BLOCK)));
  assert.ok(b.equals(pattern(2 * BLOCK, 1)));
  assert.equal((await pool.status()).usedDataBlocks, 3);
  await pool.commit();
  assert.deepEqual((await checkMetadata(pool.md)).issues, []);
  // and over a block only the origin maps: the old one is freed, nothing leaks
  const [again] = pool.leaseDataBlocks(1);
  await data.write(pattern(BLOCK, 3), again! * BLOCK);
  await origin.adopt([0], [again!]);
  await pool.commit();
  assert.equal((await pool.status()).usedDataBlocks, 3);
  assert.deepEqual((await checkMetadata(pool.md)).issues, []);
  await pool.close();
});

test('no lease near the low-water mark; a closed device adopts nothing and the blocks go back', async () => {
  const { pool } = await memPool({ dataBytes: 64 * BLOCK, lowWaterMark: 40 });
  await pool.message('create_thin 0');
  const dev = await pool.openThin(0, 1 << 20);
  assert.deepEqual(pool.leaseDataBlocks(8), []); // 64 free - 40 < 4 x 8
  assert.equal(pool.leaseDataBlocks(4).length, 4);
  const more = pool.leaseDataBlocks(2);
  await dev.close();
  await assert.rejects(dev.adopt([0, 1], more), /closed/);
  assert.equal(pool.md.dataSm.nrReserved, 4);
  await pool.close();
});

test('suspend closes the gate of writes made outside the pool, and waits for those started', async () => {
  const { pool } = await memPool();
  await pool.message('create_thin 0');
  const dev = await pool.openThin(0, 1 << 20);
  const gate = dev.fastWriteGate;
  assert.equal(Atomics.load(gate, FAST_OPEN), 1);
  Atomics.add(gate, FAST_INFLIGHT, 1); // a writer has started
  let suspended = false;
  const suspending = dev.suspend().then(() => (suspended = true));
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(Atomics.load(gate, FAST_OPEN), 0);
  assert.equal(suspended, false);
  Atomics.sub(gate, FAST_INFLIGHT, 1); // ... and reported its blocks
  await suspending;
  dev.resume();
  assert.equal(Atomics.load(gate, FAST_OPEN), 1);
  await pool.close();
});

test('blocks being passed down to the data device after a commit are lent to nobody meanwhile', async () => {
  const { pool, data } = await memPool({ dataBytes: 64 * BLOCK });
  await pool.message('create_thin 0');
  const dev = await pool.openThin(0, 1 << 20);
  await dev.write(pattern(8 * BLOCK, 1), 0);
  await dev.flush();
  const freed = new Set<number>();
  for (let vb = 0; vb < 8; vb++) freed.add((await pool.md.lookupMapping(0, vb))!.block);
  await dev.discard(0, 8 * BLOCK);
  // lease while the passdown is discarding: every block of the pool that is free then
  const leasedDuring: number[] = [];
  const discard = data.discard.bind(data);
  data.discard = async (offset, length) => {
    for (let got = pool.leaseDataBlocks(1); got.length > 0; got = pool.leaseDataBlocks(1)) leasedDuring.push(...got);
    await discard(offset, length);
  };
  await pool.commit();
  assert.ok(leasedDuring.length > 0, 'the passdown ran and a lease was given meanwhile');
  assert.deepEqual(leasedDuring.filter((b) => freed.has(b)), []);
  pool.returnLease(leasedDuring);
  // once passed down, they may be lent again
  assert.ok(pool.leaseDataBlocks(8).some((b) => freed.has(b)));
  await pool.close();
});
