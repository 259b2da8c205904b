// overlay2 next to Debian's dockerd (20.10, overlay2), measured in the same run on the same
// machine: import of a generated 10,000-file ~200 MB root filesystem tar, container create
// (median of 20), and diff after 10 changes. Strata is called through its library API in this
// process; Docker through its Engine API on a private socket (no CLI start-up on either side),
// with the docker CLI figure shown too. Lower is better; ratio = Docker / Strata.
import { mkdir, rm, writeFile, readFile } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { mkdtemp } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { Strata } from '../src/strata.js';
import { probeOverlay2 } from '../src/drivers/overlay2/overlay-support.js';
import { dockerdUnavailable, startDockerd, unmountBelow, type Dockerd } from '../test/interop/dockerd.js';

const FILES = 10_000;
const DIRS = 100;
const CREATES = 20;
const DIFF_RUNS = 10;

function sh(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => execFile(cmd, args, { maxBuffer: 1 << 26 }, (err, out, stderr) => (err ? reject(new Error(`${cmd}: ${stderr}`)) : resolve(String(out)))));
}

/** A deterministic tree: 100 dirs × 100 files, sizes skewed small (mean ~20 KB). */
export async function generateRootfs(dir: string): Promise<number> {
  let seed = 42;
  const rand = () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed / 0x7fffffff;
  };
  const pool = Buffer.alloc(1 << 20);
  for (let i = 0; i < pool.length; i++) pool[i] = Math.floor(rand() * 256);
  let total = 0;
  for (let d = 0; d < DIRS; d++) {
    const sub = join(dir, 'usr', `d${String(d).padStart(3, '0')}`);
    await mkdir(sub, { recursive: true });
    for (let f = 0; f < FILES / DIRS; f++) {
      const size = 512 + Math.floor(rand() ** 3 * 80 * 1024);
      const offset = Math.floor(rand() * (pool.length - size));
      const body = Buffer.concat([Buffer.from(`${d}/${f}\n`), pool.subarray(offset, offset + size)]);
      await writeFile(join(sub, `f${f}`), body);
      total += body.length;
    }
  }
  await mkdir(join(dir, 'etc'), { recursive: true });
  for (let i = 0; i < 5; i++) await writeFile(join(dir, 'etc', `conf${i}`), `conf ${i}\n`);
  return total;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function time<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const t0 = performance.now();
  const value = await fn();
  return [performance.now() - t0, value];
}

function row(name: string, strata: number, docker: number, dockerCli?: number): string {
  const cli = dockerCli === undefined ? '' : `  (docker CLI ${dockerCli.toFixed(1)} ms)`;
  return `${name.padEnd(34)} strata ${strata.toFixed(1).padStart(9)} ms   dockerd ${docker.toFixed(1).padStart(9)} ms   ratio ${(docker / strata).toFixed(2)}x${cli}`;
}

/** Ten changes in a Docker container without running it: cp for adds and edits, whiteouts for deletes. */
async function dockerTenChanges(d: Dockerd, id: string, work: string): Promise<void> {
  for (let i = 0; i < 5; i++) {
    await writeFile(join(work, `new${i}`), `new ${i}\n`);
    await d.docker(['cp', join(work, `new${i}`), `${id}:/etc/new${i}`]);
  }
  for (let i = 0; i < 3; i++) {
    await writeFile(join(work, `edit${i}`), `edited ${i}\n`);
    await d.docker(['cp', join(work, `edit${i}`), `${id}:/usr/d00${i}/f1`]);
  }
  const upper = JSON.parse((await d.api('GET', `/containers/${id}/json`)).body).GraphDriver.Data.UpperDir as string;
  for (let i = 0; i < 2; i++) {
    await mkdir(join(upper, 'usr', `d01${i}`), { recursive: true });
    await sh('mknod', [join(upper, 'usr', `d01${i}`, 'f2'), 'c', '0', '0']);
  }
}

export async function run(): Promise<void> {
  const reason = (await dockerdUnavailable()) ?? (await probeOverlay2(tmpdir()));
  if (reason) {
    console.log(`skipped: ${reason}`);
    return;
  }
  const work = await mkdtemp(join(tmpdir(), 'strata-bench-overlay2-'));
  let dockerd: Dockerd | null = null;
  try {
    const rootfs = join(work, 'rootfs');
    const bytes = await generateRootfs(rootfs);
    const tarPath = join(work, 'rootfs.tar');
    await sh('tar', ['--format=posix', '--numeric-owner', '-C', rootfs, '-cf', tarPath, '.']);
    await rm(rootfs, { recursive: true, force: true });
    const tarSize = Number((await sh('stat', ['-c', '%s', tarPath])).trim());
    console.log(`rootfs: ${FILES} files, ${(bytes / 1e6).toFixed(0)} MB of content, tar ${(tarSize / 1e6).toFixed(0)} MB; ${new Date().toISOString()}`);

    dockerd = await startDockerd(join(work, 'docker'), join(work, 'docker-root'), 'overlay2');
    const d = dockerd;
    const strataRoot = join(work, 'strata-root');
    const strata = await Strata.open({ root: strataRoot, driver: 'overlay2' });

    // import: alternate the two, three rounds each, median
    const imports: { s: number[]; d: number[] } = { s: [], d: [] };
    for (let i = 0; i < 3; i++) {
      await sh('sync', []);
      const [ts] = await time(() => strata.importImage(createReadStream(tarPath), { ref: `bench:${i}` }));
      imports.s.push(ts);
      await sh('sync', []);
      const [td] = await time(() => d.docker(['import', tarPath, `bench:${i}`]));
      imports.d.push(td);
    }

    // Write back what the imports left dirty first, so neither side's creates wait behind it.
    await sh('sync', []);

    // create: median of 20
    const creates: { s: number[]; d: number[]; cli: number[] } = { s: [], d: [], cli: [] };
    for (let i = 0; i < CREATES; i++) {
      const [ts] = await time(() => strata.createContainer('bench:0', { name: `s${i}` }));
      creates.s.push(ts);
      const [td, res] = await time(() => d.api('POST', `/containers/create?name=d${i}`, { Image: 'bench:0', Cmd: ['/bin/true'] }));
      if (res.status !== 201) throw new Error(`docker create: ${res.status} ${res.body}`);
      creates.d.push(td);
    }
    for (let i = 0; i < 5; i++) {
      const [tc] = await time(() => d.docker(['create', '--name', `cli${i}`, 'bench:0', '/bin/true']));
      creates.cli.push(tc);
    }

    // diff after 10 changes (5 added, 3 modified, 2 deleted)
    const sid = await strata.createContainer('bench:0', { name: 'differ' });
    const merged = await strata.mount(sid);
    try {
      for (let i = 0; i < 5; i++) await writeFile(join(merged, 'etc', `new${i}`), `new ${i}\n`);
      for (let i = 0; i < 3; i++) await writeFile(join(merged, 'usr', `d00${i}`, 'f1'), `edited ${i}\n`);
      for (let i = 0; i < 2; i++) await rm(join(merged, 'usr', `d01${i}`, 'f2'));
    } finally {
      await strata.unmount(sid);
    }
    const did = JSON.parse((await d.api('POST', '/containers/create?name=differ', { Image: 'bench:0', Cmd: ['/bin/true'] })).body).Id as string;
    await dockerTenChanges(d, did, work);
    const diffs: { s: number[]; d: number[]; cli: number[] } = { s: [], d: [], cli: [] };
    let strataLines = 0;
    let dockerLines = 0;
    for (let i = 0; i < DIFF_RUNS; i++) {
      const [ts, list] = await time(() => strata.diff(sid));
      diffs.s.push(ts);
      strataLines = list.length;
      const [td, res] = await time(() => d.api('GET', `/containers/${did}/changes`));
      diffs.d.push(td);
      dockerLines = (JSON.parse(res.body) as unknown[]).length;
    }
    for (let i = 0; i < 3; i++) diffs.cli.push((await time(() => d.docker(['diff', did])))[0]);
    const [tcommit] = await time(() => strata.commit(sid, { ref: 'bench:diffed' }));
    const [tdcommit] = await time(() => d.api('POST', `/commit?container=${did}&repo=bench&tag=diffed`));

    console.log(row('import (median of 3)', median(imports.s), median(imports.d)));
    console.log(row(`create (median of ${CREATES})`, median(creates.s), median(creates.d), median(creates.cli)));
    console.log(row(`diff after 10 changes (median of ${DIFF_RUNS})`, median(diffs.s), median(diffs.d), median(diffs.cli)));
    console.log(row('commit of those 10 changes', tcommit, tdcommit));
    console.log(`  diff lines: strata ${strataLines}, dockerd ${dockerLines}; import throughput strata ${(tarSize / 1e6 / (median(imports.s) / 1000)).toFixed(0)} MB/s, dockerd ${(tarSize / 1e6 / (median(imports.d) / 1000)).toFixed(0)} MB/s`);
    const load = (await readFile('/proc/loadavg', 'utf8')).split(' ').slice(0, 3).join(' ');
    console.log(`  load average at the end: ${load} (the machine is shared; compare ratios, not absolutes)`);
    await strata.driver.cleanup();
  } finally {
    if (dockerd) await dockerd.stop().catch(() => undefined);
    await unmountBelow(work);
    await rm(work, { recursive: true, force: true });
  }
}
