import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SpaceMap } from '../../src/thin/space-map.js';
import { encodeBitmap, decodeBitmap } from '../../src/thin/format/space-map-codec.js';
import { blockChecksum } from '../../src/thin/format/checksum.js';
import { initNode } from '../../src/thin/format/node.js';
import { isStrataError } from '../../src/errors.js';
import { memPool, checkDevice } from './helpers.js';
import { ThinMetadata } from '../../src/thin/metadata.js';
import { packBlockTime, unpackBlockTime } from '../../src/thin/format/mapping.js';

test('checksum matches the kernel (empty leaf test vector from the format note)', () => {
  const b = Buffer.alloc(4096);
  initNode(b, true, 8);
  b.writeUInt32LE(1, 8); // blocknr 1
  assert.equal(blockChecksum(b, 'node'), 0x49e29463);
});

test('bitmap encoding: 2 bits per block, low-numbered bit is the high bit', () => {
  const buf = encodeBitmap([1, 1, 1, 1, 2, 2, 0, 3], 8);
  assert.equal(buf[16], 0xaa);
  assert.equal(buf[17], 0x05 | (0x03 << 6));
  const out = new Uint8Array(8);
  decodeBitmap(buf, out, 8);
  assert.deepEqual([...out], [1, 1, 1, 1, 2, 2, 0, 3]);
});

test('space map: counts up and down, overflow past 255, freed blocks wait for the commit', () => {
  const sm = new SpaceMap(40000, 'POOL_NO_SPACE');
  const a = sm.alloc();
  const b = sm.alloc();
  assert.deepEqual([a, b], [0, 1]);
  for (let i = 0; i < 300; i++) sm.inc(a);
  assert.equal(sm.get(a), 301);
  assert.ok(sm.dirtyOverflow.has(a));
  for (let i = 0; i < 300; i++) sm.dec(a);
  assert.equal(sm.get(a), 1);
  sm.dec(b);
  assert.equal(sm.nrAllocated, 1);
  assert.notEqual(sm.alloc(), b, 'a block freed in this transaction is not reused before the commit');
  sm.commitDone();
  sm.inc(20000);
  assert.ok(sm.dirtyBitmaps.has(1));
  assert.throws(() => sm.dec(30000), (e) => isStrataError(e, 'INTERNAL'));
  const tiny = new SpaceMap(2, 'POOL_NO_SPACE');
  tiny.alloc();
  tiny.alloc();
  assert.throws(() => tiny.alloc(), (e) => isStrataError(e, 'POOL_NO_SPACE'));
});

test('space maps round-trip through disk, including counts above 2 (ref-count trees)', async () => {
  const { pool, meta } = await memPool();
  await pool.createThin(1);
  const dev = await pool.openThin(1, 1 << 20);
  await dev.write(Buffer.alloc(1 << 20, 1), 0);
  await dev.close();
  // many snapshots: data blocks and the subtree root get counts far above 2
  for (let i = 2; i < 300; i++) await pool.createSnap(i, 1);
  await pool.close();
  const md = await ThinMetadata.open(meta, { readOnly: true });
  assert.equal(md.dataSm.get(0), 1, 'leaf shared by node refcount, data count stays 1');
  const root = md.details.size;
  assert.equal(root, 299);
  const report = await checkDevice(meta);
  assert.deepEqual(report.issues, []);
  assert.equal(report.mappings, 16, 'the shared subtree is walked once');
});

test('block_time packs a 40-bit data block over a 24-bit time', () => {
  for (const [block, time] of [[0, 0], [1, 0xffffff], [0x12_3456_789a, 5], [2 ** 40 - 1, 77]] as const) {
    const v = packBlockTime(block, time);
    assert.equal(v.readBigUInt64LE(0), (BigInt(block) << 24n) | BigInt(time));
    assert.deepEqual(unpackBlockTime(v), { block, time });
  }
});
