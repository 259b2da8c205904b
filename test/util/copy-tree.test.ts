// copyTree: cp -a's copy, and a cp that dies with the process that started it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmod, lstat, mkdir, mkdtemp, readFile, readlink, rm, symlink, writeFile, access } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { copyTree } from '../../src/util/copy-tree.js';
import { processAlive } from '../../src/util/process-alive.js';
import { which } from '../../src/util/which.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('copyTree copies files, modes, symlinks and empty directories', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'strata-copytree-'));
  try {
    const src = join(dir, 'src');
    await mkdir(join(src, 'a/empty'), { recursive: true });
    await writeFile(join(src, 'a/f'), 'data');
    await chmod(join(src, 'a/f'), 0o4750);
    await symlink('a/f', join(src, 'link'));
    await copyTree(src, join(dir, 'dst'));
    assert.equal(await readFile(join(dir, 'dst/a/f'), 'utf8'), 'data');
    assert.equal((await lstat(join(dir, 'dst/a/f'))).mode & 0o7777, 0o4750);
    assert.equal(await readlink(join(dir, 'dst/link')), 'a/f');
    assert.ok((await lstat(join(dir, 'dst/a/empty'))).isDirectory());
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('the cp of a process killed with SIGKILL mid-copy dies with it', async (t) => {
  if ((await which('setpriv')) === null) return t.skip('no setpriv (util-linux) on this host: cp cannot be tied to its parent');
  const dir = await mkdtemp(join(tmpdir(), 'strata-copytree-kill-'));
  let cpPid: number | null = null;
  try {
    // a cp that takes as long as a large layer's copy: it says where it runs, then waits
    const bin = join(dir, 'bin');
    await mkdir(bin);
    await writeFile(join(bin, 'cp'), `#!/bin/sh\necho $$ > ${join(dir, 'cp.pid')}\nexec sleep 60\n`, { mode: 0o755 });
    await mkdir(join(dir, 'src'));
    const module = fileURLToPath(new URL('../../src/util/copy-tree.ts', import.meta.url));
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e',
      `const { copyTree } = await import(${JSON.stringify(module)}); await copyTree(${JSON.stringify(join(dir, 'src'))}, ${JSON.stringify(join(dir, 'dst'))});`],
    { env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ''}` }, stdio: 'ignore' });
    const exited = new Promise((resolve) => child.once('exit', resolve));
    for (let i = 0; i < 200 && cpPid === null; i++) {
      await sleep(50);
      cpPid = await readFile(join(dir, 'cp.pid'), 'utf8').then((s) => Number(s.trim()), () => null);
    }
    assert.notEqual(cpPid, null, 'the copy started');
    child.kill('SIGKILL');
    await exited;
    for (let i = 0; i < 40 && processAlive(cpPid!); i++) await sleep(50);
    assert.equal(processAlive(cpPid!), false, 'cp was killed with its parent');
  } finally {
    if (cpPid !== null && processAlive(cpPid)) process.kill(cpPid, 'SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
});

test('no setpriv: copyTree still copies with plain cp', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'strata-copytree-plain-'));
  try {
    // a PATH with cp but without setpriv (copyTree looks for it once per process: a fresh one)
    const bin = join(dir, 'bin');
    await mkdir(bin);
    await symlink((await which('cp'))!, join(bin, 'cp'));
    await mkdir(join(dir, 'src'));
    await writeFile(join(dir, 'src/f'), 'x');
    const module = fileURLToPath(new URL('../../src/util/copy-tree.ts', import.meta.url));
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e',
      `const { copyTree } = await import(${JSON.stringify(module)}); await copyTree(${JSON.stringify(join(dir, 'src'))}, ${JSON.stringify(join(dir, 'dst'))});`],
    { env: { ...process.env, PATH: bin }, stdio: 'ignore' });
    assert.equal(await new Promise((resolve) => child.once('exit', resolve)), 0);
    await access(join(dir, 'dst/f'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
