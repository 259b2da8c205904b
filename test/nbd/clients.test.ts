// Real NBD clients (libnbd's nbdinfo/nbdcopy, qemu-img) against an in-process server, over a
// file export and a thin-device export.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { open, readFile, writeFile, truncate } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { NbdServer } from '../../src/nbd/server.js';
import { FileExport } from '../../src/nbd/file-export.js';
import { ThinExport } from '../../src/nbd/thin-export.js';
import { Pool } from '../../src/thin/pool.js';
import type { ThinDevice } from '../../src/thin/thin-device.js';
import { tempDir, run, runOk, haveCommand, unixUri } from './helpers.js';

const MiB = 1024 * 1024;
let dir: string;
let cleanup: () => Promise<void>;
let sock: string;
let server: NbdServer;
let fileExp: FileExport;
let pool: Pool;
let thin: ThinDevice;
let tcpPort: number;
const tools = { nbdinfo: false, nbdcopy: false, qemu: false };

/** A 32 MiB sparse image with data at 1 MiB (64 KiB) and 20 MiB (1 MiB). */
async function makeImage(path: string): Promise<void> {
  await writeFile(path, '');
  await truncate(path, 32 * MiB);
  const h = await open(path, 'r+');
  await h.write(randomBytes(64 * 1024), 0, 64 * 1024, MiB);
  await h.write(randomBytes(MiB), 0, MiB, 20 * MiB);
  await h.close();
}

before(async () => {
  ({ dir, cleanup } = await tempDir());
  tools.nbdinfo = await haveCommand('nbdinfo');
  tools.nbdcopy = await haveCommand('nbdcopy');
  tools.qemu = await haveCommand('qemu-img');
  await makeImage(join(dir, 'disk.img'));
  fileExp = await FileExport.open(join(dir, 'disk.img'), { name: 'disk', description: 'sparse test disk' });
  for (const f of ['metadata', 'data']) {
    await writeFile(join(dir, f), '');
    await truncate(join(dir, f), f === 'data' ? 256 * MiB : 8 * MiB);
  }
  pool = await Pool.open({ metadataPath: join(dir, 'metadata'), dataPath: join(dir, 'data'), dataBlockSectors: 128 });
  await pool.message('create_thin 0');
  thin = await pool.openThin(0, 64 * MiB);
  server = new NbdServer([fileExp, new ThinExport(thin, { name: 'thin0' })]);
  sock = join(dir, 'nbd.sock');
  await server.listenUnix(sock);
  tcpPort = await server.listenTcp(0);
});

after(async () => {
  await server?.close();
  await fileExp?.close();
  await thin?.close();
  await pool?.close();
  await cleanup();
});

test('nbdinfo: export details, --list, --map holes on a sparse file', async (t) => {
  if (!tools.nbdinfo) return t.skip('nbdinfo not installed');
  const info = await runOk('nbdinfo', [unixUri(sock, 'disk')]);
  assert.match(info, /export-size: 33554432/);
  assert.match(info, /description: sparse test disk/);
  assert.match(info, /base:allocation/);
  const list = await runOk('nbdinfo', ['--list', unixUri(sock)]);
  assert.match(list, /export="disk"/);
  assert.match(list, /export="thin0"/);
  const map = await runOk('nbdinfo', ['--map', unixUri(sock, 'disk')]);
  const rows = map.trim().split('\n').map((l) => l.trim().split(/\s+/).slice(0, 3).map(Number));
  assert.deepEqual(rows, [
    [0, MiB, 3], [MiB, 64 * 1024, 0], [MiB + 64 * 1024, 19 * MiB - 64 * 1024, 3], [20 * MiB, MiB, 0], [21 * MiB, 11 * MiB, 3],
  ]);
});

test('TCP listener on loopback', async (t) => {
  if (!tools.nbdinfo) return t.skip('nbdinfo not installed');
  const info = await runOk('nbdinfo', ['--size', `nbd://127.0.0.1:${tcpPort}/disk`]);
  assert.equal(info.trim(), String(32 * MiB));
});

test('nbdcopy both ways through a thin device; holes stay holes', async (t) => {
  if (!tools.nbdcopy || !tools.nbdinfo) return t.skip('nbdcopy/nbdinfo not installed');
  const src = join(dir, 'src.img');
  await makeImage(src);
  await truncate(src, 64 * MiB);
  await runOk('nbdcopy', [src, unixUri(sock, 'thin0')]);
  const back = join(dir, 'back.img');
  await runOk('nbdcopy', [unixUri(sock, 'thin0'), back]);
  assert.ok((await readFile(back)).equals(await readFile(src)));
  // only the two data regions were provisioned (64 KiB blocks)
  const map = await runOk('nbdinfo', ['--map', unixUri(sock, 'thin0')]);
  const data = map.trim().split('\n').map((l) => l.trim().split(/\s+/).map(Number)).filter((r) => r[2] === 0);
  assert.deepEqual(data.map((r) => [r[0], r[1]]), [[MiB, 64 * 1024], [20 * MiB, MiB]]);
  // nbdcopy from the server into a file, with multiple connections (CAN_MULTI_CONN)
  const viaFile = join(dir, 'via.img');
  await runOk('nbdcopy', ['--connections=4', unixUri(sock, 'disk'), viaFile]);
  assert.ok((await readFile(viaFile)).equals(await readFile(join(dir, 'disk.img'))));
});

test('qemu-img convert into the server and compare', async (t) => {
  if (!tools.qemu) return t.skip('qemu-img not installed');
  const src = join(dir, 'q.img');
  await writeFile(src, Buffer.concat([randomBytes(3 * MiB + 512), Buffer.alloc(MiB), randomBytes(4096)]));
  await truncate(src, 64 * MiB);
  await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', src, unixUri(sock, 'thin0')]);
  const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, unixUri(sock, 'thin0')]);
  assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr);
  const out = join(dir, 'q-back.img');
  await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', unixUri(sock, 'thin0'), out]);
  assert.ok((await readFile(out)).equals(await readFile(src)));
  // a difference is noticed
  await writeFile(join(dir, 'other.img'), randomBytes(4096));
  await truncate(join(dir, 'other.img'), 64 * MiB);
  const diff = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', join(dir, 'other.img'), unixUri(sock, 'thin0')]);
  assert.equal(diff.code, 1);
});
