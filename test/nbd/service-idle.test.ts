// A service that serves nothing stops on its own (idleExitMs), so `dmsetup remove` of the last
// device leaves no background process holding memory and threads; the next command that needs
// one starts it again.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { connect } from 'node:net';
import { access } from 'node:fs/promises';
import { MapperRegistry, openPoolFromTable } from '../../src/thin/mapper.js';
import { dmCreate, dmMessage } from '../../src/thin/dmsetup.js';
import { NbdService } from '../../src/nbd/service.js';
import { servicePid, stopService } from '../../src/nbd/service-client.js';
import { servicePaths } from '../../src/nbd/service-paths.js';
import { processAlive } from '../../src/util/process-alive.js';
import { strataOk } from '../helpers/cli.js';
import { poolFiles, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
const IDLE_MS = 300;
const roots: string[] = [];
const cleanups: Array<() => Promise<void>> = [];

after(async () => {
  for (const root of roots) await stopService(root).catch(() => undefined);
  for (const c of cleanups) await c();
});

const exists = (path: string): Promise<boolean> => access(path).then(() => true, () => false);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A root with a pool and thin device `thin0` in its registry. */
async function poolRoot(): Promise<{ root: string; reg: MapperRegistry }> {
  const { dir, cleanup } = await tempDir('strata-nbd-idle-');
  cleanups.push(cleanup);
  const root = join(dir, 'root');
  roots.push(root);
  const reg = new MapperRegistry(root);
  await dmCreate(reg, 'pool', (await poolFiles(dir, 8 * MiB, 64 * MiB)).table);
  await dmMessage(reg, 'pool', '0', 'create_thin 0');
  await dmCreate(reg, 'thin0', `0 ${(16 * MiB) / 512} thin pool 0`);
  return { root, reg };
}

test('a service stops once it has served nothing, and no control request was open, for idleExitMs', async () => {
  const { root, reg } = await poolRoot();
  const svc = await NbdService.start(root, { idleExitMs: IDLE_MS });
  let stopped = false;
  void svc.stopped.then(() => { stopped = true; });
  await sleep(3 * IDLE_MS);
  assert.equal(stopped, false, 'an active device keeps it');

  // a control connection open (a request on its way) keeps it too
  const paths = servicePaths(root);
  const control = connect(paths.control);
  await new Promise((resolve, reject) => control.once('connect', resolve).once('error', reject));
  await svc.deactivate('thin0');
  await sleep(3 * IDLE_MS);
  assert.equal(stopped, false, 'an open control connection keeps it');

  control.destroy();
  await Promise.race([svc.stopped, sleep(10_000).then(() => assert.fail('the idle service did not stop'))]);
  assert.equal(await exists(paths.control), false);
  assert.equal(await exists(paths.pid), false);
  // it let go of the pool: its flock is free at once
  const pool = await openPoolFromTable((await reg.poolTable('pool')).table, { lockTimeoutMs: 0 });
  await pool.close();
  // and of the service lock: another starts
  const again = await NbdService.start(root);
  await again.stop();
});

test('dmsetup remove of the last device: the service goes away by itself; create starts one again', async () => {
  const { root } = await poolRoot();
  process.env.STRATA_NBD_IDLE_MS = String(IDLE_MS); // (inherited by the CLI, then by the service it starts)
  try {
    await strataOk(root, ['dmsetup', 'message', 'pool', '0', 'create_thin 1']);
    await strataOk(root, ['dmsetup', 'create', 'thin1', '--table', `0 ${(16 * MiB) / 512} thin pool 1`]);
    const pid = await servicePid(root);
    assert.notEqual(pid, null);
    await sleep(3 * IDLE_MS);
    assert.equal(await servicePid(root), pid, 'it stays while it serves thin0 and thin1');
    await strataOk(root, ['dmsetup', 'remove', 'thin1']);
    await strataOk(root, ['dmsetup', 'remove', 'thin0']);
    const deadline = Date.now() + 10_000;
    while (processAlive(pid!) && Date.now() < deadline) await sleep(50);
    assert.equal(processAlive(pid!), false, 'the idle service exited');
    assert.equal(await strataOk(root, ['dmsetup', 'service', 'status']), 'not running');
    assert.equal(await strataOk(root, ['dmsetup', 'ls']), 'pool\t(thin-pool)');

    await strataOk(root, ['dmsetup', 'create', 'thin0', '--table', `0 ${(16 * MiB) / 512} thin pool 0`]);
    const next = await servicePid(root);
    assert.ok(next !== null && next !== pid, 'a new service serves the new device');
  } finally {
    delete process.env.STRATA_NBD_IDLE_MS;
  }
});
