// Read maps (read-map.ts): where a thin device's blocks are, for a reader on another thread to plan
// READs itself while the pool's map epoch says nothing has changed. Checked in memory: the runs a
// map gives, what ThinDevice.readMap reports (blocks still landing are not vouched for), and which
// operations move the epoch.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runsFromMap, UNKNOWN, UNMAPPED, type ReadMap } from '../../src/thin/read-map.js';
import { memPool, pattern } from './helpers.js';

const BLOCK = 64 * 1024;

const mapOf = (firstBlock: number, blocks: number[]): ReadMap => ({ firstBlock, blocks: Float64Array.from(blocks) });

test('runsFromMap: consecutive data blocks are one run, unmapped blocks are left out, partial blocks are cut', () => {
  const map = mapOf(10, [100, 101, UNMAPPED, 7, 8, 50]);
  assert.deepEqual(runsFromMap(map, BLOCK, 10 * BLOCK, 6 * BLOCK), [
    { at: 0, dataOffset: 100 * BLOCK, length: 2 * BLOCK },
    { at: 3 * BLOCK, dataOffset: 7 * BLOCK, length: 2 * BLOCK },
    { at: 5 * BLOCK, dataOffset: 50 * BLOCK, length: BLOCK },
  ]);
  // from the middle of block 11 to the middle of block 13
  assert.deepEqual(runsFromMap(map, BLOCK, 11 * BLOCK + 100, 2 * BLOCK), [
    { at: 0, dataOffset: 101 * BLOCK + 100, length: BLOCK - 100 },
    { at: 2 * BLOCK - 100, dataOffset: 7 * BLOCK, length: 100 },
  ]);
  assert.deepEqual(runsFromMap(map, BLOCK, 12 * BLOCK + 1, 10), [], 'an unmapped block reads as zeros');
});

test('runsFromMap: null for blocks outside the map, blocks it does not vouch for, and empty reads', () => {
  const map = mapOf(10, [100, UNKNOWN, 102]);
  assert.equal(runsFromMap(map, BLOCK, 9 * BLOCK, BLOCK), null);
  assert.equal(runsFromMap(map, BLOCK, 12 * BLOCK, BLOCK + 1), null, 'one byte past its end');
  assert.equal(runsFromMap(map, BLOCK, 10 * BLOCK, 2 * BLOCK), null, 'touches an UNKNOWN block');
  assert.equal(runsFromMap(map, BLOCK, 10 * BLOCK, 0), null);
  assert.deepEqual(runsFromMap(map, BLOCK, 12 * BLOCK, BLOCK), [{ at: 0, dataOffset: 102 * BLOCK, length: BLOCK }]);
});

test('readMap reports mapped and unmapped blocks, is cut at the device end and its block limit, and a block still landing is UNKNOWN', async () => {
  const { pool } = await memPool();
  await pool.message('create_thin 0');
  const dev = await pool.openThin(0, 16 * BLOCK + 100);
  await dev.write(pattern(2 * BLOCK, 1), 2 * BLOCK);
  const map = await dev.readMap(0, 1 << 30);
  assert.equal(map.firstBlock, 0);
  assert.equal(map.blocks.length, 17, 'up to the device end');
  const mapped = [...map.blocks].map((b, vb) => [vb, b] as const).filter(([, b]) => b !== UNMAPPED);
  assert.deepEqual(mapped.map(([vb]) => vb), [2, 3]);
  // what the map says is where the data is
  const got = Buffer.alloc(BLOCK);
  await pool.dataDevice.read(got, map.blocks[3]! * BLOCK);
  assert.ok(got.equals(pattern(2 * BLOCK, 1).subarray(BLOCK)));
  assert.equal((await dev.readMap(3 * BLOCK + 5, 100 * BLOCK, 4)).blocks.length, 4, 'the block limit');
  assert.equal((await dev.readMap(3 * BLOCK + 5, 1)).firstBlock, 3);

  // a planned write the caller has not carried out yet: its block holds no data yet
  const batch = await dev.planBatch([{ kind: 'write', offset: 8 * BLOCK, data: pattern(BLOCK, 2) }]);
  assert.equal((await dev.readMap(8 * BLOCK, BLOCK)).blocks[0], UNKNOWN);
  batch.settle();
  await new Promise((r) => setImmediate(r));
  assert.ok((await dev.readMap(8 * BLOCK, BLOCK)).blocks[0]! >= 0, 'mapped once settled');
  await dev.close();
  await pool.close();
});

test('the map epoch moves with every change to mappings and with commits, not with reads or lookups', async () => {
  const { pool } = await memPool();
  await pool.message('create_thin 0');
  const dev = await pool.openThin(0, 64 * BLOCK);
  const epoch = (): number => Atomics.load(pool.mapEpoch, 0);
  const moves = async (what: string, step: () => Promise<unknown>, expected = true): Promise<void> => {
    const before = epoch();
    await step();
    assert.equal(epoch() !== before, expected, `${what} ${expected ? 'moves' : 'leaves'} the epoch`);
  };
  await moves('a first write', () => dev.write(pattern(4 * BLOCK, 1), 0));
  await moves('a rewrite in place', () => dev.write(pattern(BLOCK, 2), 0), false);
  await moves('a read', () => dev.read(Buffer.alloc(4 * BLOCK), 0), false);
  await moves('readMap', () => dev.readMap(0, 64 * BLOCK), false);
  await moves('block status', () => dev.mapped(0, 64 * BLOCK), false);
  await moves('a planned batch of reads', async () => (await dev.planBatch([{ kind: 'read', offset: 0, length: BLOCK }])).settle(), false);
  await moves('a commit', () => pool.commit());
  await moves('a snapshot', () => pool.message('create_snap 1 0'));
  await moves('a write that breaks sharing', () => dev.write(pattern(BLOCK, 3), BLOCK));
  await moves('a discard', () => dev.discard(2 * BLOCK, BLOCK));
  const [block] = pool.leaseDataBlocks(1);
  await moves('an adopted write', () => dev.adopt([10], [block!]));
  await moves('deleting a device', () => pool.message('delete 1'));
  await dev.close();
  await pool.close();
});
