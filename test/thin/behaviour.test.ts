import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { stat, truncate } from 'node:fs/promises';
import { memPool, filePool, tempDir, pattern, checkDevice, sparseFile, thinTools, tool } from './helpers.js';
import { Pool } from '../../src/thin/pool.js';
import { ThinMetadata } from '../../src/thin/metadata.js';
import { MemoryBlockDevice, CrashController } from '../../src/thin/block-device.js';
import { isStrataError } from '../../src/errors.js';
import { parseTable, formatTable } from '../../src/thin/table.js';
import { parsePoolStatus } from '../../src/thin/status.js';

const BS = 64 * 1024;
const code = (c: string) => (e: unknown) => isStrataError(e) && e.code === c;

test('discard unmaps whole blocks and frees them; shared blocks only lose a reference; ignore_discard ignores', async () => {
  const { pool, meta, data } = await memPool();
  await pool.createThin(1);
  const dev = await pool.openThin(1, 2 << 20);
  await dev.write(pattern(1 << 20, 1), 0);
  await pool.createSnap(2, 1);
  assert.equal((await pool.status()).usedDataBlocks, 16);
  const pagesBefore = data.pagesHeld;
  // partial blocks at both ends keep their mappings
  await dev.discard(BS / 2, 4 * BS);
  assert.equal((await dev.status()).mappedSectors, 13 * 128);
  assert.equal((await pool.status()).usedDataBlocks, 16, 'the snapshot still holds the discarded blocks');
  const z = Buffer.alloc(3 * BS, 1);
  await dev.read(z, BS);
  assert.ok(z.every((b) => b === 0));
  const snap = await pool.openThin(2, 2 << 20);
  await snap.discard(0, 2 << 20);
  assert.equal((await snap.status()).highestMappedSector, null);
  assert.equal((await pool.status()).usedDataBlocks, 13);
  assert.equal(pagesBefore - data.pagesHeld, 3 * (BS / 4096), 'the 3 freed blocks were passed down to the data device');
  assert.deepEqual(await dev.mapped(0, 1 << 20), [
    { offset: 0, length: BS, mapped: true },
    { offset: BS, length: 3 * BS, mapped: false },
    { offset: 4 * BS, length: 12 * BS, mapped: true },
  ]);
  await pool.close();
  assert.deepEqual((await checkDevice(meta)).issues, []);

  const ig = await memPool({ features: ['ignore_discard'] });
  await ig.pool.createThin(1);
  const d = await ig.pool.openThin(1, 1 << 20);
  await d.write(Buffer.alloc(BS, 7), 0);
  await d.discard(0, BS);
  assert.equal((await d.status()).mappedSectors, 128);
  assert.equal((await ig.pool.status()).discard, 'ignore_discard');
  await ig.pool.close();
});

test('discard passdown punches the freed blocks out of a sparse data file at commit; shared blocks and no_discard_passdown keep theirs', async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const allocated = async () => (await stat(join(dir, 'data'))).blocks * 512;
    // the host filesystem may add a block or two of its own (extent index) as holes appear
    const near = (got: number, want: number, what: string) => assert.ok(Math.abs(got - want) <= 16384, `${what}: ${got} bytes allocated, expected ${want}`);
    const pool = await filePool(dir);
    assert.equal((await pool.status()).discard, 'discard_passdown');
    await pool.createThin(1);
    const dev = await pool.openThin(1, 2 << 20);
    await dev.write(pattern(2 << 20, 3), 0);
    await dev.flush();
    const full = await allocated();
    assert.ok(full >= 2 << 20, `32 written blocks are allocated in the file (${full})`);
    await pool.createSnap(2, 1);
    await dev.write(pattern(4 * BS, 9), 0); // blocks 0-3 now differ from the snapshot's
    await dev.discard(0, 8 * BS);
    // before the commit the freed blocks keep their bytes: the last commit still maps them
    near(await allocated(), full + 4 * BS, 'before the commit');
    await dev.flush();
    // the 4 blocks only the origin held are punched; 4 more are still the snapshot's
    near(await allocated(), full, 'after the commit');
    const snap = await pool.openThin(2, 2 << 20);
    const got = Buffer.alloc(2 << 20);
    await snap.read(got, 0);
    assert.ok(got.equals(pattern(2 << 20, 3)), 'the snapshot reads its data intact');
    await snap.discard(0, 8 * BS);
    await snap.flush();
    near(await allocated(), full - 8 * BS, 'after the snapshot\'s discard');
    // freed and punched blocks are allocated again later and read back correctly
    await dev.write(pattern(8 * BS, 5), 0);
    await dev.read(got.subarray(0, 8 * BS), 0);
    assert.ok(got.subarray(0, 8 * BS).equals(pattern(8 * BS, 5)));
    await pool.close();
    if (thinTools) assert.equal(tool('thin_check', [join(dir, 'metadata')]).status, 0);
  } finally {
    await cleanup();
  }

  const off = await tempDir();
  try {
    const pool = await filePool(off.dir, { features: ['no_discard_passdown'] });
    assert.equal((await pool.status()).discard, 'no_discard_passdown');
    await pool.createThin(1);
    const dev = await pool.openThin(1, 1 << 20);
    await dev.write(pattern(1 << 20, 4), 0);
    await dev.flush();
    const before = (await stat(join(off.dir, 'data'))).blocks;
    await dev.discard(0, 1 << 20);
    await dev.flush();
    assert.equal((await pool.status()).usedDataBlocks, 0);
    assert.equal((await stat(join(off.dir, 'data'))).blocks, before, 'the data file keeps its blocks');
    await pool.close();
  } finally {
    await off.cleanup();
  }
});

test('writeZeroes reads back zeros, unmapping whole blocks and writing partial ones', async () => {
  const { pool } = await memPool();
  await pool.createThin(1);
  const dev = await pool.openThin(1, 1 << 20);
  await dev.write(Buffer.alloc(1 << 20, 0xff), 0);
  await dev.writeZeroes(1000, 3 * BS);
  const got = Buffer.alloc(1 << 20);
  await dev.read(got, 0);
  assert.ok(got.subarray(1000, 1000 + 3 * BS).every((b) => b === 0));
  assert.ok(got.subarray(0, 1000).every((b) => b === 0xff));
  assert.ok(got.subarray(1000 + 3 * BS).every((b) => b === 0xff));
  assert.equal((await dev.status()).mappedSectors, 14 * 128);
  await pool.close();
});

test('out of data space with error_if_no_space: ENOSPC-style error, metadata intact, freed space reusable', async () => {
  const { pool, meta } = await memPool({ dataBytes: 8 * BS, features: ['error_if_no_space'] });
  await pool.createThin(1);
  const dev = await pool.openThin(1, 1 << 20);
  await dev.write(Buffer.alloc(8 * BS, 1), 0);
  await assert.rejects(dev.write(Buffer.alloc(10, 2), 9 * BS), code('POOL_NO_SPACE'));
  const st = await pool.status();
  assert.equal(st.mode, 'out_of_data_space');
  assert.equal(st.noSpace, 'error_if_no_space');
  // rewriting mapped blocks needs no space
  await dev.write(Buffer.alloc(BS, 3), 0);
  // blocks discarded in this transaction are reused once the pool commits (done by the allocator)
  await dev.discard(BS, 2 * BS);
  await dev.write(Buffer.alloc(BS, 4), 12 * BS);
  assert.equal((await pool.status()).mode, 'rw');
  await pool.close();
  assert.deepEqual((await checkDevice(meta)).issues, []);
});

test('out of data space without error_if_no_space: writes wait until the pool grows', async () => {
  const { dir, cleanup } = await tempDir();
  try {
    let lowWater = 0;
    const pool = await filePool(dir, { dataBytes: 4 * BS, lowWaterMark: 1, onLowWater: () => lowWater++ });
    await pool.createThin(1);
    const dev = await pool.openThin(1, 1 << 20);
    await dev.write(Buffer.alloc(4 * BS, 1), 0);
    assert.equal(lowWater, 1, 'the low-water mark fired once');
    let done = false;
    const waiting = dev.write(Buffer.alloc(BS, 2), 5 * BS).then(() => (done = true));
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(done, false, 'the write is queued');
    assert.equal((await pool.status()).mode, 'out_of_data_space');
    await sparseFile(join(dir, 'data'), 16 * BS);
    await pool.resize();
    await waiting;
    const got = Buffer.alloc(BS);
    await dev.read(got, 5 * BS);
    assert.ok(got.every((b) => b === 2));
    assert.equal((await pool.status()).totalDataBlocks, 16);
    await pool.close();
  } finally {
    await cleanup();
  }
});

test('a queued write gives up after the no-space timeout', async () => {
  const { pool } = await memPool({ dataBytes: 2 * BS, noSpaceTimeoutMs: 50 });
  await pool.createThin(1);
  const dev = await pool.openThin(1, 1 << 20);
  await dev.write(Buffer.alloc(2 * BS), 0);
  await assert.rejects(dev.write(Buffer.alloc(1), 3 * BS), code('POOL_NO_SPACE'));
  await pool.close();
});

test('metadata space exhaustion is reported, never half-applied', async () => {
  const { pool, meta } = await memPool({ metaBytes: 80 * 4096, dataBytes: 64 << 20 });
  let failed: unknown = null;
  let created = 0;
  for (let i = 0; i < 100 && !failed; i++) {
    try {
      await pool.createThin(i);
      created++;
    } catch (err) {
      failed = err;
    }
  }
  assert.ok(isStrataError(failed, 'METADATA_NO_SPACE'), String(failed));
  assert.ok(created > 5);
  assert.deepEqual(pool.devices().length, created);
  const st = await pool.status();
  assert.equal(st.mode, 'rw');
  assert.equal(st.totalMetadataBlocks, 80);
  // provisioning needs metadata too: refused up front, nothing half-done
  const dev = await pool.openThin(0, 1 << 20);
  await assert.rejects(dev.write(Buffer.alloc(4 * BS, 1), 0), code('METADATA_NO_SPACE'));
  // deleting devices gives the space back
  for (let i = 1; i < created; i++) await pool.deleteDevice(i);
  await dev.write(Buffer.alloc(4 * BS, 1), 0);
  await dev.flush();
  await dev.close();
  await pool.createThin(500);
  await pool.close();
  assert.deepEqual((await checkDevice(meta)).issues, []);
});

test('read_only pools refuse changes; a second writer waits for the lock', async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const pool = await filePool(dir);
    await pool.createThin(1);
    const opts = { metadataPath: join(dir, 'metadata'), dataPath: join(dir, 'data'), dataBlockSectors: 128 };
    await assert.rejects(Pool.open({ ...opts, lockTimeoutMs: 100 }), code('LOCK_TIMEOUT'));
    await pool.close();
    const ro = await Pool.open({ ...opts, features: ['read_only'] });
    const ro2 = await Pool.open({ ...opts, features: ['read_only'] });
    const dev = await ro.openThin(1, 1 << 20);
    await assert.rejects(dev.write(Buffer.alloc(1), 0), code('POOL_READ_ONLY'));
    await assert.rejects(ro.createThin(3), code('POOL_READ_ONLY'));
    assert.equal((await ro.status()).mode, 'ro');
    await ro.close();
    await ro2.close();
    await assert.rejects(Pool.open({ ...opts, dataBlockSectors: 256 }), code('INVALID_TABLE'));
  } finally {
    await cleanup();
  }
});

test('tables and status lines parse and format like dm', () => {
  const line = '0 209715200 thin-pool /m /d 128 32768 1 skip_block_zeroing';
  const t = parseTable(line);
  assert.equal(formatTable(t), line);
  assert.equal(formatTable(parseTable('0 20971520 thin pool 166')), '0 20971520 thin pool 166');
  assert.equal(formatTable(parseTable('0 256 thin-pool /m /d 128 0 2 error_if_no_space ignore_discard')),
    '0 256 thin-pool /m /d 128 0 2 ignore_discard error_if_no_space');
  assert.equal(formatTable(parseTable('0 256 thin-pool /m /d 128 0')), '0 256 thin-pool /m /d 128 0 0');
  for (const bad of ['0 100 thin-pool /m /d 100 0', '0 100 thin-pool /m /d 128 0 2 skip_block_zeroing', '0 8 thin p 16777216', '0 8 linear /x 0', '1 8 thin p 1']) {
    assert.throws(() => parseTable(bad), code('INVALID_TABLE'), bad);
  }
  const s = parsePoolStatus('0 163/524288 51/1638400 - rw discard_passdown queue_if_no_space - 1024');
  assert.equal(s.usedDataBlocks, 51);
  assert.equal(s.heldRoot, null);
  assert.equal(parsePoolStatus('3 1/2 3/4 17 ro ignore_discard error_if_no_space').heldRoot, 17);
});

test('a failed metadata commit aborts, records needs_check, and keeps the pool read-only until cleared', async () => {
  const { pool, meta, data } = await memPool();
  await pool.createThin(1);
  const dev = await pool.openThin(1, 1 << 20);
  await dev.write(Buffer.alloc(BS, 1), 0);
  await dev.flush();
  await dev.write(Buffer.alloc(BS, 2), 2 * BS);
  for (let page = 1; page < 1024; page++) meta.failWrites.add(page);
  await assert.rejects(dev.flush(), (e: unknown) => (e as NodeJS.ErrnoException).code === 'EIO');
  meta.failWrites.clear();
  const st = await pool.status();
  assert.equal(st.mode, 'ro');
  assert.equal(st.needsCheck, true);
  await assert.rejects(dev.write(Buffer.alloc(1), 0), code('POOL_READ_ONLY'));
  await assert.rejects(pool.createThin(2), code('POOL_READ_ONLY'));
  const got = Buffer.alloc(BS);
  await dev.read(got, 0);
  assert.ok(got.every((b) => b === 1), 'committed data is still readable');
  await pool.close();
  // metadata is the last commit, flagged; a reopen stays read-only
  assert.deepEqual((await checkDevice(meta)).issues, []);
  const again = await Pool.open({ metadataDevice: meta, dataDevice: data, dataBlockSectors: 128 });
  assert.match((await again.status()).toString(), / ro discard_passdown queue_if_no_space needs_check /);
  await again.close();
  await (await ThinMetadata.open(meta, {})).clearNeedsCheck();
  const cleared = await Pool.open({ metadataDevice: meta, dataDevice: data, dataBlockSectors: 128 });
  assert.equal((await cleared.status()).mode, 'rw');
  await cleared.createThin(2);
  await cleared.close();
});

test('a commit forced by allocation mid-write never publishes a mapping before its data (regression)', async () => {
  // power-loss model: whatever was not flushed is gone
  const meta = new MemoryBlockDevice(4 << 20, new CrashController(), true);
  const data = new MemoryBlockDevice(8 * BS, new CrashController(), true);
  const pool = await Pool.open({ metadataDevice: meta, dataDevice: data, dataBlockSectors: 128, features: ['error_if_no_space'] });
  await pool.createThin(1);
  const d1 = await pool.openThin(1, 1 << 20);
  const original = pattern(4 * BS, 5);
  await d1.write(original, 0);
  await pool.createSnap(2, 1);
  await pool.createThin(3);
  const d3 = await pool.openThin(3, 1 << 20);
  await d3.write(Buffer.alloc(3 * BS, 9), 0);
  await d3.flush();
  await d3.discard(0, 3 * BS); // three blocks freed, reusable only after a commit
  // breaks sharing of blocks 0 and 1: the first copy takes the last free block, the second
  // allocation has to commit to reuse the discarded ones
  await d1.write(Buffer.from('ab'), BS - 1);
  // power fails here, before any flush
  const pool2 = await Pool.open({ metadataDevice: meta.afterCrash(), dataDevice: data.afterCrash(), dataBlockSectors: 128 });
  const got = Buffer.alloc(2 * BS);
  await (await pool2.openThin(1, 1 << 20)).read(got, 0);
  const want = Buffer.from(original.subarray(0, 2 * BS));
  // block 0 may or may not hold the new byte (unflushed), but never anything else
  const withWrite = Buffer.from(want);
  withWrite.write('ab', BS - 1);
  assert.ok(got.equals(want) || got.equals(withWrite) || (got.subarray(0, BS).equals(withWrite.subarray(0, BS)) && got.subarray(BS).equals(want.subarray(BS))));
  await pool2.close();
});

test('a grown metadata device is taken in on resize or reopen; a shrunk one is refused', async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const metaPath = join(dir, 'metadata');
    const pool = await filePool(dir, { metaBytes: 80 * 4096 });
    let created = 0;
    for (;;) {
      try {
        await pool.createThin(created);
        created++;
      } catch (err) {
        assert.ok(isStrataError(err, 'METADATA_NO_SPACE'), String(err));
        break;
      }
    }
    // grow the metadata file, as lvextend would grow a metadata LV, then reload + resume
    await truncate(metaPath, 4 << 20);
    await pool.resize();
    assert.equal((await pool.status()).totalMetadataBlocks, 1024);
    for (let i = created; i < created + 40; i++) await pool.createThin(i);
    const dev = await pool.openThin(created + 1, 4 << 20);
    await dev.write(pattern(4 << 20, 7), 0);
    await dev.flush();
    await pool.close();
    if (thinTools) assert.equal(tool('thin_check', [metaPath]).status, 0, tool('thin_check', [metaPath]).stderr);

    // grown while closed: taken in on open; what was there is intact
    await truncate(metaPath, 8 << 20);
    const again = await Pool.open({ metadataPath: metaPath, dataPath: join(dir, 'data'), dataBlockSectors: 128 });
    assert.equal((await again.status()).totalMetadataBlocks, 2048);
    assert.equal(again.devices().length, created + 40);
    const got = Buffer.alloc(4 << 20);
    await (await again.openThin(created + 1, 4 << 20)).read(got, 0);
    assert.ok(got.equals(pattern(4 << 20, 7)));
    await again.close();
    if (thinTools) assert.equal(tool('thin_check', [metaPath]).status, 0);

    await truncate(metaPath, 2 << 20);
    await assert.rejects(Pool.open({ metadataPath: metaPath, dataPath: join(dir, 'data'), dataBlockSectors: 128 }), code('INVALID_TABLE'));
  } finally {
    await cleanup();
  }
});

test('a pool over loop block devices (sizes probed, not stat)', { skip: process.getuid?.() !== 0 ? 'needs root for losetup' : false }, async (t) => {
  const { execFileSync } = await import('node:child_process');
  const { dir, cleanup } = await tempDir();
  const loops: string[] = [];
  try {
    await sparseFile(join(dir, 'm'), 4 << 20);
    await sparseFile(join(dir, 'd'), (64 << 20) + 3 * 512);
    try {
      for (const f of ['m', 'd']) loops.push(execFileSync('losetup', ['-f', '--show', join(dir, f)], { encoding: 'utf8' }).trim());
    } catch (err) {
      t.skip(`losetup failed: ${String(err).split('\n')[0]}`);
      return;
    }
    const pool = await Pool.open({ metadataPath: loops[0]!, dataPath: loops[1]!, dataBlockSectors: 128 });
    assert.equal(await pool.dataDevice.size(), (64 << 20) + 3 * 512);
    assert.equal((await pool.status()).totalDataBlocks, 1024);
    await pool.createThin(1);
    const dev = await pool.openThin(1, 8 << 20);
    await dev.write(pattern(100_000, 1), 12345);
    await dev.flush();
    await pool.close();
    const again = await Pool.open({ metadataPath: loops[0]!, dataPath: loops[1]!, dataBlockSectors: 128 });
    const got = Buffer.alloc(100_000);
    const thin = await again.openThin(1, 8 << 20);
    await thin.read(got, 12345);
    assert.ok(got.equals(pattern(100_000, 1)));
    // discard passdown through BLKDISCARD: the loop device punches the blocks out of its file
    assert.equal((await again.status()).discard, 'discard_passdown');
    await thin.write(pattern(1 << 20, 2), 2 << 20);
    await thin.flush();
    const backing = async () => (await stat(join(dir, 'd'))).blocks * 512;
    const before = await backing();
    await thin.discard(2 << 20, 1 << 20);
    await thin.flush();
    assert.ok(before - (await backing()) >= (1 << 20) - 64 * 1024, `the loop file gave back the discarded MiB (${before} → ${await backing()})`);
    await again.close();
  } finally {
    for (const l of loops) execFileSync('losetup', ['-d', l]);
    await cleanup();
  }
});
