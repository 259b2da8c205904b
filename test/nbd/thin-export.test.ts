// ThinExport over a real pool, driven through the protocol: TRIM and WRITE_ZEROES unmap whole
// blocks (holes in BLOCK_STATUS, zeroes on read), NO_HOLE keeps blocks provisioned, FAST_ZERO
// is refused only where zeroing would mean writing, FLUSH commits the pool.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { writeFile, truncate } from 'node:fs/promises';
import { NbdServer } from '../../src/nbd/server.js';
import { ThinExport } from '../../src/nbd/thin-export.js';
import { CMD, CMD_FLAG, OPT, REP, NBD_ERR } from '../../src/nbd/protocol.js';
import { Pool } from '../../src/thin/pool.js';
import type { ThinDevice } from '../../src/thin/thin-device.js';
import { RawClient, tempDir, goData, metaData } from './helpers.js';

const MiB = 1024 * 1024;
const BLOCK = 64 * 1024;
let dir: string;
let cleanup: () => Promise<void>;
let pool: Pool;
let dev: ThinDevice;
let server: NbdServer;
let c: RawClient;

before(async () => {
  ({ dir, cleanup } = await tempDir());
  for (const [f, size] of [['meta', 8 * MiB], ['data', 64 * MiB]] as const) {
    await writeFile(join(dir, f), '');
    await truncate(join(dir, f), size);
  }
  pool = await Pool.open({ metadataPath: join(dir, 'meta'), dataPath: join(dir, 'data'), dataBlockSectors: 128 });
  await pool.message('create_thin 0');
  dev = await pool.openThin(0, 16 * MiB);
  server = new NbdServer([new ThinExport(dev, { name: 't' })]);
  await server.listenUnix(join(dir, 's.sock'));
  c = await RawClient.connect(join(dir, 's.sock'));
  await c.greet(3);
  c.sendOption(OPT.STRUCTURED_REPLY);
  await c.readOptionReply();
  c.sendOption(OPT.SET_META_CONTEXT, metaData('t', ['base:allocation']));
  await c.readOptionReplies();
  c.sendOption(OPT.GO, goData('t'));
  assert.equal((await c.readOptionReplies()).at(-1)?.type, REP.ACK);
});

after(async () => {
  c?.close();
  await server?.close();
  await dev?.close();
  await pool?.close();
  await cleanup();
});

let cookie = 0n;
async function simple(type: number, flags: number, offset: number, length: number, payload?: Buffer): Promise<number> {
  c.sendRequest(type, flags, ++cookie, offset, length, payload);
  const r = await c.readSimpleReply();
  assert.equal(r.cookie, cookie);
  return r.error;
}

async function map(offset: number, length: number): Promise<Array<[number, number]>> {
  c.sendRequest(CMD.BLOCK_STATUS, 0, ++cookie, offset, length);
  const chunk = await c.readChunk();
  assert.equal(chunk.type, 5);
  const out: Array<[number, number]> = [];
  for (let p = 4; p < chunk.payload.length; p += 8) out.push([chunk.payload.readUInt32BE(p), chunk.payload.readUInt32BE(p + 4)]);
  return out;
}

async function read(offset: number, length: number): Promise<Buffer> {
  c.sendRequest(CMD.READ, 0, ++cookie, offset, length);
  const chunk = await c.readChunk();
  assert.equal(chunk.type, 1);
  return chunk.payload.subarray(8);
}

test('unprovisioned device: one hole that reads as zero', async () => {
  assert.deepEqual(await map(0, 16 * MiB), [[16 * MiB, 3]]);
  assert.ok((await read(0, BLOCK)).equals(Buffer.alloc(BLOCK)));
});

test('writes provision blocks; FLUSH commits; TRIM unmaps whole blocks', async () => {
  assert.equal(await simple(CMD.WRITE, 0, BLOCK, 4 * BLOCK, Buffer.alloc(4 * BLOCK, 7)), 0);
  assert.equal(await simple(CMD.FLUSH, 0, 0, 0), 0);
  assert.deepEqual(await map(0, 8 * BLOCK), [[BLOCK, 3], [4 * BLOCK, 0], [3 * BLOCK, 3]]);
  assert.equal(await simple(CMD.TRIM, 0, 2 * BLOCK, BLOCK), 0);
  assert.deepEqual(await map(0, 8 * BLOCK), [[BLOCK, 3], [BLOCK, 0], [BLOCK, 3], [2 * BLOCK, 0], [3 * BLOCK, 3]]);
  assert.ok((await read(2 * BLOCK, BLOCK)).equals(Buffer.alloc(BLOCK)));
});

test('WRITE_ZEROES: unmaps (and FAST_ZERO is fine) unless NO_HOLE; NO_HOLE+FAST_ZERO is ENOTSUP', async () => {
  assert.equal(await simple(CMD.WRITE_ZEROES, CMD_FLAG.FAST_ZERO, 3 * BLOCK, BLOCK), 0);
  assert.deepEqual((await map(3 * BLOCK, BLOCK))[0], [BLOCK, 3]);
  assert.equal(await simple(CMD.WRITE_ZEROES, CMD_FLAG.NO_HOLE | CMD_FLAG.FAST_ZERO, 4 * BLOCK, BLOCK), NBD_ERR.ENOTSUP);
  assert.equal(await simple(CMD.WRITE_ZEROES, CMD_FLAG.NO_HOLE | CMD_FLAG.FUA, 4 * BLOCK, BLOCK), 0);
  assert.deepEqual((await map(4 * BLOCK, BLOCK))[0], [BLOCK, 0], 'still provisioned');
  assert.ok((await read(4 * BLOCK, BLOCK)).equals(Buffer.alloc(BLOCK)));
  // a partial-block zero inside a mapped block keeps the rest
  assert.equal(await simple(CMD.WRITE, 0, 8 * BLOCK, BLOCK, Buffer.alloc(BLOCK, 9)), 0);
  assert.equal(await simple(CMD.WRITE_ZEROES, 0, 8 * BLOCK + 100, 100), 0);
  const b = await read(8 * BLOCK, BLOCK);
  assert.equal(b[99], 9);
  assert.ok(b.subarray(100, 200).equals(Buffer.alloc(100)));
  assert.equal(b[200], 9);
});

test('REQ_ONE returns one extent no longer than asked', async () => {
  c.sendRequest(CMD.BLOCK_STATUS, CMD_FLAG.REQ_ONE, ++cookie, 100, 10 * BLOCK);
  const chunk = await c.readChunk();
  assert.equal(chunk.payload.length, 12);
  assert.deepEqual([chunk.payload.readUInt32BE(4), chunk.payload.readUInt32BE(8)], [BLOCK - 100, 3]);
});
