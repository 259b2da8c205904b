// Issue 6 item 5, devicemapper's part, each figure next to a baseline from the same run:
// - container create and remove latency with 10, 100 and 1,000 containers on the pool (driver
//   level: one thin snapshot per container, with its JSON and transaction), next to the bare
//   pool messages (create_snap / delete through the pool service) at the same counts;
// - pool data used by 100 containers of one image, next to the image alone;
// - ext4 write throughput on a thin device (through NBD, nbdfuse and a loop device), next to
//   ext4 on a loop device over a plain file, and over nbdkit serving a plain file through the
//   same nbdfuse + loop transport (what the transport costs without the pool).
import { mkdtemp, rm, writeFile, open, mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { Readable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import type { DevicemapperDriver } from '../src/drivers/devicemapper/devicemapper-driver.js';
import { run as sh } from '../src/drivers/devicemapper/exec.js';
import { layerTar, file, dir } from '../test/helpers/fstest.js';
import { built } from './built.js';

// the driver, and so the pool service and the NBD service it starts, as `strata` runs them
const { DevicemapperDriver: Driver, probeDevicemapper } = await built<typeof import('../src/drivers/devicemapper/devicemapper-driver.js')>('drivers/devicemapper/devicemapper-driver.ts');
const { PoolClient } = await built<typeof import('../src/drivers/devicemapper/pool-client.js')>('drivers/devicemapper/pool-client.ts');
const { attachBlockDevice, detachBlockDevice } = await built<typeof import('../src/drivers/devicemapper/block-attach.js')>('drivers/devicemapper/block-attach.ts');

const MB = 1024 ** 2;
const COUNTS = [10, 100, 1000];
/** Creates timed just below each count, and removes timed at it. */
const WINDOW = 25;
/** Time allowed for the latency phase (the whole bench stays under ~5 minutes). */
const BUDGET_MS = Number(process.env.STRATA_DM_BENCH_BUDGET_MS ?? 170_000);

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

/**
 * Containers are created one by one up to 1,000. The WINDOW creates that bring the pool to 10, 100
 * and 1,000 are timed; at each of those counts WINDOW containers are then removed (timed) and made
 * again (untimed), so removal is measured at the same counts without walking back down. The
 * baseline, at the same counts on the same pool: a bare `create_snap` + `delete` pair sent to the
 * pool service (the device count stays N), i.e. the pool's own cost without JSON, transactions
 * and locks.
 */
async function latency(d: DevicemapperDriver, image: string, deadline: number): Promise<number> {
  const client = await PoolClient.connect(d.service);
  const imageDev = Number((await d.metadata(image)).DeviceId);
  type Sample = { n: number; driver: number; bare: number };
  const created: Sample[] = [];
  const removed: Sample[] = [];
  const bareId = 0xfffff0;
  const bare = async (): Promise<[number, number]> => {
    const t0 = process.hrtime.bigint();
    await client.message(`create_snap ${bareId} ${imageDev}`);
    const c = ms(t0);
    const t1 = process.hrtime.bigint();
    await client.message(`delete ${bareId}`);
    return [c, ms(t1)];
  };
  let n = 0;
  for (const target of COUNTS) {
    const w = Math.min(WINDOW, target);
    while (n < target && Date.now() < deadline) {
      const t0 = process.hrtime.bigint();
      await d.createReadWrite(`ctr${n}`, image);
      const driverMs = ms(t0);
      const [bc] = await bare();
      n++;
      if (n > target - w) created.push({ n: target, driver: driverMs, bare: bc });
    }
    if (n < target) break;
    for (let i = 1; i <= w; i++) {
      const t0 = process.hrtime.bigint();
      await d.remove(`ctr${n - i}`);
      const driverMs = ms(t0);
      const [, bd] = await bare();
      removed.push({ n: target, driver: driverMs, bare: bd });
    }
    for (let i = w; i >= 1; i--) await d.createReadWrite(`ctr${n - i}`, image);
  }
  client.close();
  console.log(`\ncontainer create/remove latency, ms (median of ${WINDOW} at each count (all 10 at 10); baseline: bare pool messages at the same count):`);
  const c10 = median(created.filter((x) => x.n === 10).map((x) => x.driver));
  const r10 = median(removed.filter((x) => x.n === 10).map((x) => x.driver));
  const row = (label: string, xs: Sample[], target: number, at10: number): void => {
    const at = xs.filter((x) => x.n === target);
    if (at.length === 0) return;
    const dm = median(at.map((x) => x.driver));
    const b = median(at.map((x) => x.bare));
    console.log(`  ${label} with ${String(target).padStart(4)} containers: driver ${fmt(dm).padStart(6)}  bare ${fmt(b).padStart(6)}  driver/bare ${(dm / b).toFixed(2)}x  driver vs. at 10: ${(dm / at10).toFixed(2)}x`);
  };
  for (const t of COUNTS) row('create', created, t, c10);
  for (const t of COUNTS) row('remove', removed, t, r10);
  if (n < COUNTS[COUNTS.length - 1]!) console.log(`  (stopped at ${n} containers: the latency budget ran out)`);
  return n;
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
  // baselines: ext4 over a plain sparse file on the same host filesystem, through a loop device
  // directly and through the same nbdfuse + loop transport with nbdkit serving the file
  const plain = await ext4OnLoop(work, 'plain', async (img) => (await sh('losetup', ['--find', '--show', img])).trim(),
    (loop) => sh('losetup', ['--detach', loop]).then(() => undefined), bytes);
  const viaNbdkit = await ext4OnLoop(work, 'nbdkit', async (img) => {
    const sock = join(work, 'nbdkit.sock');
    await sh('nbdkit', ['-U', sock, '-P', join(work, 'nbdkit.pid'), 'file', img]);
    return attachBlockDevice(join(work, 'nbdkit.fuse'), sock, '', 1 << 30, join(work, 'nbdfuse.log'));
  }, async () => {
    await detachBlockDevice(join(work, 'nbdkit.fuse'));
    process.kill(Number(await readFile(join(work, 'nbdkit.pid'), 'utf8')), 'SIGTERM');
  }, bytes);
  console.log(`\next4 write throughput (${bytes / MB} MiB, fsync'd):`);
  console.log(`  thin device (pool service → NBD → nbdfuse → loop): ${fmt(thin)} MiB/s   thin/plain ${(thin / plain).toFixed(2)}x   thin/nbdkit ${(thin / viaNbdkit).toFixed(2)}x`);
  console.log(`  nbdkit file → NBD → nbdfuse → loop:                ${fmt(viaNbdkit)} MiB/s   (the transport alone, no pool)`);
  console.log(`  plain loop file:                                   ${fmt(plain)} MiB/s`);
}

/** ext4 made on the block device `attach` gives for a fresh 1 GiB sparse file, then its write throughput. */
async function ext4OnLoop(work: string, name: string, attach: (img: string) => Promise<string>, detach: (dev: string) => Promise<void>, bytes: number): Promise<number> {
  const img = join(work, `${name}.img`);
  await sh('truncate', ['-s', '1G', img]);
  const dev = await attach(img);
  const mnt = join(work, name);
  await mkdir(mnt);
  try {
    await sh('mkfs.ext4', ['-q', '-E', 'nodiscard,lazy_itable_init=0,lazy_journal_init=0', dev]);
    await sh('mount', [dev, mnt]);
    try {
      return await writeThroughput(mnt, bytes);
    } finally {
      await sh('umount', [mnt]);
    }
  } finally {
    await detach(dev);
  }
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
  const d = await Driver.open({ root: work, options: { 'dm.basesize': '1G', 'dm.blkdiscard': 'false' } });
  try {
    await d.create('image', null);
    const ops = [dir('usr/lib'), ...Array.from({ length: 40 }, (_, i) => file(`usr/lib/f${i}`, randomBytes(512 * 1024)))];
    await d.applyDiff('image', null, Readable.from(await layerTar(ops)));
    console.log(`setup (pool, base device, 20 MiB image layer): ${((Date.now() - start) / 1000).toFixed(1)} s`);
    await sharing(d, 'image');
    await ext4Throughput(d, 'image', work);
    const phase = Date.now();
    const n = await latency(d, 'image', phase + BUDGET_MS);
    console.log(`  (${n} containers created in ${((Date.now() - phase) / 1000).toFixed(0)} s; the pool is dropped with the root)`);
  } finally {
    await d.cleanup();
    await rm(work, { recursive: true, force: true });
  }
  console.log(`\n(devicemapper bench: ${((Date.now() - start) / 1000).toFixed(0)} s)`);
}
