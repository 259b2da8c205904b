// The init layer (Docker's `<mount-id>-init`): written straight into a diff directory it must
// look exactly as if written through a mount, and no driver may follow a symlink the image
// planted out of the container's filesystem.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { Readable } from 'node:stream';
import type { Driver } from '../../src/drivers/driver.js';
import { createVfsDriver } from '../../src/drivers/vfs/vfs-driver.js';
import { createOverlay2Driver } from '../../src/drivers/overlay2/overlay2-driver.js';
import { probeOverlay2 } from '../../src/drivers/overlay2/overlay-support.js';
import { createAufsDriver, probeAufs } from '../../src/drivers/aufs/aufs-driver.js';
import { diffDirInitTarget, mountedInitTarget, setupInitLayer } from '../../src/store/init-layer.js';
import { Strata } from '../../src/strata.js';
import { dir, file, isRoot, layerTar, snapshotTree, sym, tempDir, xattr, type FsOp } from '../helpers/fstest.js';

const drivers: Array<[string, (root: string) => Promise<Driver>, () => Promise<string | null>]> = [
  ['vfs', (root) => createVfsDriver({ root, options: {} }), async () => null],
  ['overlay2', (root) => createOverlay2Driver({ root, options: {} }), () => (isRoot ? probeOverlay2(tmpdir()) : Promise.resolve('needs root'))],
  ['aufs', (root) => createAufsDriver({ root, options: {} }), () => (isRoot ? probeAufs('') : Promise.resolve('needs root'))],
];

// An image whose /etc has its own owner, mode and xattr, with one init entry already present,
// /sys a symlink (so it is left alone) and no /dev at all.
const IMAGE: FsOp[] = [
  dir('etc', 0o750), xattr('etc', 'user.origin', 'image'), file('etc/hosts', '127.0.0.1 img\n'),
  sym('sys', 'nowhere'), dir('usr'), file('usr/x', 'x'),
];

async function withDriver(t: { skip: (r: string) => void }, make: (root: string) => Promise<Driver>, unavailable: () => Promise<string | null>, fn: (d: Driver) => Promise<void>): Promise<void> {
  const reason = await unavailable();
  if (reason !== null) return t.skip(reason);
  const root = await tempDir('strata-init-');
  const d = await make(root);
  try {
    await fn(d);
  } finally {
    await d.cleanup().catch(() => undefined);
    await rm(root, { recursive: true, force: true });
  }
}

async function view(d: Driver, id: string) {
  const root = await d.get(id);
  try {
    return await snapshotTree(root, { mtimes: false });
  } finally {
    await d.put(id);
  }
}

describe('init layer', () => {
  for (const [name, make, unavailable] of drivers.filter(([n]) => n !== 'vfs')) {
    it(`${name}: written unmounted into the diff directory, it equals one written through a mount`, async (t) => {
      await withDriver(t, make, unavailable, async (d) => {
        const format = d.capabilities.whiteoutFormat;
        assert.ok(d.diffDirectory && format !== undefined, `${name} stacks diff directories`);
        await d.create('img', null);
        await d.applyDiff('img', null, Readable.from(await layerTar(IMAGE)));
        await d.createReadWrite('mounted-init', 'img');
        const root = await d.get('mounted-init');
        try {
          await setupInitLayer(mountedInitTarget(root));
        } finally {
          await d.put('mounted-init');
        }
        await d.createReadWrite('direct-init', 'img');
        await setupInitLayer(await diffDirInitTarget(await d.diffDirectory('direct-init'), [await d.diffDirectory('img')], format));
        const direct = await view(d, 'direct-init');
        assert.deepEqual(direct, await view(d, 'mounted-init'));
        assert.equal(direct['etc']!.mode, 0o750);
        assert.equal(direct['etc']!.xattrs['user.origin'], Buffer.from('image').toString('base64'));
        assert.equal(direct['sys']!.type, 'symlink', 'an image entry is never replaced');
        assert.ok(direct['dev/pts'] && direct['etc/hostname'] && direct['.dockerenv'] && direct['etc/mtab']);
      });
    });
  }

  for (const [name, , unavailable] of drivers) {
    it(`${name}: an image whose /etc and /dev are symlinks out of the container gets nothing written through them`, async (t) => {
      const reason = await unavailable();
      if (reason !== null) return t.skip(reason);
      const root = await tempDir('strata-init-store-');
      const outside = await tempDir('strata-init-outside-');
      try {
        const strata = await Strata.open({ root, driver: name });
        await strata.importImage(Readable.from(await layerTar([sym('etc', outside), sym('dev', `${outside}/../${outside.split('/').pop()}`)])), { ref: 'evil:1' });
        const id = await strata.createContainer('evil:1');
        assert.deepEqual(await readdir(outside), [], 'nothing created outside the container');
        const merged = await strata.mount(id);
        try {
          const tree = await snapshotTree(merged, { mtimes: false });
          assert.equal(tree['etc']!.type, 'symlink');
          assert.ok(tree['proc'] && tree['.dockerenv'], 'entries outside the symlinked directories are still made');
        } finally {
          await strata.unmount(id);
        }
        await strata.driver.cleanup();
      } finally {
        await rm(root, { recursive: true, force: true });
        await rm(outside, { recursive: true, force: true });
      }
    });
  }
});
