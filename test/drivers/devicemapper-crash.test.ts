// SIGKILL the devicemapper driver at every step of a create and a delete (and of the base
// device's setup): the next open must find the per-device JSON, transaction-metadata and the
// pool's devices and transaction id in agreement, with the interrupted change either undone
// (create) or finished (delete) — moby's open-transaction / set_transaction_id protocol.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DevicemapperDriver, probeDevicemapper } from '../../src/drivers/devicemapper/devicemapper-driver.js';
import { PoolClient } from '../../src/drivers/devicemapper/pool-client.js';
import { tempDir } from '../helpers/fstest.js';
import { run } from '../../src/drivers/devicemapper/exec.js';

const options = { 'dm.basesize': '64M', 'dm.loopdatasize': '1G', 'dm.loopmetadatasize': '32M' };
const driverModule = fileURLToPath(new URL('../../src/drivers/devicemapper/devicemapper-driver.ts', import.meta.url));

/** Run `op` in a child that kills itself (SIGKILL) at `point`. Resolves with the signal. */
function crashChild(root: string, point: string, op: string): Promise<string | null> {
  const code = `import { DevicemapperDriver } from ${JSON.stringify(driverModule)};
const d = await DevicemapperDriver.open({ root: ${JSON.stringify(root)}, options: ${JSON.stringify(options)} });
${op}
process.exit(0);`;
  const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), '--input-type=module', '-e', code], {
    env: { ...process.env, STRATA_DM_CRASH_AT: point },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  return new Promise((resolve) => child.on('close', (status, signal) => {
    if (signal !== 'SIGKILL') console.error(`child (${point}) exited ${status}: ${err}`);
    resolve(signal);
  }));
}

/** JSON files, pool devices and transaction ids agree. Returns the hashes with a JSON. */
async function assertConsistent(d: DevicemapperDriver): Promise<string[]> {
  const client = await PoolClient.connect(d.service);
  try {
    const poolIds = (await client.devices()).sort((a, b) => a - b);
    const { pool } = await client.status();
    const metaDir = join(d.home, 'metadata');
    const hashes: string[] = [];
    const jsonIds: number[] = [];
    for (const name of await readdir(metaDir)) {
      if (name.startsWith('.') || name === 'deviceset-metadata' || name === 'transaction-metadata') continue;
      const info = JSON.parse(await readFile(join(metaDir, name), 'utf8')) as { device_id: number; transaction_id: number };
      jsonIds.push(info.device_id);
      assert.ok(info.transaction_id <= pool.transactionId, `${name}: created in a transaction the pool never committed`);
      hashes.push(name);
    }
    assert.deepEqual(jsonIds.sort((a, b) => a - b), poolIds, 'every pool device has a JSON and every JSON a device');
    const txn = JSON.parse(await readFile(join(metaDir, 'transaction-metadata'), 'utf8')) as { open_transaction_id: number };
    assert.equal(txn.open_transaction_id, pool.transactionId, 'no transaction left open');
    return hashes.sort();
  } finally {
    client.close();
  }
}

describe('devicemapper: SIGKILL at every step keeps JSON and pool consistent', async () => {
  const reason = await probeDevicemapper();
  let root = '';
  let last: DevicemapperDriver | null = null;

  before(async () => {
    if (reason) return;
    root = await tempDir('strata-dm-crash-');
    const d = await DevicemapperDriver.open({ root, options });
    await d.create('image', null);
    d.disconnect();
  });

  after(async () => {
    if (!root) return;
    const d = last ?? (await DevicemapperDriver.open({ root, options }));
    const metadata = d.service.metadataPath;
    await d.cleanup();
    // the pool's metadata, as dm-thin would leave it: thin_check must accept it
    await run('thin_check', [metadata]);
    await rm(root, { recursive: true, force: true });
  });

  const createPoints = ['create:opened', 'create:messaged', 'create:registered', 'create:committed'];
  for (const [i, point] of createPoints.entries()) {
    it(`create, killed at ${point}`, async (t) => {
      if (reason) return t.skip(reason);
      const id = `ctr${i}`;
      assert.equal(await crashChild(root, point, `await d.create(${JSON.stringify(id)}, 'image');`), 'SIGKILL');
      const d = await DevicemapperDriver.open({ root, options });
      last = d;
      const committed = point === 'create:committed';
      assert.equal(d.recovered !== null, !committed, `recovery ran: ${d.recovered}`);
      assert.equal(await d.exists(id), committed, committed ? 'a committed create survives' : 'an interrupted create is undone');
      await assertConsistent(d);
      // and the id can be used (again)
      if (!committed) await d.create(id, 'image');
      const p = await d.get(id);
      await d.put(id);
      assert.ok(p.endsWith('rootfs'));
      await assertConsistent(d);
      d.disconnect();
    });
  }

  const deletePoints = ['delete:opened', 'delete:messaged', 'delete:unregistered', 'delete:committed'];
  for (const [i, point] of deletePoints.entries()) {
    it(`delete, killed at ${point}`, async (t) => {
      if (reason) return t.skip(reason);
      const id = `doomed${i}`;
      const d0 = await DevicemapperDriver.open({ root, options });
      await d0.create(id, 'image');
      d0.disconnect();
      assert.equal(await crashChild(root, point, `await d.remove(${JSON.stringify(id)});`), 'SIGKILL');
      const d = await DevicemapperDriver.open({ root, options });
      last = d;
      assert.equal(await d.exists(id), false, 'an interrupted delete is finished');
      assert.ok(!(await assertConsistent(d)).includes(id));
      assert.equal(await d.exists('image'), true);
      d.disconnect();
    });
  }

  it('the pool service killed too, mid-create: a new service, the same recovery', async (t) => {
    if (reason) return t.skip(reason);
    assert.equal(await crashChild(root, 'create:registered', `await d.create('orphan', 'image');`), 'SIGKILL');
    const c = await PoolClient.connect((await DevicemapperDriver.open({ root, options: { ...options } }).then((d) => {
      d.disconnect();
      return d;
    })).service);
    const pid = (await c.request({ op: 'hello' })).pid!;
    c.close();
    // (the open above already recovered; crash again and kill the service before anyone recovers)
    assert.equal(await crashChild(root, 'create:registered', `await d.create('orphan2', 'image');`), 'SIGKILL');
    process.kill(pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 200));
    const d = await DevicemapperDriver.open({ root, options });
    last = d;
    assert.match(d.recovered ?? '', /rolled back/);
    assert.equal(await d.exists('orphan'), false);
    assert.equal(await d.exists('orphan2'), false);
    await assertConsistent(d);
    d.disconnect();
  });

  it('base device setup killed before mkfs: the half-made base is deleted and made again', async (t) => {
    if (reason) return t.skip(reason);
    const other = await tempDir('strata-dm-crash-base-');
    try {
      assert.equal(await crashChild(other, 'base:activated', ''), 'SIGKILL');
      const base = JSON.parse(await readFile(join(other, 'devicemapper', 'metadata', 'base'), 'utf8')) as { initialized: boolean };
      assert.equal(base.initialized, false);
      const d = await DevicemapperDriver.open({ root: other, options });
      const again = JSON.parse(await readFile(join(other, 'devicemapper', 'metadata', 'base'), 'utf8')) as { initialized: boolean };
      assert.equal(again.initialized, true);
      await d.create('l', null);
      const p = await d.get('l');
      await d.put('l');
      assert.ok(p);
      await assertConsistent(d);
      const metadata = d.service.metadataPath;
      await d.cleanup();
      await run('thin_check', [metadata]);
    } finally {
      await rm(other, { recursive: true, force: true });
    }
  });
});
