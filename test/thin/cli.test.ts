import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { open, readFile, writeFile, stat, truncate } from 'node:fs/promises';
import { main } from '../../src/cli/main.js';
import { servicePid, stopService } from '../../src/nbd/service-client.js';
import { servicePaths } from '../../src/nbd/service-paths.js';
import { NO_TOOLS, tempDir, sparseFile, tool, pattern, thinTools } from './helpers.js';

/** Run the CLI in-process, capturing stdout and stderr. */
async function strata(...argv: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const ow = process.stdout.write.bind(process.stdout);
  const ew = process.stderr.write.bind(process.stderr);
  process.stdout.write = ((c: string | Uint8Array) => ((stdout += c.toString()), true)) as typeof process.stdout.write;
  process.stderr.write = ((c: string | Uint8Array) => ((stderr += c.toString()), true)) as typeof process.stderr.write;
  try {
    const status = await main(argv);
    return { status, stdout, stderr };
  } finally {
    process.stdout.write = ow;
    process.stderr.write = ew;
  }
}

async function ok(...argv: string[]): Promise<string> {
  const r = await strata(...argv);
  assert.equal(r.status, 0, `strata ${argv.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

const GiB = 2 ** 30;

test('seed scenario: 100 GB sparse pool, 2 GB metadata, docker table, thin 166, 10 GB device, snapshot', async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const root = join(dir, 'root');
    const meta = join(dir, 'metadata');
    const data = join(dir, 'data');
    await sparseFile(data, 100 * GiB);
    await sparseFile(meta, 2 * GiB);
    const r = ['--root', root];
    const poolSectors = (100 * GiB) / 512;
    const thinSectors = (10 * GiB) / 512;
    await ok(...r, 'dmsetup', 'create', 'pool', '--table', `0 ${poolSectors} thin-pool ${meta} ${data} 128 32768 1 skip_block_zeroing`);
    await ok(...r, 'dmsetup', 'message', 'pool', '0', 'create_thin 166');
    await ok(...r, 'dmsetup', 'create', 'thin166', '--table', `0 ${thinSectors} thin pool 166`);
    assert.equal(await ok(...r, 'dmsetup', 'table', 'thin166'), `0 ${thinSectors} thin pool 166\n`);
    assert.equal(await ok(...r, 'dmsetup', 'table', 'pool'), `0 ${poolSectors} thin-pool ${meta} ${data} 128 32768 1 skip_block_zeroing\n`);

    // 3 MiB of data at 1 GiB + 100 bytes, then a snapshot with the origin suspended
    const payload = pattern(3 << 20, 166);
    await writeFile(join(dir, 'in'), payload);
    await ok(...r, 'thin', 'write', 'thin166', join(dir, 'in'), '--offset', String(GiB + 100));
    await ok(...r, 'dmsetup', 'suspend', 'thin166');
    const refused = await strata(...r, 'thin', 'write', 'thin166', join(dir, 'in'));
    assert.notEqual(refused.status, 0, 'I/O to a suspended device is refused');
    await ok(...r, 'dmsetup', 'message', 'pool', '0', 'create_snap 167 166');
    await ok(...r, 'dmsetup', 'resume', 'thin166');
    await ok(...r, 'dmsetup', 'create', 'snap167', '--table', `0 ${thinSectors} thin pool 167`);
    // overwrite part of the origin: the snapshot keeps the old bytes
    await writeFile(join(dir, 'new'), Buffer.alloc(70_000, 0x5a));
    await ok(...r, 'thin', 'write', 'thin166', join(dir, 'new'), '--offset', String(GiB + 200));
    await ok(...r, 'thin', 'read', 'snap167', '-o', join(dir, 'snap.out'), '--offset', String(GiB + 100), '--length', String(3 << 20));
    assert.ok((await readFile(join(dir, 'snap.out'))).equals(payload));
    await ok(...r, 'thin', 'read', 'thin166', '-o', join(dir, 'orig.out'), '--offset', String(GiB), '--length', '4M');
    const orig = await readFile(join(dir, 'orig.out'));
    assert.ok(orig.subarray(0, 100).every((b) => b === 0));
    assert.ok(orig.subarray(200, 70_200).every((b) => b === 0x5a));
    assert.ok(orig.subarray(70_200, 100 + (3 << 20)).equals(payload.subarray(70_100)));
    // whole-device read to a sparse file stays cheap
    await ok(...r, 'thin', 'read', 'snap167', '-o', join(dir, 'whole'));
    assert.equal((await stat(join(dir, 'whole'))).size, 10 * GiB);

    const ls = await ok(...r, 'dmsetup', 'ls');
    assert.equal(ls, 'pool\t(thin-pool)\nsnap167\t(thin)\nthin166\t(thin)\n');
    const poolStatus = await ok(...r, 'dmsetup', 'status', 'pool');
    // 49 data blocks (3 MiB + 100 bytes spans 49 blocks of 64 KiB) + 2 copied by the overwrite
    assert.match(poolStatus, new RegExp(`^0 ${poolSectors} thin-pool 0 \\d+/524288 51/1638400 - rw discard_passdown queue_if_no_space - 1024\\n$`));
    assert.equal(await ok(...r, 'dmsetup', 'status', 'snap167'), `0 ${thinSectors} thin ${49 * 128} ${(16384 + 49) * 128 - 1}\n`);

    // a device in use cannot be deleted; a pool in use cannot be removed
    assert.equal((await strata(...r, 'dmsetup', 'message', 'pool', '0', 'delete 167')).status, 5);
    assert.equal((await strata(...r, 'dmsetup', 'remove', 'pool')).status, 5);
    await ok(...r, 'dmsetup', 'message', 'pool', '0', 'set_transaction_id 0 1');

    // the service serves both thin devices and holds the pool: its live metadata is refused at
    // once, naming the service; stopping it (flush, commit, close) lets the tools in
    assert.notEqual(await servicePid(root), null, 'dmsetup create of a thin device started the service');
    assert.match(await ok(...r, 'dmsetup', 'service', 'status'), /^running \(pid \d+\)\nsnap167\t.*snap167\.sock\t\(0 clients\)\nthin166\t/);
    const live = await strata(...r, 'thin', 'check', meta);
    assert.equal(live.status, 5, live.stderr);
    assert.match(live.stderr, /held open by the strata NBD service .* serving snap167, thin166/);
    await ok(...r, 'dmsetup', 'service', 'stop');
    assert.equal(await servicePid(root), null);
    await assert.rejects(stat(servicePaths(root).device('thin166')), { code: 'ENOENT' });

    const check = await ok('thin', 'check', meta);
    assert.match(check, /TRANSACTION_ID=1\nDEVICES=2\n/);
    const dump = await ok('thin', 'dump', meta);
    assert.match(dump, /<device dev_id="166" mapped_blocks="49"/);
    if (thinTools) {
      const tc = tool('thin_check', [meta]);
      assert.equal(tc.status, 0, tc.stderr);
      assert.equal(tool('thin_dump', [meta]).stdout, dump);
    }

    await ok(...r, 'dmsetup', 'remove', 'snap167');
    await ok(...r, 'dmsetup', 'message', 'pool', '0', 'delete 167');
    await ok(...r, 'dmsetup', 'remove', 'thin166');
    await ok(...r, 'dmsetup', 'remove', 'pool');
    assert.equal(await ok(...r, 'dmsetup', 'ls'), 'No devices found\n');
  } finally {
    await stopService(join(dir, 'root')).catch(() => undefined);
    await cleanup();
  }
});

test('cli: errors are one line with a status by category; restore round-trips a dump', async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const r = ['--root', join(dir, 'root')];
    const missing = await strata(...r, 'dmsetup', 'status', 'nope');
    assert.equal(missing.status, 3);
    assert.equal(missing.stderr.split('\n').filter(Boolean).length, 1);
    const bad = await strata(...r, 'dmsetup', 'create', 'p', '--table', '0 100 thin-pool a b 100 0');
    assert.equal(bad.status, 2);
    await sparseFile(join(dir, 'meta'), 4 << 20);
    await sparseFile(join(dir, 'data'), 64 << 20);
    await ok(...r, 'dmsetup', 'create', 'p', '--table', `0 ${(64 << 20) / 512} thin-pool ${join(dir, 'meta')} ${join(dir, 'data')} 128 0`);
    assert.equal((await strata(...r, 'dmsetup', 'create', 'p', '--table', '0 8 thin p 0')).status, 4);
    assert.equal((await strata(...r, 'dmsetup', 'create', 't', '--table', '0 8 thin p 0')).status, 3, 'device 0 does not exist yet');
    await ok(...r, 'dmsetup', 'message', 'p', '0', 'create_thin', '0');
    await ok(...r, 'dmsetup', 'create', 't', '--table', '0 2048 thin p 0');
    await writeFile(join(dir, 'x'), pattern(300_000, 9));
    await ok(...r, 'thin', 'write', 't', join(dir, 'x'), '--offset', '64k');
    await ok(...r, 'dmsetup', 'message', 'p', '0', 'create_snap 1 0');
    await ok(...r, 'dmsetup', 'service', 'stop'); // the dump reads metadata nobody holds open
    const xml = await ok('thin', 'dump', join(dir, 'meta'));
    await writeFile(join(dir, 'dump.xml'), xml);
    await sparseFile(join(dir, 'meta2'), 4 << 20);
    await ok('thin', 'restore', '-i', join(dir, 'dump.xml'), '-o', join(dir, 'meta2'));
    assert.equal(await ok('thin', 'dump', join(dir, 'meta2')), xml);
    await ok('thin', 'check', join(dir, 'meta2'));
    // a corrupted copy is reported with the DataLoss status
    const image = await readFile(join(dir, 'meta2'));
    image[4096 * 7 + 100] = image[4096 * 7 + 100]! ^ 0xff;
    image[4096 * 9 + 100] = image[4096 * 9 + 100]! ^ 0xff;
    await writeFile(join(dir, 'meta3'), image);
    const broken = await strata('thin', 'check', join(dir, 'meta3'));
    assert.equal(broken.status, 8, broken.stdout + broken.stderr);
  } finally {
    await stopService(join(dir, 'root')).catch(() => undefined);
    await cleanup();
  }
});

test('thin_restore output works as a pool for the CLI', { skip: NO_TOOLS }, async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const xml = '<superblock uuid="" time="0" transaction="5" flags="0" version="2" data_block_size="128" nr_data_blocks="1024">\n' +
      '  <device dev_id="3" mapped_blocks="2" transaction="0" creation_time="0" snap_time="0">\n' +
      '    <range_mapping origin_begin="0" data_begin="10" length="2" time="0"/>\n  </device>\n</superblock>\n';
    await writeFile(join(dir, 'in.xml'), xml);
    await sparseFile(join(dir, 'meta'), 4 << 20);
    await sparseFile(join(dir, 'data'), 64 << 20);
    const fh = await open(join(dir, 'data'), 'r+');
    await fh.write(Buffer.alloc(65536, 0x77), 0, 65536, 10 * 65536);
    await fh.close();
    assert.equal(tool('thin_restore', ['-i', join(dir, 'in.xml'), '-o', join(dir, 'meta')]).status, 0);
    const r = ['--root', join(dir, 'root')];
    await ok(...r, 'dmsetup', 'create', 'p', '--table', `0 ${(64 << 20) / 512} thin-pool ${join(dir, 'meta')} ${join(dir, 'data')} 128 0`);
    assert.match(await ok(...r, 'dmsetup', 'status', 'p'), / 5 \d+\/1024 2\/1024 /);
    await ok(...r, 'dmsetup', 'create', 't', '--table', '0 1024 thin p 3');
    await ok(...r, 'thin', 'read', 't', '-o', join(dir, 'out'), '--length', '64k');
    assert.ok((await readFile(join(dir, 'out'))).every((b) => b === 0x77));
  } finally {
    await stopService(join(dir, 'root')).catch(() => undefined);
    await cleanup();
  }
});

test('cli: a full pool grows by reload + resume after the data file grows', async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const r = ['--root', join(dir, 'root')];
    const meta = join(dir, 'meta');
    const data = join(dir, 'data');
    await sparseFile(meta, 4 << 20);
    await sparseFile(data, 1 << 20);
    await ok(...r, 'dmsetup', 'create', 'p', '--table', `0 2048 thin-pool ${meta} ${data} 128 2 1 error_if_no_space`);
    await ok(...r, 'dmsetup', 'message', 'p', '0', 'create_thin 1');
    await ok(...r, 'dmsetup', 'create', 't', '--table', '0 8192 thin p 1');
    await writeFile(join(dir, 'x'), pattern(2 << 20, 4));
    const full = await strata(...r, 'thin', 'write', 't', join(dir, 'x'));
    assert.equal(full.status, 7, full.stderr);
    assert.match(await ok(...r, 'dmsetup', 'status', 'p'), / 16\/16 - out_of_data_space |16\/16 - rw /);
    await sparseFile(data, 4 << 20);
    await ok(...r, 'dmsetup', 'reload', 'p', '--table', `0 8192 thin-pool ${meta} ${data} 128 2 1 error_if_no_space`);
    await ok(...r, 'dmsetup', 'suspend', 'p');
    await ok(...r, 'dmsetup', 'resume', 'p');
    assert.equal(await ok(...r, 'dmsetup', 'table', 'p'), `0 8192 thin-pool ${meta} ${data} 128 2 1 error_if_no_space\n`);
    await ok(...r, 'thin', 'write', 't', join(dir, 'x'));
    assert.match(await ok(...r, 'dmsetup', 'status', 'p'), / 32\/64 - rw /);
    await ok(...r, 'thin', 'read', 't', '-o', join(dir, 'y'), '--length', '2M');
    assert.ok((await readFile(join(dir, 'y'))).equals(pattern(2 << 20, 4)));
  } finally {
    await stopService(join(dir, 'root')).catch(() => undefined);
    await cleanup();
  }
});

test('cli: a pool out of metadata space takes in its grown metadata file on reload + resume, while the service holds it', async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const r = ['--root', join(dir, 'root')];
    const meta = join(dir, 'meta');
    const data = join(dir, 'data');
    await sparseFile(meta, 80 * 4096);
    await sparseFile(data, 64 << 20);
    const poolTable = `0 131072 thin-pool ${meta} ${data} 128 16`;
    await ok(...r, 'dmsetup', 'create', 'p', '--table', poolTable);
    await ok(...r, 'dmsetup', 'message', 'p', '0', 'create_thin 0');
    await ok(...r, 'dmsetup', 'create', 't', '--table', '0 8192 thin p 0'); // active: the service holds p
    assert.notEqual(await servicePid(join(dir, 'root')), null);
    let id = 1;
    for (;; id++) {
      const res = await strata(...r, 'dmsetup', 'message', 'p', '0', `create_thin ${id}`);
      if (res.status === 0) continue;
      assert.match(res.stderr, /metadata space exhausted/);
      break;
    }
    assert.match(await ok(...r, 'dmsetup', 'status', 'p'), / \d+\/80 0\/1024 /);
    await truncate(meta, 4 << 20);
    await ok(...r, 'dmsetup', 'reload', 'p', '--table', poolTable);
    await ok(...r, 'dmsetup', 'suspend', 'p');
    await ok(...r, 'dmsetup', 'resume', 'p');
    assert.match(await ok(...r, 'dmsetup', 'status', 'p'), / \d+\/1024 0\/1024 /);
    await ok(...r, 'dmsetup', 'message', 'p', '0', `create_thin ${id}`);
    await writeFile(join(dir, 'x'), pattern(1 << 20, 9));
    await ok(...r, 'thin', 'write', 't', join(dir, 'x'));
    await ok(...r, 'dmsetup', 'service', 'stop');
    if (thinTools) assert.equal(tool('thin_check', [meta]).status, 0);
  } finally {
    await stopService(join(dir, 'root')).catch(() => undefined);
    await cleanup();
  }
});
