// NBD throughput: nbdcopy writing into and reading from our server (serving a file, and a thin
// device through the active-devices service) next to `nbdkit file` serving the same kind of file,
// measured in the same run, rounds interleaved so background load hits all alike. Each side is
// reported as its best and its median round, and each as a ratio to nbdkit's (best to best,
// median to median): on a shared machine single runs are too noisy to compare.
// Then longer copies (2 GiB) of a thin device through a service that has served before, next to
// nbdkit: copies long enough that the fixed costs of a copy (starting nbdcopy, connecting) no
// longer hide what each request costs, and both sides are bound by the two cores.
// On this VM, page cache grown past ~2 GiB of fresh memory fills 8-15x slower (the host backs
// guest memory on first touch: `dd` of a second 2 GiB file, 0.5 -> 7-8 s, all in the kernel's
// copy); so every measured write starts with the pool's data file out of the page cache, as
// nbdkit's starts with a new file, and neither side grows the cache by more than the copy.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, mkdir, rm, open, writeFile, truncate } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { built, builtPath } from './built.js';

const { MapperRegistry } = await built<typeof import('../src/thin/mapper.js')>('thin/mapper.ts');
const { dmCreate, dmMessage } = await built<typeof import('../src/thin/dmsetup.js')>('thin/dmsetup.ts');
const { ensureService, stopService } = await built<typeof import('../src/nbd/service-client.js')>('nbd/service-client.ts');
const { servicePaths } = await built<typeof import('../src/nbd/service-paths.js')>('nbd/service-paths.ts');

const MiB = 1024 * 1024;
const SIZE = 512 * MiB;
const ROUNDS = 5;
const LONG_SIZE = 2048 * MiB;
const LONG_ROUNDS = 3;

function exec(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d: Buffer) => { err += d.toString(); });
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')}: ${code} ${err}`))));
  });
}

async function timed(cmd: string, args: string[]): Promise<number> {
  const t0 = performance.now();
  await exec(cmd, args);
  return (performance.now() - t0) / 1000;
}

/** Start a server process and resolve once its socket accepts (`ready` line or pidfile). */
async function startOurs(file: string, sock: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, [builtPath('nbd/serve-main.ts'), file, sock], {
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, UV_THREADPOOL_SIZE: '16' },
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => { if (d.toString().includes('ready')) resolve(); });
    child.once('exit', (code) => reject(new Error(`serve-main exited ${code}`)));
  });
  return child;
}

async function startNbdkit(file: string, sock: string, pidfile: string): Promise<void> {
  await exec('nbdkit', ['-U', sock, '-P', pidfile, 'file', file]);
}

async function stop(child: ChildProcess): Promise<void> {
  const done = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await done;
}

async function killPidfile(pidfile: string): Promise<void> {
  const { readFile } = await import('node:fs/promises');
  const pid = Number((await readFile(pidfile, 'utf8')).trim());
  process.kill(pid, 'SIGTERM');
  for (let i = 0; i < 100; i++) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function freshSparse(path: string, size = SIZE): Promise<void> {
  await writeFile(path, '');
  await truncate(path, size);
}

async function randomFile(path: string, size: number): Promise<void> {
  const h = await open(path, 'w');
  for (let pos = 0; pos < size; pos += 16 * MiB) await h.write(randomBytes(16 * MiB), 0, 16 * MiB, pos);
  await h.close();
}

/** A fresh pool (64 KiB blocks) in `base`, its data file `base/data`, with thin device i of `sizes[i]` active as `thin<i>`. */
async function freshThinPool(base: string, sizes: number[]): Promise<string> {
  const root = join(base, 'root');
  const reg = new MapperRegistry(root);
  const meta = join(base, 'meta');
  const data = join(base, 'data');
  const dataSize = sizes.reduce((a, b) => a + b, 64 * MiB);
  await mkdir(base);
  await writeFile(meta, '');
  await truncate(meta, 32 * MiB);
  await freshSparse(data, dataSize);
  await dmCreate(reg, 'pool', `0 ${dataSize / 512} thin-pool ${meta} ${data} 128 16`);
  for (const [id, size] of sizes.entries()) {
    await dmMessage(reg, 'pool', '0', `create_thin ${id}`);
    await dmCreate(reg, `thin${id}`, `0 ${size / 512} thin pool ${id}`);
  }
  return root;
}

/** Written back and out of the page cache (dd's nocache: posix_fadvise DONTNEED on the whole file). */
async function dropFromCache(file: string): Promise<void> {
  await exec('sync', []);
  await exec('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none']);
}

const uri = (sock: string): string => `nbd+unix:///?socket=${sock}`;
const best = (xs: number[]): number => Math.min(...xs);
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
/** Rows of MiB/s, best and median, each next to the baseline's. */
function rowFor(size: number): (label: string, xs: number[], base: number[]) => string {
  const rate = (seconds: number): number => size / MiB / seconds;
  return (label, xs, base) => {
    const fmt = (v: number): string => v.toFixed(0).padStart(5);
    return `${label.padEnd(30)} best ${fmt(rate(best(xs)))} MiB/s  median ${fmt(rate(median(xs)))} MiB/s` +
      `   vs nbdkit: best ${(rate(best(xs)) / rate(best(base))).toFixed(2)}  median ${(rate(median(xs)) / rate(median(base))).toFixed(2)}`;
  };
}

export async function run(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'strata-bench-nbd-'));
  try {
    const src = join(dir, 'src.img');
    await randomFile(src, SIZE);
    const times = {
      oursW: [] as number[], oursR: [] as number[], kitW: [] as number[], kitR: [] as number[],
      thinW: [] as number[], thinR: [] as number[], warmW: [] as number[], warmR: [] as number[],
    };
    const oursRound = async (): Promise<void> => {
      // write the source into a fresh sparse file, then read it all back
      const dst = join(dir, 'ours.img');
      await freshSparse(dst);
      const sock = join(dir, 'ours.sock');
      const ours = await startOurs(dst, sock);
      times.oursW.push(await timed('nbdcopy', [src, uri(sock)]));
      times.oursR.push(await timed('nbdcopy', [uri(sock), 'null:']));
      await stop(ours);
      await rm(dst);
    };
    const nbdkitCopies = async (from: string, size: number, w: number[], r: number[]): Promise<void> => {
      const dst = join(dir, 'kit.img');
      await freshSparse(dst, size);
      const sock = join(dir, 'kit.sock');
      const pidfile = join(dir, 'kit.pid');
      await startNbdkit(dst, sock, pidfile);
      w.push(await timed('nbdcopy', [from, uri(sock)]));
      r.push(await timed('nbdcopy', [uri(sock), 'null:']));
      await killPidfile(pidfile);
      await rm(dst);
      await rm(sock, { force: true });
    };
    const nbdkitRound = (): Promise<void> => nbdkitCopies(src, SIZE, times.kitW, times.kitR);
    /** A fresh pool of thin devices of `sizes` in `name`, served by the service while `use` runs. */
    const served = async (name: string, sizes: number[], use: (device: (thin: string) => string, data: string) => Promise<void>): Promise<void> => {
      const base = join(dir, name);
      const root = await freshThinPool(base, sizes);
      await ensureService(root);
      try {
        await use((thin) => uri(servicePaths(root).device(thin)), join(base, 'data'));
      } finally {
        await stopService(root);
        await rm(base, { recursive: true, force: true });
      }
    };
    // Two fresh thin devices (64 KiB blocks) of a fresh pool, served by the active-devices
    // service: the first by a service just started ("cold": V8 still compiling the code every
    // request runs, on the same two cores), the second by the same service afterwards ("warm":
    // a service that has served before, which is how it runs: it stays up).
    const thinRound = (round: number): Promise<void> => served(`thin${round}`, [SIZE, SIZE], async (device, data) => {
      times.thinW.push(await timed('nbdcopy', [src, device('thin0')]));
      times.thinR.push(await timed('nbdcopy', [device('thin0'), 'null:']));
      await dropFromCache(data);
      times.warmW.push(await timed('nbdcopy', [src, device('thin1')]));
      times.warmR.push(await timed('nbdcopy', [device('thin1'), 'null:']));
    });
    // rounds interleaved, order rotated, so neither always follows the other's page-cache churn
    const sides = [oursRound, nbdkitRound, thinRound];
    for (let round = 0; round < ROUNDS; round++) {
      for (let i = 0; i < sides.length; i++) await sides[(round + i) % sides.length]!(round);
    }

    const row = rowFor(SIZE);
    console.log(`nbdcopy, ${SIZE / MiB} MiB of random data, unix socket, ${ROUNDS} interleaved rounds, fresh server each`);
    console.log(row('write: nbdkit file (baseline)', times.kitW, times.kitW));
    console.log(row('write: strata file export', times.oursW, times.kitW));
    console.log(row('write: strata thin, cold', times.thinW, times.kitW));
    console.log(row('write: strata thin, warm', times.warmW, times.kitW));
    console.log(row('read:  nbdkit file (baseline)', times.kitR, times.kitR));
    console.log(row('read:  strata file export', times.oursR, times.kitR));
    console.log(row('read:  strata thin, cold', times.thinR, times.kitR));
    console.log(row('read:  strata thin, warm', times.warmR, times.kitR));

    // long copies: a service that has served a device before (a copy of 512 MiB) serves a second one of 2 GiB
    const longSrc = join(dir, 'long.img');
    await randomFile(longSrc, LONG_SIZE);
    const long = { kitW: [] as number[], kitR: [] as number[], thinW: [] as number[], thinR: [] as number[] };
    const longThinRound = (round: number): Promise<void> => served(`long${round}`, [SIZE, LONG_SIZE], async (device, data) => {
      await exec('nbdcopy', [src, device('thin0')]);
      await dropFromCache(data);
      long.thinW.push(await timed('nbdcopy', [longSrc, device('thin1')]));
      long.thinR.push(await timed('nbdcopy', [device('thin1'), 'null:']));
    });
    for (let round = 0; round < LONG_ROUNDS; round++) {
      const longSides = [() => nbdkitCopies(longSrc, LONG_SIZE, long.kitW, long.kitR), () => longThinRound(round)];
      for (let i = 0; i < longSides.length; i++) await longSides[(round + i) % longSides.length]!();
    }
    const longRow = rowFor(LONG_SIZE);
    console.log(`nbdcopy, ${LONG_SIZE / MiB} MiB, ${LONG_ROUNDS} interleaved rounds; the thin device is a service's second`);
    console.log(longRow('write: nbdkit file (baseline)', long.kitW, long.kitW));
    console.log(longRow('write: strata thin, warm', long.thinW, long.kitW));
    console.log(longRow('read:  nbdkit file (baseline)', long.kitR, long.kitR));
    console.log(longRow('read:  strata thin, warm', long.thinR, long.kitR));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
