// Several strata processes on one root at once: every command succeeds and nothing is lost.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { strataOk } from '../helpers/cli.js';
import { file, layerTar, tempDir } from '../helpers/fstest.js';

describe('concurrent processes on one root', () => {
  let root: string;
  let work: string;
  before(async () => {
    root = await tempDir('strata-conc-');
    work = await tempDir('strata-conc-work-');
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
    await rm(work, { recursive: true, force: true });
  });

  it('parallel imports, creates and commits all land', async () => {
    const cli = (args: string[]) => strataOk(root, ['--storage-driver', 'vfs', ...args]);
    const tars: string[] = [];
    for (let i = 0; i < 4; i++) {
      const path = join(work, `l${i}.tar`);
      await writeFile(path, await layerTar([file(`layer${i}`, `content ${i}`), file('shared', 'same')]));
      tars.push(path);
    }
    const ids = await Promise.all(tars.map((t, i) => cli(['import', t, `img${i}:1`])));
    assert.equal(new Set(ids).size, 4);
    await Promise.all(ids.map((_, i) => cli(['create', '--name', `ctr${i}`, `img${i}:1`])));
    await Promise.all(ids.map((_, i) => cli(['commit', `ctr${i}`, `done${i}:1`])));
    const images = JSON.parse(await cli(['images', '--format', 'json'])) as Array<{ repoTags: string[] }>;
    assert.deepEqual(images.flatMap((i) => i.repoTags).sort(), ['done0:1', 'done1:1', 'done2:1', 'done3:1', 'img0:1', 'img1:1', 'img2:1', 'img3:1']);
    const ps = JSON.parse(await cli(['ps', '--format', 'json'])) as unknown[];
    assert.equal(ps.length, 4);
    // two processes racing to create the same name: exactly one wins
    const results = await Promise.allSettled([cli(['create', '--name', 'dup', 'img0:1']), cli(['create', '--name', 'dup', 'img1:1'])]);
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
    assert.match(await cli(['fsck']), /clean/);
  });
});
