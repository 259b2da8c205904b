// The active-devices service as a real detached process: started on demand, one per root,
// serving thin devices from the mapper registry at <root>/mapper/<name>.sock, stopping cleanly.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { stat, writeFile, truncate, readFile, access } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { MapperRegistry } from '../../src/thin/mapper.js';
import { dmCreate, dmMessage, openNamedThin } from '../../src/thin/dmsetup.js';
import { ensureService, stopService, servicePid, service } from '../../src/nbd/service-client.js';
import { NbdService } from '../../src/nbd/service.js';
import { servicePaths } from '../../src/nbd/service-paths.js';
import { OPT, REP } from '../../src/nbd/protocol.js';
import { poolFiles, tempDir, runOk, unixUri, haveCommand, RawClient, goData } from './helpers.js';

const MiB = 1024 * 1024;
let root: string;
let cleanup: () => Promise<void>;
let reg: MapperRegistry;
const started: number[] = [];

before(async () => {
  ({ dir: root, cleanup } = await tempDir('strata-nbd-svc-'));
  reg = new MapperRegistry(root);
  await dmCreate(reg, 'pool', (await poolFiles(root, 8 * MiB, 256 * MiB, 'pool-')).table);
  await dmMessage(reg, 'pool', '0', 'create_thin 0');
  await dmCreate(reg, 'thin0', `0 ${(64 * MiB) / 512} thin pool 0`);
});

after(async () => {
  await stopService(root).catch(() => undefined);
  for (const pid of started) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
  await cleanup();
});

const gone = (path: string): Promise<boolean> => access(path).then(() => false, () => true);

test('ensureService starts one detached service that serves the registry', async (t) => {
  const pid = await ensureService(root);
  started.push(pid);
  assert.notEqual(pid, process.pid);
  assert.equal(await ensureService(root), pid, 'a second call finds the running service');
  const paths = servicePaths(root);
  const sock = paths.device('thin0');
  assert.equal((await stat(sock)).mode & 0o777, 0o600);
  assert.equal((await stat(paths.control)).mode & 0o777, 0o600);
  assert.equal(Number((await readFile(paths.pid, 'utf8')).trim()), pid);
  const list = await service.list(root);
  assert.deepEqual(list.map((d) => [d.name, d.pool, d.devId, d.size]), [['thin0', 'pool', 0, 64 * MiB]]);
  await assert.rejects(NbdService.start(root), (e: unknown) => (e as { code?: string }).code === 'LOCK_TIMEOUT');
  if (!(await haveCommand('nbdinfo'))) return t.skip('nbdinfo not installed');
  assert.match(await runOk('nbdinfo', [unixUri(sock)]), /export-size: 67108864/);
});

test('pool messages and new thin devices go through the service while it holds the pool', async () => {
  await service.message(root, 'pool', 'create_thin 1');
  const dev = await service.create(root, 'thin1', `0 ${(16 * MiB) / 512} thin pool 1`);
  assert.equal(dev?.name, 'thin1');
  assert.ok(await reg.find('thin1'));
  await assert.rejects(service.message(root, 'pool', 'delete 1'), (e: unknown) => (e as { code?: string }).code === 'DEVICE_BUSY');
  // a connected client makes deactivation busy
  const c = await RawClient.connect(servicePaths(root).device('thin1'));
  await c.greet(3);
  c.sendOption(OPT.GO, goData(''));
  assert.equal((await c.readOptionReplies()).at(-1)?.type, REP.ACK);
  await assert.rejects(service.remove(root, 'thin1'), (e: unknown) => (e as { code?: string }).code === 'DEVICE_BUSY');
  c.close();
  await new Promise((r) => setTimeout(r, 100));
  await service.remove(root, 'thin1');
  assert.equal(await reg.find('thin1'), null);
  assert.ok(await gone(servicePaths(root).device('thin1')));
  await service.message(root, 'pool', 'delete 1');
  await assert.rejects(service.activate(root, 'nope'), (e: unknown) => (e as { code?: string }).code === 'DEVICE_NOT_FOUND');
});

test('data written over NBD survives SIGTERM (flush, commit, close); SIGKILL leaves nothing stale', async (t) => {
  if (!(await haveCommand('nbdcopy'))) return t.skip('nbdcopy not installed');
  const src = join(root, 'src.img');
  const payload = randomBytes(3 * MiB);
  await writeFile(src, payload);
  await truncate(src, 64 * MiB);
  const sock = servicePaths(root).device('thin0');
  // nbdcopy does not flush: the service's shutdown must commit what was written
  await runOk('nbdcopy', [src, unixUri(sock)]);
  assert.equal(await stopService(root), true);
  assert.equal(await servicePid(root), null);
  assert.ok(await gone(sock));
  assert.ok(await gone(servicePaths(root).pid));
  const { pool, dev } = await openNamedThin(reg, 'thin0');
  const back = Buffer.alloc(payload.length);
  await dev.read(back, 0);
  await dev.close();
  await pool.close();
  assert.ok(back.equals(payload));
  // a killed service leaves sockets behind; the next one replaces them
  const pid = await ensureService(root);
  started.push(pid);
  process.kill(pid, 'SIGKILL');
  await new Promise((r) => setTimeout(r, 200));
  const pid2 = await ensureService(root);
  started.push(pid2);
  assert.notEqual(pid2, pid);
  const out = join(root, 'out.img');
  await runOk('nbdcopy', [unixUri(sock), out]);
  assert.ok((await readFile(out)).subarray(0, payload.length).equals(payload));
});

test('a service killed (SIGKILL) while nbdcopy writes whole blocks into leased ones leaves metadata thin_check accepts, and loses nothing flushed before', async (t) => {
  if (!(await haveCommand('nbdcopy'))) return t.skip('nbdcopy not installed');
  const { thinTools, tool } = await import('../thin/helpers.js');
  const sock = servicePaths(root).device('thin0');
  const first = randomBytes(4 * MiB);
  const src = join(root, 'kill-src.img');
  await writeFile(src, first);
  const pid = await ensureService(root);
  started.push(pid);
  // a flushed write: its blocks must be there after the kill
  await runOk('nbdcopy', ['--flush', src, unixUri(sock)]);
  await writeFile(src, randomBytes(64 * MiB));
  const copy = runOk('nbdcopy', [src, unixUri(sock)]).catch(() => 'killed');
  await new Promise((r) => setTimeout(r, 150));
  process.kill(pid, 'SIGKILL');
  await copy;
  await new Promise((r) => setTimeout(r, 100));
  if (thinTools) {
    const check = tool('thin_check', [join(root, 'pool-meta')]);
    assert.equal(check.status, 0, check.stderr);
  }
  const { pool, dev } = await openNamedThin(reg, 'thin0');
  const back = Buffer.alloc(first.length);
  await dev.read(back, 0);
  await dev.close();
  await pool.close();
  // each 64 KiB block holds what the flushed copy wrote, or what the killed one got to write
  const killedSrc = await readFile(src);
  for (let off = 0; off < first.length; off += 64 * 1024) {
    const got = back.subarray(off, off + 64 * 1024);
    assert.ok(got.equals(first.subarray(off, off + 64 * 1024)) || got.equals(killedSrc.subarray(off, off + 64 * 1024)), `block at ${off}`);
  }
});
