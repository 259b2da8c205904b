// aufs specifics beyond the conformance suite: Docker's on-disk layout, what fuse-overlayfs
// leaves in a branch and how it is brought back to aufs' convention, mount counts shared
// between processes, and the error when nothing can mount.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { AufsDriver, probeAufs } from '../../src/drivers/aufs/aufs-driver.js';
import { childLayers, formatLayers, parseLayers } from '../../src/drivers/aufs/layers-file.js';
import { detectMountProgram, isMounted } from '../../src/drivers/aufs/mount-program.js';
import { fixupFor, normalizeUpper } from '../../src/drivers/aufs/upper-normalize.js';
import { getXattr, setXattr } from '../../src/util/xattr.js';
import { readTar } from '../../src/archive/tar/reader.js';
import { isStrataError } from '../../src/errors.js';
import { dir, file, layerTar, tempDir, whiteout } from '../helpers/fstest.js';

const run = promisify(execFile);
const isRoot = process.getuid?.() === 0;
const exists = (p: string) => fsp.lstat(p).then(() => true, () => false);

async function withRoot(t: { after(fn: () => Promise<void>): void }) {
  const root = await tempDir('strata-aufs-');
  const d = new AufsDriver({ root, options: {} });
  t.after(async () => {
    await d.cleanup().catch(() => undefined);
    await fsp.rm(root, { recursive: true, force: true });
  });
  return { root, d, home: join(root, 'aufs') };
}

test('layers file: ancestors nearest first, one per line', () => {
  assert.deepEqual(childLayers('p', ['g', 'gg']), ['p', 'g', 'gg']);
  assert.deepEqual(childLayers(null, []), []);
  assert.equal(formatLayers(['p', 'g']), 'p\ng\n');
  assert.equal(formatLayers([]), '');
  assert.deepEqual(parseLayers('p\ng\n\n'), ['p', 'g']);
});

test('fixupFor: 0/0 devices become whiteouts, stray .wh.* devices go', () => {
  assert.equal(fixupFor('x', true), 'to-whiteout');
  assert.equal(fixupFor('.wh..opq', true), 'drop');
  assert.equal(fixupFor('x', false), 'keep');
});

test('create lays out diff/, layers/ and mnt/ as Docker does, with aufs housekeeping', async (t) => {
  const { d, home } = await withRoot(t);
  await d.create('base', null);
  await d.create('mid', 'base');
  await d.createReadWrite('ctr', 'mid');
  assert.equal(await fsp.readFile(join(home, 'layers/ctr'), 'utf8'), 'mid\nbase\n');
  assert.equal(await fsp.readFile(join(home, 'layers/base'), 'utf8'), '');
  assert.deepEqual((await fsp.readdir(join(home, 'diff/ctr'))).sort(), ['.wh..wh.aufs', '.wh..wh.orph', '.wh..wh.plnk']);
  assert.ok((await fsp.stat(join(home, 'mnt/ctr'))).isDirectory());
  assert.deepEqual(await d.metadata('ctr'), { DiffDir: join(home, 'diff/ctr'), MountPoint: join(home, 'mnt/ctr'), Layers: 'mid:base' });
  await d.remove('mid');
  assert.equal(await exists(join(home, 'diff/mid')), false);
  assert.equal(await exists(join(home, 'layers/mid')), false);
});

test('normalizeUpper turns fuse-overlayfs records into aufs files (no mount needed)', async (t) => {
  if (!isRoot) return t.skip('mknod of whiteout devices and trusted.* xattrs need root');
  const base = await tempDir('strata-aufs-norm-');
  t.after(() => fsp.rm(base, { recursive: true, force: true }));
  const up = join(base, 'up');
  await fsp.mkdir(join(up, 'etc'), { recursive: true });
  await fsp.mkdir(join(up, 'replaced'));
  await fsp.mkdir(join(up, 'fresh'));
  await run('mknod', [join(up, 'etc/passwd'), 'c', '0', '0']);
  await setXattr(join(up, 'replaced'), 'trusted.overlay.opaque', 'y');
  await run('mknod', [join(up, 'replaced/.wh..opq'), 'c', '0', '0']);
  await fsp.writeFile(join(up, 'fresh/.wh..wh..opq'), '');
  await run('mknod', [join(up, 'null'), 'c', '1', '3']);
  await fsp.writeFile(join(up, 'etc/hosts'), 'h');
  await setXattr(join(up, 'etc/hosts'), 'user.fuseoverlayfs.origin', 'x');
  await setXattr(join(up, 'etc/hosts'), 'user.kept', 'k');
  const lowerDirs = new Set(['etc', 'replaced']);
  const stats = await normalizeUpper(up, async (rel) => lowerDirs.has(rel));
  assert.deepEqual(stats, { whiteouts: 1, opaque: 1, droppedOpaque: 1, xattrs: 1 });
  assert.equal(await getXattr(join(up, 'etc/hosts'), 'user.fuseoverlayfs.origin'), null);
  assert.equal((await getXattr(join(up, 'etc/hosts'), 'user.kept'))?.toString(), 'k');
  assert.deepEqual((await fsp.readdir(join(up, 'etc'))).sort(), ['.wh.passwd', 'hosts']);
  assert.deepEqual((await fsp.readdir(join(up, 'replaced'))).sort(), ['.wh..wh..opq']);
  assert.equal(await getXattr(join(up, 'replaced'), 'trusted.overlay.opaque'), null);
  assert.deepEqual(await fsp.readdir(join(up, 'fresh')), [], 'no lower directory: the opaque marker is noise');
  assert.ok((await fsp.lstat(join(up, 'null'))).isCharacterDevice(), 'a real device node stays');
  assert.deepEqual(await normalizeUpper(up, async (rel) => lowerDirs.has(rel)), { whiteouts: 0, opaque: 0, droppedOpaque: 0, xattrs: 0 }, 'idempotent');
});

test('a container on fuse-overlayfs: changes land in diff/<id> in aufs form after put', async (t) => {
  const why = isRoot ? await probeAufs('') : 'mounts need root';
  if (why !== null) return t.skip(why);
  const { d, home } = await withRoot(t);
  await d.create('image', null);
  await d.applyDiff('image', null, Readable.from(await layerTar([dir('etc'), file('etc/passwd', 'p'), file('etc/hosts', 'h'), dir('var/lib'), file('var/lib/x', 'x')])));
  await d.createReadWrite('ctr', 'image');
  const mnt = await d.get('ctr');
  assert.equal(await isMounted(mnt), true);
  assert.equal(mnt, join(home, 'mnt/ctr'));
  assert.deepEqual((await fsp.readdir(mnt)).sort(), ['etc', 'var'], 'housekeeping is invisible in the mount');
  await fsp.unlink(join(mnt, 'etc/passwd'));
  await fsp.appendFile(join(mnt, 'etc/hosts'), '+'); // a copy-up: fuse-overlayfs tags it with an origin xattr
  await fsp.rm(join(mnt, 'var/lib'), { recursive: true });
  await fsp.mkdir(join(mnt, 'var/lib'));
  await fsp.mkdir(join(mnt, 'new'));
  await fsp.writeFile(join(mnt, 'new/f'), 'n');
  assert.equal(await exists(join(home, 'dirty/ctr')), true, 'marked while mounted');
  await d.put('ctr');
  assert.equal(await isMounted(mnt), false);
  assert.equal(await exists(join(home, 'dirty/ctr')), false, 'normalised on the last put');
  assert.equal(await exists(join(home, 'dirty/image')), false, 'an applied layer is never walked');
  const diff = join(home, 'diff/ctr');
  assert.deepEqual((await fsp.readdir(join(diff, 'etc'))).sort(), ['.wh.passwd', 'hosts']);
  assert.deepEqual((await fsp.readdir(join(diff, 'var/lib'))).sort(), ['.wh..wh..opq']);
  assert.deepEqual((await fsp.readdir(join(diff, 'new'))).sort(), ['f']);
  // the diff streams diff/<id>: aufs whiteouts, no housekeeping
  const names: string[] = [];
  for await (const e of readTar(await d.diff('ctr', 'image'))) {
    names.push(e.header.name);
    assert.deepEqual([...(e.header.xattrs?.keys() ?? [])].filter((k) => k.includes('overlay')), [], `${e.header.name}: no mount-program xattrs`);
    e.body?.resume?.();
  }
  assert.ok(names.some((n) => n.endsWith('etc/.wh.passwd')), names.join(' '));
  assert.ok(names.some((n) => n.endsWith('var/lib/.wh..wh..opq')), names.join(' '));
  assert.ok(!names.some((n) => /\.wh\.\.wh\.(aufs|plnk|orph)/.test(n)), names.join(' '));
  // the change is visible again on the next mount, whiteouts honoured from the upper branch
  const again = await d.get('ctr');
  assert.deepEqual((await fsp.readdir(join(again, 'etc'))).sort(), ['hosts']);
  assert.equal(await fsp.readFile(join(again, 'etc/hosts'), 'utf8'), 'h+');
  assert.deepEqual(await fsp.readdir(join(again, 'var/lib')), []);
  await d.put('ctr');
});

test('kept mount counts are shared by processes: a get in one, the put in another', async (t) => {
  const why = isRoot ? await probeAufs('') : 'mounts need root';
  if (why !== null) return t.skip(why);
  const { root, d, home } = await withRoot(t);
  await d.create('l', null);
  const script = (op: string) => `import { AufsDriver } from ${JSON.stringify(new URL('../../src/drivers/aufs/aufs-driver.ts', import.meta.url).pathname)};
    const d = new AufsDriver({ root: ${JSON.stringify(root)}, options: {} }); await d.${op}('l', { keep: true });`;
  const child = (op: string) => run(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script(op)]);
  await child('get');
  await child('get');
  assert.equal(await isMounted(join(home, 'mnt/l')), true);
  assert.equal((await d.mountRefs('l')).kept, 2);
  await assert.rejects(d.remove('l'), (e) => isStrataError(e, 'LAYER_MOUNTED'));
  await child('put');
  assert.equal(await isMounted(join(home, 'mnt/l')), true);
  await child('put');
  assert.equal(await isMounted(join(home, 'mnt/l')), false);
  await d.remove('l');
});

test('without kernel aufs or fuse-overlayfs, get fails with DRIVER_NOT_SUPPORTED naming what is missing', async () => {
  const base = await tempDir('strata-aufs-none-');
  try {
    const why = await detectMountProgram(base, '/nonexistent');
    assert.equal(typeof why, 'string');
    assert.match(why as string, /no aufs module.*fuse-overlayfs is not installed/);
  } finally {
    await fsp.rm(base, { recursive: true, force: true });
  }
});

test('whiteouts from an applied tar stay aufs files in diff/<id>', async (t) => {
  const { d, home } = await withRoot(t);
  await d.create('base', null);
  await d.applyDiff('base', null, Readable.from(await layerTar([file('a', 'A'), file('b', 'B')])));
  await d.create('top', 'base');
  await d.applyDiff('top', 'base', Readable.from(await layerTar([whiteout('a')])));
  assert.ok(await exists(join(home, 'diff/top/.wh.a')));
  assert.equal(await d.diffSize('top', 'base'), 0);
  assert.equal(await d.diffDirectory('top'), join(home, 'diff/top'));
});

test('a mount whose FUSE daemon died is mounted again by the next get', async (t) => {
  const why = isRoot ? await probeAufs('') : 'mounts need root';
  if (why !== null) return t.skip(why);
  const { d } = await withRoot(t);
  await d.create('base', null);
  await d.applyDiff('base', null, Readable.from(await layerTar([file('hello', 'world')])));
  const mnt = await d.get('base');
  // the fuse-overlayfs process serving this mount point (started by the driver above)
  let pid: number | null = null;
  for (const entry of await fsp.readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmd = await fsp.readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmd.startsWith('/usr/bin/fuse-overlayfs') || cmd.split('\0')[0]?.endsWith('fuse-overlayfs')) {
      if (cmd.split('\0').includes(mnt)) pid = Number(entry);
    }
  }
  assert.ok(pid !== null, 'found the daemon');
  process.kill(pid, 'SIGKILL');
  for (let i = 0; i < 50 && (await fsp.statfs(mnt).then(() => true, () => false)); i++) await new Promise((r) => setTimeout(r, 20));
  await assert.rejects(fsp.stat(join(mnt, 'hello')), 'the dead mount answers ENOTCONN');
  const again = await d.get('base');
  assert.equal(await fsp.readFile(join(again, 'hello'), 'utf8'), 'world');
  assert.equal((await d.mountRefs('base')).total, 2);
  await d.put('base');
  await d.put('base');
  assert.equal(await isMounted(mnt), false);
});

test('the registry opens aufs by name', async () => {
  const { openDriver, driverNames } = await import('../../src/drivers/registry.js');
  assert.ok(driverNames().includes('aufs'));
  if (!isRoot || (await probeAufs('')) !== null) return;
  const root = await tempDir('strata-aufs-reg-');
  try {
    const d = await openDriver('aufs', { root, options: {} });
    assert.equal(d.name, 'aufs');
    assert.equal(d.home, join(root, 'aufs'));
    await assert.rejects(openDriver('aufs', { root, options: { bogus: '1' } }), (e) => isStrataError(e, 'INVALID_OPTION'));
  } finally {
    await fsp.rm(root, { recursive: true, force: true });
  }
});
