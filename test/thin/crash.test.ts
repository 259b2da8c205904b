import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Pool } from '../../src/thin/pool.js';
import type { ThinDevice } from '../../src/thin/thin-device.js';
import { CrashController, MemoryBlockDevice, SimulatedCrash, FileBlockDevice } from '../../src/thin/block-device.js';
import { checkDevice, pattern, rng, tempDir, sparseFile, thinTools, tool } from './helpers.js';

const BS = 64 * 1024;
const SIZE = 2 << 20;

/**
 * Crash injection: one deterministic workload, replayed with the simulated machine dying after
 * write K for K across the whole run, in two models: process kill (everything written reaches the
 * disk) and power loss (writes since the last flush are lost). Each time the pool must reopen at
 * its last commit with a clean check, every flushed byte intact, and nothing else changed.
 */
interface State {
  model: Map<number, Buffer>;
  durable: Map<number, Buffer>;
  /** State a message in flight would have made durable (either outcome is allowed). */
  pending: Map<number, Buffer> | null;
  touched: Map<number, Set<number>>;
}

function settle(s: State): void {
  s.durable = new Map([...s.model].map(([k, v]) => [k, Buffer.from(v)]));
  for (const t of s.touched.values()) t.clear();
  s.pending = null;
}

async function workload(pool: Pool, s: State, seed: number): Promise<void> {
  const r = rng(seed);
  const open = new Map<number, ThinDevice>();
  const dev = async (id: number): Promise<ThinDevice> => open.get(id) ?? open.set(id, await pool.openThin(id, SIZE)).get(id)!;
  const message = async (fn: () => Promise<void>, after: (m: Map<number, Buffer>) => void): Promise<void> => {
    const next = new Map([...s.model].map(([k, v]) => [k, Buffer.from(v)]));
    after(next);
    s.pending = next;
    await fn();
    after(s.model);
    for (const id of s.model.keys()) if (!s.touched.has(id)) s.touched.set(id, new Set());
    settle(s);
  };
  await message(() => pool.createThin(0), (m) => void m.set(0, Buffer.alloc(SIZE)));
  let next = 1;
  for (let step = 0; step < 60; step++) {
    const ids = [...s.model.keys()];
    const id = ids[Math.floor(r() * ids.length)]!;
    const roll = r();
    if (roll < 0.55) {
      const off = Math.floor(r() * (SIZE - 3 * BS));
      const len = 1 + Math.floor(r() * 2 * BS);
      const buf = pattern(len, seed * 1000 + step);
      await (await dev(id)).write(buf, off);
      buf.copy(s.model.get(id)!, off);
      for (let b = Math.floor(off / BS); b * BS < off + len; b++) s.touched.get(id)!.add(b);
    } else if (roll < 0.7) {
      await pool.commit();
      settle(s);
    } else if (roll < 0.8) {
      const off = Math.floor(r() * (SIZE / BS - 4)) * BS;
      await (await dev(id)).discard(off, 3 * BS);
      s.model.get(id)!.fill(0, off, off + 3 * BS);
      for (let b = off / BS; b < off / BS + 3; b++) s.touched.get(id)!.add(b);
    } else if (roll < 0.9 && ids.length < 4) {
      await pool.commit();
      settle(s);
      const snap = next++;
      await message(() => pool.createSnap(snap, id), (m) => void m.set(snap, Buffer.from(m.get(id)!)));
    } else if (ids.length > 1) {
      await pool.commit();
      settle(s);
      await open.get(id)?.close();
      open.delete(id);
      await message(() => pool.deleteDevice(id), (m) => void m.delete(id));
    }
  }
  await pool.commit();
  settle(s);
}

async function verify(meta: MemoryBlockDevice, data: MemoryBlockDevice, s: State, label: string): Promise<void> {
  const report = await checkDevice(meta);
  assert.deepEqual(report.issues, [], `${label}: check`);
  const pool = await Pool.open({ metadataDevice: meta, dataDevice: data, dataBlockSectors: 128 });
  const present = pool.devices();
  let expect = s.durable;
  if (s.pending && present.join() === [...s.pending.keys()].sort((a, b) => a - b).join()) expect = s.pending;
  assert.deepEqual(present, [...expect.keys()].sort((a, b) => a - b), `${label}: devices`);
  for (const [id, want] of expect) {
    const got = Buffer.alloc(SIZE);
    await (await pool.openThin(id, SIZE)).read(got, 0);
    const maybe = s.touched.get(id) ?? new Set();
    for (let b = 0; b < SIZE / BS; b++) {
      if (maybe.has(b)) continue;
      assert.ok(got.subarray(b * BS, (b + 1) * BS).equals(want.subarray(b * BS, (b + 1) * BS)), `${label}: dev ${id} block ${b}`);
    }
  }
  await pool.close();
}

async function run(seed: number, crashAfter: number, loseUnflushed: boolean): Promise<{ writes: number; crashed: boolean; s: State; meta: MemoryBlockDevice; data: MemoryBlockDevice }> {
  const crash = new CrashController();
  const meta = new MemoryBlockDevice(2 << 20, crash, loseUnflushed);
  const data = new MemoryBlockDevice(16 << 20, crash, loseUnflushed);
  const s: State = { model: new Map(), durable: new Map(), pending: null, touched: new Map() };
  // format before the clock starts: a crash while formatting leaves blank metadata (formatted again on open)
  const pool = await Pool.open({ metadataDevice: meta, dataDevice: data, dataBlockSectors: 128, autoCommitBlocks: 16 });
  crash.writes = 0;
  crash.crashAfterWrites = crashAfter;
  try {
    await workload(pool, s, seed);
    await pool.close();
    return { writes: crash.writes, crashed: false, s, meta, data };
  } catch (err) {
    if (!(err instanceof SimulatedCrash) && !crash.crashed) throw err;
    return { writes: crash.writes, crashed: true, s, meta: meta.afterCrash(), data: data.afterCrash() };
  }
}

for (const seed of [21, 22]) {
  test(`crash after every write of a workload reopens at the last commit (seed ${seed})`, async () => {
    const full = await run(seed, Infinity, false);
    assert.ok(full.writes > 50, `workload made ${full.writes} writes`);
    let crashes = 0;
    const step = Math.max(1, Math.floor(full.writes / 80));
    for (let k = 0; k <= full.writes; k += k < 40 ? 1 : step) {
      const lose = k % 2 === 1;
      const out = await run(seed, k, lose);
      if (!out.crashed) continue;
      crashes++;
      await verify(out.meta, out.data, out.s, `seed ${seed} crash after write ${k}${lose ? ' (power loss)' : ''}`);
    }
    assert.ok(crashes >= 80, `${crashes} crash points`);
  });
}

const here = dirname(fileURLToPath(import.meta.url));

test('SIGKILL of a writing process: reopen keeps every flushed write, thin_check and Strata check clean', async () => {
  for (const [seed, flushes] of [[31, 3], [32, 11], [33, 25]] as const) {
    const { dir, cleanup } = await tempDir();
    try {
      await sparseFile(join(dir, 'metadata'), 8 << 20);
      await sparseFile(join(dir, 'data'), 256 << 20);
      const child = spawn(process.execPath, ['--import', 'tsx', join(here, 'fixtures', 'crash-child.ts'), dir, String(seed)], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let lastFlushed = 0;
      let stderr = '';
      child.stderr.on('data', (c) => (stderr += c));
      await new Promise<void>((resolve, reject) => {
        let buf = '';
        child.stdout.on('data', (c: Buffer) => {
          buf += c.toString();
          for (const m of buf.matchAll(/F (\d+)\n/g)) lastFlushed = Math.max(lastFlushed, Number(m[1]));
          buf = buf.slice(buf.lastIndexOf('\n') + 1);
          if (lastFlushed >= flushes * 8) {
            // kill at an arbitrary moment after the target flush
            setTimeout(() => child.kill('SIGKILL'), seed % 7);
          }
        });
        child.on('exit', (code, signal) => (signal === 'SIGKILL' ? resolve() : reject(new Error(`child exited ${code}: ${stderr}`))));
      });
      if (thinTools) {
        const tc = tool('thin_check', [join(dir, 'metadata')]);
        assert.equal(tc.status, 0, tc.stderr);
      }
      const dev = await FileBlockDevice.open(join(dir, 'metadata'), { readOnly: true });
      assert.deepEqual((await checkDevice(dev)).issues, []);
      await dev.close();
      // replay the child's choices: per slot, the writes at or before the last reported flush
      const r = rng(seed);
      const history = new Map<number, number[]>();
      for (let seq = 1; seq <= lastFlushed + 200; seq++) {
        const slot = Math.floor(r() * 4096);
        history.set(slot, [...(history.get(slot) ?? []), seq]);
      }
      const pool = await Pool.open({ metadataPath: join(dir, 'metadata'), dataPath: join(dir, 'data'), dataBlockSectors: 128 });
      const thin = await pool.openThin(1, 64 << 20);
      const got = Buffer.alloc(4096);
      for (const [slot, seqs] of history) {
        const flushedSeqs = seqs.filter((q) => q <= lastFlushed);
        if (flushedSeqs.length === 0) continue;
        await thin.read(got, slot * 4096);
        const allowed = [flushedSeqs[flushedSeqs.length - 1]!, ...seqs.filter((q) => q > lastFlushed)];
        assert.ok(allowed.some((q) => got.equals(pattern(4096, seed * 1_000_000 + q))), `seed ${seed}: slot ${slot} lost flushed data`);
      }
      await pool.close();
    } finally {
      await cleanup();
    }
  }
});
