// mknod(2) through libc (src/archive/native.ts) against coreutils' mknod(1): the same device
// numbers, type and permission bits, including numbers that need dev_t's split encoding; and
// xattrs listed through libc against attr's getfattr.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { lstatSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { listXattrsSync, makedev, mknodSync, setXattrSync } from '../../src/archive/native.js';
import { IS_ROOT } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'strata-native-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function coreutils(path: string, ...args: string[]): void {
  const r = spawnSync('mknod', ['-m', '640', path, ...args]);
  assert.equal(r.status, 0, String(r.stderr));
}

describe('mknodSync', () => {
  it('makes a fifo with the permission bits asked for', () => {
    mknodSync(join(dir, 'fifo'), 'fifo', 0, 0, 0o640);
    coreutils(join(dir, 'fifo-ref'), 'p');
    const ours = lstatSync(join(dir, 'fifo'));
    const ref = lstatSync(join(dir, 'fifo-ref'));
    assert.ok(ours.isFIFO());
    assert.equal(ours.mode, ref.mode);
  });

  it('fails with a Node-shaped EEXIST on an existing path', () => {
    mknodSync(join(dir, 'twice'), 'fifo');
    assert.throws(() => mknodSync(join(dir, 'twice'), 'fifo'), (err: NodeJS.ErrnoException) => err.code === 'EEXIST' && err.syscall === 'mknod');
  });

  it('makes char and block devices with the numbers mknod(1) gives them', (ctx) => {
    if (!IS_ROOT) return ctx.skip('device nodes need root');
    const cases: Array<['char' | 'block', number, number]> = [
      ['char', 0, 0], ['char', 1, 3], ['block', 7, 9], ['block', 259, 1_048_575], ['char', 4095, 255], ['block', 4095, 256],
    ];
    for (const [kind, major, minor] of cases) {
      const name = `${kind}-${major}-${minor}`;
      mknodSync(join(dir, name), kind, major, minor, 0o640);
      coreutils(join(dir, `${name}-ref`), kind === 'char' ? 'c' : 'b', String(major), String(minor));
      const ours = lstatSync(join(dir, name), { bigint: true });
      const ref = lstatSync(join(dir, `${name}-ref`), { bigint: true });
      assert.equal(ours.rdev, ref.rdev, name);
      assert.equal(ours.rdev, makedev(major, minor), name);
      assert.equal(ours.mode, ref.mode, name);
    }
  });
});

describe('listXattrsSync', () => {
  it('lists what getfattr lists, sorted, with values; a symlink\'s own (none), not its target\'s', (ctx) => {
    const file = join(dir, 'xattrs');
    writeFileSync(file, '');
    const names = ['user.zeta', 'user.a', 'user.with space', `user.${'long'.repeat(50)}`];
    for (const [i, name] of names.entries()) {
      if (!setXattrSync(file, name, Buffer.from(`value ${i}`))) return ctx.skip('this filesystem takes no user xattrs');
    }
    const getfattr = spawnSync('getfattr', ['--absolute-names', '-d', '-m', '-', file], { encoding: 'utf8' });
    if (getfattr.error) return ctx.skip('getfattr (attr) is not installed');
    const listed = [...getfattr.stdout.matchAll(/^([^#=\n]+)=/gm)].map((m) => m[1]!).sort();
    const ours = listXattrsSync(file);
    assert.deepEqual([...ours.keys()], listed);
    assert.deepEqual([...ours.keys()], [...names].sort());
    assert.equal(ours.get('user.with space')?.toString(), 'value 2');
    symlinkSync(file, join(dir, 'xattrs-link'));
    assert.deepEqual([...listXattrsSync(join(dir, 'xattrs-link')).keys()], []);
    assert.throws(() => listXattrsSync(join(dir, 'missing')), (err: NodeJS.ErrnoException) => err.code === 'ENOENT');
  });
});
