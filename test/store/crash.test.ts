// SIGKILL a strata process at many points of import, commit and rm: afterwards fsck must find
// the store consistent (repairing what the crash left, and saying so), with no half-registered
// layer and no driver layer that nothing refers to.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { rm, writeFile, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { strataArgsFor, strataOk } from '../helpers/cli.js';
import { file, layerTar, tempDir } from '../helpers/fstest.js';

async function killAfter(root: string, args: string[], ms: number): Promise<number | null> {
  const child = spawn(process.execPath, strataArgsFor(root, ['--storage-driver', 'vfs', ...args]), { stdio: 'ignore' });
  const timer = setTimeout(() => child.kill('SIGKILL'), ms);
  return new Promise((resolve) => child.on('close', (code) => {
    clearTimeout(timer);
    resolve(code);
  }));
}

async function driverLayers(root: string): Promise<string[]> {
  return (await readdir(join(root, 'vfs', 'dir')).catch(() => [] as string[])).sort();
}

/** Every driver layer is referenced by a layerdb entry or a container mount, and vice versa. */
async function assertConsistent(root: string): Promise<void> {
  const fsck = await strataOk(root, ['--storage-driver', 'vfs', 'fsck', '--format', 'json']);
  const report = JSON.parse(fsck) as { problems: string[] };
  assert.deepEqual(report.problems, []);
  const layerdb = join(root, 'image', 'vfs', 'layerdb');
  const referenced: string[] = [];
  for (const chain of await readdir(join(layerdb, 'sha256')).catch(() => [] as string[])) {
    referenced.push((await readFile(join(layerdb, 'sha256', chain, 'cache-id'), 'utf8')).trim());
  }
  for (const m of await readdir(join(layerdb, 'mounts')).catch(() => [] as string[])) {
    const id = (await readFile(join(layerdb, 'mounts', m, 'mount-id'), 'utf8')).trim();
    referenced.push(id, `${id}-init`);
  }
  assert.deepEqual(await driverLayers(root), referenced.sort());
  assert.deepEqual(await readdir(join(layerdb, 'tmp')).catch(() => []), []);
}

describe('crash safety (SIGKILL at many points)', () => {
  let root: string;
  let work: string;
  let bigTar: string;

  before(async () => {
    root = await tempDir('strata-crash-');
    work = await tempDir('strata-crash-work-');
    // big enough that an import takes a while, so kills land in every phase
    const ops = Array.from({ length: 400 }, (_, i) => file(`d${i % 20}/f${i}`, randomBytes(8192 + i)));
    bigTar = join(work, 'big.tar');
    await writeFile(bigTar, await layerTar(ops));
    await strataOk(root, ['--storage-driver', 'vfs', 'import', bigTar, 'stable:1']);
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
    await rm(work, { recursive: true, force: true });
  });

  it('import killed at 8 points leaves no half-registered layer', async () => {
    for (const ms of [200, 350, 500, 700, 900, 1200, 1600, 2200]) {
      await killAfter(root, ['import', bigTar, `victim:${ms}`], ms);
      await assertConsistent(root);
      const images = JSON.parse(await strataOk(root, ['--storage-driver', 'vfs', 'images', '--format', 'json'])) as unknown[];
      assert.ok(images.length >= 1);
    }
  });

  it('create, commit and rm killed mid-way leave a consistent store', async () => {
    for (const ms of [200, 450, 700, 1000]) {
      const name = `c${ms}`;
      await killAfter(root, ['create', '--name', name, 'stable:1'], ms);
      await assertConsistent(root);
      const ps = await strataOk(root, ['--storage-driver', 'vfs', 'ps', '--format', 'json']);
      if ((JSON.parse(ps) as Array<{ name: string }>).some((c) => c.name === name)) {
        await killAfter(root, ['commit', name, `committed:${ms}`], ms);
        await assertConsistent(root);
        await killAfter(root, ['rm', name], ms);
        await assertConsistent(root);
      }
    }
  });

  it('save and export killed while they hold a layer leave nothing counted: the image and container can go', async () => {
    const readTar = join(work, 'read.tar');
    await writeFile(readTar, await layerTar(Array.from({ length: 50 }, (_, i) => file(`r/f${i}`, randomBytes(65536)))));
    await strataOk(root, ['--storage-driver', 'vfs', 'import', readTar, 'read:1']);
    await strataOk(root, ['--storage-driver', 'vfs', 'create', '--name', 'reader', 'read:1']);
    const refs = join(root, 'vfs', 'mountrefs');
    const counted = async () => (await readdir(refs).catch(() => [] as string[])).filter((n) => !n.startsWith('.'));
    for (const [args, then] of [[['export', 'reader'], ['rm', 'reader']], [['save', 'read:1'], ['rmi', 'read:1']]]) {
      assert.deepEqual(await counted(), []);
      // nobody reads its output: it blocks on a full pipe, holding the layer it reads
      const child = spawn(process.execPath, strataArgsFor(root, ['--storage-driver', 'vfs', ...args!]), { stdio: ['ignore', 'pipe', 'ignore'] });
      const exited = new Promise((resolve) => child.on('close', resolve));
      for (let i = 0; i < 200 && (await counted()).length === 0; i++) await new Promise((r) => setTimeout(r, 25));
      assert.equal((await counted()).length, 1, `${args![0]} took no reference`);
      child.kill('SIGKILL');
      await exited;
      await strataOk(root, ['--storage-driver', 'vfs', ...then!]);
    }
    await assertConsistent(root);
  });

  it('rmi killed mid-way leaves a consistent store', async () => {
    for (const ms of [150, 300, 600]) {
      await strataOk(root, ['--storage-driver', 'vfs', 'import', bigTar, `gone:${ms}`]);
      await killAfter(root, ['rmi', `gone:${ms}`], ms);
      await assertConsistent(root);
    }
  });
});
