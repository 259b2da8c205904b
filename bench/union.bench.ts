// Issue 4's figures, each next to a baseline measured in the same run:
// - lookup (stat of a name only the lowest layer has) and merged readdir as the stack grows from
//   1 to 64 layers, against stat/readdir of the same entries in one plain directory;
// - copy-up throughput of a large file, against `cp` of the same file;
// - aufs `diff` of a container with 10 changed files in a 10,000-file image, against vfs' diff.
import { mkdtemp, rm, mkdir, writeFile, stat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { UnionFs } from '../src/union/index.js';
import type { Driver } from '../src/drivers/driver.js';

const run_ = promisify(execFile);
const now = (): number => Number(process.hrtime.bigint()) / 1e6;

/**
 * CPU µs per op (user + system, all threads of this process: libuv's pool does the syscalls):
 * the best of 9 batches of `reps` calls. CPU time, not wall time, and the best batch, because
 * this machine is shared: wall time and the slower batches mostly measure the other tenants.
 */
async function time(fn: () => Promise<unknown>, reps: number): Promise<number> {
  const batches: number[] = [];
  for (let b = 0; b < 9; b++) {
    const start = process.cpuUsage();
    for (let i = 0; i < reps; i++) await fn();
    const used = process.cpuUsage(start);
    batches.push((used.user + used.system) / reps);
  }
  return Math.min(...batches);
}

const fmt = (x: number, digits = 1): string => x.toFixed(digits).padStart(8);

/** Layer i: 10 entries in a shared dir `etc`, its own `usr/lib/pkg<i>/`; the lowest also has the deep target. */
async function makeLayers(base: string, n: number): Promise<string[]> {
  const dirs: string[] = [];
  for (let i = 0; i < n; i++) {
    const d = join(base, `l${i}`);
    await mkdir(join(d, 'etc'), { recursive: true });
    await mkdir(join(d, `usr/lib/pkg${i}`), { recursive: true });
    for (let k = 0; k < 10; k++) await writeFile(join(d, 'etc', `f${i}-${k}`), 'x');
    await writeFile(join(d, `usr/lib/pkg${i}/lib.so`), 'x');
    if (i === 0) {
      await mkdir(join(d, 'usr/share/doc/pkg'), { recursive: true });
      await writeFile(join(d, 'usr/share/doc/pkg/README'), 'deep');
    }
    // every other layer whites out one name of the layer below
    if (i > 0 && i % 2 === 0) await writeFile(join(d, 'etc', `.wh.f${i - 1}-0`), '');
    dirs.push(d);
  }
  return dirs;
}

async function benchLookup(work: string): Promise<void> {
  let warmedUp = false;
  console.log('\nlookup and readdir vs stack depth (CPU µs per op; baseline: the same call on one plain directory)');
  const flat = join(work, 'flat');
  await mkdir(join(flat, 'usr/share/doc/pkg'), { recursive: true });
  await mkdir(join(flat, 'etc'));
  for (let k = 0; k < 640; k++) await writeFile(join(flat, 'etc', `f${k}`), 'x');
  await writeFile(join(flat, 'usr/share/doc/pkg/README'), 'deep');
  const baseStat = await time(() => stat(join(flat, 'usr/share/doc/pkg/README')), 1000);
  console.log(`  plain fs.stat of a 5-component path: ${fmt(baseStat, 2)} µs`);
  console.log('  layers  stat(cold)  stat(rw)  stat(ro)  ro x plain   readdir  entries  readdir x plain-of-same-size');
  console.log('  (plain: fs.stat of the same path in one directory tree, re-measured for every row)');
  console.log('  (cold: fresh union, lower listings read; rw: warm, with a writable top read live; ro: warm, lowers only)');
  // one unreported pass first, so JIT warm-up does not land on the 1-layer row
  for (const n of [4, 1, 2, 4, 8, 16, 32, 64]) {
    const report = n !== 4 || warmedUp;
    warmedUp = true;
    const base = join(work, `stack${n}`);
    const lowers = await makeLayers(base, n);
    const top = join(base, 'top');
    await mkdir(top);
    // cold: a fresh union each time, so every lower directory on the path is listed once
    const cold = await time(async () => (await UnionFs.open({ lowers, top, housekeeping: false })).stat('usr/share/doc/pkg/README'), 3);
    const u = await UnionFs.open({ lowers, top, housekeeping: false });
    const warm = await time(() => u.stat('usr/share/doc/pkg/README'), 300);
    const ro = await UnionFs.open({ lowers });
    const warmRo = await time(() => ro.stat('usr/share/doc/pkg/README'), 300);
    // the baseline again, in the same time window (the machine is shared)
    const rowBase = await time(() => stat(join(flat, 'usr/share/doc/pkg/README')), 300);
    const entries = (await u.readdir('etc')).length;
    const rd = await time(() => u.readdir('etc'), 50);
    // baseline: one real directory holding as many entries as the merged one
    const same = join(base, 'same');
    await mkdir(same);
    for (let k = 0; k < entries; k++) await writeFile(join(same, `f${k}`), 'x');
    const rdBase = await time(() => readdir(same), 50);
    if (report) console.log(`  ${String(n).padStart(6)}  ${fmt(cold)}    ${fmt(warm)}  ${fmt(warmRo)}    ${fmt(warmRo / rowBase)}  ${fmt(rd)}  ${String(entries).padStart(7)}  ${fmt(rd / rdBase)}`);
    await rm(base, { recursive: true, force: true });
  }
}

async function benchCopyUp(work: string): Promise<void> {
  const size = Number(process.env.STRATA_BENCH_COPYUP_MB ?? 256) << 20;
  console.log(`\ncopy-up of a ${size >> 20} MiB file (first append through the union; fs.copyFile, i.e. copy_file_range) vs cp of the same file`);
  const lower = join(work, 'cu-lower');
  await mkdir(lower);
  const chunk = randomBytes(1 << 20);
  const { open } = await import('node:fs/promises');
  const h = await open(join(lower, 'big'), 'w');
  for (let i = 0; i < size >> 20; i++) await h.write(chunk);
  await h.close();
  const cps: number[] = [];
  const rws: number[] = [];
  const ups: number[] = [];
  for (let rep = 0; rep < 3; rep++) {
    const dst = join(work, `cp-${rep}`);
    let t = now();
    await run_('cp', [join(lower, 'big'), dst]);
    cps.push(now() - t);
    await rm(dst);
    t = now();
    await run_('cp', ['--reflink=never', join(lower, 'big'), dst]);
    rws.push(now() - t);
    await rm(dst);
    const top = join(work, `cu-top-${rep}`);
    await mkdir(top);
    const u = await UnionFs.open({ lowers: [lower], top });
    t = now();
    await u.appendFile('big', '');
    ups.push(now() - t);
    await rm(top, { recursive: true, force: true });
  }
  const best = (xs: number[]) => Math.min(...xs);
  const mbps = (ms: number) => (size / (1 << 20)) / (ms / 1000);
  console.log(`  cp:       ${fmt(best(cps))} ms  ${fmt(mbps(best(cps)), 0)} MiB/s   (best of 3; coreutils' default, copy_file_range where it can)`);
  console.log(`  cp --reflink=never: ${fmt(best(rws))} ms  ${fmt(mbps(best(rws)), 0)} MiB/s   (read/write loop)`);
  console.log(`  copy-up:  ${fmt(best(ups))} ms  ${fmt(mbps(best(ups)), 0)} MiB/s   ratio to cp: ${(best(ups) / best(cps)).toFixed(2)}`);
  await rm(lower, { recursive: true, force: true });
}

async function drain(s: Readable): Promise<number> {
  let bytes = 0;
  for await (const c of s) bytes += (c as Buffer).length;
  return bytes;
}

async function diffOf(d: Driver, fill: (dir: string) => Promise<void>): Promise<{ ms: number; bytes: number }> {
  await d.create('image', null);
  const dir = await d.get('image');
  await fill(dir);
  await d.put('image');
  await d.createReadWrite('ctr', 'image');
  const mnt = await d.get('ctr');
  for (let i = 0; i < 10; i++) await writeFile(join(mnt, `usr/lib/pkg${i}/file${i}`), `changed ${i}`);
  await d.put('ctr');
  const t = now();
  const bytes = await drain(await d.diff('ctr', 'image'));
  return { ms: now() - t, bytes };
}

async function benchDiff(work: string): Promise<void> {
  console.log('\ndiff of a container with 10 changed files in a 10,000-file image');
  const fill = async (dir: string) => {
    for (let p = 0; p < 100; p++) await mkdir(join(dir, `usr/lib/pkg${p}`), { recursive: true });
    const data = randomBytes(4096);
    for (let i = 0; i < 10_000; i++) await writeFile(join(dir, `usr/lib/pkg${i % 100}/file${i}`), data);
  };
  const { createVfsDriver } = await import('../src/drivers/vfs/vfs-driver.js');
  const { createAufsDriver, probeAufs } = await import('../src/drivers/aufs/aufs-driver.js');
  const results: Array<[string, { ms: number; bytes: number } | string]> = [];
  for (const [name, open] of [['vfs', createVfsDriver], ['aufs', createAufsDriver]] as const) {
    const root = join(work, `diff-${name}`);
    if (name === 'aufs') {
      const why = process.getuid?.() === 0 ? await probeAufs(root) : 'mounting needs root';
      if (why !== null) {
        results.push([name, `skipped: ${why}`]);
        continue;
      }
    }
    const d = await open({ root, options: {} });
    try {
      results.push([name, await diffOf(d, fill)]);
    } finally {
      await d.cleanup().catch(() => undefined);
      // the naive differ releases its mounts just after the stream ends: retry while it does
      await rm(root, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
    }
  }
  const vfs = results.find(([n]) => n === 'vfs')?.[1];
  for (const [name, r] of results) {
    if (typeof r === 'string') console.log(`  ${name.padEnd(5)} ${r}`);
    else console.log(`  ${name.padEnd(5)} ${fmt(r.ms)} ms  (${r.bytes} tar bytes)${name !== 'vfs' && vfs && typeof vfs !== 'string' ? `   ${(vfs.ms / r.ms).toFixed(1)}x faster than vfs` : ''}`);
  }
}

export async function run(): Promise<void> {
  const work = await mkdtemp(join(process.env.STRATA_BENCH_TMP ?? tmpdir(), 'strata-bench-union-'));
  try {
    await benchLookup(work);
    await benchCopyUp(work);
    await benchDiff(work);
  } finally {
    await rm(work, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  }
}
