// overlay2 under the layer store: layers applied through overlay's whiteout conversion still
// reassemble byte for byte from tar-split (every diff ID reproduced), containers get Docker's
// `<mount-id>-init` layers, and overlay2 is the default driver where it can mount.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { lstat, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { Strata } from '../../src/strata.js';
import { loadImages } from '../../src/image/load.js';
import { chooseDefaultDriver } from '../../src/drivers/registry.js';
import { probeOverlay2 } from '../../src/drivers/overlay2/overlay-support.js';
import { getXattr } from '../../src/util/xattr.js';
import { dir, file, hardlink, layerTar, opaque, sym, tempDir, whiteout, xattr, type FsOp } from '../helpers/fstest.js';
import { BASE_OPS, WHITEOUT_OPS, dockerArchive } from '../interop/fixtures.js';
import { changeContainer, checkCommitted, commitChanged, digestOf } from '../helpers/container-scenario.js';

describe('overlay2 under the layer store', () => {
  let reason: string | null = null;
  before(async () => {
    reason = await probeOverlay2(process.env.STRATA_TEST_TMP ?? tmpdir());
  });

  function test(title: string, fn: (strata: Strata, root: string) => Promise<void>): void {
    it(title, async (t) => {
      if (reason) return t.skip(reason);
      const root = await tempDir('strata-overlay2-store-');
      const strata = await Strata.open({ root, driver: 'overlay2' });
      try {
        await fn(strata, root);
      } finally {
        await strata.driver.cleanup().catch(() => undefined);
        await rm(root, { recursive: true, force: true });
      }
    });
  }

  test('layers with whiteouts, opaque dirs, hardlinks, devices and xattrs reproduce their diff IDs', async (strata, root) => {
    const third: FsOp[] = [
      dir('bin'), file('bin/other', 'o'), hardlink('bin/other-again', 'bin/other'), whiteout('bin/link'), sym('bin/link2', '../data'),
      dir('srv'), opaque('srv'), file('srv/new.html', 'new'), { op: 'chardev', path: 'null', major: 1, minor: 3 }, { op: 'fifo', path: 'pipe' },
      file('big', Buffer.alloc(3 << 20, 7)), xattr('big', 'user.k', 'v'),
    ];
    const tars = [await layerTar(BASE_OPS), await layerTar(WHITEOUT_OPS), await layerTar(third)];
    const [loaded] = await loadImages(strata, Readable.from(await dockerArchive('layered:1', tars)));
    assert.ok(loaded);
    const layers = await strata.imageLayers(loaded.id);
    assert.equal(layers.length, 3);
    for (const [i, layer] of layers.entries()) {
      assert.equal(layer.diffId, `sha256:${createHash('sha256').update(tars[i]!).digest('hex')}`);
      assert.equal(await digestOf(await layer.open()), layer.diffId, `layer ${i} reassembles byte for byte`);
    }
    // the middle layer holds overlay's own whiteout forms, not OCI files
    const info = await strata.layers.get(layers[1]!.chainId);
    const diffDir = join(root, 'overlay2', info.cacheId, 'diff');
    const motd = await lstat(join(diffDir, 'etc/motd'));
    assert.ok(motd.isCharacterDevice() && motd.rdev === 0, 'a whiteout is a 0/0 char device');
    assert.equal((await getXattr(join(diffDir, 'var/cache'), 'trusted.overlay.opaque'))?.toString(), 'y');
    assert.deepEqual((await readdir(join(diffDir, 'var/cache'))).sort(), ['c']);
    await assert.rejects(lstat(join(diffDir, 'etc/.wh.motd')));
    const report = await strata.fsck({ repair: false });
    assert.deepEqual(report.problems, []);
    assert.equal(report.checkedLayers, 3);
  });

  test('fsck leaves a container mounted with `strata mount` mounted', async (strata) => {
    await strata.importImage(Readable.from(await layerTar(BASE_OPS)), { ref: 'base:1' });
    await strata.createContainer('base:1', { name: 'web' });
    const merged = await strata.mount('web');
    await writeFile(join(merged, 'note'), 'n');
    const report = await strata.fsck();
    assert.deepEqual(report.problems, []);
    assert.equal(await readFile(join(merged, 'note'), 'utf8'), 'n');
    assert.ok((await readFile('/proc/self/mountinfo', 'utf8')).includes(` ${merged} `), 'still in the mount table');
    await strata.unmount('web');
  });

  test('records the layer size as Docker does (each inode once, symlinks by target length)', async (strata, root) => {
    const id = await strata.importImage(Readable.from(await layerTar([file('a', '12345'), hardlink('b', 'a'), sym('c', 'abc'), dir('d'), file('d/e', '')])));
    const [layer] = await strata.imageLayers(id);
    assert.equal(layer!.size, 5 + 3);
    assert.equal(await readFile(join(root, 'image/overlay2/layerdb/sha256', layer!.chainId.slice(7), 'size'), 'utf8'), '8');
  });

  test('containers get Docker\'s init layer and diff, commit and remove through it', async (strata, root) => {
    const image = await strata.importImage(Readable.from(await layerTar(BASE_OPS)), { ref: 'base:1' });
    const id = await strata.createContainer('base:1', { name: 'web' });
    const home = join(root, 'overlay2');
    const mountsDir = join(root, 'image/overlay2/layerdb/mounts', id);
    const mountId = await readFile(join(mountsDir, 'mount-id'), 'utf8');
    assert.equal(await readFile(join(mountsDir, 'init-id'), 'utf8'), `${mountId}-init`);
    const [imageLayer] = await strata.imageLayers(image);
    assert.equal(await readFile(join(mountsDir, 'parent'), 'utf8'), imageLayer!.chainId);
    const { cacheId } = await strata.layers.get(imageLayer!.chainId);
    const link = async (layer: string) => readFile(join(home, layer, 'link'), 'utf8');
    assert.equal(await readFile(join(home, `${mountId}-init`, 'lower'), 'utf8'), `l/${await link(cacheId)}`);
    assert.equal(await readFile(join(home, mountId, 'lower'), 'utf8'), `l/${await link(`${mountId}-init`)}:l/${await link(cacheId)}`);
    await lstat(join(home, `${mountId}-init`, 'committed'));
    await lstat(join(home, cacheId, 'committed'));
    const initFiles = await readdir(join(home, `${mountId}-init`, 'diff'));
    assert.ok(initFiles.includes('.dockerenv') && initFiles.includes('dev') && initFiles.includes('proc'), initFiles.join(','));

    assert.equal(await changeContainer(strata, 'web'), join(home, mountId, 'merged'));
    await commitChanged(strata, 'web', 'web:1');
    await checkCommitted(strata, 'web:1');
    await strata.removeContainer('web');
    await assert.rejects(lstat(join(home, mountId)));
    await assert.rejects(lstat(join(home, `${mountId}-init`)));
    const links = await readdir(join(home, 'l'));
    assert.equal(links.length, 4, 'base, commit, and the second container\'s two layers');
  });

  it('is the default driver as root where overlay mounts; vfs, with the reason, elsewhere', async (t) => {
    if (reason) return t.skip(reason);
    const root = await tempDir('strata-default-');
    try {
      assert.deepEqual(await chooseDefaultDriver(root), { name: 'overlay2', passedOver: [] });
      assert.deepEqual(await readdir(root), [], 'the probe leaves nothing behind');
      // the same question from an unprivileged process
      const registry = new URL('../../src/drivers/registry.ts', import.meta.url).pathname;
      const script = `import('${registry}').then(async (m) => process.stdout.write(JSON.stringify(await m.chooseDefaultDriver('/tmp'))))`;
      const out = await new Promise<string>((resolve, reject) => {
        const child = spawn(process.execPath, ['--import', 'tsx', '-e', script], { uid: 65534, gid: 65534, stdio: ['ignore', 'pipe', 'pipe'] });
        let text = '';
        let err = '';
        child.stdout.on('data', (c: Buffer) => (text += c.toString()));
        child.stderr.on('data', (c: Buffer) => (err += c.toString()));
        child.on('error', reject);
        child.on('close', (code) => (code === 0 ? resolve(text) : reject(new Error(`exited ${code}: ${err}`))));
      });
      const choice = JSON.parse(out) as { name: string; passedOver: Array<[string, string]> };
      assert.equal(choice.name, 'vfs');
      assert.equal(choice.passedOver[0]![0], 'overlay2');
      assert.match(choice.passedOver[0]![1], /root/);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
