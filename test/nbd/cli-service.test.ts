// The dmsetup and thin CLI with the active-devices service, each command its own process as a
// user runs them: `dmsetup create` of a thin device serves it at <root>/mapper/<name>.sock,
// `thin write|read` go through the service while it holds the pool, commands that would wait on
// the pool's flock fail at once naming the service, `dmsetup remove` takes the socket away, and
// `dmsetup service stop|start|status` manage the service.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { access, readFile, stat, writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { strata, strataArgsFor, strataOk } from '../helpers/cli.js';
import { servicePid, stopService } from '../../src/nbd/service-client.js';
import { servicePaths } from '../../src/nbd/service-paths.js';
import { NbdClient } from '../../src/nbd/client.js';
import { poolFiles, tempDir, runOk, unixUri, haveCommand } from './helpers.js';

const MiB = 1024 * 1024;
const state: { root?: string; cleanup?: () => Promise<void>; pids: number[] } = { pids: [] };

after(async () => {
  const stopped = state.root ? await stopService(state.root).then(() => true, () => false) : true;
  // a service that would not stop must not outlive its (deleted) root
  if (!stopped) for (const pid of state.pids) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  await state.cleanup?.();
});

const exists = (path: string): Promise<boolean> => access(path).then(() => true, () => false);

function pattern(size: number, seed: number): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4) b.writeUInt32LE((i * 2654435761 + seed) >>> 0, i);
  return b;
}

test('dmsetup create serves a thin device; thin write/read through the service; remove, stop, start', { timeout: 600_000 }, async (t) => {
  const { dir, cleanup } = await tempDir('strata-cli-svc-');
  const root = join(dir, 'root');
  Object.assign(state, { root, cleanup });
  const { meta, table: poolTable } = await poolFiles(dir, 8 * MiB, 256 * MiB);
  const paths = servicePaths(root);
  const sock = paths.device('thin0');

  await strataOk(root, ['dmsetup', 'create', 'pool', '--table', poolTable]);
  await strataOk(root, ['dmsetup', 'message', 'pool', '0', 'create_thin 0']);
  assert.equal(await strataOk(root, ['dmsetup', 'service', 'status']), 'not running', 'a pool alone needs no service');
  await strataOk(root, ['dmsetup', 'create', 'thin0', '--table', `0 ${(64 * MiB) / 512} thin pool 0`]);
  assert.ok(await exists(sock), 'dmsetup create made the socket appear');
  const pid = await servicePid(root);
  assert.notEqual(pid, null);
  state.pids.push(pid!);
  assert.equal(await strataOk(root, ['dmsetup', 'service', 'status']), `running (pid ${pid})\nthin0\t${sock}\t(0 clients)`);
  const status = JSON.parse(await strataOk(root, ['dmsetup', 'service', 'status', '--format', 'json'])) as { running: boolean; devices: Array<{ name: string; size: number }> };
  assert.deepEqual([status.running, status.devices.map((d) => [d.name, d.size])], [true, [['thin0', 64 * MiB]]]);
  if (await haveCommand('nbdinfo')) {
    assert.equal((await runOk('nbdinfo', ['--size', unixUri(sock, 'thin0')])).trim(), String(64 * MiB));
  } else {
    t.diagnostic('nbdinfo not installed: size read with our own client only');
  }
  const probe = await NbdClient.connect(sock, 'thin0');
  assert.equal(probe.size, 64 * MiB);
  await probe.close();

  // write and read back through the service (it holds the pool's flock all along)
  const payload = pattern(3 * MiB + 1000, 7);
  await writeFile(join(dir, 'in'), payload);
  await strataOk(root, ['thin', 'write', 'thin0', join(dir, 'in'), '--offset', String(MiB + 7)]);
  await strataOk(root, ['thin', 'read', 'thin0', '-o', join(dir, 'out'), '--offset', String(MiB + 7), '--length', String(payload.length)]);
  assert.ok((await readFile(join(dir, 'out'))).equals(payload));
  await strataOk(root, ['thin', 'read', 'thin0', '-o', join(dir, 'whole')]);
  const whole = await readFile(join(dir, 'whole'));
  assert.equal(whole.length, 64 * MiB);
  assert.ok(whole.subarray(MiB + 7, MiB + 7 + payload.length).equals(payload));
  assert.ok(whole.subarray(0, MiB + 7).every((b) => b === 0));
  const stdout = await strata(root, ['thin', 'read', 'thin0', '-o', '-', '--offset', String(MiB + 7), '--length', '4096']);
  assert.equal(stdout.code, 0, stdout.stderr);
  // a reader that goes away after a little of 64 MiB: a quiet exit 141, the device let go
  const reader = spawn(process.execPath, strataArgsFor(root, ['thin', 'read', 'thin0', '-o', '-']), { stdio: ['ignore', 'pipe', 'pipe'] });
  let readerErr = '';
  reader.stderr.on('data', (d: Buffer) => (readerErr += d.toString()));
  reader.stdout.once('data', () => reader.stdout.destroy());
  assert.equal(await new Promise<number | null>((resolve) => reader.on('close', resolve)), 141);
  assert.equal(readerErr, '');
  assert.equal(await strataOk(root, ['dmsetup', 'status', 'thin0']), `0 ${(64 * MiB) / 512} thin ${49 * 128} ${65 * 128 - 1}`);
  assert.equal(await strataOk(root, ['dmsetup', 'service', 'status']), `running (pid ${pid})\nthin0\t${sock}\t(0 clients)`, 'the CLI hung up');

  // a suspended device refuses CLI I/O (no waiting for a resume that may never come)
  await strataOk(root, ['dmsetup', 'suspend', 'thin0']);
  const refused = await strata(root, ['thin', 'write', 'thin0', join(dir, 'in')]);
  assert.equal(refused.code, 5, refused.stderr);
  assert.match(refused.stderr, /thin0 is suspended/);
  await strataOk(root, ['dmsetup', 'resume', 'thin0']);

  // the pool's live metadata: refused at once (not after the 60 s lock timeout), naming the service
  const t0 = Date.now();
  const live = await strata(root, ['thin', 'dump', meta]);
  assert.equal(live.code, 5, live.stderr);
  assert.match(live.stderr, new RegExp(`held open by the strata NBD service \\(pid ${pid}\\) serving thin0`));
  assert.ok(Date.now() - t0 < 20_000, `refused after ${Date.now() - t0} ms`);
  const dup = await strata(root, ['dmsetup', 'create', 'pool2', '--table', poolTable]);
  assert.equal(dup.code, 5, dup.stderr);
  assert.match(dup.stderr, /held open by the strata NBD service/);

  // a device with an NBD client is not removed from under it, unless forced
  const client = await NbdClient.connect(sock, 'thin0');
  const busy = await strata(root, ['dmsetup', 'remove', 'thin0']);
  assert.equal(busy.code, 5, busy.stderr);
  assert.match(busy.stderr, /open by 1 NBD client/);
  await client.close();

  // stop: flushed, committed, closed; the devices stay defined and direct I/O sees the data
  await strataOk(root, ['dmsetup', 'service', 'stop']);
  assert.equal(await servicePid(root), null);
  assert.equal(await exists(sock), false);
  assert.equal(await exists(paths.control), false);
  assert.equal(await strataOk(root, ['dmsetup', 'service', 'status']), 'not running');
  assert.equal(await strataOk(root, ['dmsetup', 'ls']), 'pool\t(thin-pool)\nthin0\t(thin)');
  await strataOk(root, ['thin', 'read', 'thin0', '-o', join(dir, 'direct'), '--offset', String(MiB + 7), '--length', String(payload.length)]);
  assert.ok((await readFile(join(dir, 'direct'))).equals(payload));
  await strataOk(root, ['dmsetup', 'service', 'stop']); // stopping a stopped service is no error

  // start serves the registry again
  const again = Number(await strataOk(root, ['dmsetup', 'service', 'start']));
  state.pids.push(again);
  assert.equal(await servicePid(root), again);
  assert.ok(await exists(sock));
  assert.equal(Number(await strataOk(root, ['dmsetup', 'service', 'start'])), again, 'start finds the running service');

  // remove takes the socket away (the pool is let go with its last device)
  await strataOk(root, ['dmsetup', 'remove', 'thin0']);
  assert.equal(await exists(sock), false);
  assert.equal(await strataOk(root, ['dmsetup', 'service', 'status']), `running (pid ${again})`);
  const check = await strataOk(root, ['thin', 'check', meta]);
  assert.match(check, /DEVICES=1\n/);
  await strataOk(root, ['dmsetup', 'remove', 'pool']);
  assert.equal(await strataOk(root, ['dmsetup', 'ls']), 'No devices found');
  await strataOk(root, ['dmsetup', 'service', 'stop']);
  assert.equal(await servicePid(root), null);
  await assert.rejects(stat(paths.pid), { code: 'ENOENT' });
});
