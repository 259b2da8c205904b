// Strata reads a root that Debian's dockerd wrote (and dockerd still reads it afterwards):
// dockerd imports, loads (a layer with whiteouts and an opaque directory), creates and commits;
// Strata, pointed at the same root with the same driver, lists, inspects, verifies, saves, and
// makes and commits its own containers without touching Docker's.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile, readFile, readdir, rm } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { join } from 'node:path';
import { createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { Strata } from '../../src/strata.js';
import { saveImages } from '../../src/image/save.js';
import { layerTar, run, tempDir } from '../helpers/fstest.js';
import { strataOk } from '../helpers/cli.js';
import { dockerdUnavailable, startDockerd, unmountBelow, type Dockerd } from './dockerd.js';
import { BASE_OPS, WHITEOUT_OPS, archiveLayerDigests, dockerArchive, baseTar } from './fixtures.js';
import { probeOverlay2 } from '../../src/drivers/overlay2/overlay-support.js';

for (const driver of ['overlay2', 'vfs'] as const) {
  describe(`a Docker root read by Strata (${driver})`, () => {
    let reason: string | null = null;
    let tmp = '';
    let root = '';
    let dockerd: Dockerd | null = null;
    let c1 = '';
    const diffIds: Record<string, string[]> = {};

    before(async () => {
      reason = await dockerdUnavailable();
      if (!reason && driver === 'overlay2') reason = await probeOverlay2('/tmp');
      if (reason) return;
      tmp = await tempDir(`strata-interop-docker-${driver}-`);
      root = join(tmp, 'root');
      dockerd = await startDockerd(join(tmp, 'd'), root, driver);
      const d = dockerd;
      await writeFile(join(tmp, 'base.tar'), await baseTar());
      await d.docker(['import', join(tmp, 'base.tar'), 'base:1']);
      const layered = await dockerArchive('wh:1', [await layerTar(BASE_OPS), await layerTar(WHITEOUT_OPS)]);
      await d.docker(['load'], { input: layered });
      c1 = (await d.docker(['create', '--name', 'c1', 'wh:1', '/bin/tool'])).trim();
      await writeFile(join(tmp, 'added'), 'added by docker cp\n');
      await d.docker(['cp', join(tmp, 'added'), 'c1:/etc/added']);
      await d.docker(['commit', 'c1', 'img:2']);
      for (const ref of ['base:1', 'wh:1', 'img:2']) diffIds[ref] = JSON.parse(await d.docker(['inspect', '--format', '{{json .RootFS.Layers}}', ref])) as string[];
      await d.stop();
      dockerd = null;
    });

    after(async () => {
      if (dockerd) await dockerd.stop().catch(() => undefined);
      if (tmp) {
        await unmountBelow(tmp);
        await rm(tmp, { recursive: true, force: true });
      }
    });

    const test = (title: string, fn: () => Promise<void>) => it(title, async (t) => {
      if (reason) return t.skip(reason);
      await fn();
    });

    test('lists Docker\'s images with their tags, history and inspect', async () => {
      const strata = await Strata.open({ root, driver });
      const images = await strata.listImages();
      const tags = images.flatMap((i) => i.repoTags).sort();
      assert.deepEqual(tags, ['base:1', 'img:2', 'wh:1']);
      const history = await strata.history('img:2');
      assert.equal(history.length, 3);
      assert.equal(history[2]!.created_by, 'layer 0');
      const inspect = await strata.inspectImage('img:2');
      assert.deepEqual((inspect.RootFS as { Layers: string[] }).Layers, diffIds['img:2']);
      assert.equal((inspect.GraphDriver as { Name: string }).Name, driver);
      const cli = await strataOk(root, ['images'], { driver });
      assert.match(cli, /^img\s+2\s/m);
      assert.match(cli, /^base\s+1\s/m);
    });

    test('fsck re-verifies every layer Docker stored against its diff ID', async () => {
      const strata = await Strata.open({ root, driver });
      const report = await strata.fsck({ repair: false });
      assert.deepEqual(report.problems, []);
      // base (shared by base:1 and wh:1, the tars are identical), the whiteout layer, the commit
      assert.equal(report.checkedLayers, 3);
      assert.equal(report.checkedImages, 3);
    });

    test('saves Docker\'s images into an archive whose layers hash to their diff IDs (skopeo reads it)', async () => {
      const strata = await Strata.open({ root, driver });
      const out = join(tmp, `saved-${driver}.tar`);
      await pipeline(await saveImages(strata, ['img:2'], 'docker'), createWriteStream(out));
      assert.deepEqual(await archiveLayerDigests(out, 'img:2'), diffIds['img:2']);
      const cliOut = join(tmp, `saved-cli-${driver}.tar`);
      await strataOk(root, ['save', '-o', cliOut, 'wh:1'], { driver });
      assert.deepEqual(await archiveLayerDigests(cliOut, 'wh:1'), diffIds['wh:1']);
      const inspected = JSON.parse((await run('skopeo', ['inspect', '--raw', `docker-archive:${out}`])).toString()) as { layers: unknown[] };
      assert.equal(inspected.layers.length, diffIds['img:2']!.length);
    });

    test('records the same layer size as Docker for the same tar', async () => {
      const strata = await Strata.open({ root, driver });
      const dockers = await strata.layers.get(diffIds['base:1']![0]! as `sha256:${string}`);
      const fresh = await Strata.open({ root: join(tmp, 'fresh'), driver });
      const id = await fresh.importImage(Readable.from(await baseTar()));
      const [mine] = await fresh.imageLayers(id);
      assert.equal(mine!.diffId, dockers.diffId);
      assert.equal(mine!.size, dockers.size);
      await fresh.driver.cleanup();
    });

    test('creates, diffs and commits its own container beside Docker\'s', async () => {
      const strata = await Strata.open({ root, driver });
      const mountsDir = join(root, 'image', driver, 'layerdb', 'mounts');
      const dockerMount = await readFile(join(mountsDir, c1, 'mount-id'), 'utf8');
      // Docker's own container, read through Strata's driver (its -init layer excluded)
      assert.deepEqual((await strata.diff(c1)).map((c) => `${c.kind} ${c.path}`), ['C /etc', 'A /etc/added']);
      const id = await strata.createContainer('img:2', { name: 'strata-one' });
      const dir = await strata.mount(id);
      try {
        assert.equal(await readFile(join(dir, 'etc/added'), 'utf8'), 'added by docker cp\n');
        assert.deepEqual((await readdir(join(dir, 'var/cache'))).sort(), ['c']);
        await assert.rejects(readFile(join(dir, 'etc/motd')));
        await writeFile(join(dir, 'etc/strata'), 'strata\n');
        await rm(join(dir, 'srv/index.html'));
      } finally {
        await strata.unmount(id);
      }
      const changes = (await strata.diff(id)).map((c) => `${c.kind} ${c.path}`);
      assert.deepEqual(changes.sort(), ['A /etc/strata', 'C /etc', 'C /srv', 'D /srv/index.html']);
      const image = await strata.commit(id, { ref: 'strata:1' });
      const layers = (await strata.inspectImage(image)).RootFS as { Layers: string[] };
      assert.equal(layers.Layers.length, diffIds['img:2']!.length + 1);
      assert.equal(await readFile(join(mountsDir, c1, 'mount-id'), 'utf8'), dockerMount, 'Docker\'s container layer is untouched');
      const report = await strata.fsck({ repair: false });
      assert.deepEqual(report.problems, []);
    });

    test('dockerd starts again on the root and uses what Strata added', async () => {
      dockerd = await startDockerd(join(tmp, 'd2'), root, driver);
      const d = dockerd;
      try {
        const images = await d.docker(['images', '--format', '{{.Repository}}:{{.Tag}}']);
        assert.deepEqual(images.trim().split('\n').sort(), ['base:1', 'img:2', 'strata:1', 'wh:1']);
        const diff = (await d.docker(['diff', 'c1'])).trim().split('\n').sort();
        assert.deepEqual(diff, ['A /etc/added', 'C /etc']);
        const strata = await Strata.open({ root, driver });
        const mine = (await strata.inspectImage('strata:1')).RootFS as { Layers: string[] };
        const out = join(tmp, `docker-saved-${driver}.tar`);
        await d.docker(['save', '-o', out, 'strata:1']);
        assert.deepEqual(await archiveLayerDigests(out, 'strata:1'), mine.Layers);
        await d.docker(['create', '--name', 'c2', 'strata:1', '/bin/tool']);
        const listing = await d.docker(['export', 'c2']);
        assert.ok(listing.includes('strata\n'), 'docker export of a container from Strata\'s commit has the file Strata wrote');
      } finally {
        await d.stop();
        dockerd = null;
      }
    });

    test('docker load takes the archives Strata saved from Docker\'s root (fresh daemon)', async () => {
      dockerd = await startDockerd(join(tmp, 'd3'), join(tmp, 'load-root'), driver);
      const d = dockerd;
      try {
        const loaded = await d.docker(['load', '-i', join(tmp, `saved-${driver}.tar`)]);
        assert.match(loaded, /Loaded image: img:2/);
        await d.docker(['load', '-i', join(tmp, `saved-cli-${driver}.tar`)]);
        assert.deepEqual(JSON.parse(await d.docker(['inspect', '--format', '{{json .RootFS.Layers}}', 'img:2'])), diffIds['img:2']);
        assert.deepEqual(JSON.parse(await d.docker(['inspect', '--format', '{{json .RootFS.Layers}}', 'wh:1'])), diffIds['wh:1']);
      } finally {
        await d.stop();
        dockerd = null;
      }
    });
  });
}
