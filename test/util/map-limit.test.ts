import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { mapLimit } from '../../src/util/map-limit.js';

test('mapLimit keeps input order and never runs more than the limit at once', async () => {
  let inFlight = 0;
  let peak = 0;
  const out = await mapLimit([5, 1, 4, 2, 3, 0, 6], 3, async (n) => {
    inFlight++;
    peak = Math.max(peak, inFlight);
    await sleep(n);
    inFlight--;
    return n * 10;
  });
  assert.deepEqual(out, [50, 10, 40, 20, 30, 0, 60]);
  assert.equal(peak, 3);
  assert.deepEqual(await mapLimit([], 4, async () => 1), []);
});

test('mapLimit rejects with the first error', async () => {
  await assert.rejects(mapLimit([1, 2, 3], 2, async (n) => {
    if (n === 2) throw new Error('two');
    return n;
  }), /two/);
});
