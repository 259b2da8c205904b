// Real filesystems on NBD exports, as root: nbdfuse → losetup → mkfs.ext4 → mount, on a file
// export and on thin devices served by the active-devices service, with a snapshot of a mounted
// origin (frozen, suspended, create_snap, resumed) mounted beside it and the trees diverging.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { writeFile, readFile, truncate, access, rm, mkdir } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { NbdServer } from '../../src/nbd/server.js';
import { FileExport } from '../../src/nbd/file-export.js';
import { MapperRegistry } from '../../src/thin/mapper.js';
import { dmCreate, dmMessage } from '../../src/thin/dmsetup.js';
import { ensureService, stopService, service } from '../../src/nbd/service-client.js';
import { servicePaths } from '../../src/nbd/service-paths.js';
import { poolFiles, tempDir, run, runOk, haveCommand } from './helpers.js';
import { attachNbd, mountDev } from './block-attach.js';

const MiB = 1024 * 1024;
let dir: string;
let cleanup: () => Promise<void>;
let missing: string | undefined;
const undo: Array<() => Promise<void>> = [];

before(async () => {
  ({ dir, cleanup } = await tempDir('strata-nbd-fs-'));
  if (process.getuid?.() !== 0) missing = 'needs root (losetup, mount)';
  for (const cmd of ['nbdfuse', 'losetup', 'mkfs.ext4', 'e2fsck', 'fusermount3', 'fsfreeze']) {
    if (!missing && !(await haveCommand(cmd))) missing = `${cmd} not installed`;
  }
  try {
    await access('/dev/fuse');
  } catch {
    missing ??= '/dev/fuse is absent';
  }
});

after(async () => {
  // reverse order: unmounts, then detaches, then servers
  for (const fn of undo.reverse()) await fn().catch((err: unknown) => console.error('cleanup:', err));
  await cleanup();
});

/** e2fsck -fn exits 0 only when it found nothing to fix. */
async function fsckClean(dev: string): Promise<void> {
  const r = await run('e2fsck', ['-fn', dev]);
  assert.equal(r.code, 0, `e2fsck -fn ${dev}: ${r.stdout}${r.stderr}`);
}

test('ext4 on a file export through nbdfuse and a loop device', async (t) => {
  if (missing) return t.skip(missing);
  const img = join(dir, 'ext4.img');
  await writeFile(img, '');
  await truncate(img, 256 * MiB);
  const exp = await FileExport.open(img, { name: 'fs' });
  const server = new NbdServer([exp]);
  const sock = join(dir, 'file.sock');
  await server.listenUnix(sock);
  undo.push(async () => { await server.close(); await exp.close(); });
  const att = await attachNbd(sock, dir, 'file');
  undo.push(att.detach);
  await runOk('mkfs.ext4', ['-q', '-F', att.loop]);
  const mnt = join(dir, 'mnt-file');
  const umount = await mountDev(att.loop, mnt);
  undo.push(umount);
  const blob = randomBytes(5 * MiB);
  await writeFile(join(mnt, 'blob'), blob);
  await mkdir(join(mnt, 'dir/sub'), { recursive: true });
  await writeFile(join(mnt, 'dir/sub/hello.txt'), 'hello\n');
  await umount();
  await fsckClean(att.loop);
  // mount again: the data is there
  const umount2 = await mountDev(att.loop, mnt, ['-o', 'ro']);
  undo.push(umount2);
  assert.ok((await readFile(join(mnt, 'blob'))).equals(blob));
  assert.equal(await readFile(join(mnt, 'dir/sub/hello.txt'), 'utf8'), 'hello\n');
  await umount2();
  await att.detach();
});

test('ext4 on a thin device, snapshot of the quiesced origin mounted elsewhere, trees diverge', async (t) => {
  if (missing) return t.skip(missing);
  const root = join(dir, 'root');
  const reg = new MapperRegistry(root);
  await dmCreate(reg, 'pool', (await poolFiles(dir, 16 * MiB, 512 * MiB, 'pool-')).table);
  await dmMessage(reg, 'pool', '0', 'create_thin 0');
  await dmCreate(reg, 'origin', `0 ${(256 * MiB) / 512} thin pool 0`);
  await ensureService(root);
  undo.push(async () => { await stopService(root); });
  const paths = servicePaths(root);

  const o = await attachNbd(paths.device('origin'), dir, 'origin');
  undo.push(o.detach);
  await runOk('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', o.loop]);
  const mntO = join(dir, 'mnt-origin');
  const umountO = await mountDev(o.loop, mntO);
  undo.push(umountO);
  await writeFile(join(mntO, 'shared.txt'), 'before the snapshot\n');
  await writeFile(join(mntO, 'doomed.txt'), 'deleted in the snapshot only\n');
  const big = randomBytes(8 * MiB);
  await writeFile(join(mntO, 'big.bin'), big);

  // quiesce: freeze the filesystem (flushes it down to the thin device), suspend, snapshot, resume
  await runOk('fsfreeze', ['-f', mntO]);
  try {
    await service.suspend(root, 'origin');
    await service.message(root, 'pool', 'create_snap 1 0');
    await service.resume(root, 'origin');
  } finally {
    await runOk('fsfreeze', ['-u', mntO]);
  }
  await service.create(root, 'snap', `0 ${(256 * MiB) / 512} thin pool 1`);

  const s = await attachNbd(paths.device('snap'), dir, 'snap');
  undo.push(s.detach);
  const mntS = join(dir, 'mnt-snap');
  const umountS = await mountDev(s.loop, mntS);
  undo.push(umountS);

  // diverge
  await writeFile(join(mntO, 'origin-only.txt'), 'written after the snapshot\n');
  await writeFile(join(mntO, 'shared.txt'), 'changed in the origin\n');
  await rm(join(mntS, 'doomed.txt'));
  await writeFile(join(mntS, 'snap-only.txt'), 'written in the snapshot\n');

  assert.equal(await readFile(join(mntO, 'shared.txt'), 'utf8'), 'changed in the origin\n');
  assert.equal(await readFile(join(mntS, 'shared.txt'), 'utf8'), 'before the snapshot\n');
  assert.ok((await readFile(join(mntS, 'big.bin'))).equals(big));
  await access(join(mntO, 'doomed.txt'));
  await assert.rejects(access(join(mntS, 'doomed.txt')));
  await assert.rejects(access(join(mntS, 'origin-only.txt')));
  await assert.rejects(access(join(mntO, 'snap-only.txt')));

  await umountS();
  await umountO();
  await fsckClean(o.loop);
  await fsckClean(s.loop);
  await s.detach();
  await o.detach();
  // both devices are still thin: the pool shares the unchanged blocks
  const list = await service.list(root);
  assert.deepEqual(list.map((d) => d.name).sort(), ['origin', 'snap']);
});
