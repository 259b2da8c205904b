// Debian's dockerd reads a root that Strata wrote: images Strata imported and committed (with a
// deletion and an opaque directory) show with their tags, and dockerd can create, cp into, diff,
// commit and save them, the saved layers hashing to Strata's diff IDs. Strata's own containers
// (one of them still mounted) do not stop dockerd from starting, and Strata reads Docker's
// additions back afterwards.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile, readFile, rm, mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { Strata } from '../../src/strata.js';
import { layerTar, run, tempDir } from '../helpers/fstest.js';
import { dockerdUnavailable, startDockerd, unmountBelow, type Dockerd } from './dockerd.js';
import { BASE_OPS, archiveLayerDigests } from './fixtures.js';
import { probeOverlay2 } from '../../src/drivers/overlay2/overlay-support.js';

for (const driver of ['overlay2', 'vfs'] as const) {
  describe(`a Strata root read by Docker (${driver})`, () => {
    let reason: string | null = null;
    let tmp = '';
    let root = '';
    let dockerd: Dockerd | null = null;
    const diffIds: Record<string, string[]> = {};
    let mountedCtr = '';

    before(async () => {
      reason = await dockerdUnavailable();
      if (!reason && driver === 'overlay2') reason = await probeOverlay2('/tmp');
      if (reason) return;
      tmp = await tempDir(`strata-interop-strata-${driver}-`);
      root = join(tmp, 'root');
      const strata = await Strata.open({ root, driver });
      await strata.importImage(Readable.from(await layerTar(BASE_OPS)), { ref: 'base:1' });
      const ctr = await strata.createContainer('base:1', { name: 'builder' });
      const dir = await strata.mount(ctr);
      try {
        await rm(join(dir, 'etc/motd'));
        await rm(join(dir, 'var/cache'), { recursive: true });
        await mkdir(join(dir, 'var/cache'));
        await writeFile(join(dir, 'var/cache/c'), 'c');
        await mkdir(join(dir, 'srv'));
        await writeFile(join(dir, 'srv/index.html'), '<h1>strata</h1>\n');
      } finally {
        await strata.unmount(ctr);
      }
      await strata.commit(ctr, { ref: 'app:1' });
      // Strata's containers stay: one unmounted, one mounted while dockerd starts.
      mountedCtr = await strata.createContainer('app:1', { name: 'still-mounted' });
      await strata.mount(mountedCtr);
      for (const ref of ['base:1', 'app:1']) diffIds[ref] = ((await strata.inspectImage(ref)).RootFS as { Layers: string[] }).Layers;
      dockerd = await startDockerd(join(tmp, 'd'), root, driver);
    });

    after(async () => {
      if (dockerd) await dockerd.stop().catch(() => undefined);
      if (tmp) {
        if (root && mountedCtr) {
          const strata = await Strata.open({ root, driver }).catch(() => null);
          await strata?.unmount(mountedCtr).catch(() => undefined);
        }
        await unmountBelow(tmp);
        await rm(tmp, { recursive: true, force: true });
      }
    });

    const test = (title: string, fn: (d: Dockerd) => Promise<void>) => it(title, async (t) => {
      if (reason) return t.skip(reason);
      await fn(dockerd!);
    });

    test('lists Strata\'s images with their tags and layers', async (d) => {
      const images = await d.docker(['images', '--format', '{{.Repository}}:{{.Tag}}']);
      assert.deepEqual(images.trim().split('\n').sort(), ['app:1', 'base:1']);
      const layers = JSON.parse(await d.docker(['inspect', '--format', '{{json .RootFS.Layers}}', 'app:1'])) as string[];
      assert.deepEqual(layers, diffIds['app:1']);
      const history = await d.docker(['history', '--format', '{{.Comment}}', 'app:1']);
      assert.match(history, /Imported from/);
      const info = await d.docker(['info', '--format', '{{.Driver}}']);
      assert.equal(info.trim(), driver);
      const containers = (await d.docker(['ps', '-a', '--format', '{{.Names}}'])).trim().split('\n').sort();
      assert.deepEqual(containers, ['builder', 'still-mounted'], 'dockerd loads Strata\'s containers');
      // errors about the root's content; dockerd's supervision of its own containerd child
      // (module=libcontainerd, slow to start on a loaded machine) says nothing about it
      const errors = (await d.log()).split('\n').filter((l) => /level=(error|fatal)/.test(l) && !l.includes('module=libcontainerd'));
      assert.deepEqual(errors, []);
    });

    test('docker create, cp, diff and commit on Strata\'s image', async (d) => {
      await d.docker(['create', '--name', 'dc', 'app:1', '/bin/tool']);
      await writeFile(join(tmp, 'note'), 'from docker\n');
      await d.docker(['cp', join(tmp, 'note'), 'dc:/srv/note']);
      const diff = (await d.docker(['diff', 'dc'])).trim().split('\n').sort();
      assert.deepEqual(diff, ['A /srv/note', 'C /srv']);
      await d.docker(['commit', 'dc', 'app:2']);
      const exported = await d.docker(['export', 'dc']);
      assert.ok(exported.includes('<h1>strata</h1>'), 'the container sees the file Strata committed');
      assert.ok(!exported.includes('./etc/motd') && !exported.includes('etc/motd\0'), 'Strata\'s deletion holds in Docker\'s view');
    });

    test('docker diff of Strata\'s containers matches Strata\'s, mounted or not', async (d) => {
      const strata = await Strata.open({ root, driver });
      const mine = (await strata.diff('builder')).map((c) => `${c.kind} ${c.path}`).sort();
      assert.ok(mine.includes('D /etc/motd'), mine.join(','));
      assert.deepEqual((await d.docker(['diff', 'builder'])).trim().split('\n').sort(), mine);
      assert.equal((await d.docker(['diff', 'still-mounted'])).trim(), '');
      if (driver === 'overlay2') {
        const { mountId } = await strata.layers.getMount(mountedCtr);
        const mounts = await readFile('/proc/self/mountinfo', 'utf8');
        assert.ok(mounts.includes(`${mountId}/merged`), 'Strata\'s mount survives Docker\'s get and put');
      }
    });

    test('docker save reproduces Strata\'s diff IDs', async (d) => {
      const out = join(tmp, 'saved.tar');
      await d.docker(['save', '-o', out, 'app:1', 'base:1']);
      assert.deepEqual(await archiveLayerDigests(out, 'app:1'), diffIds['app:1']);
      assert.deepEqual(await archiveLayerDigests(out, 'base:1'), diffIds['base:1']);
      // and the whiteouts came back as OCI whiteouts
      const work = await tempDir('strata-saved-');
      try {
        await run('tar', ['-C', work, '-xf', out]);
        const top = (JSON.parse(await readFile(join(work, 'manifest.json'), 'utf8')) as Array<{ RepoTags: string[]; Layers: string[] }>).find((m) => m.RepoTags.includes('app:1'))!.Layers.at(-1)!;
        const names = (await run('tar', ['-tf', join(work, top)])).toString().split('\n');
        assert.ok(names.some((n) => n.endsWith('etc/.wh.motd')), names.join(' '));
      } finally {
        await rm(work, { recursive: true, force: true });
      }
    });

    test('Strata reads Docker\'s commit back after dockerd stops', async (d) => {
      await d.stop();
      dockerd = null;
      const strata = await Strata.open({ root, driver });
      const tags = (await strata.listImages()).flatMap((i) => i.repoTags).sort();
      assert.deepEqual(tags, ['app:1', 'app:2', 'base:1']);
      const report = await strata.fsck({ repair: false });
      assert.deepEqual(report.problems, []);
      const names = (await strata.listContainers()).map((c) => c.name).sort();
      assert.ok(names.includes('builder') && names.includes('still-mounted'), names.join(','));
      assert.ok((await readdir(join(root, 'containers'))).length >= 3);
    });
  });
}
