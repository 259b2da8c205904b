// overlay2 on disk exactly as Docker lays it out, and its mounts: counted across processes,
// undone by put and cleanup, 128 lowers through relative options, never deleted through.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { lstat, readFile, readlink, readdir, rm, writeFile, mkdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import type { Driver } from '../../src/drivers/driver.js';
import { createOverlay2Driver } from '../../src/drivers/overlay2/overlay2-driver.js';
import { probeOverlay2 } from '../../src/drivers/overlay2/overlay-support.js';
import { isMountPoint } from '../../src/drivers/overlay2/kernel-mount.js';
import { isStrataError } from '../../src/errors.js';
import { Readable } from 'node:stream';
import { dir, file, layerTar, tempDir, whiteout } from '../helpers/fstest.js';

const ID = (n: number) => n.toString(16).padStart(64, '0');

describe('overlay2 layout and mounts', () => {
  let reason: string | null = null;
  before(async () => {
    reason = await probeOverlay2(process.env.STRATA_TEST_TMP ?? tmpdir());
  });

  function test(title: string, fn: (d: Driver, home: string, root: string) => Promise<void>): void {
    it(title, async (t) => {
      if (reason) return t.skip(reason);
      const root = await tempDir('strata-overlay2-');
      const d = await createOverlay2Driver({ root, options: {} });
      try {
        await fn(d, d.home, root);
      } finally {
        await d.cleanup().catch(() => undefined);
        await rm(root, { recursive: true, force: true });
      }
    });
  }

  const mode = async (p: string) => (await lstat(p)).mode & 0o7777;

  test('lays layers out as moby: diff, link, l/ symlinks, lower nearest first, work, committed', async (d, home) => {
    const [a, b, c] = [ID(1), ID(2), `${ID(3)}-init`];
    await d.create(a, null);
    await d.create(b, a);
    await d.createReadWrite(c, b);
    assert.equal(await mode(home), 0o710);
    assert.equal(await mode(join(home, 'l')), 0o700);
    assert.equal(await mode(join(home, a)), 0o710);
    assert.equal(await mode(join(home, a, 'diff')), 0o755);
    assert.equal(await mode(join(home, a, 'link')), 0o644);
    const links: string[] = [];
    for (const id of [a, b, c]) {
      const link = await readFile(join(home, id, 'link'), 'utf8');
      assert.match(link, /^[A-Z2-7]{26}$/);
      assert.equal(await readlink(join(home, 'l', link)), `../${id}/diff`);
      links.push(link);
    }
    assert.deepEqual((await readdir(join(home, a))).sort(), ['committed', 'diff', 'link'], 'a base layer has no lower and no work dir');
    assert.equal(await readFile(join(home, b, 'lower'), 'utf8'), `l/${links[0]}`);
    assert.equal(await readFile(join(home, c, 'lower'), 'utf8'), `l/${links[1]}:l/${links[0]}`);
    assert.equal(await mode(join(home, c, 'work')), 0o700);
    assert.equal(await readFile(join(home, b, 'committed'), 'utf8'), '');
    assert.equal(await mode(join(home, b, 'committed')), 0o600);
    await assert.rejects(lstat(join(home, c, 'committed')), 'the top layer has no children yet');
    const meta = await d.metadata(c);
    assert.equal(meta.LowerDir, `${join(home, b, 'diff')}:${join(home, a, 'diff')}`);
    assert.equal(meta.UpperDir, join(home, c, 'diff'));
    await d.remove(c);
    assert.deepEqual((await readdir(join(home, 'l'))).sort(), links.slice(0, 2).sort(), 'remove drops the short link');
  });

  test('mounts on the first get, shares it, unmounts and removes merged/ on the last put', async (d, home) => {
    const [a, b] = [ID(1), ID(2)];
    await d.create(a, null);
    await writeFile(join(home, a, 'diff', 'below'), 'below');
    await d.createReadWrite(b, a);
    assert.equal(await d.get(a), join(home, a, 'diff'), 'a layer without lowers is its diff dir, unmounted');
    await d.put(a);
    const merged = await d.get(b);
    assert.equal(merged, join(home, b, 'merged'));
    assert.ok(await isMountPoint(merged));
    assert.equal(await d.get(b), merged);
    await writeFile(join(merged, 'above'), 'above');
    assert.equal(await readFile(join(merged, 'below'), 'utf8'), 'below');
    await d.put(b);
    assert.ok(await isMountPoint(merged), 'still mounted with one reference left');
    await d.put(b);
    assert.ok(!(await isMountPoint(merged)));
    await assert.rejects(stat(merged), 'merged/ is removed, as moby does');
    assert.equal(await readFile(join(home, b, 'diff', 'above'), 'utf8'), 'above', 'writes land in diff/');
  });

  it("a root whose path holds ':' and ',' (overlay's option separators) works, through relative options", async (t) => {
    if (reason) return t.skip(reason);
    const parent = await tempDir('strata-overlay2-');
    const root = join(parent, 'data:root,x=1');
    try {
      assert.equal(await probeOverlay2(root), null, 'the probe mounts there too');
      const d = await createOverlay2Driver({ root, options: {} });
      try {
        const [a, b, c] = [ID(1), ID(2), `${ID(3)}-init`];
        await d.create(a, null);
        await d.applyDiff(a, null, Readable.from([await layerTar([dir('etc'), file('etc/os-release', 'ID=colon\n')])]));
        await d.create(b, a);
        await d.createReadWrite(c, b);
        const merged = await d.get(c);
        try {
          assert.equal(await readFile(join(merged, 'etc/os-release'), 'utf8'), 'ID=colon\n');
          await writeFile(join(merged, 'etc/new'), 'n');
        } finally {
          await d.put(c);
        }
        assert.deepEqual((await d.changes(c, b)).map((ch) => `${ch.kind} ${ch.path}`), ['C /etc', 'A /etc/new']);
      } finally {
        await d.cleanup().catch(() => undefined);
      }
    } finally {
      await rm(parent, { recursive: true, force: true });
    }
  });

  test('a layer with children mounts read-only over its own diff', async (d, home) => {
    const [a, b, c] = [ID(1), ID(2), ID(3)];
    await d.create(a, null);
    await d.create(b, a);
    await writeFile(join(home, b, 'diff', 'mine'), 'b');
    await d.create(c, b);
    const merged = await d.get(b);
    try {
      assert.equal(await readFile(join(merged, 'mine'), 'utf8'), 'b');
      await assert.rejects(writeFile(join(merged, 'new'), 'x'), (e: NodeJS.ErrnoException) => e.code === 'EROFS');
    } finally {
      await d.put(b);
    }
  });

  test('kept references survive the process that took them; a process\'s own go with it', async (d, home, root) => {
    const [a, b] = [ID(1), ID(2)];
    await d.create(a, null);
    await d.createReadWrite(b, a);
    /** get(b) in another process, which then exits without a put. */
    const getElsewhere = (opts: string) => new Promise<string>((resolve, reject) => {
      const script = `import('${new URL('../../src/drivers/overlay2/overlay2-driver.ts', import.meta.url).pathname}').then(async (m) => { const d = await m.createOverlay2Driver({ root: ${JSON.stringify(root)}, options: {} }); process.stdout.write(await d.get(${JSON.stringify(b)}, ${opts})); })`;
      const child = spawn(process.execPath, ['--import', 'tsx', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      let text = '';
      child.stdout.on('data', (c: Buffer) => (text += c.toString()));
      child.on('error', reject);
      child.on('close', (code) => (code === 0 ? resolve(text) : reject(new Error(`child exited ${code}`))));
    });
    const out = await getElsewhere('{ keep: true }');
    assert.equal(out, join(home, b, 'merged'));
    assert.ok(await isMountPoint(out), 'the mount outlives the process');
    await assert.rejects(d.remove(b), (e) => isStrataError(e, 'LAYER_MOUNTED'));
    assert.equal(await d.get(b), out);
    await d.put(b);
    assert.ok(await isMountPoint(out), 'the other process still holds a kept reference');
    await d.put(b, { keep: true });
    assert.ok(!(await isMountPoint(out)));
    // a reference of a process that has gone is not counted: its mount is left, remove takes it
    assert.equal(await getElsewhere('{}'), out);
    assert.ok(await isMountPoint(out));
    await d.remove(b);
    assert.ok(!(await isMountPoint(out)));
  });

  test('cleanup unmounts everything; a later get mounts again', async (d) => {
    const ids = [ID(1), ID(2), ID(3)];
    await d.create(ids[0]!, null);
    await d.createReadWrite(ids[1]!, ids[0]!);
    await d.createReadWrite(ids[2]!, ids[0]!);
    const m1 = await d.get(ids[1]!);
    const m2 = await d.get(ids[2]!);
    await d.get(ids[2]!);
    await d.cleanup();
    assert.ok(!(await isMountPoint(m1)) && !(await isMountPoint(m2)));
    await d.remove(ids[1]!);
    assert.equal(await d.get(ids[2]!), m2);
    assert.ok(await isMountPoint(m2));
    await d.put(ids[2]!);
    assert.ok(!(await isMountPoint(m2)));
  });

  test('a count left without its mount (reboot) mounts again on get', async (d) => {
    const [a, b] = [ID(1), ID(2)];
    await d.create(a, null);
    await d.createReadWrite(b, a);
    const merged = await d.get(b);
    await new Promise<void>((resolve, reject) => spawn('umount', [merged]).on('close', (c) => (c === 0 ? resolve() : reject(new Error('umount')))));
    assert.equal(await d.get(b), merged);
    assert.ok(await isMountPoint(merged));
    await d.put(b);
    await d.put(b);
    assert.ok(!(await isMountPoint(merged)));
  });

  test('a mount found in place (dockerd on a shared root) is used, and left mounted on the last put', async (d, home) => {
    const [a, b] = [ID(1), ID(2)];
    await d.create(a, null);
    await writeFile(join(home, a, 'diff', 'f'), 'f');
    await d.createReadWrite(b, a);
    const merged = join(home, b, 'merged');
    await mkdir(merged);
    const lower = await readFile(join(home, b, 'lower'), 'utf8');
    const opts = `lowerdir=${lower},upperdir=${b}/diff,workdir=${b}/work`;
    await new Promise<void>((resolve, reject) => spawn('mount', ['-t', 'overlay', 'overlay', '-o', opts, `${b}/merged`], { cwd: home }).on('close', (c) => (c === 0 ? resolve() : reject(new Error('mount')))));
    try {
      assert.equal(await d.get(b), merged);
      assert.equal(await readFile(join(merged, 'f'), 'utf8'), 'f');
      await d.put(b);
      assert.ok(await isMountPoint(merged), 'the lender\'s mount stays');
      await d.get(b);
      await d.cleanup();
      assert.ok(await isMountPoint(merged), 'cleanup leaves it too');
    } finally {
      await new Promise<void>((resolve) => spawn('umount', [merged]).on('close', () => resolve()));
    }
    assert.equal(await d.get(b), merged);
    assert.ok(await isMountPoint(merged), 'mounted by Strata once the lender is gone');
    await d.put(b);
    assert.ok(!(await isMountPoint(merged)));
  });

  test('remove never deletes through a stale mount', async (d, home) => {
    const [a, b] = [ID(1), ID(2)];
    await d.create(a, null);
    await writeFile(join(home, a, 'diff', 'precious'), 'keep');
    await d.createReadWrite(b, a);
    const merged = await d.get(b);
    // forget the count behind the driver's back, as a lost mountrefs file would
    await rm(join(home, 'mountrefs', b));
    await d.remove(b);
    assert.equal(await readFile(join(home, a, 'diff', 'precious'), 'utf8'), 'keep');
    assert.ok(!(await isMountPoint(merged)));
  });

  test('128 lowers mount through relative options; a 129th is refused', async (d, home) => {
    let parent: string | null = null;
    for (let i = 0; i <= 128; i++) {
      const id = ID(i + 1);
      await d.create(id, parent);
      await mkdir(join(home, id, 'diff', 'layers'));
      await writeFile(join(home, id, 'diff', 'layers', String(i)), String(i));
      parent = id;
    }
    assert.equal((await readFile(join(home, parent!, 'lower'), 'utf8')).split(':').length, 128);
    const merged = await d.get(parent!);
    try {
      assert.equal((await readdir(join(merged, 'layers'))).length, 129);
      assert.equal(await readFile(join(merged, 'layers', '0'), 'utf8'), '0');
      const mounts = await readFile('/proc/self/mountinfo', 'utf8');
      assert.ok(mounts.includes('lowerdir=l/'), 'options name lowers relative to the driver home');
    } finally {
      await d.put(parent!);
    }
    await assert.rejects(d.create(ID(500), parent), (e) => isStrataError(e, 'INVALID_ARGUMENT') && /max depth/.test((e as Error).message));
    assert.equal(await d.exists(ID(500)), false);
  });

  test('a native diff applied a second later diffs to the same bytes (whiteout times settled)', async (d) => {
    const bytes = async (s: Readable) => {
      const chunks: Buffer[] = [];
      for await (const c of s) chunks.push(c as Buffer);
      return Buffer.concat(chunks);
    };
    await d.create('base', null);
    await d.applyDiff('base', null, Readable.from(await layerTar([dir('d'), file('d/x', 'x'), file('d/y', 'y'), dir('e/f'), file('e/f/g', 'g')])));
    await d.create('next', 'base');
    await d.applyDiff('next', 'base', Readable.from(await layerTar([dir('d'), whiteout('d/x'), whiteout('e'), file('new', 'n')])));
    const first = await bytes(await d.diff('next', 'base'));
    await new Promise((r) => setTimeout(r, 1100));
    await d.create('again', 'base');
    await d.applyDiff('again', 'base', Readable.from(first));
    assert.ok(first.equals(await bytes(await d.diff('again', 'base'))));
  });

  test('status reads like docker info', async (d) => {
    const status = Object.fromEntries(await d.status());
    assert.deepEqual(Object.keys(status), ['Backing Filesystem', 'Supports d_type', 'Native Overlay Diff', 'userxattr']);
    assert.equal(status['Supports d_type'], 'true');
    assert.match(status['Native Overlay Diff']!, /^(true|false)$/);
  });
});
