// One conformance suite for every storage driver. A driver's test file builds a factory and
// calls runDriverSuite; optional cases are chosen from the driver's capabilities, never its name.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { rm, writeFile, readFile, unlink, mkdir, lstat } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { createHash } from 'node:crypto';
import type { Driver } from '../../src/drivers/driver.js';
import { isStrataError } from '../../src/errors.js';
import { applyOps, dir, file, hardlink, layerTar, opaque, snapshotTree, sym, tempDir, whiteout, xattr, isRoot, type FsOp } from '../helpers/fstest.js';

export interface SuiteOptions {
  /** Why the driver cannot run here (the suite is skipped with this reason), or null. */
  unavailable?: () => Promise<string | null>;
  /** How deep a chain the "many layers" case builds (overlay's mount options cap it). */
  depth?: number;
}

export type DriverFactory = (root: string) => Promise<Driver>;

async function bufferOf(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Trees as a driver exposes them: whiteouts of the driver's own format must not show. */
const view = (root: string) => snapshotTree(root, { ignore: (p) => p === 'lost+found' });

export function runDriverSuite(name: string, factory: DriverFactory, options: SuiteOptions = {}): void {
  describe(`driver conformance: ${name}`, () => {
    let reason: string | null = null;
    before(async () => {
      reason = (await options.unavailable?.()) ?? null;
    });

    /** Each case gets a fresh root and driver; nothing is shared through module state. */
    function test(title: string, fn: (d: Driver, root: string) => Promise<void>, opts: { root?: boolean } = {}): void {
      it(title, async (t) => {
        if (reason) return t.skip(reason);
        if (opts.root && !isRoot) return t.skip('needs root');
        const root = await tempDir(`strata-${name}-`);
        const driver = await factory(root);
        try {
          await fn(driver, root);
        } finally {
          await driver.cleanup().catch(() => undefined);
          await rm(root, { recursive: true, force: true });
        }
      });
    }

    async function layer(d: Driver, id: string, parent: string | null, ops: FsOp[]): Promise<void> {
      await d.create(id, parent);
      await d.applyDiff(id, parent, Readable.from(await layerTar(ops)));
    }

    async function contents(d: Driver, id: string) {
      const dirPath = await d.get(id);
      try {
        return await view(dirPath);
      } finally {
        await d.put(id);
      }
    }

    test('creates an empty layer that exists, mounts empty and is removed', async (d) => {
      assert.equal(await d.exists('base'), false);
      await d.create('base', null);
      assert.equal(await d.exists('base'), true);
      const p = await d.get('base');
      assert.deepEqual(Object.keys(await view(p)), []);
      await d.put('base');
      await d.remove('base');
      assert.equal(await d.exists('base'), false);
    });

    test('refuses to create an existing id, and names a missing parent or layer', async (d) => {
      await d.create('a', null);
      await assert.rejects(d.create('a', null), (e) => isStrataError(e, 'LAYER_EXISTS'));
      await assert.rejects(d.create('b', 'missing'), (e) => isStrataError(e, 'LAYER_NOT_FOUND'));
      await assert.rejects(d.remove('missing'), (e) => isStrataError(e, 'LAYER_NOT_FOUND'));
      await assert.rejects(d.get('missing'), (e) => isStrataError(e, 'LAYER_NOT_FOUND'));
      await assert.rejects(d.create('../escape', null), (e) => isStrataError(e, 'INVALID_ID'));
    });

    test('stacks a chain: each layer sees its parents, whiteouts hide, opaque dirs reset', async (d) => {
      await layer(d, 'base', null, [dir('etc'), file('etc/os-release', 'base\n'), file('etc/motd', 'hello\n'), dir('var/cache'), file('var/cache/a', 'a'), file('var/cache/b', 'b')]);
      await layer(d, 'fedora', 'base', [file('etc/os-release', 'fedora\n'), whiteout('etc/motd'), opaque('var/cache'), file('var/cache/c', 'c')]);
      await layer(d, 'apache', 'fedora', [dir('srv/www'), file('srv/www/index.html', '<h1>it works</h1>\n')]);
      const top = await contents(d, 'apache');
      assert.deepEqual(Object.keys(top).sort(), ['etc', 'etc/os-release', 'srv', 'srv/www', 'srv/www/index.html', 'var', 'var/cache', 'var/cache/c']);
      const p = await d.get('apache');
      try {
        assert.equal(await readFile(join(p, 'etc/os-release'), 'utf8'), 'fedora\n');
      } finally {
        await d.put('apache');
      }
      const base = await contents(d, 'base');
      assert.ok(base['etc/motd'] && base['var/cache/a'], 'a lower layer is not changed by its children');
    });

    test('mount twice, put twice: remove is refused while any reference is held', async (d) => {
      await d.create('layer', null);
      const p1 = await d.get('layer');
      const p2 = await d.get('layer');
      assert.equal(p1, p2);
      await d.put('layer');
      await assert.rejects(d.remove('layer'), (e) => isStrataError(e, 'LAYER_MOUNTED'));
      // still usable with one reference left
      await writeFile(join(p1, 'probe'), 'x').catch(() => undefined);
      await d.put('layer');
      await d.remove('layer');
    });

    test('mountRefs counts every reference, and those kept past their process apart', async (d) => {
      await d.create('layer', null);
      assert.deepEqual(await d.mountRefs('layer'), { total: 0, kept: 0 });
      await d.get('layer', { keep: true });
      await d.get('layer');
      assert.deepEqual(await d.mountRefs('layer'), { total: 2, kept: 1 });
      await d.put('layer');
      assert.deepEqual(await d.mountRefs('layer'), { total: 1, kept: 1 });
      await d.put('layer', { keep: true });
      assert.deepEqual(await d.mountRefs('layer'), { total: 0, kept: 0 });
      await d.remove('layer');
    });

    test('sweep (what fsck runs) leaves live mounts and layers alone', async (d) => {
      await layer(d, 'base', null, [file('keep', 'k')]);
      await d.createReadWrite('rw', 'base');
      const mounted = await d.get('rw');
      await writeFile(join(mounted, 'written'), 'w');
      assert.ok(Array.isArray(await d.sweep()));
      assert.equal(await readFile(join(mounted, 'keep'), 'utf8'), 'k', 'still mounted after sweep');
      await writeFile(join(mounted, 'after'), 'a');
      await assert.rejects(d.remove('rw'), (e) => isStrataError(e, 'LAYER_MOUNTED'));
      await d.put('rw');
      const after = await contents(d, 'rw');
      assert.ok(after['written'] && after['after'] && after['keep'], Object.keys(after).join(','));
      assert.deepEqual(await d.sweep(), [], 'a second sweep finds nothing');
    });

    test('diff round-trips byte for byte through apply', async (d) => {
      await layer(d, 'base', null, [file('a', 'A'), dir('d'), file('d/x', 'x'), file('d/y', 'y'), sym('link', 'a')]);
      await layer(d, 'next', 'base', [file('b', 'B'), whiteout('d/x'), file('a', 'A2', 0o600), sym('link2', '/a')]);
      const first = await bufferOf(await d.diff('next', 'base'));
      await d.create('again', 'base');
      await d.applyDiff('again', 'base', Readable.from(first));
      const second = await bufferOf(await d.diff('again', 'base'));
      assert.equal(sha(second), sha(first));
      assert.deepEqual(await contents(d, 'again'), await contents(d, 'next'));
    });

    test('changes lists additions, changes and deletions as docker diff does', async (d) => {
      await layer(d, 'image', null, [dir('etc'), file('etc/hosts', 'h'), file('etc/passwd', 'p'), dir('tmp')]);
      await d.createReadWrite('ctr', 'image');
      const p = await d.get('ctr');
      try {
        await writeFile(join(p, 'etc/hosts'), 'changed');
        await unlink(join(p, 'etc/passwd'));
        await mkdir(join(p, 'tmp/new'));
        await writeFile(join(p, 'tmp/new/file'), 'n');
      } finally {
        await d.put('ctr');
      }
      const list = await d.changes('ctr', 'image');
      const lines = list.map((c) => `${c.kind} ${c.path}`).sort();
      assert.deepEqual(lines, ['A /tmp/new', 'A /tmp/new/file', 'C /etc', 'C /etc/hosts', 'C /tmp', 'D /etc/passwd']);
      assert.equal(await d.diffSize('ctr', 'image'), 'changed'.length + 1);
    });

    test('a container diff applied as a new layer reproduces the container', async (d) => {
      await layer(d, 'image', null, [dir('app'), file('app/x', 'x'), file('app/y', 'y')]);
      await d.createReadWrite('ctr', 'image');
      const p = await d.get('ctr');
      try {
        await writeFile(join(p, 'app/x'), 'x2');
        await rm(join(p, 'app/y'));
        await writeFile(join(p, 'app/z'), 'z');
      } finally {
        await d.put('ctr');
      }
      const tar = await bufferOf(await d.diff('ctr', 'image'));
      await d.create('committed', 'image');
      await d.applyDiff('committed', 'image', Readable.from(tar));
      assert.deepEqual(await contents(d, 'committed'), await contents(d, 'ctr'));
    });

    test('removing a layer leaves its parent and siblings intact', async (d) => {
      await layer(d, 'base', null, [file('f', 'base')]);
      await layer(d, 'left', 'base', [file('l', 'l')]);
      await layer(d, 'right', 'base', [file('r', 'r')]);
      await d.remove('left');
      assert.deepEqual(Object.keys(await contents(d, 'right')).sort(), ['f', 'r']);
      assert.deepEqual(Object.keys(await contents(d, 'base')), ['f']);
    });

    test('many layers deep', async (d) => {
      const depth = options.depth ?? 64;
      let parent: string | null = null;
      for (let i = 0; i < depth; i++) {
        const id = `layer-${i}`;
        const ops: FsOp[] = [file(`f${i}`, `${i}`)];
        if (i > 0) ops.push(whiteout(`f${i - 1}`));
        await layer(d, id, parent, ops);
        parent = id;
      }
      assert.deepEqual(Object.keys(await contents(d, parent!)), [`f${depth - 1}`]);
    });

    test('hardlinks, xattrs, modes and symlinks survive apply and diff', async (d) => {
      await layer(d, 'base', null, [
        dir('bin'), file('bin/tool', '#!/bin/sh\n', 0o4755), hardlink('bin/tool-alias', 'bin/tool'),
        dir('tmp', 0o1777), sym('bin/abs', '/bin/tool'), file('data', 'd'), xattr('data', 'user.colour', 'blue'),
      ]);
      const tree = await contents(d, 'base');
      assert.equal(tree['bin/tool']!.mode, 0o4755);
      assert.equal(tree['tmp']!.mode, 0o1777);
      assert.equal(tree['bin/tool-alias']!.linkGroup, tree['bin/tool']!.linkGroup);
      assert.ok(tree['bin/tool']!.linkGroup, 'hardlink group kept');
      assert.equal(tree['bin/abs']!.target, '/bin/tool');
      assert.equal(Buffer.from(tree['data']!.xattrs['user.colour'] ?? '', 'base64').toString(), 'blue');
      const tar = await bufferOf(await d.diff('base', null));
      await d.create('copy', null);
      await d.applyDiff('copy', null, Readable.from(tar));
      assert.deepEqual(await contents(d, 'copy'), tree);
    });

    test('owners and device nodes as root', async (d) => {
      const ops: FsOp[] = [{ op: 'file', path: 'owned', content: 'o', mode: 0o640, uid: 1234, gid: 5678 }, { op: 'chardev', path: 'null', major: 1, minor: 3 }, { op: 'fifo', path: 'pipe' }];
      await layer(d, 'base', null, ops);
      const tree = await contents(d, 'base');
      assert.equal(tree['owned']!.uid, 1234);
      assert.equal(tree['owned']!.gid, 5678);
      assert.equal(tree['null']!.type, 'chardev');
      assert.equal(tree['pipe']!.type, 'fifo');
      const p = await d.get('base');
      try {
        assert.equal((await lstat(join(p, 'null'))).rdev, (await lstat('/dev/null')).rdev);
      } finally {
        await d.put('base');
      }
    }, { root: true });

    test('status and metadata describe the driver', async (d) => {
      await d.create('x', null);
      const status = await d.status();
      assert.ok(status.length > 0 && status.every(([k, v]) => k.length > 0 && typeof v === 'string'));
      assert.ok(Object.keys(await d.metadata('x')).length > 0);
    });

    after(() => undefined);
  });
}

export { applyOps };
