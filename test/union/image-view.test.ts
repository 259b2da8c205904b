import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import { join } from 'node:path';
import { UnionFs, catPath, formatLong, formatMode, listPath } from '../../src/union/index.js';
import { build, dir, file, symlink, tempDir, whiteout } from './tree.js';

test('formatMode renders types and special bits as ls does', () => {
  assert.equal(formatMode(0o100644), '-rw-r--r--');
  assert.equal(formatMode(0o040755), 'drwxr-xr-x');
  assert.equal(formatMode(0o041777), 'drwxrwxrwt');
  assert.equal(formatMode(0o104755), '-rwsr-xr-x');
  assert.equal(formatMode(0o102644), '-rw-r-Sr--');
  assert.equal(formatMode(0o120777), 'lrwxrwxrwx');
  assert.equal(formatMode(0o020666), 'crw-rw-rw-');
});

test('ls and cat read an image through its layers, following symlinks inside it', async (t) => {
  const base = await tempDir('imgview');
  t.after(() => fsp.rm(base, { recursive: true, force: true }));
  await build(join(base, 'l0'), [dir('etc'), file('etc/os-release', 'base'), file('etc/motd', 'hi'), symlink('etc/alias', '/etc/os-release'), dir('usr/bin')]);
  await build(join(base, 'l1'), [file('etc/os-release', 'top'), whiteout('etc/motd'), symlink('bin', 'usr/bin')]);
  const u = await UnionFs.open({ lowers: [join(base, 'l0'), join(base, 'l1')] });
  assert.deepEqual((await listPath(u, '/etc')).map((e) => e.name), ['alias', 'os-release']);
  const [alias] = await listPath(u, '/etc/alias');
  assert.match(formatLong(alias!), /^lrwxrwxrwx .* \/etc\/alias -> \/etc\/os-release$/);
  assert.deepEqual(await listPath(u, '/bin'), []);
  const chunks: Buffer[] = [];
  for await (const c of await catPath(u, '/etc/alias')) chunks.push(c as Buffer);
  assert.equal(Buffer.concat(chunks).toString(), 'top');
  await assert.rejects(catPath(u, '/etc/motd'), { code: 'ENOENT' });
});
