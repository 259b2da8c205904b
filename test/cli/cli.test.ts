// End-to-end: the strata CLI as a user would drive it (vfs; cat and ls on every directory driver).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rm, writeFile, readFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { strata, strataOk } from '../helpers/cli.js';
import { tmpdir } from 'node:os';
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { applyOps, dir, file, isRoot, layerTar, sym, tempDir, run } from '../helpers/fstest.js';
import { probeOverlay2 } from '../../src/drivers/overlay2/overlay-support.js';
import { probeAufs } from '../../src/drivers/aufs/aufs-driver.js';

describe('strata CLI (vfs)', () => {
  let root: string;
  let work: string;
  const cli = (args: string[], input?: Buffer) => strataOk(root, ['--storage-driver', 'vfs', ...args], input ? { input } : {});

  before(async () => {
    root = await tempDir('strata-cli-');
    work = await tempDir('strata-cli-work-');
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
    await rm(work, { recursive: true, force: true });
  });

  it('--version prints the package version', async () => {
    const pkg = JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    assert.equal(await cli(['--version']), pkg.version);
  });

  it('imports, creates, changes, diffs, commits, lists and removes', async () => {
    const tar = await layerTar([dir('etc'), file('etc/os-release', 'ID=base\n'), file('etc/motd', 'hi\n'), dir('tmp', 0o1777)]);
    await writeFile(join(work, 'base.tar'), tar);
    const imageId = await cli(['import', join(work, 'base.tar'), 'base:1']);
    assert.match(imageId, /^sha256:[a-f0-9]{64}$/);

    const images = JSON.parse(await cli(['images', '--format', 'json'])) as Array<{ id: string; repoTags: string[] }>;
    assert.deepEqual(images.map((i) => [i.id, i.repoTags]), [[imageId, ['base:1']]]);
    assert.match(await cli(['images']), /^REPOSITORY\s+TAG\s+IMAGE ID\s+CREATED\s+SIZE\nbase\s+1\s+[a-f0-9]{12}\s/);

    const ctr = await cli(['create', '--name', 'web', 'base:1']);
    assert.match(ctr, /^[a-f0-9]{64}$/);
    const mountDir = await cli(['mount', 'web']);
    await writeFile(join(mountDir, 'etc/os-release'), 'ID=web\n');
    await rm(join(mountDir, 'etc/motd'));
    await mkdir(join(mountDir, 'srv'));
    await writeFile(join(mountDir, 'srv/index.html'), '<h1>hi</h1>');
    await cli(['unmount', 'web']);

    assert.equal(await cli(['diff', 'web']), ['C /etc', 'C /etc/os-release', 'D /etc/motd', 'A /srv', 'A /srv/index.html'].sort(byPath).join('\n'));

    const committed = await cli(['commit', '-m', 'web content', 'web', 'web:1']);
    assert.match(committed, /^sha256:/);
    const history = JSON.parse(await cli(['history', '--format', 'json', 'web:1'])) as Array<{ comment?: string }>;
    assert.equal(history.length, 2);
    assert.equal(history[0]!.comment, 'web content');

    const inspect = JSON.parse(await cli(['inspect', 'web:1'])) as Array<{ RootFS: { Layers: string[] }; Parent: string }>;
    assert.equal(inspect[0]!.RootFS.Layers.length, 2);
    assert.equal(inspect[0]!.Parent, imageId);

    // the committed image, run as a new container, has the changes
    await cli(['create', '--name', 'check', 'web:1']);
    const checkDir = await cli(['mount', 'check']);
    assert.equal(await readFile(join(checkDir, 'etc/os-release'), 'utf8'), 'ID=web\n');
    await cli(['unmount', 'check']);

    const exported = join(work, 'export.tar');
    await cli(['export', 'check', '-o', exported]);
    const listing = (await run('tar', ['-tf', exported])).toString();
    assert.match(listing, /srv\/index.html/);
    assert.doesNotMatch(listing, /etc\/motd/);

    // an image in use cannot be removed; a container can
    const refused = await strata(root, ['--storage-driver', 'vfs', 'rmi', 'web:1']);
    assert.equal(refused.code, 5);
    assert.match(refused.stderr, /^strata: unable to remove image web:1: container [a-f0-9]{12} \(check\) uses it\n$/);
    await cli(['rm', 'check', 'web']);
    assert.equal(await cli(['ps', '-q']), '');
    assert.match(await cli(['rmi', 'web:1']), /Untagged: web:1\nDeleted: sha256:/);
    assert.match(await cli(['fsck']), /checked 1 layers and 1 images: clean/);
  });

  it('reports errors in one line with a status that names the kind', async () => {
    const missing = await strata(root, ['--storage-driver', 'vfs', 'inspect', '--type', 'image', 'nope:1']);
    assert.equal(missing.code, 3);
    assert.equal(missing.stderr, 'strata: no such image: nope:1\n');
    const badRef = await strata(root, ['--storage-driver', 'vfs', 'tag', 'base:1', 'Bad:Name']);
    assert.equal(badRef.code, 2);
    assert.equal(badRef.stderr.split('\n').length, 2);
    const badDriver = await strata(root, ['--storage-driver', 'nosuch', 'images']);
    assert.equal(badDriver.code, 6);
    const usage = await strata(root, ['create']);
    assert.equal(usage.code, 2);
    // files named on the command line: the path and the reason, as coreutils say them
    const noInput = await strata(root, ['--storage-driver', 'vfs', 'import', join(work, 'nosuch.tar')]);
    assert.deepEqual([noInput.code, noInput.stderr], [3, `strata: ${join(work, 'nosuch.tar')}: no such file or directory\n`]);
    const noDir = await strata(root, ['--storage-driver', 'vfs', 'save', '-o', join(work, 'nosuch', 'out.tar'), 'base:1']);
    assert.deepEqual([noDir.code, noDir.stderr], [3, `strata: ${join(work, 'nosuch', 'out.tar')}: no such file or directory\n`]);
  });

  it('ends quietly, as a process killed by SIGPIPE, when its reader goes away (save | head -c 10)', async () => {
    // a layer larger than a pipe holds, so the writes outrun a reader that stops at 10 bytes
    await writeFile(join(work, 'big.tar'), await layerTar([file('blob', Buffer.alloc(1 << 20, 7))]));
    await cli(['import', join(work, 'big.tar'), 'big:1']);
    const { spawn } = await import('node:child_process');
    const { strataArgsFor } = await import('../helpers/cli.js');
    const child = spawn(process.execPath, strataArgsFor(root, ['--storage-driver', 'vfs', 'save', 'big:1']), { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout.once('data', () => child.stdout.destroy()); // read a little, then close our end
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    assert.equal(code, 141);
    assert.equal(stderr, '');
    await cli(['rmi', 'big:1']);
  });

  it('imports from stdin and from a directory', async () => {
    const src = join(work, 'tree');
    await applyOps(src, [file('hello', 'world\n')]);
    const fromDir = await cli(['import', src, 'fromdir:1']);
    const fromStdin = await cli(['import', '-', 'fromstdin:1'], await layerTar([file('hello', 'world\n')]));
    assert.match(fromDir, /^sha256:/);
    assert.match(fromStdin, /^sha256:/);
    const info = await cli(['info']);
    assert.match(info, /Storage Driver: vfs/);
  });

  it('imports plain, gzip and zstd layer files (read as FileChunks) to the same DiffID: the plain tar\'s sha256', async () => {
    const tar = await layerTar([dir('etc'), file('etc/hostname', 'strata\n'), file('blob', 'x'.repeat(300_000))]);
    await writeFile(join(work, 'layer.tar'), tar);
    await writeFile(join(work, 'layer.tar.gz'), gzipSync(tar));
    await writeFile(join(work, 'layer.tar.zst'), await run('zstd', ['-q', '-c'], tar));
    const diffIds = [];
    for (const [name, ref] of [['layer.tar', 'plain:1'], ['layer.tar.gz', 'gz:1'], ['layer.tar.zst', 'zst:1']] as const) {
      await cli(['import', join(work, name), ref]);
      const [image] = JSON.parse(await cli(['inspect', ref])) as Array<{ RootFS: { Layers: string[] } }>;
      diffIds.push(image!.RootFS.Layers[0]);
    }
    const expected = `sha256:${createHash('sha256').update(tar).digest('hex')}`;
    assert.deepEqual(diffIds, [expected, expected, expected]);
    assert.equal(await cli(['cat', 'zst:1', '/etc/hostname']), 'strata');
  });

  it('imports a layer of many small files (the file writer thread of the built CLI); reads and fsck see them whole', async () => {
    const ops = [dir('usr'), ...Array.from({ length: 600 }, (_, i) => file(`usr/f${i}`, `file ${i}\n`.repeat(i % 9), 0o600 + (i % 2) * 0o155))];
    const tar = await layerTar(ops);
    const id = await cli(['import', '-', 'many:1'], tar);
    assert.match(id, /^sha256:/);
    assert.equal(await cli(['cat', 'many:1', '/usr/f599']), 'file 599\n'.repeat(599 % 9).trim());
    assert.match(await cli(['ls', '-l', 'many:1', '/usr/f1']), /^-rwxr-xr-x /);
    assert.match(await cli(['ls', '-l', 'many:1', '/usr/f2']), /^-rw------- /);
    assert.match(await cli(['fsck']), /clean/);
  });
});

// The same reads on every directory-layer driver: vfs reads its full copy, overlay2 and aufs
// stack diff directories in user space, each with its own whiteout format.
const readDrivers: Array<[string, () => Promise<string | null>]> = [
  ['vfs', async () => null],
  ['overlay2', () => (isRoot ? probeOverlay2(tmpdir()) : Promise.resolve('overlay2 needs root'))],
  ['aufs', () => (isRoot ? probeAufs('') : Promise.resolve('aufs needs root'))],
];

for (const [driver, unavailable] of readDrivers) {
  describe(`strata cat and ls (${driver})`, () => {
    it('read an image without a container: symlinks inside it, whiteouts and opaque dirs of upper layers', async (t) => {
      const reason = await unavailable();
      if (reason !== null) return t.skip(reason);
      const root = await tempDir('strata-cat-');
      const cli = (args: string[], input?: Buffer) => strataOk(root, ['--storage-driver', driver, ...args], input ? { input } : {});
      try {
        const tar = await layerTar([
          dir('etc'), file('etc/os-release', 'ID=cat\n'), sym('etc/link', 'os-release'), sym('abs', '/etc'),
          file('bin/tool', '#!', 0o4755), file('etc/gone', 'x'), dir('var/cache'), file('var/cache/old', 'o'), sym('var/loop', 'loop'),
        ]);
        await cli(['import', '-', 'cat:1'], tar);
        assert.equal(await cli(['cat', 'cat:1', '/etc/link']), 'ID=cat');
        assert.equal(await cli(['cat', 'cat:1', '/abs/os-release']), 'ID=cat');
        assert.deepEqual((await cli(['ls', 'cat:1', '/'])).split('\n'), ['abs', 'bin', 'etc', 'var']);
        assert.match(await cli(['ls', '-l', 'cat:1', '/bin']), /^-rwsr-xr-x +1 +\d+ +\d+ +2 .* tool$/);

        // a second layer deletes a file and replaces a directory (opaque in both formats)
        const id = await cli(['create', '--name', 'c', 'cat:1']);
        const mnt = await cli(['mount', id]);
        await rm(join(mnt, 'etc/gone'));
        await rm(join(mnt, 'var/cache'), { recursive: true });
        await mkdir(join(mnt, 'var/cache'));
        await writeFile(join(mnt, 'var/cache/new'), 'n');
        await cli(['unmount', id]);
        await cli(['commit', id, 'cat:2']);
        assert.deepEqual((await cli(['ls', 'cat:2', '/etc'])).split('\n'), ['link', 'os-release']);
        assert.deepEqual((await cli(['ls', 'cat:2', '/var/cache'])).split('\n'), ['new']);
        assert.deepEqual((await cli(['ls', 'cat:1', '/var/cache'])).split('\n'), ['old'], 'the lower image is unchanged');
        const missing = await strata(root, ['--storage-driver', driver, 'cat', 'cat:2', '/etc/gone']);
        assert.deepEqual([missing.code, missing.stderr], [3, 'strata: cat:2: /etc/gone: no such file or directory\n']);
        const notDir = await strata(root, ['--storage-driver', driver, 'ls', 'cat:2', '/etc/os-release/x']);
        assert.deepEqual([notDir.code, notDir.stderr], [2, 'strata: cat:2: /etc/os-release/x: not a directory\n']);
        const isDir = await strata(root, ['--storage-driver', driver, 'cat', 'cat:2', '/abs']);
        assert.deepEqual([isDir.code, isDir.stderr], [2, 'strata: cat:2: /abs: is a directory\n']);
        const loop = await strata(root, ['--storage-driver', driver, 'cat', 'cat:2', '/var/loop']);
        assert.deepEqual([loop.code, loop.stderr], [2, 'strata: cat:2: /var/loop: too many levels of symbolic links\n']);
        await cli(['rm', id]);
      } finally {
        await rm(root, { recursive: true, force: true });
      }
    });
  });
}

function byPath(a: string, b: string): number {
  return a.slice(2).localeCompare(b.slice(2));
}
