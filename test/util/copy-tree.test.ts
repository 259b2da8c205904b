// copyTree: cp -a's copy, with setpriv and without (a cp killed with its parent: tied-child.test.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { access, chmod, lstat, mkdir, mkdtemp, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { copyTree } from '../../src/util/copy-tree.js';
import { which } from '../../src/util/which.js';

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

/**
 * copyTree(dir/src, dir/dst) in a fresh node process (copyTree looks for setpriv once per
 * process) whose PATH is `path`: its exit status, and the error's message it printed if it failed.
 */
async function copyTreeInChild(dir: string, path: string): Promise<{ code: number | null; out: string }> {
  const module = fileURLToPath(new URL('../../src/util/copy-tree.ts', import.meta.url));
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e',
    `const { copyTree } = await import(${JSON.stringify(module)});
     await copyTree(${JSON.stringify(join(dir, 'src'))}, ${JSON.stringify(join(dir, 'dst'))}).catch((e) => { console.log(e.message); process.exitCode = 1; });`],
  { env: { ...process.env, PATH: path }, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  return { code, out };
}

test('no setpriv: copyTree still copies with plain cp', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'strata-copytree-plain-'));
  try {
    // a PATH with cp but without setpriv
    const bin = join(dir, 'bin');
    await mkdir(bin);
    await symlink((await which('cp'))!, join(bin, 'cp'));
    await mkdir(join(dir, 'src'));
    await writeFile(join(dir, 'src/f'), 'x');
    assert.deepEqual(await copyTreeInChild(dir, bin), { code: 0, out: '' });
    await access(join(dir, 'dst/f'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a failed copy is one line: cp\'s first complaint, and how many more there were', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'strata-copytree-fail-'));
  try {
    // out of space, cp complains once per file left: 50,000 lines
    const bin = join(dir, 'bin');
    await mkdir(bin);
    await writeFile(join(bin, 'cp'), `#!/bin/sh\nseq 1 50000 | sed "s/.*/cp: error copying 'f&': No space left on device/" >&2\nexit 1\n`, { mode: 0o755 });
    await mkdir(join(dir, 'src'));
    assert.deepEqual(await copyTreeInChild(dir, `${bin}:${process.env.PATH ?? ''}`), {
      code: 1, out: `copying ${dir}/src failed: cp: error copying 'f1': No space left on device (and 49999 more lines)\n`,
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
