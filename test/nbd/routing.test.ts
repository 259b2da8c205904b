// dmsetup verbs routed through the active-devices service while it holds a pool, and straight to
// the registry when it is not running.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { access } from 'node:fs/promises';
import { routedCreate, routedMessage, routedRemove, routedResume, routedStatus, routedSuspend } from '../../src/nbd/dmsetup-routing.js';
import { servicePid, stopService, service } from '../../src/nbd/service-client.js';
import { servicePaths } from '../../src/nbd/service-paths.js';
import { MapperRegistry } from '../../src/thin/mapper.js';
import { poolFiles, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
const state: { root?: string; cleanup?: () => Promise<void> } = {};

after(async () => {
  if (state.root) await stopService(state.root).catch(() => undefined);
  await state.cleanup?.();
});

test('create/message/status/suspend/resume/remove with and without the service', async () => {
  const { dir: root, cleanup } = await tempDir('strata-nbd-route-');
  Object.assign(state, { root, cleanup });
  await routedCreate(root, 'pool', (await poolFiles(root, 8 * MiB, 128 * MiB)).table);
  assert.equal(await servicePid(root), null, 'a pool alone does not need the service');
  await routedMessage(root, 'pool', '0', 'create_thin 0');
  await routedCreate(root, 'thin0', `0 ${(32 * MiB) / 512} thin pool 0`);
  assert.notEqual(await servicePid(root), null, 'a thin device starts the service');
  await access(servicePaths(root).device('thin0'));
  // the pool is held by the service now: these must go through it
  await routedMessage(root, 'pool', '0', 'create_thin 1');
  await routedCreate(root, 'thin1', `0 ${(16 * MiB) / 512} thin pool 1`);
  assert.match(await routedStatus(root, 'pool'), /^0 262144 thin-pool \d+ /);
  assert.match(await routedStatus(root, 'thin0'), /^0 65536 thin /);
  await routedSuspend(root, 'thin0');
  assert.equal((await new MapperRegistry(root).get('thin0')).suspended, true);
  assert.equal((await service.list(root)).find((d) => d.name === 'thin0')?.suspended, true);
  await routedResume(root, 'thin0');
  assert.equal((await new MapperRegistry(root).get('thin0')).suspended, false);
  await routedRemove(root, 'thin1');
  await routedMessage(root, 'pool', '0', 'delete 1');
  assert.deepEqual((await service.list(root)).map((d) => d.name), ['thin0']);
  await stopService(root);
  // without the service, straight to the registry and the pool files
  assert.match(await routedStatus(root, 'thin0'), /^0 65536 thin /);
  await routedRemove(root, 'thin0');
  assert.equal(await new MapperRegistry(root).find('thin0'), null);
});
