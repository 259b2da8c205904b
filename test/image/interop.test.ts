// save/load against skopeo (and umoci) from Debian: our archives must be accepted by them, and
// what they write must load into Strata with the same diff IDs.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rm, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { strataOk } from '../helpers/cli.js';
import { dir, file, hardlink, layerTar, run, sym, tempDir } from '../helpers/fstest.js';

const hasSkopeo = spawnSync('skopeo', ['--version']).status === 0;
const hasUmoci = spawnSync('umoci', ['--version']).status === 0;

describe('image archives with skopeo and umoci', () => {
  let root: string;
  let work: string;
  let diffIds: string[];
  const cli = (args: string[], r = root) => strataOk(r, ['--storage-driver', 'vfs', ...args]);

  before(async () => {
    root = await tempDir('strata-archive-');
    work = await tempDir('strata-archive-work-');
    await writeFile(join(work, 'base.tar'), await layerTar([dir('etc'), file('etc/os-release', 'ID=base\n'), file('bin/tool', 'x', 0o755), hardlink('bin/alias', 'bin/tool'), sym('bin/sh', 'tool')]));
    await cli(['import', join(work, 'base.tar'), 'base:1']);
    await cli(['create', '--name', 'c', 'base:1']);
    const mnt = await cli(['mount', 'c']);
    await writeFile(join(mnt, 'etc/os-release'), 'ID=next\n');
    await mkdir(join(mnt, 'srv'));
    await writeFile(join(mnt, 'srv/data'), 'data');
    await cli(['unmount', 'c']);
    await cli(['commit', 'c', 'img:2']);
    diffIds = (JSON.parse(await cli(['inspect', 'img:2'])) as Array<{ RootFS: { Layers: string[] } }>)[0]!.RootFS.Layers;
    assert.equal(diffIds.length, 2);
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
    await rm(work, { recursive: true, force: true });
  });

  it('save (docker-archive) is read by skopeo, and its copy to OCI loads back with the same diff IDs', async (t) => {
    if (!hasSkopeo) return t.skip('skopeo is not installed');
    const archive = join(work, 'img.tar');
    await cli(['save', '-o', archive, 'img:2']);
    const inspect = JSON.parse((await run('skopeo', ['inspect', `docker-archive:${archive}`])).toString()) as { Layers: string[]; RepoTags?: string[] };
    assert.deepEqual(inspect.Layers, diffIds);
    const oci = join(work, 'oci');
    await run('skopeo', ['copy', '--quiet', `docker-archive:${archive}`, `oci:${oci}:img:2`]);
    const other = await tempDir('strata-archive-other-');
    try {
      const out = await cli(['load', '-i', oci], other);
      assert.match(out, /Loaded image: img:2/);
      const loaded = (JSON.parse(await cli(['inspect', 'img:2'], other)) as Array<{ RootFS: { Layers: string[] } }>)[0]!;
      assert.deepEqual(loaded.RootFS.Layers, diffIds);
      assert.match(await cli(['fsck'], other), /clean/);
    } finally {
      await rm(other, { recursive: true, force: true });
    }
  });

  it('skopeo docker-archive output loads; a Strata round trip keeps the image ID', async (t) => {
    if (!hasSkopeo) return t.skip('skopeo is not installed');
    const archive = join(work, 'img2.tar');
    await cli(['save', '-o', archive, 'img:2']);
    const copied = join(work, 'skopeo-da.tar');
    await run('skopeo', ['copy', '--quiet', `docker-archive:${archive}`, `docker-archive:${copied}:again:3`]);
    const other = await tempDir('strata-archive-other-');
    try {
      assert.match(await cli(['load', '-i', copied], other), /Loaded image: again:3/);
      // and our own archive into a fresh root gives the very same image ID
      await cli(['load', '-i', archive], other);
      const a = (JSON.parse(await cli(['inspect', 'img:2'])) as Array<{ Id: string }>)[0]!.Id;
      const b = (JSON.parse(await cli(['inspect', 'img:2'], other)) as Array<{ Id: string }>)[0]!.Id;
      assert.equal(a, b);
    } finally {
      await rm(other, { recursive: true, force: true });
    }
  });

  it('save --format oci is an OCI archive skopeo and umoci accept', async (t) => {
    if (!hasSkopeo) return t.skip('skopeo is not installed');
    const archive = join(work, 'img-oci.tar');
    await cli(['save', '--format', 'oci', '-o', archive, 'img:2', 'base:1']);
    const inspect = JSON.parse((await run('skopeo', ['inspect', `oci-archive:${archive}:img:2`])).toString()) as { Layers: string[] };
    assert.deepEqual(inspect.Layers, diffIds);
    if (hasUmoci) {
      const layout = join(work, 'layout');
      await mkdir(layout);
      await run('tar', ['-xf', archive, '-C', layout]);
      const stat = (await run('umoci', ['stat', '--image', `${layout}:img:2`, '--json'])).toString();
      assert.match(stat, /history/);
      const bundle = join(work, 'bundle');
      await run('umoci', ['raw', 'unpack', '--image', `${layout}:img:2`, bundle]);
    }
  });

  it('deletions (whiteouts) survive a save and load', async () => {
    await cli(['create', '--name', 'deleter', 'img:2']);
    const mnt = await cli(['mount', 'deleter']);
    await rm(join(mnt, 'etc/os-release'));
    await rm(join(mnt, 'srv'), { recursive: true });
    await cli(['unmount', 'deleter']);
    await cli(['commit', 'deleter', 'img:3']);
    const archive = join(work, 'img3.tar');
    await cli(['save', '-o', archive, 'img:3']);
    const listing = (await run('tar', ['-xOf', archive, '--wildcards', '*/layer.tar'])).length;
    assert.ok(listing > 0);
    const other = await tempDir('strata-archive-other-');
    try {
      await cli(['load', '-i', archive], other);
      await cli(['create', '--name', 'x', 'img:3'], other);
      const loadedMnt = await cli(['mount', 'x'], other);
      const etc = (await run('ls', ['-A', join(loadedMnt, 'etc')])).toString().trim().split('\n');
      assert.ok(!etc.includes('os-release'), 'the whiteout hid os-release');
      assert.ok(etc.includes('hostname'), 'the init layer is there');
      assert.equal((await run('ls', ['-A', loadedMnt])).toString().split('\n').includes('srv'), false);
      await cli(['unmount', 'x'], other);
    } finally {
      await rm(other, { recursive: true, force: true });
    }
  });
});
