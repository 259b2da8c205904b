// devicemapper under the Strata library and against its own options: the seeds' flow (base →
// fedora → apache → container, each a thin snapshot of the one before, checked in the pool's
// own metadata with thin_dump and thin_check), the default 100G/2G pool as sparse files,
// dm.min_free_space, deferred removal and deletion, a raised dm.basesize, and xfs.
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { open, readFile, rm, stat, writeFile, mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { Strata } from '../../src/strata.js';
import { DevicemapperDriver, probeDevicemapper } from '../../src/drivers/devicemapper/devicemapper-driver.js';
import { isStrataError } from '../../src/errors.js';
import { dir, file, layerTar, tempDir } from '../helpers/fstest.js';
import { strataOk } from '../helpers/cli.js';
import { run } from '../../src/drivers/devicemapper/exec.js';
import { PoolClient } from '../../src/drivers/devicemapper/pool-client.js';
import { detachBlockDevice } from '../../src/drivers/devicemapper/block-attach.js';

const sh = run;

const small = { 'dm.basesize': '64M', 'dm.loopdatasize': '2G', 'dm.loopmetadatasize': '64M' };
const MB = 1024 ** 2;

/** Data blocks of each thin device, from thin_dump's XML. */
async function poolMappings(metadataFile: string): Promise<Map<number, Set<number>>> {
  const xml = await run('thin_dump', [metadataFile]);
  const out = new Map<number, Set<number>>();
  let cur: Set<number> | null = null;
  for (const line of xml.split('\n')) {
    const dev = /<device dev_id="(\d+)"/.exec(line);
    if (dev) out.set(Number(dev[1]), (cur = new Set()));
    const single = /<single_mapping origin_block="\d+" data_block="(\d+)"/.exec(line);
    if (single && cur) cur.add(Number(single[1]));
    const range = /<range_mapping origin_begin="\d+" data_begin="(\d+)" length="(\d+)"/.exec(line);
    if (range && cur) for (let i = 0; i < Number(range[2]); i++) cur.add(Number(range[1]) + i);
  }
  return out;
}

/** Whatever a failed case left: mounts, loop devices, nbdfuse files, the pool service. */
async function forceCleanup(root: string): Promise<void> {
  const mountinfo = await readFile('/proc/self/mountinfo', 'utf8');
  const mounts = mountinfo.split('\n').map((l) => l.split(' ')[4] ?? '').filter((m) => m.startsWith(`${root}/`));
  for (const m of mounts.sort().reverse()) await run('umount', ['-l', m]).catch(() => undefined);
  const devDir = join(root, 'devicemapper/run/dev');
  for (const name of await readdir(devDir).catch(() => [] as string[])) {
    if (!name.endsWith('.pid')) await detachBlockDevice(join(devDir, name)).catch(() => undefined);
  }
  const client = await PoolClient.connectExisting({ runDir: join(root, 'devicemapper/run'), metadataPath: '', dataPath: '', blockSectors: 128, idleMs: 0 });
  await client?.request({ op: 'shutdown', force: true }).catch(() => undefined);
  client?.close();
}

const shared = (a: Set<number>, b: Set<number>): number => [...a].filter((x) => b.has(x)).length;

describe('devicemapper under the layer store, and its options', () => {
  let reason: string | null = null;
  before(async () => {
    reason = await probeDevicemapper();
  });

  function test(title: string, fn: (root: string) => Promise<void>): void {
    it(title, async (t) => {
      if (reason) return t.skip(reason);
      const root = await tempDir('strata-dm-store-');
      try {
        await fn(root);
      } finally {
        await forceCleanup(root);
        await rm(root, { recursive: true, force: true });
      }
    });
  }

  test('seeds flow: base → fedora → apache → container, each a snapshot; thin_check clean', async (root) => {
    const strata = await Strata.open({ root, driver: 'devicemapper', storageOpts: small });
    const driver = strata.driver as DevicemapperDriver;
    await strata.importImage(Readable.from(await layerTar([
      dir('etc'), file('etc/os-release', 'ID=base\n'), dir('usr/lib'), file('usr/lib/libc.so', randomBytes(2 * MB)),
    ])), { ref: 'base:1' });

    const build = async (from: string, to: string, change: (p: string) => Promise<void>): Promise<void> => {
      const ctr = await strata.createContainer(from);
      const p = await strata.mount(ctr);
      try {
        await change(p);
      } finally {
        await strata.unmount(ctr);
      }
      await strata.commit(ctr, { ref: to });
      await strata.removeContainer(ctr);
    };
    await build('base:1', 'fedora:1', async (p) => {
      await writeFile(join(p, 'etc/os-release'), 'ID=fedora\n');
      await mkdir(join(p, 'usr/bin'), { recursive: true });
      await writeFile(join(p, 'usr/bin/dnf'), randomBytes(MB));
    });
    await build('fedora:1', 'apache:1', async (p) => {
      await mkdir(join(p, 'var/www'), { recursive: true });
      await writeFile(join(p, 'var/www/index.html'), '<h1>it works</h1>\n');
      await writeFile(join(p, 'usr/bin/httpd'), randomBytes(MB));
    });
    const web = await strata.createContainer('apache:1', { name: 'web' });
    const p = await strata.mount('web');
    try {
      assert.equal(await readFile(join(p, 'etc/os-release'), 'utf8'), 'ID=fedora\n');
      assert.equal(await readFile(join(p, 'var/www/index.html'), 'utf8'), '<h1>it works</h1>\n');
      assert.equal((await stat(join(p, 'usr/lib/libc.so'))).size, 2 * MB);
      assert.match(p, /devicemapper\/mnt\/[0-9a-f]{64}\/rootfs$/, 'get returns mnt/<id>/rootfs as Docker');
      await writeFile(join(p, 'var/www/index.html'), 'changed\n');
    } finally {
      await strata.unmount('web');
    }
    assert.deepEqual((await strata.diff('web')).map((c) => `${c.kind} ${c.path}`), ['C /var', 'C /var/www', 'C /var/www/index.html']);

    // each image layer and the container are devices; each device shares its parent's blocks
    const apache = await strata.imageLayers(await strata.images.resolve('apache:1'));
    const cacheIds = await Promise.all(apache.map(async (l) => (await strata.layers.get(l.chainId)).cacheId));
    const mountId = (await readFile(join(root, 'image/devicemapper/layerdb/mounts', web, 'mount-id'), 'utf8')).trim();
    const ids = [...cacheIds, `${mountId}-init`, mountId];
    const devIds: number[] = [];
    for (const id of ids) {
      const md = await driver.metadata(id);
      assert.deepEqual(Object.keys(md).sort(), ['DeviceId', 'DeviceName', 'DeviceSize']);
      assert.equal(md.DeviceSize, String(64 * MB));
      const json = JSON.parse(await readFile(join(root, 'devicemapper/metadata', id), 'utf8')) as Record<string, unknown>;
      assert.deepEqual(Object.keys(json).sort(), ['deleted', 'device_id', 'initialized', 'size', 'transaction_id']);
      devIds.push(Number(md.DeviceId));
    }
    const info = new Map(await strata.info());
    assert.equal(info.get('Storage Driver'), 'devicemapper');
    assert.match(info.get(' Pool Name') ?? '', /^strata-\d+:\d+-\d+-pool$/);
    assert.equal(info.get(' Base Device Size'), '67.11MB');
    assert.equal(info.get(' Backing Filesystem'), 'ext4', 'as docker info: the base device\'s filesystem, not the one holding the pool');
    for (const key of ['Pool Blocksize', 'Backing Filesystem', 'Data file', 'Metadata file', 'Data Space Used', 'Data Space Total',
      'Data Space Available', 'Metadata Space Used', 'Metadata Space Total', 'Metadata Space Available', 'Thin Pool Minimum Free Space',
      'Deferred Removal Enabled', 'Deferred Deletion Enabled', 'Deferred Deleted Device Count', 'Library Version']) {
      assert.ok(info.has(` ${key}`), key);
    }
    const metadataFile = driver.service.metadataPath;
    await driver.cleanup();
    await run('thin_check', [metadataFile]);
    const maps = await poolMappings(metadataFile);
    for (let i = 1; i < devIds.length; i++) {
      const parent = maps.get(devIds[i - 1]!)!;
      const child = maps.get(devIds[i]!)!;
      assert.ok(shared(parent, child) > 0, `device ${devIds[i]} (${ids[i]}) shares blocks with ${devIds[i - 1]}`);
    }
    // the base layer's 2 MiB file lives once in the pool, however many devices see it
    const all = [...maps.values()].reduce((n, s) => n + s.size, 0);
    const distinct = new Set([...maps.values()].flatMap((s) => [...s])).size;
    assert.ok(all > distinct * 2, `blocks are shared (${all} mappings over ${distinct} blocks)`);
  });

  test('dm.blkdiscard: a removed container gives its blocks back to the sparse data file (discard passdown); off, they stay', async (root) => {
    for (const blkdiscard of ['true', 'false']) {
      const home = join(root, blkdiscard);
      const strata = await Strata.open({ root: home, driver: 'devicemapper', storageOpts: { ...small, 'dm.blkdiscard': blkdiscard } });
      try {
        await strata.importImage(Readable.from(await layerTar([dir('etc'), file('etc/hostname', 'base\n')])), { ref: 'base:1' });
        const allocated = async () => (await stat(join(home, 'devicemapper/devicemapper/data'))).blocks * 512;
        const ctr = await strata.createContainer('base:1');
        const p = await strata.mount(ctr);
        try {
          await writeFile(join(p, 'big'), randomBytes(16 * MB));
        } finally {
          await strata.unmount(ctr);
        }
        const before = await allocated();
        await strata.removeContainer(ctr);
        const freed = before - (await allocated());
        if (blkdiscard === 'true') assert.ok(freed >= 15 * MB, `the container's 16 MiB left the data file (freed ${freed})`);
        else assert.ok(freed < MB, `without dm.blkdiscard the data file keeps its blocks (freed ${freed})`);
      } finally {
        await (strata.driver as DevicemapperDriver).cleanup();
      }
    }
  });

  test('CLI: a mount made by one strata process outlives it, and another unmounts it', async (root) => {
    const opts = Object.entries(small).flatMap(([k, v]) => ['--storage-opt', `${k}=${v}`]);
    const cli = (args: string[]): Promise<string> => strataOk(root, [...opts, ...args], { driver: 'devicemapper' });
    const src = join(root, 'src');
    await mkdir(join(src, 'etc'), { recursive: true });
    await writeFile(join(src, 'etc/hello'), 'hi\n');
    await cli(['import', src, 'base:1']);
    await cli(['create', '--name', 'c1', 'base:1']);
    const path = await cli(['mount', 'c1']);
    // the process that mounted it is gone; the filesystem is still there, served by the pool service
    assert.equal(await readFile(join(path, 'etc/hello'), 'utf8'), 'hi\n');
    await writeFile(join(path, 'etc/hello'), 'changed\n');
    await cli(['unmount', 'c1']);
    assert.equal(await readFile('/proc/self/mountinfo', 'utf8').then((m) => m.includes(join(root, 'devicemapper/mnt'))), false);
    assert.deepEqual((await cli(['diff', 'c1'])).split('\n'), ['C /etc', 'C /etc/hello']);
    const info = await cli(['info']);
    assert.match(info, /Storage Driver: devicemapper/);
    assert.match(info, /Data Space Used: /);
    await cli(['rm', 'c1']);
    await cli(['rmi', 'base:1']);
  });

  test('the pool service killed under a mounted layer: the next open sweeps the dead mount, synced data survives', async (root) => {
    const d = await DevicemapperDriver.open({ root, options: small });
    await d.create('a', null);
    const p = await d.get('a');
    const h = await open(join(p, 'synced'), 'w');
    await h.writeFile('on the pool');
    await h.sync();
    await h.close();
    const c = await PoolClient.connect(d.service);
    const pid = (await c.request({ op: 'hello' })).pid!;
    c.close();
    d.disconnect();
    process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 100; i++) {
      try {
        process.kill(pid, 0);
        await new Promise((r) => setTimeout(r, 20));
      } catch {
        break;
      }
    }
    const again = await DevicemapperDriver.open({ root, options: small });
    const mounts = await readFile('/proc/self/mountinfo', 'utf8');
    assert.ok(!mounts.includes(join(root, 'devicemapper/mnt/a')), 'the dead mount is gone');
    const q = await again.get('a');
    try {
      assert.equal(await readFile(join(q, 'synced'), 'utf8'), 'on the pool');
    } finally {
      await again.put('a');
    }
    await again.cleanup();
    await run('thin_check', [again.service.metadataPath]);
  });

  test('all defaults: a 100G data and 2G metadata pool of sparse files, a 10G ext4 base device', async (root) => {
    // mkfs's zeroing reaches the pool as NBD WRITE_ZEROES, which unmaps: the 10G base stays cheap
    const d = await DevicemapperDriver.open({ root, options: {} });
    const data = await stat(join(root, 'devicemapper/devicemapper/data'));
    const meta = await stat(join(root, 'devicemapper/devicemapper/metadata'));
    assert.equal(data.size, 100 * 1024 ** 3);
    assert.equal(meta.size, 2 * 1024 ** 3);
    assert.ok(data.blocks * 512 < 64 * MB && meta.blocks * 512 < 64 * MB, 'sparse');
    const s = new Map(await d.status());
    assert.equal(s.get('Data Space Total'), '107.4GB');
    assert.equal(s.get('Metadata Space Total'), '2.147GB');
    assert.equal(s.get('Pool Blocksize'), '65.54kB');
    assert.equal(s.get('Thin Pool Minimum Free Space'), '10.74GB');
    assert.equal(s.get('Base Device Size'), '10.74GB');
    await d.create('x', null);
    assert.ok(await d.exists('x'));
    const p = await d.get('x');
    try {
      const out = await run('df', ['-B1', '--output=size,fstype', join(p, '..')]);
      assert.ok(Number(out.split('\n')[1]?.trim().split(/\s+/)[0]) > 10e9, `a 10G filesystem: ${out}`);
    } finally {
      await d.put('x');
    }
    await d.cleanup();
  });

  test('dm.datadev and dm.metadatadev: the pool on files the caller made, with dm.blocksize', async (root) => {
    const data = join(root, 'my-data');
    const meta = join(root, 'my-meta');
    await sh('truncate', ['-s', '1G', data]);
    await sh('truncate', ['-s', '32M', meta]);
    const opts = { 'dm.basesize': '64M', 'dm.datadev': data, 'dm.metadatadev': meta, 'dm.blocksize': '128K' };
    const d = await DevicemapperDriver.open({ root, options: opts });
    assert.equal(d.options.blkDiscard, false, 'not discarded unless asked, as moby');
    await d.create('l', null);
    const s = new Map(await d.status());
    assert.equal(s.get('Data file'), data);
    assert.equal(s.get('Metadata file'), meta);
    assert.equal(s.has('Data loop file'), false);
    assert.equal(s.get('Pool Blocksize'), '131.1kB');
    await assert.rejects(stat(join(root, 'devicemapper/devicemapper/data')));
    await d.cleanup();
    await run('thin_check', [meta]);
  });

  test('a snapshot of a mounted layer sees what was written to it (the origin is frozen around create_snap)', async (root) => {
    const d = await DevicemapperDriver.open({ root, options: small });
    await d.create('origin', null);
    const p = await d.get('origin');
    try {
      // written, not synced: still in the page cache when the snapshot is taken
      await writeFile(join(p, 'fresh'), 'in the page cache');
      await d.create('snap', 'origin');
      await writeFile(join(p, 'later'), 'after the snapshot');
    } finally {
      await d.put('origin');
    }
    const q = await d.get('snap');
    try {
      assert.equal(await readFile(join(q, 'fresh'), 'utf8'), 'in the page cache');
      await assert.rejects(readFile(join(q, 'later')));
    } finally {
      await d.put('snap');
    }
    await d.cleanup();
  });

  test('dm.min_free_space refuses a new device once the pool is that full, and says why', async (root) => {
    const opts = { ...small, 'dm.loopdatasize': '256M', 'dm.min_free_space': '85%' };
    const d = await DevicemapperDriver.open({ root, options: opts });
    await d.create('image', null);
    const p = await d.get('image');
    try {
      await writeFile(join(p, 'fill'), randomBytes(40 * MB));
    } finally {
      await d.put('image');
    }
    await assert.rejects(d.create('ctr', 'image'), (e) => isStrataError(e, 'POOL_NO_SPACE') && /dm\.min_free_space/.test(e.message) && /free data blocks/.test(e.message));
    assert.equal(await d.exists('ctr'), false);
    await d.remove('image');
    await d.create('ctr', null);
    await d.cleanup();
  });

  test('deferred removal and deletion: a busy device is let go lazily and deleted once free', async (root) => {
    const opts = { ...small, 'dm.use_deferred_removal': 'true', 'dm.use_deferred_deletion': 'true' };
    const d = await DevicemapperDriver.open({ root, options: opts });
    await d.create('busy', null);
    const p = await d.get('busy');
    await writeFile(join(p, 'held'), 'x');
    const held = await open(join(p, 'held'), 'r');
    try {
      await d.put('busy'); // umount is busy: detached lazily instead
      await d.remove('busy'); // the pool still serves it: marked deleted
      assert.equal(await d.exists('busy'), false);
      assert.equal(new Map(await d.status()).get('Deferred Deleted Device Count'), '1');
      assert.equal(JSON.parse(await readFile(join(root, 'devicemapper/metadata/busy'), 'utf8')).deleted, true);
    } finally {
      await held.close();
    }
    // once the last user is gone the device is released, and the next change deletes it
    for (let i = 0; i < 100 && (await d.status()).some(([k, v]) => k === 'Deferred Deleted Device Count' && v !== '0'); i++) {
      await new Promise((r) => setTimeout(r, 100));
      await d.create(`probe${i}`, null);
    }
    assert.equal(new Map(await d.status()).get('Deferred Deleted Device Count'), '0');
    await assert.rejects(readFile(join(root, 'devicemapper/metadata/busy')));
    await d.cleanup();
  });

  test('a raised dm.basesize grows the base filesystem; a smaller one is refused', async (root) => {
    const d1 = await DevicemapperDriver.open({ root, options: small });
    await d1.cleanup();
    const bigger = { ...small, 'dm.basesize': '128M' };
    const d2 = await DevicemapperDriver.open({ root, options: bigger });
    await d2.create('l', null);
    assert.equal((await d2.metadata('l')).DeviceSize, String(128 * MB));
    const p = await d2.get('l');
    try {
      const out = await run('df', ['-B1', '--output=size', p]);
      assert.ok(Number(out.split('\n')[1]) > 100 * MB, `filesystem grew: ${out}`);
    } finally {
      await d2.put('l');
    }
    // --storage-opt size= on one device: larger than the base, grown the same way
    await d2.create('big', 'l', { size: 192 * MB });
    assert.equal((await d2.metadata('big')).DeviceSize, String(192 * MB));
    const pb = await d2.get('big');
    try {
      const out = await run('df', ['-B1', '--output=size', pb]);
      assert.ok(Number(out.split('\n')[1]) > 160 * MB, `filesystem grew: ${out}`);
    } finally {
      await d2.put('big');
    }
    await d2.cleanup();
    await assert.rejects(DevicemapperDriver.open({ root, options: small }), (e) => isStrataError(e, 'INVALID_OPTION'));
  });

  test('dm.fs=xfs with dm.mkfsarg and dm.mountopt', async (root) => {
    const d = await DevicemapperDriver.open({ root, options: { ...small, 'dm.basesize': '320M', 'dm.fs': 'xfs', 'dm.mkfsarg': '-m reflink=0', 'dm.mountopt': 'noatime' } });
    await d.create('a', null);
    await d.create('b', 'a');
    const pa = await d.get('a');
    await writeFile(join(pa, 'f'), 'a');
    await d.put('a');
    const pb = await d.get('b');
    const pa2 = await d.get('a');
    try {
      assert.deepEqual(await readdir(pb), []);
      assert.equal(await readFile(join(pa2, 'f'), 'utf8'), 'a');
      const mounts = await readFile('/proc/self/mounts', 'utf8');
      const line = mounts.split('\n').find((l) => l.split(' ')[1] === join(root, 'devicemapper/mnt/a'));
      assert.match(line ?? '', / xfs .*noatime.*nouuid/);
    } finally {
      await d.put('b');
      await d.put('a');
    }
    assert.equal(new Map(await d.status()).get('Backing Filesystem'), 'xfs', 'as docker info: the base device\'s filesystem');
    await d.cleanup();
  });
});
