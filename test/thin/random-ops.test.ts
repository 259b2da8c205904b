// A file pool driven by seeded random operations (runs of sequential writes, partial writes,
// discards, snapshots, deletes, commits, running out of space), then judged by the real tools:
// thin_check must find nothing wrong and thin_dump must print exactly what Strata dumps. Big
// enough that every b-tree splits and rebalances, snapshots push reference counts past the
// bitmaps into the reference-count tree, and discards free shared blocks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { filePool, tempDir, tool, NO_TOOLS } from './helpers.js';
import { checkMetadata } from '../../src/thin/check.js';
import { dumpXml } from '../../src/thin/xml.js';
import { isStrataError } from '../../src/errors.js';
import type { ThinDevice } from '../../src/thin/thin-device.js';

const BS = 64 * 1024;
const VBLOCKS = 20_000;

function xorshift(seed: number): () => number {
  let x = (seed * 2654435761) >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x / 4294967296;
  };
}

for (const seed of [1, 2]) {
  test(`random operations (seed ${seed}): thin_check clean, thin_dump identical to Strata's dump`, { skip: NO_TOOLS }, async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const pool = await filePool(dir, { metaBytes: 16 << 20, dataBytes: 3000 * BS, features: ['error_if_no_space'] });
      const rnd = xorshift(seed);
      const devs = new Map<number, ThinDevice>();
      let nextId = 0;
      await pool.createThin(nextId);
      devs.set(nextId, await pool.openThin(nextId, VBLOCKS * BS));
      nextId++;
      const block = Buffer.alloc(BS, 7);
      let outOfSpace = 0;
      for (let step = 0; step < 1500; step++) {
        const ids = [...devs.keys()];
        const id = ids[Math.floor(rnd() * ids.length)]!;
        const dev = devs.get(id)!;
        const r = rnd();
        const at = Math.floor(rnd() * (VBLOCKS - 400));
        try {
          if (r < 0.6) {
            const n = 1 + Math.floor(rnd() * 40);
            for (let i = 0; i < n; i++) await dev.write(block, (at + i) * BS);
          } else if (r < 0.75) {
            await dev.discard(at * BS, (1 + Math.floor(rnd() * 300)) * BS);
          } else if (r < 0.8 && devs.size < 8) {
            await dev.suspend();
            await pool.createSnap(nextId, id);
            dev.resume();
            devs.set(nextId, await pool.openThin(nextId, VBLOCKS * BS));
            nextId++;
          } else if (r < 0.83 && devs.size > 1) {
            await dev.close();
            devs.delete(id);
            await pool.deleteDevice(id);
          } else if (r < 0.9) {
            await pool.commit();
          } else {
            await dev.write(Buffer.alloc(100, 3), at * BS + 1000);
          }
        } catch (err) {
          if (!isStrataError(err, 'POOL_NO_SPACE')) throw err;
          outOfSpace++;
          await devs.get(ids[0]!)!.discard(0, VBLOCKS * BS);
          await pool.commit();
        }
      }
      await pool.commit();
      assert.deepEqual((await checkMetadata(pool.md)).issues, []);
      let ours = '';
      await dumpXml(pool.md, (s) => void (ours += s));
      const snapshotsMade = nextId;
      await pool.close();
      const metadata = join(dir, 'metadata');
      const check = tool('thin_check', [metadata]);
      assert.equal(check.status, 0, check.stderr + check.stdout);
      const dumped = tool('thin_dump', [metadata]);
      assert.equal(dumped.status, 0, dumped.stderr);
      assert.equal(dumped.stdout, ours, 'thin_dump prints exactly what Strata dumps');
      // the run exercised what it is meant to
      assert.ok(snapshotsMade > 3 && outOfSpace > 0, `snapshots ${snapshotsMade}, out of space ${outOfSpace} times`);
    } finally {
      await cleanup();
    }
  });
}
