// btrfs under the layer store, on a scratch btrfs this file makes itself: images reassemble byte
// for byte from subvolumes, a container's layers are snapshots of the layers below (btrfs says
// so: Parent UUID), and diff, commit, fsck and the CLI work through them.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { lstat, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { Readable } from 'node:stream';
import { Strata } from '../../src/strata.js';
import { loadImages } from '../../src/image/load.js';
import { isStrataError } from '../../src/errors.js';
import { file, isRoot, layerTar, type FsOp } from '../helpers/fstest.js';
import { strata as strataCli, strataOk } from '../helpers/cli.js';
import { BASE_OPS, WHITEOUT_OPS, dockerArchive } from '../interop/fixtures.js';
import { scratchBtrfs, sh } from '../helpers/scratch-fs.js';
import { changeContainer, checkCommitted, commitChanged, digestOf } from '../helpers/container-scenario.js';

async function subvolume(path: string): Promise<{ uuid: string; parentUuid: string }> {
  const out = await sh('btrfs', ['subvolume', 'show', path]);
  return { uuid: /^\s*UUID:\s*(\S+)/m.exec(out)?.[1] ?? '', parentUuid: /^\s*Parent UUID:\s*(\S+)/m.exec(out)?.[1] ?? '' };
}

describe('btrfs under the layer store', () => {
  let scratch: { mount: string; dispose: () => Promise<void> } | string = 'not set up';
  before(async () => {
    scratch = await scratchBtrfs('strata-btrfs-store-fs-');
  });
  after(async () => {
    if (typeof scratch !== 'string') await scratch.dispose();
  });

  function test(title: string, fn: (strata: Strata, root: string) => Promise<void>): void {
    it(title, async (t) => {
      if (typeof scratch === 'string') return t.skip(scratch);
      const root = await mkdtemp(join(scratch.mount, 'strata-btrfs-store-'));
      const strata = await Strata.open({ root, driver: 'btrfs' });
      try {
        await fn(strata, root);
      } finally {
        await strata.driver.cleanup().catch(() => undefined);
        await rm(root, { recursive: true, force: true });
      }
    });
  }

  test('a container: mount, write, diff, commit; every layer a snapshot of the one below', async (strata, root) => {
    const image = await strata.importImage(Readable.from(await layerTar(BASE_OPS)), { ref: 'base:1' });
    const id = await strata.createContainer('base:1', { name: 'web' });
    const subvols = join(root, 'btrfs/subvolumes');
    const mountsDir = join(root, 'image/btrfs/layerdb/mounts', id);
    const mountId = await readFile(join(mountsDir, 'mount-id'), 'utf8');
    assert.equal(await readFile(join(mountsDir, 'init-id'), 'utf8'), `${mountId}-init`);
    const [imageLayer] = await strata.imageLayers(image);
    const { cacheId } = await strata.layers.get(imageLayer!.chainId);

    // Docker's chain: image layer <- init layer <- container layer, each a snapshot
    const base = await subvolume(join(subvols, cacheId));
    const init = await subvolume(join(subvols, `${mountId}-init`));
    const rw = await subvolume(join(subvols, mountId));
    assert.equal(base.parentUuid, '-');
    assert.equal(init.parentUuid, base.uuid, 'the init layer is a snapshot of the image layer');
    assert.equal(rw.parentUuid, init.uuid, 'the container layer is a snapshot of the init layer');

    assert.equal(await changeContainer(strata, 'web'), join(subvols, mountId), 'the mount is the subvolume itself');
    assert.equal(await readFile(join(subvols, cacheId, 'etc/os-release'), 'utf8'), 'ID=strata\n', 'the image layer is untouched');
    const layers = await commitChanged(strata, 'web', 'web:1');
    const top = await strata.layers.get(layers[1]!.chainId);
    assert.equal((await subvolume(join(subvols, top.cacheId))).parentUuid, base.uuid, 'the committed layer is a snapshot of the image layer');
    await checkCommitted(strata, 'web:1');

    await strata.removeContainer('web');
    await assert.rejects(lstat(join(subvols, mountId)));
    await assert.rejects(lstat(join(subvols, `${mountId}-init`)));
    const report = await strata.fsck({ repair: false });
    assert.deepEqual(report.problems, []);
    const listed = await sh('btrfs', ['subvolume', 'list', '-o', subvols]);
    assert.equal(listed.trim().split('\n').length, 4, `image, commit, and the second container's two layers:\n${listed}`);
  });

  test('layers with whiteouts, opaque dirs, hardlinks, devices and xattrs reproduce their diff IDs', async (strata) => {
    const third: FsOp[] = [file('big', Buffer.alloc(3 << 20, 7)), { op: 'chardev', path: 'null', major: 1, minor: 3 }, { op: 'fifo', path: 'pipe' }];
    const tars = [await layerTar(BASE_OPS), await layerTar(WHITEOUT_OPS), await layerTar(third)];
    const [loaded] = await loadImages(strata, Readable.from(await dockerArchive('layered:1', tars)));
    assert.ok(loaded);
    const layers = await strata.imageLayers(loaded.id);
    assert.equal(layers.length, 3);
    for (const [i, layer] of layers.entries()) {
      assert.equal(layer.diffId, `sha256:${createHash('sha256').update(tars[i]!).digest('hex')}`);
      assert.equal(await digestOf(await layer.open()), layer.diffId, `layer ${i} reassembles byte for byte`);
    }
    const report = await strata.fsck({ repair: false });
    assert.deepEqual(report.problems, []);
    assert.equal(report.checkedLayers, 3);
  });

  test('a reopened root keeps btrfs without naming it; info shows the driver\'s status', async (strata, root) => {
    await strata.importImage(Readable.from(await layerTar(BASE_OPS)), { ref: 'base:1' });
    await strata.close();
    const again = await Strata.open({ root });
    try {
      assert.equal(again.driver.name, 'btrfs');
      const info = new Map(await again.info());
      assert.equal(info.get('Storage Driver'), 'btrfs');
      assert.match(info.get(' Build Version') ?? '', /^btrfs-progs v/);
    } finally {
      await again.close();
    }
  });

  test('the CLI: create, mount, diff and info with --storage-driver btrfs', async (_strata, root) => {
    await strataOk(root, ['import', '-', 'base:1'], { input: await layerTar(BASE_OPS), driver: 'btrfs' });
    await strataOk(root, ['create', '--name', 'c1', 'base:1'], { driver: 'btrfs' });
    const path = await strataOk(root, ['mount', 'c1'], { driver: 'btrfs' });
    assert.ok(path.startsWith(join(root, 'btrfs/subvolumes/')), path);
    await writeFile(join(path, 'hello'), 'hi');
    await strataOk(root, ['unmount', 'c1'], { driver: 'btrfs' });
    assert.equal(await strataOk(root, ['diff', 'c1'], { driver: 'btrfs' }), 'A /hello');
    const info = await strataOk(root, ['info'], { driver: 'btrfs' });
    assert.match(info, /Storage Driver: btrfs/);
    assert.match(info, /Build Version: btrfs-progs v/);
  });

  it('refuses a root that is not on btrfs, saying why', async (t) => {
    if (!isRoot) return t.skip('needs root');
    const root = await mkdtemp(join(tmpdir(), 'strata-btrfs-refused-'));
    try {
      const fsType = (await sh('stat', ['-f', '-c', '%T', root])).trim();
      if (fsType === 'btrfs') return t.skip('the temporary directory is itself on btrfs');
      await assert.rejects(Strata.open({ root, driver: 'btrfs' }), (e) => isStrataError(e, 'DRIVER_NOT_SUPPORTED') && /not btrfs/.test(e.message));
      const r = await strataCli(root, ['info'], { driver: 'btrfs' });
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /btrfs is not supported here: .* not btrfs/);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
