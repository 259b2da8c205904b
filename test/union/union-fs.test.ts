import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import { join } from 'node:path';
import { UnionFs } from '../../src/union/index.js';
import { readXattrs, setXattr } from '../../src/util/xattr.js';
import { build, dir, file, hardlink, opaque, symlink, tempDir, whiteout } from './tree.js';

async function stack(t: { after(fn: () => Promise<void>): void }, layers: Parameters<typeof build>[1][], withTop = true) {
  const base = await tempDir('union');
  t.after(() => fsp.rm(base, { recursive: true, force: true }));
  const lowers: string[] = [];
  for (const [i, specs] of layers.entries()) {
    const d = join(base, `l${i}`);
    await build(d, specs);
    lowers.push(d);
  }
  const top = join(base, 'top');
  await fsp.mkdir(top);
  const u = await UnionFs.open(withTop ? { lowers, top } : { lowers });
  return { u, top, lowers, base };
}

const exists = (p: string) => fsp.lstat(p).then(() => true, () => false);

test('lookup is top-down and stops at whiteouts and opaque directories', async (t) => {
  const { u } = await stack(t, [
    [file('a', 'low'), file('gone'), dir('d'), file('d/x'), file('o/old'), file('f/inner')],
    [file('a', 'high'), whiteout('gone'), file('d/y'), opaque('o'), file('o/new'), file('f', 'now a file')],
  ]);
  assert.equal(await u.readFile('/a', 'utf8'), 'high');
  await assert.rejects(u.readFile('gone'), { code: 'ENOENT', syscall: 'open', path: 'gone' });
  assert.deepEqual(await u.readdir('/d'), ['x', 'y']);
  assert.deepEqual(await u.readdir('/o'), ['new']);
  assert.equal(await u.readFile('f', 'utf8'), 'now a file');
  await assert.rejects(u.readdir('f'), { code: 'ENOTDIR' });
  await assert.rejects(u.readFile('f/inner'), { code: 'ENOTDIR' });
  // housekeeping entries of the top are invisible
  assert.deepEqual(await u.readdir('/'), ['a', 'd', 'f', 'o']);
  const typed = await u.readdir('/', { withFileTypes: true });
  assert.deepEqual(typed.map((e) => [e.name, e.isDirectory()]), [['a', false], ['d', true], ['f', false], ['o', true]]);
});

test('opening a writable top creates aufs housekeeping in its root', async (t) => {
  const { top } = await stack(t, [[file('a')]]);
  assert.deepEqual((await fsp.readdir(top)).sort(), ['.wh..wh.aufs', '.wh..wh.orph', '.wh..wh.plnk']);
  assert.equal((await fsp.stat(join(top, '.wh..wh.aufs'))).mode & 0o777, 0o444);
});

test('copy-up keeps mode, owner, times and xattrs', async (t) => {
  const { u, top, lowers } = await stack(t, [[dir('etc', 0o750), file('etc/conf', 'v1', 0o640)]]);
  const low = join(lowers[0]!, 'etc/conf');
  await fsp.chown(low, 1234, 5678);
  await setXattr(low, 'user.note', 'kept');
  await fsp.utimes(low, 1_000_000, 1_000_000);
  await u.appendFile('/etc/conf', '+v2');
  assert.equal(await u.readFile('/etc/conf', 'utf8'), 'v1+v2');
  assert.equal(await fsp.readFile(low, 'utf8'), 'v1', 'lower untouched');
  const st = await fsp.stat(join(top, 'etc/conf'));
  assert.equal(st.mode & 0o7777, 0o640);
  assert.equal(st.uid, 1234);
  assert.equal(st.gid, 5678);
  assert.equal((await readXattrs(join(top, 'etc/conf'))).get('user.note')?.toString(), 'kept');
  assert.equal((await fsp.stat(join(top, 'etc'))).mode & 0o7777, 0o750, 'parent copied up with its mode');
  // metadata-only change copies up too, keeping times until changed
  await u.chmod('/etc', 0o700);
  assert.equal((await u.stat('/etc')).mode & 0o7777, 0o700);
  assert.equal((await fsp.stat(join(lowers[0]!, 'etc'))).mode & 0o7777, 0o750);
  // no staging leftovers
  assert.deepEqual(await fsp.readdir(join(top, '.wh..wh.orph')), []);
});

test('chown/utimes copy up and apply', async (t) => {
  const { u, top } = await stack(t, [[file('f', 'x')]]);
  await u.chown('f', 42, 43);
  await u.utimes('f', 2_000_000, 3_000_000);
  const st = await u.stat('f');
  assert.equal(st.uid, 42);
  assert.equal(st.mtimeMs, 3_000_000_000);
  assert.equal(await fsp.readFile(join(top, 'f'), 'utf8'), 'x');
});

test('delete: real removal in the top, whiteout when a lower branch has the name', async (t) => {
  const { u, top } = await stack(t, [[file('low'), dir('ld'), file('ld/x')]]);
  await u.writeFile('/mine', 'm');
  await u.unlink('/mine');
  assert.equal(await exists(join(top, 'mine')), false);
  assert.equal(await exists(join(top, '.wh.mine')), false, 'no whiteout for a top-only name');
  await u.unlink('/low');
  assert.equal(await exists(join(top, '.wh.low')), true);
  assert.equal((await fsp.stat(join(top, '.wh.low'))).size, 0);
  await assert.rejects(u.stat('/low'), { code: 'ENOENT' });
  await assert.rejects(u.rmdir('/ld'), { code: 'ENOTEMPTY' });
  await assert.rejects(u.unlink('/ld'), { code: 'EISDIR' });
  await u.rm('/ld', { recursive: true });
  assert.deepEqual(await u.readdir('/'), []);
  assert.deepEqual((await fsp.readdir(top)).filter((n) => !n.startsWith('.wh..wh.')).sort(), ['.wh.ld', '.wh.low']);
  await u.rm('/nothing', { force: true });
});

test('creating over a whiteout removes it; mkdir over a removed directory makes it opaque', async (t) => {
  const { u, top } = await stack(t, [[file('f', 'old'), dir('d'), file('d/old')]]);
  await u.unlink('f');
  await u.writeFile('f', 'new');
  assert.equal(await exists(join(top, '.wh.f')), false);
  assert.equal(await u.readFile('f', 'utf8'), 'new');
  await u.rm('d', { recursive: true });
  await u.mkdir('d');
  assert.equal(await exists(join(top, '.wh.d')), false);
  assert.equal(await exists(join(top, 'd/.wh..wh..opq')), true);
  assert.deepEqual(await u.readdir('d'), []);
  await u.mkdir('d/sub/deeper', { recursive: true });
  assert.deepEqual(await u.readdir('d'), ['sub']);
  await assert.rejects(u.mkdir('d'), { code: 'EEXIST' });
});

test('rename of files: copy-up, whiteout at the source, destination whiteout removed', async (t) => {
  const { u, top } = await stack(t, [[file('a', 'A'), file('b', 'B'), dir('dst'), dir('other')]]);
  await u.unlink('b');
  await u.rename('a', 'b');
  assert.equal(await u.readFile('b', 'utf8'), 'A');
  await assert.rejects(u.stat('a'), { code: 'ENOENT' });
  assert.equal(await exists(join(top, '.wh.a')), true);
  assert.equal(await exists(join(top, '.wh.b')), false);
  await u.rename('b', 'dst/c');
  assert.deepEqual(await u.readdir('dst'), ['c']);
  await assert.rejects(u.rename('dst/c', 'other'), { code: 'EISDIR' });
  await assert.rejects(u.rename('dst/c', 'dst'), { code: 'ENOTEMPTY' }, 'target is an ancestor of the source (as the kernel checks first)');
});

test('rename of directories copies the merged tree and marks the destination opaque when needed', async (t) => {
  const { u, top } = await stack(t, [
    [dir('src'), file('src/low', 'L'), symlink('src/ln', 'low'), dir('src/sub'), file('src/sub/deep', 'D'), dir('old'), file('old/stale')],
  ]);
  await u.writeFile('src/mine', 'M');
  await u.unlink('src/sub/deep');
  await u.rm('old', { recursive: true });
  await u.rename('src', 'old');
  assert.deepEqual(await u.readdir('/'), ['old']);
  assert.deepEqual(await u.readdir('old'), ['ln', 'low', 'mine', 'sub']);
  assert.deepEqual(await u.readdir('old/sub'), []);
  assert.equal(await u.readlink('old/ln'), 'low');
  assert.equal(await u.readFile('old/ln', 'utf8'), 'L');
  assert.equal(await exists(join(top, 'old/.wh..wh..opq')), true, 'old was whited out below');
  assert.equal(await exists(join(top, '.wh.src')), true);
  // a top-only directory is simply renamed; into a parent that merges lower branches it becomes
  // opaque (as OverlayFS does), into a top-only parent it does not
  await u.mkdir('fresh');
  await u.writeFile('fresh/f', 'x');
  await u.mkdir('newparent');
  await u.rename('fresh', 'newparent/inner');
  assert.equal(await exists(join(top, 'newparent/inner/.wh..wh..opq')), false);
  await u.rename('newparent/inner', 'moved');
  assert.equal(await exists(join(top, 'moved/.wh..wh..opq')), true);
  assert.equal(await exists(join(top, '.wh.fresh')), false);
  assert.deepEqual(await u.readdir('moved'), ['f']);
  await assert.rejects(u.rename('old', 'old/sub/x'), { code: 'EINVAL' });
  await assert.rejects(u.rename('moved', 'old'), { code: 'ENOTEMPTY' });
});

test('symlinks resolve inside the union, never outside; loops give ELOOP', async (t) => {
  const { u } = await stack(t, [[
    dir('etc'), file('etc/passwd', 'union passwd'),
    symlink('abs', '/etc/passwd'), symlink('climb', '../../../../etc/passwd'),
    symlink('dirlink', '/etc'), symlink('loop1', 'loop2'), symlink('loop2', 'loop1'),
    symlink('self', 'self/x'), symlink('dangling', 'nowhere/else'),
  ]]);
  assert.equal(await u.readFile('abs', 'utf8'), 'union passwd');
  assert.equal(await u.readFile('climb', 'utf8'), 'union passwd');
  assert.equal(await u.readFile('dirlink/passwd', 'utf8'), 'union passwd');
  assert.equal(await u.realpath('dirlink/../dirlink/passwd'), '/etc/passwd');
  assert.equal(await u.realpath('/../../etc'), '/etc');
  await assert.rejects(u.readFile('loop1'), { code: 'ELOOP' });
  await assert.rejects(u.stat('self'), { code: 'ELOOP' });
  await assert.rejects(u.stat('dangling'), { code: 'ENOENT' });
  assert.equal((await u.lstat('loop1')).isSymbolicLink(), true);
  // writing through an absolute symlink lands inside the union's top
  await u.writeFile('abs', 'changed');
  assert.equal(await u.readFile('/etc/passwd', 'utf8'), 'changed');
  await u.symlink('/etc/passwd', 'etc/again');
  assert.equal(await u.readFile('etc/again', 'utf8'), 'changed');
});

test('hardlinks: copying up one name keeps the group together (pseudo-links)', async (t) => {
  const { u, top } = await stack(t, [[file('a', 'shared'), hardlink('b', 'a'), file('c', 'single')]]);
  await u.appendFile('a', '+more');
  assert.equal(await u.readFile('b', 'utf8'), 'shared+more', 'the other name sees the change before its own copy-up');
  await u.chmod('b', 0o600);
  const sa = await fsp.stat(join(top, 'a'));
  const sb = await fsp.stat(join(top, 'b'));
  assert.equal(sa.ino, sb.ino, 'one inode in the top');
  assert.equal((await fsp.readdir(join(top, '.wh..wh.plnk'))).length, 1);
  await u.link('c', 'c2');
  assert.equal((await fsp.stat(join(top, 'c'))).ino, (await fsp.stat(join(top, 'c2'))).ino);
});

test('read-only unions refuse changes with EROFS; reserved names with EINVAL', async (t) => {
  const { u } = await stack(t, [[file('a')]], false);
  await assert.rejects(u.writeFile('b', 'x'), { code: 'EROFS' });
  await assert.rejects(u.unlink('a'), { code: 'EROFS' });
  const { u: w } = await stack(t, [[file('a')]]);
  await assert.rejects(w.writeFile('.wh.a', ''), { code: 'EINVAL' });
  await assert.rejects(w.stat('.wh..wh.aufs'), { code: 'ENOENT' });
});

test('createReadStream and truncate', async (t) => {
  const { u, lowers } = await stack(t, [[file('big', 'x'.repeat(100_000))]]);
  const chunks: Buffer[] = [];
  for await (const c of await u.createReadStream('big', { start: 10, end: 19 })) chunks.push(c as Buffer);
  assert.equal(Buffer.concat(chunks).toString(), 'x'.repeat(10));
  await u.truncate('big', 5);
  assert.equal((await u.stat('big')).size, 5);
  assert.equal((await fsp.stat(join(lowers[0]!, 'big'))).size, 100_000);
});

test('directory rename keeps hard links inside the moved tree together', async (t) => {
  const { u, top } = await stack(t, [[dir('d'), file('d/a', 'same'), hardlink('d/b', 'd/a'), file('d/c', 'other')]]);
  await u.rename('d', 'e');
  assert.deepEqual(await u.readdir('e'), ['a', 'b', 'c']);
  assert.equal((await fsp.stat(join(top, 'e/a'))).ino, (await fsp.stat(join(top, 'e/b'))).ino);
  assert.notEqual((await fsp.stat(join(top, 'e/a'))).ino, (await fsp.stat(join(top, 'e/c'))).ino);
  assert.equal(await u.readFile('e/b', 'utf8'), 'same');
});

test('copy-up of fifos and device nodes (root)', async (t) => {
  if (process.getuid?.() !== 0) return t.skip('mknod of devices needs root');
  const { u, top, lowers } = await stack(t, [[file('x')]]);
  const { execFile } = await import('node:child_process');
  const { promisify } = await import('node:util');
  await promisify(execFile)('mknod', [join(lowers[0]!, 'null'), 'c', '1', '3']);
  await promisify(execFile)('mknod', [join(lowers[0]!, 'pipe'), 'p']);
  u.invalidate(); // lower branches changed behind the union's back
  await u.chmod('null', 0o600);
  await u.chown('pipe', 7, 7);
  const st = await fsp.lstat(join(top, 'null'));
  assert.ok(st.isCharacterDevice());
  assert.equal(st.rdev, (await fsp.stat('/dev/null')).rdev);
  assert.equal(st.mode & 0o777, 0o600);
  assert.ok((await fsp.lstat(join(top, 'pipe'))).isFIFO());
  assert.equal((await u.lstat('pipe')).uid, 7);
});

test('concurrent writes under one lower directory copy it up once', async (t) => {
  const { u, top } = await stack(t, [[dir('a/b/c'), file('a/b/c/keep', 'k')]]);
  await Promise.all(Array.from({ length: 16 }, (_, i) => u.writeFile(`a/b/c/f${i}`, String(i))));
  assert.equal((await u.readdir('a/b/c')).length, 17);
  assert.deepEqual(await fsp.readdir(join(top, '.wh..wh.orph')), [], 'no staging left behind');
});

test('concurrent appends to one lower file copy it up once and keep every append', async (t) => {
  const { u } = await stack(t, [[file('log', 'start\n')]]);
  await Promise.all(Array.from({ length: 16 }, (_, i) => u.appendFile('log', `line ${i}\n`)));
  const lines = (await u.readFile('log', 'utf8')).trim().split('\n');
  assert.equal(lines[0], 'start');
  assert.deepEqual(lines.slice(1).sort(), Array.from({ length: 16 }, (_, i) => `line ${i}`).sort());
});
