// NbdClient (the CLI's way into a served device) against our own server: reads, writes, flush,
// block status, concurrent requests, and errors mapped back to strata error codes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { writeFile, truncate, readFile } from 'node:fs/promises';
import { NbdServer } from '../../src/nbd/server.js';
import { FileExport } from '../../src/nbd/file-export.js';
import { NbdClient } from '../../src/nbd/client.js';
import { isStrataError } from '../../src/errors.js';
import { tempDir } from './helpers.js';

const MiB = 1024 * 1024;

test('client: read/write/flush/block status, large and concurrent requests, errors by code', async () => {
  const { dir, cleanup } = await tempDir('strata-nbd-client-');
  const file = join(dir, 'disk');
  await writeFile(file, '');
  await truncate(file, 64 * MiB);
  const exports = [await FileExport.open(file, { name: 'disk' }), await FileExport.open(file, { name: 'ro', readOnly: true })];
  const server = new NbdServer(exports);
  const sock = join(dir, 'nbd.sock');
  await server.listenUnix(sock);
  try {
    const c = await NbdClient.connect(sock, 'disk');
    assert.equal(c.size, 64 * MiB);
    assert.equal(c.readOnly, false);
    const data = Buffer.alloc(40 * MiB); // more than one request's worth (32 MiB)
    for (let i = 0; i < data.length; i += 4096) data.writeUInt32BE(i / 4096, i);
    await Promise.all([c.write(data, 8 * MiB), c.write(Buffer.from('hello'), 100)]);
    await c.flush();
    const back = Buffer.alloc(data.length);
    await c.read(back, 8 * MiB);
    assert.ok(back.equals(data));
    const head = Buffer.alloc(105, 0xff);
    await c.read(head, 0);
    assert.ok(head.subarray(0, 100).every((b) => b === 0));
    assert.equal(head.subarray(100).toString(), 'hello');
    assert.ok((await readFile(file)).subarray(8 * MiB, 48 * MiB).equals(data));

    // extents start at the offset asked for and never overlap; the written range is data
    const ext = await c.blockStatus(8 * MiB, 40 * MiB);
    assert.equal(ext[0]!.offset, 8 * MiB);
    assert.equal(ext[0]!.hole, false);
    const tail = await c.blockStatus(60 * MiB, 4 * MiB);
    assert.equal(tail[0]!.offset, 60 * MiB);
    assert.equal(tail[0]!.hole, true);

    await assert.rejects(c.write(Buffer.alloc(2), 64 * MiB - 1), (e: unknown) => isStrataError(e, 'OUT_OF_RANGE'));
    await c.close();
    await assert.rejects(c.read(Buffer.alloc(1), 0), (e: unknown) => isStrataError(e, 'DEVICE_NOT_FOUND'));

    const ro = await NbdClient.connect(sock, 'ro');
    assert.equal(ro.readOnly, true);
    await assert.rejects(ro.write(Buffer.alloc(512), 0), (e: unknown) => isStrataError(e, 'POOL_READ_ONLY'));
    const one = Buffer.alloc(5);
    await ro.read(one, 100);
    assert.equal(one.toString(), 'hello', 'the connection carries on after an error');
    await ro.close();

    await assert.rejects(NbdClient.connect(sock, 'nope'), (e: unknown) => isStrataError(e, 'DEVICE_NOT_FOUND'));
  } finally {
    await server.close();
    for (const e of exports) await e.close();
    await cleanup();
  }
});
