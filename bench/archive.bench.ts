// Layer archive benchmark: apply a generated ~10,000-file, ~200 MB tree tar, against GNU
// `tar -xf` of the same tar into a fresh directory in the same run; diffTar of the tree and of a
// 10-file change; apply with tar-split recording (the import path); peak RSS of each step,
// measured in a child process of its own so the numbers are not mixed up.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';

const FILES = Number(process.env.BENCH_ARCHIVE_FILES ?? 10_000);
const TOTAL = Number(process.env.BENCH_ARCHIVE_BYTES ?? 200 * 1024 * 1024);
const RUNS = Number(process.env.BENCH_ARCHIVE_RUNS ?? 3);
// the child runs the compiled library, as a program using Strata would (see built.ts)
const indexUrl = new URL('../dist/archive/index.js', import.meta.url).href;
const repo = fileURLToPath(new URL('..', import.meta.url));

/** Deterministic sizes: mostly small files, a few large ones, summing to about TOTAL. */
function generateTree(root: string): { files: number; bytes: number } {
  let seed = 42;
  const rand = () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed / 2 ** 32;
  };
  const weights = Array.from({ length: FILES }, () => {
    const r = rand();
    return r < 0.9 ? 1 + rand() * 8 : r < 0.99 ? 20 + rand() * 80 : 500 + rand() * 1500;
  });
  const sum = weights.reduce((a, b) => a + b, 0);
  const block = Buffer.alloc(1 << 20);
  for (let i = 0; i < block.length; i++) block[i] = (i * 2654435761) >>> 24;
  let bytes = 0;
  for (let i = 0; i < FILES; i++) {
    const dir = `${root}/usr/share/d${String(i % 400).padStart(3, '0')}/s${i % 7}`;
    if (i < 2800) mkdirSync(dir, { recursive: true });
    const size = Math.max(1, Math.round((weights[i]! / sum) * TOTAL));
    const data = size <= block.length ? block.subarray(i % 4096, (i % 4096) + size) : Buffer.concat(Array.from({ length: Math.ceil(size / block.length) }, () => block)).subarray(0, size);
    writeFileSync(`${dir}/f${i}.bin`, data.length === size ? data : Buffer.concat([data, block]).subarray(0, size));
    bytes += size;
  }
  return { files: FILES, bytes };
}

function child(script: string): { ms: number; rssMb: number; out: Record<string, unknown> } {
  const code = `
    import * as A from ${JSON.stringify(indexUrl)};
    import { createReadStream, createWriteStream } from 'node:fs';
    import { Writable } from 'node:stream';
    const t0 = performance.now();
    const out = await (async () => { ${script} })();
    const ms = performance.now() - t0;
    console.log(JSON.stringify({ ms, rssMb: process.resourceUsage().maxRSS / 1024, out: out ?? {} }));`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { cwd: repo, maxBuffer: 1 << 24 });
  if (r.status !== 0) throw new Error(`bench child failed: ${r.stderr.toString()}`);
  return JSON.parse(r.stdout.toString().trim().split('\n').pop()!) as { ms: number; rssMb: number; out: Record<string, unknown> };
}

function time(fn: () => void): number {
  const t0 = performance.now();
  fn();
  return performance.now() - t0;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const fmt = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

export async function run(): Promise<void> {
  const work = mkdtempSync(`${tmpdir()}/strata-bench-archive-`);
  try {
    const tree = `${work}/tree`;
    mkdirSync(tree);
    const gen = generateTree(tree);
    const tar = `${work}/layer.tar`;
    execFileSync('tar', ['--format=posix', '-cf', tar, '-C', tree, '.']);
    const tarBytes = statSync(tar).size;
    console.log(`tree: ${gen.files} files, ${(gen.bytes / 2 ** 20).toFixed(0)} MiB; tar ${(tarBytes / 2 ** 20).toFixed(0)} MiB`);

    const tarTimes: number[] = [];
    const applyTimes: number[] = [];
    let applyRss = 0;
    // Each timed step starts after `sync`, so neither pays for the other's writeback, and the
    // order alternates between runs.
    for (let i = 0; i < RUNS; i++) {
      const a = `${work}/x-tar-${i}`;
      const b = `${work}/x-us-${i}`;
      mkdirSync(a);
      mkdirSync(b);
      const runTar = () => {
        execFileSync('sync');
        tarTimes.push(time(() => execFileSync('tar', ['-xf', tar, '-C', a])));
      };
      const runUs = () => {
        execFileSync('sync');
        const r = child(`return A.applyLayerTar(${JSON.stringify(b)}, createReadStream(${JSON.stringify(tar)}, { highWaterMark: 1 << 20 }), { whiteouts: 'apply' });`);
        applyTimes.push(r.ms);
        applyRss = Math.max(applyRss, r.rssMb);
      };
      if (i % 2 === 0) { runTar(); runUs(); } else { runUs(); runTar(); }
      rmSync(a, { recursive: true, force: true });
      if (i < RUNS - 1) rmSync(b, { recursive: true, force: true });
    }
    const ratio = median(applyTimes) / median(tarTimes);
    const best = Math.min(...applyTimes) / Math.min(...tarTimes);
    console.log(`runs (tar -xf / applyLayerTar):  ${tarTimes.map((t, i) => `${fmt(t)} / ${fmt(applyTimes[i]!)}`).join(', ')}`);
    console.log(`tar -xf:        median ${fmt(median(tarTimes))}, best ${fmt(Math.min(...tarTimes))}`);
    console.log(`applyLayerTar:  median ${fmt(median(applyTimes))}, best ${fmt(Math.min(...applyTimes))}   ` +
      `ratio ${ratio.toFixed(2)}x of medians, ${best.toFixed(2)}x of bests (target <= 1.5x)   peak RSS ${applyRss.toFixed(0)} MB`);

    const rec = `${work}/x-rec`;
    mkdirSync(rec);
    execFileSync('sync');
    const r2 = child(`
      const recorder = new A.TarSplitRecorder(createWriteStream(${JSON.stringify(`${work}/tar-split.json.gz`)}));
      const src = createReadStream(${JSON.stringify(tar)}, { highWaterMark: 1 << 20 }).pipe(recorder);
      const { size } = await A.applyLayerTar(${JSON.stringify(rec)}, src, { whiteouts: 'apply' });
      src.resume();
      const r = await recorder.finished();
      return { size, diffId: r.diffId };`);
    console.log(`apply + tar-split + DiffID:        ${fmt(r2.ms)}   peak RSS ${r2.rssMb.toFixed(0)} MB`);

    const r3 = child(`
      let n = 0; const s = A.diffTar(${JSON.stringify(tree)}, null);
      for await (const c of s) n += c.length; return { bytes: n };`);
    console.log(`diffTar(tree, null):               ${fmt(r3.ms)}   ${((r3.out.bytes as number) / 2 ** 20).toFixed(0)} MiB   peak RSS ${r3.rssMb.toFixed(0)} MB`);
    const tarC = time(() => execFileSync('tar', ['-cf', '/dev/null', '-C', tree, '.']));
    const tarCat = time(() => execFileSync('sh', ['-c', `tar -cf - -C ${tree} . | cat > /dev/null`]));
    console.log(`  baseline tar -cf - | cat:        ${fmt(tarCat)}   (tar -cf /dev/null: ${fmt(tarC)}, GNU tar skips reading then)`);

    // a 10-file change against the applied copy
    const last = `${work}/x-us-${RUNS - 1}`;
    for (let i = 0; i < 10; i++) writeFileSync(`${last}/usr/share/d${String(i).padStart(3, '0')}/s${i % 7}/f${i}.bin`, `changed ${i}\n`);
    const r4 = child(`
      const changes = await A.changes(${JSON.stringify(last)}, ${JSON.stringify(tree)});
      let n = 0; for await (const c of A.diffTar(${JSON.stringify(last)}, ${JSON.stringify(tree)})) n += c.length;
      return { changes: changes.length, bytes: n };`);
    console.log(`changes + diffTar after 10 edits:  ${fmt(r4.ms)}   (${r4.out.changes as number} changes, ${r4.out.bytes as number} bytes)   peak RSS ${r4.rssMb.toFixed(0)} MB`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
