// overlay2's native diff (read from the upper dir) against the naive differ as the oracle: random
// changes made through a real overlay mount over layers with whiteouts and opaque directories;
// `changes` must equal the naive tree comparison, and the native diff tar, applied as a new
// layer, must reproduce the container.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, lchown, link, mkdir, readdir, rename, rm, symlink, utimes, writeFile, lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { tmpdir } from 'node:os';
import type { Driver } from '../../src/drivers/driver.js';
import { createOverlay2Driver } from '../../src/drivers/overlay2/overlay2-driver.js';
import { probeOverlay2 } from '../../src/drivers/overlay2/overlay-support.js';
import { changes as naiveChanges } from '../../src/archive/index.js';
import { setXattr } from '../../src/util/xattr.js';
import { dir, file, layerTar, opaque, snapshotTree, sym, tempDir, whiteout, type FsOp } from '../helpers/fstest.js';
import { rng } from '../helpers/rng.js';

const LAYERS: FsOp[][] = [
  [dir('etc'), file('etc/a', 'a'), file('etc/b', 'b'), dir('usr/lib'), file('usr/lib/x', 'x'), file('usr/lib/y', 'y'), dir('var/cache'), file('var/cache/1', '1'), file('var/cache/2', '2'), sym('etc/l', 'a'), dir('opt/tree/deep'), file('opt/tree/deep/f', 'f')],
  [dir('etc'), whiteout('etc/b'), file('etc/c', 'c'), dir('var/cache'), opaque('var/cache'), file('var/cache/3', '3'), dir('usr/lib'), file('usr/lib/z', 'z')],
  [dir('usr'), whiteout('usr/lib'), dir('usr/share'), file('usr/share/s', 's'), dir('home/u'), file('home/u/.profile', 'p')],
];

async function listTree(root: string): Promise<{ files: string[]; dirs: string[] }> {
  const files: string[] = [];
  const dirs: string[] = [];
  async function walk(rel: string): Promise<void> {
    for (const e of await readdir(join(root, rel), { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) {
        dirs.push(r);
        await walk(r);
      } else files.push(r);
    }
  }
  await walk('');
  return { files, dirs };
}

async function randomOps(root: string, rand: () => number, count: number): Promise<string[]> {
  const done: string[] = [];
  const pick = <T>(xs: T[]): T | undefined => xs[Math.floor(rand() * xs.length)];
  for (let i = 0; i < count; i++) {
    const { files, dirs } = await listTree(root);
    const f = pick(files);
    const d = pick(dirs) ?? '';
    const op = Math.floor(rand() * 12);
    try {
      switch (op) {
        case 0: await writeFile(join(root, d, `new${i}`), `n${i}`); done.push(`add ${d}/new${i}`); break;
        case 1: if (f) { await writeFile(join(root, f), `changed ${i}`); done.push(`write ${f}`); } break;
        case 2: if (f) { await rm(join(root, f)); done.push(`rm ${f}`); } break;
        case 3: if (d) { await rm(join(root, d), { recursive: true }); done.push(`rm -r ${d}`); } break;
        case 4: if (d) { await rm(join(root, d), { recursive: true }); await mkdir(join(root, d)); await writeFile(join(root, d, 'again'), 'again'); done.push(`replace ${d}`); } break;
        case 5: if (f && !(await lstat(join(root, f))).isSymbolicLink()) { await chmod(join(root, f), 0o600); done.push(`chmod ${f}`); } break;
        case 6: if (f) { await lchown(join(root, f), 1000, 1000); done.push(`chown ${f}`); } break;
        case 7: if (f) { await rm(join(root, f)); await symlink('/somewhere', join(root, f)); done.push(`symlink ${f}`); } break;
        case 8: await mkdir(join(root, d, `dir${i}/sub`), { recursive: true }); await writeFile(join(root, d, `dir${i}/sub/f`), 'f'); done.push(`mkdir ${d}/dir${i}`); break;
        case 9: if (f) { await rename(join(root, f), join(root, d, `moved${i}`)); done.push(`mv ${f}`); } break;
        case 10: if (f && !(await lstat(join(root, f))).isSymbolicLink()) { await utimes(join(root, f), 1_600_000_000, 1_600_000_000); await setXattr(join(root, f), 'user.t', `${i}`); done.push(`touch+xattr ${f}`); } break;
        case 11: if (f && (await lstat(join(root, f))).isFile()) { await link(join(root, f), join(root, d, `hl${i}`)); done.push(`ln ${f}`); } break;
      }
    } catch (err) {
      done.push(`(${op} failed: ${(err as NodeJS.ErrnoException).code})`);
    }
  }
  return done;
}

describe('overlay2 native diff agrees with the naive differ', () => {
  let reason: string | null = null;
  before(async () => {
    reason = await probeOverlay2(process.env.STRATA_TEST_TMP ?? tmpdir());
  });

  for (const seed of [1, 2, 3, 4, 5, 6]) {
    it(`random changes, seed ${seed}`, async (t) => {
      if (reason) return t.skip(reason);
      const root = await tempDir('strata-overlay2-oracle-');
      const d: Driver = await createOverlay2Driver({ root, options: {} });
      try {
        let parent: string | null = null;
        for (const [i, ops] of LAYERS.entries()) {
          await d.create(`img${i}`, parent);
          await d.applyDiff(`img${i}`, parent, Readable.from(await layerTar(ops)));
          parent = `img${i}`;
        }
        await d.createReadWrite('ctr', parent);
        const merged = await d.get('ctr');
        let log: string[];
        try {
          log = await randomOps(merged, rng(seed), 14);
        } finally {
          await d.put('ctr');
        }
        const native = (await d.changes('ctr', parent)).map((c) => `${c.kind} ${c.path}`);
        const ctrView = await d.get('ctr');
        const parentView = await d.get(parent!);
        let naive: string[];
        try {
          naive = (await naiveChanges(ctrView, parentView)).map((c) => `${c.kind} ${c.path}`);
        } finally {
          await d.put(parent!);
          await d.put('ctr');
        }
        assert.deepEqual(native, naive, `ops: ${log.join('; ')}`);

        const tar = await d.diff('ctr', parent);
        await d.create('replay', parent);
        await d.applyDiff('replay', parent, tar);
        const a = await d.get('ctr');
        const b = await d.get('replay');
        try {
          assert.deepEqual(await snapshotTree(b), await snapshotTree(a), `ops: ${log.join('; ')}`);
        } finally {
          await d.put('replay');
          await d.put('ctr');
        }
      } finally {
        await d.cleanup().catch(() => undefined);
        await rm(root, { recursive: true, force: true });
      }
    });
  }
});
