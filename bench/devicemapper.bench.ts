// Issue 6 item 5, devicemapper's part, each figure next to a baseline from the same run:
// - container create and remove latency with 10, 100 and 1,000 containers on the pool (driver
//   level: one thin snapshot per container, with its JSON and transaction), next to the bare
//   pool messages (create_snap / delete through the pool service) at the same counts;
// - pool data used by 100 containers of one image, next to the image alone;
// - ext4 write throughput on a thin device (through NBD, nbdfuse and a loop device), next to
//   ext4 on a loop device over a plain file.
import { mkdtemp, rm, writeFile, open, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { Readable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { DevicemapperDriver, probeDevicemapper } from '../src/drivers/devicemapper/devicemapper-driver.js';
import { PoolClient } from '../src/drivers/devicemapper/pool-client.js';
import { run as sh } from '../src/drivers/devicemapper/exec.js';
import { layerTar, file, dir } from '../test/helpers/fstest.js';

const MB = 1024 ** 2;
const COUNTS = [10, 100, 1000];
/** Containers timed around each count (the ones that bring the pool to it). */
const WINDOW = 10;
const BUDGET_MS = Number(process.env.STRATA_DM_BENCH_BUDGET_MS ?? 150_000);

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;
const ms = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;
const fmt = (x: number): string => x.toFixed(1);

async function dataUsed(d: DevicemapperDriver): Promise<number> {
  const c = await PoolClient.connect(d.service);
  try {
    const { pool, blockBytes } = await c.status();
    return pool.usedDataBlocks * blockBytes;
  } finally {
    c.close();
  }
}

async function latency(d: DevicemapperDriver, image: string, deadline: number): Promise<void> {
  const client = await PoolClient.connect(d.service);
  const imageDev = Number((await d.metadata(image)).DeviceId);
  const created: Array<{ n: number; driver: number; bare: number }> = [];
  let n = 0;
  let bareId = 1_000_000;
  const bareIds: number[] = [];
  console.log('\ncontainer create/remove latency (ms, median of the 10 containers that bring the pool to N):');
  for (const target of COUNTS) {
    if (Date.now() > deadline) break;
    while (n < target) {
      const t0 = process.hrtime.bigint();
      await d.createReadWrite(`ctr${n}`, image);
      const driverMs = ms(t0);
      const t1 = process.hrtime.bigint();
      await client.message(`create_snap ${bareId} ${imageDev}`);
      const bareMs = ms(t1);
      bareIds.push(bareId++);
      n++;
      if (n > target - WINDOW) created.push({ n: target, driver: driverMs, bare: bareMs });
      if (Date.now() > deadline) break;
    }
  }
  const reached = n;
  const removed: Array<{ n: number; driver: number; bare: number }> = [];
  for (const target of [...COUNTS].reverse()) {
    if (target > reached) continue;
    while (n > target - WINDOW && n > 0) {
      if (n > target) {
        // bring the pool down to the count quickly, untimed
        await d.remove(`ctr${n - 1}`);
        await client.message(`delete ${bareIds.pop()!}`);
        n--;
        continue;
      }
      const t0 = process.hrtime.bigint();
      await d.remove(`ctr${n - 1}`);
      const driverMs = ms(t0);
      const t1 = process.hrtime.bigint();
      await client.message(`delete ${bareIds.pop()!}`);
      removed.push({ n: target, driver: driverMs, bare: ms(t1) });
      n--;
    }
  }
  while (n > 0) {
    await d.remove(`ctr${n - 1}`);
    await client.message(`delete ${bareIds.pop()!}`);
    n--;
  }
  client.close();
  const row = (label: string, xs: typeof created, target: number, base: number): void => {
    const at = xs.filter((x) => x.n === target);
    if (at.length === 0) return;
    const dm = median(at.map((x) => x.driver));
    const bare = median(at.map((x) => x.bare));
    console.log(`  ${label} at ${String(target).padStart(4)}: driver ${fmt(dm).padStart(6)}  bare pool message ${fmt(bare).padStart(6)}  driver/bare ${(dm / bare).toFixed(2)}x  vs. at 10: ${(dm / base).toFixed(2)}x`);
  };
  const c10 = median(created.filter((x) => x.n === 10).map((x) => x.driver));
  const r10 = median(removed.filter((x) => x.n === 10).map((x) => x.driver));
  for (const t of COUNTS) row('create', created, t, c10);
  for (const t of COUNTS) row('remove', removed, t, r10);
  if (reached < 1000) console.log(`  (stopped at ${reached} containers: the bench budget of ${BUDGET_MS / 1000} s ran out)`);
}

async function sharing(d: DevicemapperDriver, image: string): Promise<void> {
  const before = await dataUsed(d);
  const imageAlone = before;
  const written = 64 * 1024;
  const writers = 10;
  for (let i = 0; i < 100; i++) await d.createReadWrite(`share${i}`, image);
  const afterCreate = await dataUsed(d);
  for (let i = 0; i < writers; i++) {
    const p = await d.get(`share${i}`);
    await writeFile(join(p, 'written'), randomBytes(written));
    await d.put(`share${i}`);
  }
  const afterWrites = await dataUsed(d);
  console.log('\npool data used (bytes of 64 KiB blocks):');
  console.log(`  image alone (base device + image layer): ${(imageAlone / MB).toFixed(2)} MiB`);
  console.log(`  + 100 containers created: ${(afterCreate / MB).toFixed(2)} MiB (${(((afterCreate - imageAlone) / imageAlone) * 100).toFixed(2)}% over the image)`);
  const wrote = writers * written;
  const extra = afterWrites - afterCreate - wrote;
  console.log(`  + ${writers} of them mounted, each writing ${written / 1024} KiB (${wrote / 1024} KiB in all): ${(afterWrites / MB).toFixed(2)} MiB;` +
    ` beyond image + writes: ${(extra / 1024).toFixed(0)} KiB = ${((extra / imageAlone) * 100).toFixed(2)}% of the image` +
    ` (${(extra / writers / 1024).toFixed(0)} KiB per mounted container: ext4's own mount-time writes, each copying a 64 KiB block)`);
  for (let i = 0; i < 100; i++) await d.remove(`share${i}`);
}

async function writeThroughput(mountpoint: string, bytes: number): Promise<number> {
  const chunk = randomBytes(4 * MB);
  const t0 = process.hrtime.bigint();
  const h = await open(join(mountpoint, 'big'), 'w');
  for (let done = 0; done < bytes; done += chunk.length) await h.write(chunk);
  await h.sync();
  await h.close();
  return bytes / MB / (ms(t0) / 1000);
}

async function ext4Throughput(d: DevicemapperDriver, image: string, work: string): Promise<void> {
  const bytes = 256 * MB;
  await d.createReadWrite('writer', image);
  const p = await d.get('writer');
  const thin = await writeThroughput(p, bytes);
  await d.put('writer');
  await d.remove('writer');
  // baseline: ext4 on a loop device over a plain sparse file on the same host filesystem
  const img = join(work, 'plain.img');
  await sh('truncate', ['-s', '1G', img]);
  const loop = (await sh('losetup', ['--find', '--show', img])).trim();
  const mnt = join(work, 'plain');
  await mkdir(mnt);
  let plain = 0;
  try {
    await sh('mkfs.ext4', ['-q', '-E', 'nodiscard,lazy_itable_init=0,lazy_journal_init=0', loop]);
    await sh('mount', [loop, mnt]);
    try {
      plain = await writeThroughput(mnt, bytes);
    } finally {
      await sh('umount', [mnt]);
    }
  } finally {
    await sh('losetup', ['--detach', loop]);
  }
  console.log(`\next4 write throughput (${bytes / MB} MiB, fsync'd):`);
  console.log(`  thin device (pool service → NBD → nbdfuse → loop): ${fmt(thin)} MiB/s`);
  console.log(`  plain loop file:                                   ${fmt(plain)} MiB/s   thin/plain ${(thin / plain).toFixed(2)}x`);
}

export async function run(): Promise<void> {
  const reason = await probeDevicemapper();
  if (reason) {
    console.log(`devicemapper bench skipped: ${reason}`);
    return;
  }
  const work = await mkdtemp(join(process.env.STRATA_BENCH_TMP ?? tmpdir(), 'strata-bench-dm-'));
  const start = Date.now();
  // small base so setup is quick; the 100G data file and 2G metadata file are the defaults
  const d = await DevicemapperDriver.open({ root: work, options: { 'dm.basesize': '1G', 'dm.blkdiscard': 'false' } });
  try {
    await d.create('image', null);
    const ops = [dir('usr/lib'), ...Array.from({ length: 40 }, (_, i) => file(`usr/lib/f${i}`, randomBytes(512 * 1024)))];
    await d.applyDiff('image', null, Readable.from(await layerTar(ops)));
    console.log(`setup (pool, base device, 20 MiB image layer): ${((Date.now() - start) / 1000).toFixed(1)} s`);
    await sharing(d, 'image');
    await latency(d, 'image', start + BUDGET_MS);
    await ext4Throughput(d, 'image', work);
  } finally {
    await d.cleanup();
    await rm(work, { recursive: true, force: true });
  }
  console.log(`\n(devicemapper bench: ${((Date.now() - start) / 1000).toFixed(0)} s)`);
}
