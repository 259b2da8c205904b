// NBD throughput: nbdcopy writing into and reading from our server (serving a file, and a thin
// device through the active-devices service) next to `nbdkit file` serving the same kind of file,
// measured in the same run, rounds interleaved so background load hits all alike. Each side is
// reported as its best and its median round, and each as a ratio to nbdkit's (best to best,
// median to median): on a shared machine single runs are too noisy to compare.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, mkdir, rm, open, writeFile, truncate } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { MapperRegistry } from '../src/thin/mapper.js';
import { dmCreate, dmMessage } from '../src/thin/dmsetup.js';
import { ensureService, stopService } from '../src/nbd/service-client.js';
import { servicePaths } from '../src/nbd/service-paths.js';

const MiB = 1024 * 1024;
const SIZE = 512 * MiB;
const ROUNDS = 5;

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
  const entry = fileURLToPath(new URL('../src/nbd/serve-main.ts', import.meta.url));
  const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), entry, file, sock], {
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

async function freshSparse(path: string): Promise<void> {
  await writeFile(path, '');
  await truncate(path, SIZE);
}

const uri = (sock: string): string => `nbd+unix:///?socket=${sock}`;
const rate = (seconds: number): number => SIZE / MiB / seconds;
const best = (xs: number[]): number => Math.min(...xs);
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

export async function run(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'strata-bench-nbd-'));
  try {
    const src = join(dir, 'src.img');
    const h = await open(src, 'w');
    for (let pos = 0; pos < SIZE; pos += 16 * MiB) await h.write(randomBytes(16 * MiB), 0, 16 * MiB, pos);
    await h.close();
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
    const nbdkitRound = async (): Promise<void> => {
      const dst = join(dir, 'kit.img');
      await freshSparse(dst);
      const sock = join(dir, 'kit.sock');
      const pidfile = join(dir, 'kit.pid');
      await startNbdkit(dst, sock, pidfile);
      times.kitW.push(await timed('nbdcopy', [src, uri(sock)]));
      times.kitR.push(await timed('nbdcopy', [uri(sock), 'null:']));
      await killPidfile(pidfile);
      await rm(dst);
      await rm(sock, { force: true });
    };
    // Two fresh thin devices (64 KiB blocks) of a fresh pool, served by the active-devices
    // service: the first by a service just started ("cold": V8 still compiling the code every
    // request runs, on the same two cores), the second by the same service afterwards ("warm":
    // a service that has served before, which is how it runs: it stays up).
    const thinRound = async (round: number): Promise<void> => {
      const base = join(dir, `thin${round}`);
      const root = join(base, 'root');
      const reg = new MapperRegistry(root);
      const meta = join(base, 'meta');
      const data = join(base, 'data');
      await mkdir(base);
      await writeFile(meta, '');
      await truncate(meta, 32 * MiB);
      await writeFile(data, '');
      await truncate(data, 2 * SIZE + 64 * MiB);
      await dmCreate(reg, 'pool', `0 ${(2 * SIZE + 64 * MiB) / 512} thin-pool ${meta} ${data} 128 16`);
      for (const id of [0, 1]) {
        await dmMessage(reg, 'pool', '0', `create_thin ${id}`);
        await dmCreate(reg, `thin${id}`, `0 ${SIZE / 512} thin pool ${id}`);
      }
      await ensureService(root);
      try {
        const cold = servicePaths(root).device('thin0');
        times.thinW.push(await timed('nbdcopy', [src, uri(cold)]));
        times.thinR.push(await timed('nbdcopy', [uri(cold), 'null:']));
        const warm = servicePaths(root).device('thin1');
        times.warmW.push(await timed('nbdcopy', [src, uri(warm)]));
        times.warmR.push(await timed('nbdcopy', [uri(warm), 'null:']));
      } finally {
        await stopService(root);
        await rm(base, { recursive: true, force: true });
      }
    };
    // rounds interleaved, order rotated, so neither always follows the other's page-cache churn
    const sides = [oursRound, nbdkitRound, thinRound];
    for (let round = 0; round < ROUNDS; round++) {
      for (let i = 0; i < sides.length; i++) await sides[(round + i) % sides.length]!(round);
    }

    const row = (label: string, xs: number[], base: number[]): string => {
      const fmt = (v: number): string => v.toFixed(0).padStart(5);
      return `${label.padEnd(30)} best ${fmt(rate(best(xs)))} MiB/s  median ${fmt(rate(median(xs)))} MiB/s` +
        `   vs nbdkit: best ${(rate(best(xs)) / rate(best(base))).toFixed(2)}  median ${(rate(median(xs)) / rate(median(base))).toFixed(2)}`;
    };
    console.log(`nbdcopy, ${SIZE / MiB} MiB of random data, unix socket, ${ROUNDS} interleaved rounds, fresh server each`);
    console.log(row('write: nbdkit file (baseline)', times.kitW, times.kitW));
    console.log(row('write: strata file export', times.oursW, times.kitW));
    console.log(row('write: strata thin, cold', times.thinW, times.kitW));
    console.log(row('write: strata thin, warm', times.warmW, times.kitW));
    console.log(row('read:  nbdkit file (baseline)', times.kitR, times.kitR));
    console.log(row('read:  strata file export', times.oursR, times.kitR));
    console.log(row('read:  strata thin, cold', times.thinR, times.kitR));
    console.log(row('read:  strata thin, warm', times.warmR, times.kitR));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
