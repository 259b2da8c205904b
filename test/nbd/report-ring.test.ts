// ReportRing (src/nbd/report-ring.ts), in memory: records come out whole and in order across the
// wrap of the slots and of the uint32 counters, room is accounted, and a record that does not
// fit is refused whole.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ReportRing, type Taken } from '../../src/nbd/report-ring.js';

const nothing = (): Taken => ({ vblocks: [], blocks: [], unused: [] });

/** What takeAll should give for a run of `blocks` written from virtual block `first`. */
function expectRun(into: Taken, first: number, blocks: number[]): void {
  blocks.forEach((b, i) => {
    into.vblocks.push(first + i);
    into.blocks.push(b);
  });
}

test('report ring: runs and given-back blocks come out in order, across many wraps of the slots', () => {
  const memory = ReportRing.create(40);
  const ring = new ReportRing(memory);
  assert.equal(ring.room(), 64, 'capacity rounded up to a power of two');
  let next = 0;
  for (let round = 0; round < 500; round++) {
    const expected = nothing();
    const written: number[] = [];
    for (let r = 0; r < 1 + (round % 4); r++) {
      const blocks = Array.from({ length: 1 + ((round + r) % 5) }, () => next++);
      written.push(round * 10 + r, blocks.length, ...blocks);
      expectRun(expected, round * 10 + r, blocks);
    }
    const unused = round % 3 === 0 ? [next++, next++] : [];
    expected.unused.push(...unused);
    assert.equal(ring.publish(written, unused), true);
    assert.equal(ring.room(), 64 - ReportRing.slotsFor(written, unused));
    assert.deepEqual(ring.takeAll(), expected, `round ${round}`);
    assert.equal(ring.room(), 64);
  }
});

test('report ring: a record that does not fit is refused whole; what was published stays', () => {
  const ring = new ReportRing(ReportRing.create(16));
  assert.equal(ring.publish([0, 5, 1, 2, 3, 4, 5], []), true); // 7 slots
  assert.equal(ring.publish([1, 8, 1, 2, 3, 4, 5, 6, 7, 8], []), false); // 10 more: over 16
  assert.equal(ring.room(), 9);
  assert.deepEqual(ring.takeAll(), { vblocks: [0, 1, 2, 3, 4], blocks: [1, 2, 3, 4, 5], unused: [] });
});

test('report ring: the counters wrap past 2^32 without losing a record', () => {
  const memory = ReportRing.create(16);
  const counters = new Int32Array(memory, 0, 2);
  // both counters just short of the uint32 wrap, as after ~4 billion slots
  counters[0] = -3;
  counters[1] = -3;
  const ring = new ReportRing(memory);
  for (let i = 0; i < 10; i++) {
    assert.equal(ring.publish([i, 2, 100 + i, 200 + i], [300 + i]), true);
    assert.deepEqual(ring.takeAll(), { vblocks: [i, i + 1], blocks: [100 + i, 200 + i], unused: [300 + i] });
  }
  assert.equal(ring.room(), 16);
});

test('report ring: what one thread publishes the other takes in, in order, while both run', async () => {
  const { Worker } = await import('node:worker_threads');
  const memory = ReportRing.create(64);
  const ring = new ReportRing(memory);
  const src = new URL('../../src/nbd/report-ring.ts', import.meta.url).href;
  // the publisher spins while the ring is full, as many records as the ring holds ten thousand times over
  const tsxApi = import.meta.resolve('tsx/esm/api');
  const worker = new Worker(`
    const { workerData } = require('node:worker_threads');
    import(${JSON.stringify(tsxApi)}).then((api) => { api.register(); return import(workerData.src); }).then(({ ReportRing }) => {
      const ring = new ReportRing(workerData.memory);
      { const nap = new Int32Array(new SharedArrayBuffer(4)); for (let i = 0; i < 20000; i++) while (!ring.publish([i, 3, i, i + 1, i + 2], [])) Atomics.wait(nap, 0, 0, 0); }
    });
  `, { eval: true, workerData: { memory, src } });
  const failed = new Promise<never>((_, reject) => worker.once('error', reject));
  const deadline = Date.now() + 20_000;
  let expected = 0;
  const want = nothing();
  while (expected < 20000) {
    const taken = ring.takeAll();
    const from = expected;
    for (; expected < from + taken.blocks.length / 3; expected++) expectRun(want, expected, [expected, expected + 1, expected + 2]);
    assert.deepEqual(taken, want);
    want.vblocks.length = want.blocks.length = 0;
    assert.ok(Date.now() < deadline, `stuck after ${expected} records`);
    await Promise.race([new Promise((r) => setImmediate(r)), failed]);
  }
  await worker.terminate();
});
