import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Pool } from '../../src/thin/pool.js';
import type { ThinDevice } from '../../src/thin/thin-device.js';
import { MemoryBlockDevice } from '../../src/thin/block-device.js';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { rng, pattern, checkDevice, thinTools, tool, tempDir } from './helpers.js';

/**
 * Property test: random operation sequences against the pool and against a trivial model (one
 * buffer per device). Seeded and reproducible: a failure names its seed and step.
 * Crashes ("the process died": uncommitted metadata is lost, data writes already issued stay)
 * check that everything up to the last flush survives and that the space maps stay exact.
 */
const BS = 64 * 1024;
const DEV_SIZE = 4 << 20;
const MAX_DEVS = 6;

interface World {
  pool: Pool;
  meta: MemoryBlockDevice;
  data: MemoryBlockDevice;
  open: Map<number, ThinDevice>;
  model: Map<number, Buffer>;
  /** Per device: blocks changed since the last flush (unspecified after a crash). */
  touched: Map<number, Set<number>>;
}

async function openPool(meta: MemoryBlockDevice, data: MemoryBlockDevice): Promise<Pool> {
  return Pool.open({ metadataDevice: meta, dataDevice: data, dataBlockSectors: 128, features: ['error_if_no_space'], autoCommitBlocks: 64 });
}

async function dev(w: World, id: number): Promise<ThinDevice> {
  let d = w.open.get(id);
  if (!d) {
    d = await w.pool.openThin(id, DEV_SIZE);
    w.open.set(id, d);
  }
  return d;
}

function touch(w: World, id: number, off: number, len: number): void {
  const s = w.touched.get(id)!;
  for (let b = Math.floor(off / BS); b * BS < off + len; b++) s.add(b);
}

function flushed(w: World): void {
  for (const s of w.touched.values()) s.clear();
}

async function runSeed(seed: number, steps: number): Promise<void> {
  const r = rng(seed);
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)]!;
  const meta = new MemoryBlockDevice(4 << 20);
  const data = new MemoryBlockDevice(32 << 20);
  const w: World = { pool: await openPool(meta, data), meta, data, open: new Map(), model: new Map(), touched: new Map() };
  let nextId = 0;
  const where = (step: number, what: string): string => `seed ${seed} step ${step}: ${what}`;
  for (let step = 0; step < steps; step++) {
    const ids = [...w.model.keys()];
    const roll = r();
    if (ids.length === 0 || (roll < 0.06 && ids.length < MAX_DEVS)) {
      const id = nextId++;
      await w.pool.message(`create_thin ${id}`);
      w.model.set(id, Buffer.alloc(DEV_SIZE));
      w.touched.set(id, new Set());
      flushed(w);
      continue;
    }
    const id = pick(ids);
    const off = Math.floor(r() * DEV_SIZE);
    const len = Math.min(DEV_SIZE - off, 1 + Math.floor(r() * (r() < 0.3 ? 3 * BS : 9000)));
    if (roll < 0.45) {
      const buf = pattern(len, seed * 100000 + step);
      await (await dev(w, id)).write(buf, off);
      buf.copy(w.model.get(id)!, off);
      touch(w, id, off, len);
    } else if (roll < 0.6) {
      const got = Buffer.alloc(len);
      await (await dev(w, id)).read(got, off);
      assert.ok(got.equals(w.model.get(id)!.subarray(off, off + len)), where(step, `read dev ${id} ${off}+${len}`));
    } else if (roll < 0.66 && ids.length < MAX_DEVS) {
      const origin = w.open.get(id);
      await origin?.suspend();
      const snap = nextId++;
      await w.pool.createSnap(snap, id);
      origin?.resume();
      w.model.set(snap, Buffer.from(w.model.get(id)!));
      w.touched.set(snap, new Set());
      flushed(w);
    } else if (roll < 0.7) {
      await w.open.get(id)?.close();
      w.open.delete(id);
      await w.pool.deleteDevice(id);
      w.model.delete(id);
      w.touched.delete(id);
      flushed(w);
    } else if (roll < 0.77) {
      await (await dev(w, id)).discard(off, len);
      const m = w.model.get(id)!;
      const first = Math.ceil(off / BS);
      const last = Math.floor((off + len) / BS);
      if (last > first) m.fill(0, first * BS, last * BS);
      touch(w, id, off, len);
    } else if (roll < 0.82) {
      await (await dev(w, id)).writeZeroes(off, len);
      w.model.get(id)!.fill(0, off, off + len);
      touch(w, id, off, len);
    } else if (roll < 0.9) {
      await (await dev(w, id)).flush();
      flushed(w);
    } else if (roll < 0.95) {
      await w.pool.close();
      w.open.clear();
      w.pool = await openPool(w.meta, w.data);
      flushed(w);
    } else {
      // crash: abandon the pool without committing; reopen what the devices hold
      w.meta = w.meta.afterCrash();
      w.data = w.data.afterCrash();
      w.open.clear();
      w.pool = await openPool(w.meta, w.data);
      const report = await checkDevice(w.meta);
      assert.deepEqual(report.issues, [], where(step, 'check after crash'));
      for (const [did, m] of w.model) {
        const d = await dev(w, did);
        const got = Buffer.alloc(DEV_SIZE);
        await d.read(got, 0);
        const uncertain = w.touched.get(did)!;
        for (let b = 0; b < DEV_SIZE / BS; b++) {
          const span = [b * BS, (b + 1) * BS] as const;
          if (uncertain.has(b)) got.copy(m, span[0], span[0], span[1]); // either outcome is allowed
          else assert.ok(got.subarray(...span).equals(m.subarray(...span)), where(step, `dev ${did} block ${b} after crash`));
        }
      }
      flushed(w);
    }
  }
  for (const [id, m] of w.model) {
    const got = Buffer.alloc(DEV_SIZE);
    await (await dev(w, id)).read(got, 0);
    assert.ok(got.equals(m), `seed ${seed}: final contents of dev ${id}`);
  }
  await w.pool.close();
  const report = await checkDevice(w.meta);
  assert.deepEqual(report.issues, [], `seed ${seed}: final check`);
  if (thinTools) {
    const { dir, cleanup } = await tempDir();
    const image = Buffer.alloc(await w.meta.size());
    await w.meta.read(image, 0);
    await writeFile(join(dir, 'meta'), image);
    const r = tool('thin_check', [join(dir, 'meta')]);
    await cleanup();
    assert.equal(r.status, 0, `seed ${seed}: thin_check: ${r.stderr}`);
  }
}

for (const seed of [1, 2, 3, 4, 5, 6]) {
  test(`pool matches the model over random operations (seed ${seed})`, async () => {
    await runSeed(seed, 600);
  });
}
