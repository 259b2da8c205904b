// MappedReads (planned-connection.ts): a connection thread's READs planned from a map of where a
// thin device's blocks are. Driven by hand on a real file standing in for the pool's data
// device: a read is served only while the epoch is the one the map was asked in, also when it
// moves while the data is being read; only while the gate is open; and maps that keep going
// stale unused are asked for less often.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openSync, closeSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { MappedReads } from '../../src/nbd/planned-connection.js';
import { FAST_INFLIGHT, FAST_OPEN } from '../../src/thin/thin-device.js';
import { UNMAPPED } from '../../src/thin/read-map.js';
import { tempDir } from './helpers.js';

const BLOCK = 4096;

async function withReads(use: (reads: MappedReads, maps: { epoch: Int32Array; gate: Int32Array }, data: Buffer) => void): Promise<void> {
  const { dir, cleanup } = await tempDir('strata-mapped-reads-');
  const data = randomBytes(8 * BLOCK);
  writeFileSync(join(dir, 'data'), data);
  const fd = openSync(join(dir, 'data'), 'r');
  try {
    const maps = { blockBytes: BLOCK, epoch: new Int32Array(new SharedArrayBuffer(4)), gate: new Int32Array(new SharedArrayBuffer(8)) };
    Atomics.store(maps.gate, FAST_OPEN, 1);
    use(new MappedReads(maps, fd), maps, data);
  } finally {
    closeSync(fd);
    await cleanup();
  }
}

test('a read inside the map comes from the data blocks it names, zeros where unmapped; outside it, or with no map, it is not served', async () => {
  await withReads((reads, maps, data) => {
    assert.equal(reads.usable, false, 'no map yet');
    assert.ok(reads.ask(0));
    // virtual blocks 10..13 -> data blocks 5, 6, unmapped, 2
    reads.got({ firstBlock: 10, blocks: Float64Array.from([5, 6, UNMAPPED, 2]) });
    assert.equal(reads.usable, true);
    const buf = Buffer.alloc(4 * BLOCK, 0xee);
    assert.equal(reads.read(buf, 10 * BLOCK), true);
    assert.ok(buf.equals(Buffer.concat([data.subarray(5 * BLOCK, 7 * BLOCK), Buffer.alloc(BLOCK), data.subarray(2 * BLOCK, 3 * BLOCK)])));
    assert.equal(reads.read(Buffer.alloc(BLOCK), 9 * BLOCK), false, 'before the map');
    assert.equal(reads.read(Buffer.alloc(2), 14 * BLOCK - 1), false, 'past its end');
    assert.equal(Atomics.load(maps.gate, FAST_INFLIGHT), 0, 'every read left the gate');
  });
});

test('a map is dropped once the epoch moves: before a read, and while one reads (which then is not served)', async () => {
  await withReads((reads, maps) => {
    reads.ask(0);
    reads.got({ firstBlock: 0, blocks: Float64Array.from([1, 2, 3]) });
    Atomics.add(maps.epoch, 0, 1);
    assert.equal(reads.usable, false, 'a change before the read');

    // (asked in the epoch as it is now; after a map that served nothing, not every batch asks)
    while (!reads.ask(0));
    reads.got({ firstBlock: 0, blocks: Float64Array.from([1, 2, 3]) });
    assert.equal(reads.usable, true);
    // the epoch moves after the check a caller makes first: the read's own check after its
    // pread catches it (a block freed and handed out meanwhile may hold anything)
    Atomics.add(maps.epoch, 0, 1);
    assert.equal(reads.read(Buffer.alloc(BLOCK), 0), false);
    assert.equal(reads.usable, false);
  });
});

test('a map asked for before a change is stale on arrival', async () => {
  await withReads((reads, maps) => {
    reads.ask(0);
    Atomics.add(maps.epoch, 0, 1); // a write answered while the map was being made
    reads.got({ firstBlock: 0, blocks: Float64Array.from([1]) });
    assert.equal(reads.usable, false);
  });
});

test('a shut gate sends reads the planned way; they count in it while they read', async () => {
  await withReads((reads, maps) => {
    reads.ask(0);
    reads.got({ firstBlock: 0, blocks: Float64Array.from([1, 2]) });
    Atomics.store(maps.gate, FAST_OPEN, 0);
    assert.equal(reads.read(Buffer.alloc(BLOCK), 0), false);
    assert.equal(Atomics.load(maps.gate, FAST_INFLIGHT), 0);
    Atomics.store(maps.gate, FAST_OPEN, 1);
    assert.equal(reads.read(Buffer.alloc(BLOCK), 0), true);
  });
});

test('maps that go stale before serving a read are asked for less and less often, and as often as before once one serves', async () => {
  await withReads((reads, maps) => {
    const asks = (batches: number): number => {
      let n = 0;
      for (let i = 0; i < batches; i++) {
        if (!reads.ask(0)) continue;
        n++;
        reads.got({ firstBlock: 0, blocks: Float64Array.from([1]) });
        Atomics.add(maps.epoch, 0, 1); // stale before any read
        assert.equal(reads.usable, false);
      }
      return n;
    };
    // 1 + 2 + 4 + 8 + 16 + 32 batches for the first six asks, then one in 64
    assert.equal(asks(63), 6);
    assert.equal(asks(128), 2);
    // one that serves a read: every batch asks again
    while (!reads.ask(0));
    reads.got({ firstBlock: 0, blocks: Float64Array.from([1]) });
    assert.equal(reads.read(Buffer.alloc(BLOCK), 0), true);
    Atomics.add(maps.epoch, 0, 1);
    assert.equal(reads.usable, false);
    assert.ok(reads.ask(0) && reads.ask(0), 'two batches in a row ask');
  });
});
