// ThinDevice.planBatch: the metadata half of a batch of reads and writes whose data I/O the
// caller does itself (an NBD connection's thread). Checked in memory, doing the caller's part by
// hand: where the plan says the bytes are, that planning stops where it must, and that until the
// batch is settled its blocks are landing (reads of them wait) and commits wait.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { DataRun, RequestPlan } from '../../src/thin/thin-device.js';
import { zeroOutside } from '../../src/thin/thin-device.js';
import type { MemoryBlockDevice } from '../../src/thin/block-device.js';
import { memPool, pattern } from './helpers.js';

const BLOCK = 64 * 1024;

function runsOf(plan: RequestPlan | undefined): DataRun[] {
  assert.ok(Array.isArray(plan), `planned, not ${String(plan)}`);
  return plan;
}

/** The caller's part of a planned write: its runs, from its data, onto the data device. */
async function carryOutWrite(data: MemoryBlockDevice, plan: RequestPlan | undefined, payload: Buffer): Promise<void> {
  for (const r of runsOf(plan)) await data.write(payload.subarray(r.at, r.at + r.length), r.dataOffset);
}

async function carryOutRead(data: MemoryBlockDevice, plan: RequestPlan | undefined, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length, 0xee);
  const runs = runsOf(plan);
  zeroOutside(buf, runs);
  for (const r of runs) await data.read(buf.subarray(r.at, r.at + r.length), r.dataOffset);
  return buf;
}

/** Whether `p` is still pending after the event loop has had a chance to run it. */
async function pending(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  void p.then(() => (done = true), () => (done = true));
  await new Promise((r) => setTimeout(r, 20));
  return !done;
}

test('planned writes and reads land where the plan says: whole blocks by the caller, partial ones built by the pool', async () => {
  const { pool, data } = await memPool();
  await pool.message('create_thin 0');
  const dev = await pool.openThin(0, 64 * BLOCK);
  const whole = pattern(2 * BLOCK, 1);
  const partial = pattern(100, 2);
  const w = await dev.planBatch([
    { kind: 'write', offset: 4 * BLOCK, data: whole },
    { kind: 'write', offset: 9 * BLOCK + 5, data: partial },
  ]);
  // whole blocks: the caller writes them from its own buffer; a partial first write to a block is
  // zeroed around and written by the pool (nothing left for the caller)
  assert.equal(runsOf(w.plans[0]).reduce((n, r) => n + r.length, 0), 2 * BLOCK);
  // a fresh pool hands out consecutive data blocks: the two blocks are one pwrite for the caller
  assert.equal(runsOf(w.plans[0]).length, 1);
  assert.deepEqual(w.plans[1], []);
  await carryOutWrite(data, w.plans[0], whole);
  w.settle();

  const r = await dev.planBatch([{ kind: 'read', offset: 3 * BLOCK, length: 7 * BLOCK }]);
  const got = await carryOutRead(data, r.plans[0], 7 * BLOCK);
  r.settle();
  const expected = Buffer.alloc(7 * BLOCK);
  whole.copy(expected, BLOCK);
  partial.copy(expected, 6 * BLOCK + 5);
  assert.ok(got.equals(expected));
  // and the ordinary path reads the same bytes
  const again = Buffer.alloc(7 * BLOCK);
  await dev.read(again, 3 * BLOCK);
  assert.ok(again.equals(expected));
  await pool.close();
});

test('a request touching a block an earlier one of the batch touches waits for a later batch', async () => {
  const { pool } = await memPool();
  await pool.message('create_thin 0');
  const dev = await pool.openThin(0, 64 * BLOCK);
  const b = await dev.planBatch([
    { kind: 'write', offset: 0, data: Buffer.alloc(BLOCK, 1) },
    { kind: 'read', offset: 2 * BLOCK, length: 10 },
    { kind: 'read', offset: BLOCK - 1, length: 2 }, // overlaps the first
    { kind: 'write', offset: 5 * BLOCK, data: Buffer.alloc(BLOCK, 2) },
  ]);
  assert.ok(Array.isArray(b.plans[0]) && Array.isArray(b.plans[1]));
  assert.deepEqual(b.plans.slice(2), ['later', 'later'], 'planning stops at the overlap, order kept');
  b.settle();
  await pool.close();
});

test('until settled, the batch\'s blocks are landing: a read of them and a commit wait for it', async () => {
  const { pool, data } = await memPool();
  await pool.message('create_thin 0');
  const dev = await pool.openThin(0, 64 * BLOCK);
  const payload = pattern(BLOCK, 3);
  const w = await dev.planBatch([{ kind: 'write', offset: 0, data: payload }]);
  const reader = dev.planBatch([{ kind: 'read', offset: 0, length: BLOCK }]);
  const ordinaryRead = dev.read(Buffer.alloc(BLOCK), 0);
  const commit = pool.commit();
  assert.ok(await pending(reader), 'a planned read of the block waits');
  assert.ok(await pending(ordinaryRead), 'an ordinary read waits');
  assert.ok(await pending(commit), 'the commit waits');
  await carryOutWrite(data, w.plans[0], payload);
  w.settle();
  const r = await reader;
  assert.ok((await carryOutRead(data, r.plans[0], BLOCK)).equals(payload), 'the read sees the settled write');
  assert.ok(await pending(commit), 'the commit also waits for the read batch');
  r.settle();
  await commit;
  await ordinaryRead; // (queued behind the commit)
  await pool.close();
});

test('a write that needs a commit waits for a later batch once the batch has I/O pending', async () => {
  // 4 data blocks, all used; freeing three in this transaction leaves only blocks a commit must
  // release before they can be handed out again
  const { pool, data } = await memPool({ dataBytes: 4 * BLOCK });
  await pool.message('create_thin 0');
  const dev = await pool.openThin(0, 64 * BLOCK);
  await dev.write(pattern(4 * BLOCK, 4), 0);
  await pool.commit();
  await dev.discard(BLOCK, 3 * BLOCK);
  const b = await dev.planBatch([
    { kind: 'read', offset: 0, length: BLOCK },
    { kind: 'write', offset: 10 * BLOCK, data: Buffer.alloc(BLOCK, 5) },
  ]);
  assert.ok(Array.isArray(b.plans[0]));
  assert.equal(b.plans[1], 'later', 'a commit now would wait for this batch\'s own read');
  b.settle();
  // first in its batch, it may commit
  const payload = Buffer.alloc(BLOCK, 5);
  const next = await dev.planBatch([{ kind: 'write', offset: 10 * BLOCK, data: payload }]);
  await carryOutWrite(data, next.plans[0], payload);
  next.settle();
  const back = Buffer.alloc(BLOCK);
  await dev.read(back, 10 * BLOCK);
  assert.ok(back.equals(payload));
  await pool.close();
});

test('requests the plan cannot take go alone: out of space, outside the device, empty, closed device', async () => {
  const { pool } = await memPool({ dataBytes: 2 * BLOCK, features: ['error_if_no_space'] });
  await pool.message('create_thin 0');
  const dev = await pool.openThin(0, 64 * BLOCK);
  const b = await dev.planBatch([
    { kind: 'write', offset: 0, data: Buffer.alloc(2 * BLOCK, 1) },
    { kind: 'write', offset: 8 * BLOCK, data: Buffer.alloc(BLOCK, 2) }, // no block left
    { kind: 'read', offset: 63 * BLOCK, length: 2 * BLOCK },
    { kind: 'read', offset: 0, length: 0 },
  ]);
  assert.ok(Array.isArray(b.plans[0]));
  assert.deepEqual(b.plans.slice(1), ['alone', 'alone', 'alone']);
  b.settle();
  // the ordinary path then answers with the error
  await assert.rejects(dev.write(Buffer.alloc(BLOCK, 2), 8 * BLOCK), { code: 'POOL_NO_SPACE' });
  await dev.close();
  const closed = await dev.planBatch([{ kind: 'read', offset: 0, length: 10 }]);
  assert.deepEqual(closed.plans, ['alone']);
  closed.settle();
  await pool.close();
});
