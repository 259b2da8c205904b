// Protocol edge cases with a hand-driven client against an in-process server.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { stat } from 'node:fs/promises';
import { NbdServer } from '../../src/nbd/server.js';
import { CMD, CMD_FLAG, OPT, REP, INFO, NBD_ERR, TFLAG } from '../../src/nbd/protocol.js';
import { strataError } from '../../src/errors.js';
import { MemoryExport, MEM_BLOCK } from './memory-export.js';
import { RawClient, tempDir, goData, metaData } from './helpers.js';

let dir: string;
let cleanup: () => Promise<void>;
let sock: string;
let server: NbdServer;
const MEM_SIZE = 64 << 20;
const mem = new MemoryExport('mem', MEM_SIZE, false, 'memory disk');
const ro = new MemoryExport('ro', 1 << 20, true);

before(async () => {
  ({ dir, cleanup } = await tempDir());
  sock = join(dir, 'nbd.sock');
  server = new NbdServer([mem, ro]);
  await server.listenUnix(sock);
});
after(async () => {
  await server.close();
  await cleanup();
});

/** Connect, negotiate structured replies (optionally base:allocation) and GO. */
async function open(name: string, opts: { structured?: boolean; meta?: boolean } = {}): Promise<{ c: RawClient; flags: number }> {
  const c = await RawClient.connect(sock);
  await c.greet(3);
  if (opts.structured !== false) {
    c.sendOption(OPT.STRUCTURED_REPLY);
    assert.equal((await c.readOptionReply()).type, REP.ACK);
  }
  if (opts.meta) {
    c.sendOption(OPT.SET_META_CONTEXT, metaData(name, ['base:allocation']));
    const replies = await c.readOptionReplies();
    assert.equal(replies[0]?.type, REP.META_CONTEXT);
  }
  c.sendOption(OPT.GO, goData(name));
  const replies = await c.readOptionReplies();
  assert.equal(replies.at(-1)?.type, REP.ACK);
  const info = replies.find((r) => r.type === REP.INFO && r.data.readUInt16BE(0) === INFO.EXPORT);
  assert.ok(info);
  return { c, flags: info.data.readUInt16BE(10) };
}

test('socket is created with mode 0600', async () => {
  assert.equal((await stat(sock)).mode & 0o777, 0o600);
});

test('unknown client flags: connection dropped', async () => {
  const c = await RawClient.connect(sock);
  await c.greet(0x7);
  assert.equal(await c.closedWithin(2000), true);
});

test('LIST, INFO with name/description/block size, unknown options, STARTTLS, GO on a missing export', async () => {
  const c = await RawClient.connect(sock);
  assert.equal(await c.greet(3), 3);
  c.sendOption(OPT.LIST);
  const list = await c.readOptionReplies();
  assert.deepEqual(list.filter((r) => r.type === REP.SERVER).map((r) => r.data.subarray(4, 4 + r.data.readUInt32BE(0)).toString()).sort(), ['mem', 'ro']);
  c.sendOption(OPT.LIST, Buffer.from('x'));
  assert.equal((await c.readOptionReply()).type, REP.ERR_INVALID);
  c.sendOption(OPT.INFO, goData('mem', [INFO.NAME, INFO.DESCRIPTION, INFO.BLOCK_SIZE]));
  const info = await c.readOptionReplies();
  const byType = new Map(info.filter((r) => r.type === REP.INFO).map((r) => [r.data.readUInt16BE(0), r.data]));
  assert.equal(byType.get(INFO.EXPORT)?.readBigUInt64BE(2), BigInt(MEM_SIZE));
  assert.equal(byType.get(INFO.NAME)?.subarray(2).toString(), 'mem');
  assert.equal(byType.get(INFO.DESCRIPTION)?.subarray(2).toString(), 'memory disk');
  assert.equal(byType.get(INFO.BLOCK_SIZE)?.length, 14);
  assert.equal(info.at(-1)?.type, REP.ACK);
  for (const opt of [OPT.STARTTLS, OPT.EXTENDED_HEADERS, OPT.PEEK_EXPORT, 0x1234]) {
    c.sendOption(opt, Buffer.from('junk'));
    const r = await c.readOptionReply();
    assert.equal(r.type, REP.ERR_UNSUP);
    assert.equal(r.option, opt);
  }
  c.sendOption(OPT.GO, goData('nope'));
  assert.equal((await c.readOptionReply()).type, REP.ERR_UNKNOWN);
  c.sendOption(OPT.GO, goData('mem').subarray(0, 5));
  assert.equal((await c.readOptionReply()).type, REP.ERR_INVALID);
  // oversize option data is skipped, not buffered, and haggling goes on
  c.sendOption(OPT.INFO, Buffer.alloc(100_000));
  assert.equal((await c.readOptionReply()).type, REP.ERR_TOO_BIG);
  c.sendOption(OPT.SET_META_CONTEXT, metaData('mem', ['base:allocation']));
  assert.equal((await c.readOptionReply()).type, REP.ERR_INVALID, 'SET_META_CONTEXT needs structured replies');
  c.sendOption(OPT.ABORT);
  assert.equal((await c.readOptionReply()).type, REP.ACK);
  assert.equal(await c.closedWithin(2000), true);
});

test('LIST_META_CONTEXT and SET_META_CONTEXT', async () => {
  const c = await RawClient.connect(sock);
  await c.greet(3);
  c.sendOption(OPT.STRUCTURED_REPLY);
  await c.readOptionReply();
  c.sendOption(OPT.LIST_META_CONTEXT, metaData('mem', []));
  const l = await c.readOptionReplies();
  assert.deepEqual(l.map((r) => r.type), [REP.META_CONTEXT, REP.ACK]);
  assert.equal(l[0]?.data.subarray(4).toString(), 'base:allocation');
  c.sendOption(OPT.SET_META_CONTEXT, metaData('mem', ['qemu:dirty-bitmap:a', 'base:allocation']));
  const s = await c.readOptionReplies();
  assert.deepEqual(s.map((r) => r.type), [REP.META_CONTEXT, REP.ACK]);
  assert.notEqual(s[0]?.data.readUInt32BE(0), 0);
  c.sendOption(OPT.SET_META_CONTEXT, metaData('nope', ['base:allocation']));
  assert.equal((await c.readOptionReply()).type, REP.ERR_UNKNOWN);
  c.close();
});

test('EXPORT_NAME without and with NO_ZEROES; unknown name closes', async () => {
  // 0: a plain (not fixed) newstyle client; 1: fixed; 3: fixed + NO_ZEROES
  for (const [flags, len] of [[0, 134], [1, 134], [3, 10]] as const) {
    const c = await RawClient.connect(sock);
    await c.greet(flags);
    c.sendOption(OPT.EXPORT_NAME, Buffer.from('mem'));
    const r = await c.reader.read(len);
    assert.equal(r.readBigUInt64BE(0), BigInt(MEM_SIZE));
    assert.ok((r.readUInt16BE(8) & TFLAG.HAS_FLAGS) !== 0);
    // transmission works: simple reply (no structured replies negotiated)
    c.sendRequest(CMD.READ, 0, 5n, 0, 16);
    const rep = await c.readSimpleReply(16);
    assert.equal(rep.error, 0);
    assert.equal(rep.cookie, 5n);
    c.close();
  }
  const c = await RawClient.connect(sock);
  await c.greet(1);
  c.sendOption(OPT.EXPORT_NAME, Buffer.from('missing'));
  assert.equal(await c.closedWithin(2000), true);
});

test('read/write/FUA/flush/trim/zero/block status round trip', async () => {
  const { c, flags } = await open('mem', { meta: true });
  for (const f of [TFLAG.SEND_FLUSH, TFLAG.SEND_FUA, TFLAG.SEND_TRIM, TFLAG.SEND_WRITE_ZEROES, TFLAG.SEND_DF, TFLAG.SEND_CACHE, TFLAG.SEND_FAST_ZERO, TFLAG.CAN_MULTI_CONN]) {
    assert.ok((flags & f) !== 0, `flag ${f}`);
  }
  const data = Buffer.alloc(3 * MEM_BLOCK, 0xab);
  c.sendRequest(CMD.WRITE, CMD_FLAG.FUA, 1n, MEM_BLOCK, data.length, data);
  assert.equal((await c.readSimpleReply()).error, 0);
  assert.equal(mem.fuaWrites, 1);
  c.sendRequest(CMD.READ, 0, 2n, MEM_BLOCK - 10, 20);
  const chunk = await c.readChunk();
  assert.equal(chunk.type, 1);
  assert.equal(chunk.flags & 1, 1);
  assert.equal(chunk.payload.readBigUInt64BE(0), BigInt(MEM_BLOCK - 10));
  assert.deepEqual([...chunk.payload.subarray(8)], [...Buffer.alloc(10), ...Buffer.alloc(10, 0xab)]);
  c.sendRequest(CMD.FLUSH, 0, 3n, 0, 0);
  assert.equal((await c.readSimpleReply()).error, 0);
  assert.ok(mem.flushes >= 1);
  c.sendRequest(CMD.TRIM, 0, 4n, 2 * MEM_BLOCK, MEM_BLOCK);
  assert.equal((await c.readSimpleReply()).error, 0);
  c.sendRequest(CMD.WRITE_ZEROES, CMD_FLAG.NO_HOLE, 5n, 3 * MEM_BLOCK, 100);
  assert.equal((await c.readSimpleReply()).error, 0);
  c.sendRequest(CMD.CACHE, 0, 6n, 0, 4096);
  assert.equal((await c.readSimpleReply()).error, 0);
  c.sendRequest(CMD.BLOCK_STATUS, 0, 7n, 0, 5 * MEM_BLOCK);
  const bs = await c.readChunk();
  assert.equal(bs.type, 5);
  assert.equal(bs.flags & 1, 1);
  const pairs: number[][] = [];
  for (let p = 4; p < bs.payload.length; p += 8) pairs.push([bs.payload.readUInt32BE(p), bs.payload.readUInt32BE(p + 4)]);
  assert.deepEqual(pairs, [[MEM_BLOCK, 3], [MEM_BLOCK, 0], [MEM_BLOCK, 3], [MEM_BLOCK, 0], [MEM_BLOCK, 3]]);
  c.sendRequest(CMD.BLOCK_STATUS, CMD_FLAG.REQ_ONE, 8n, 100, 5 * MEM_BLOCK);
  const one = await c.readChunk();
  assert.equal(one.payload.length, 12);
  assert.deepEqual([one.payload.readUInt32BE(4), one.payload.readUInt32BE(8)], [MEM_BLOCK - 100, 3]);
  c.sendRequest(CMD.READ, CMD_FLAG.DF, 9n, 3 * MEM_BLOCK, 200);
  const z = await c.readChunk();
  assert.deepEqual([...z.payload.subarray(8, 108)], [...Buffer.alloc(100)], 'zeroed');
  assert.deepEqual([...z.payload.subarray(108)], [...Buffer.alloc(100, 0xab)]);
  // FAST_ZERO that the export cannot do quickly: ENOTSUP
  c.sendRequest(CMD.WRITE_ZEROES, CMD_FLAG.NO_HOLE | CMD_FLAG.FAST_ZERO, 10n, 0, 100);
  assert.equal((await c.readSimpleReply()).error, NBD_ERR.ENOTSUP);
  c.sendRequest(CMD.DISC, 0, 11n, 0, 0);
  assert.equal(await c.closedWithin(2000), true);
});

test('bad requests get errors and the connection goes on; other clients undisturbed', async () => {
  const { c } = await open('mem');
  const { c: other } = await open('mem');
  const size = MEM_SIZE;
  const cases: Array<[number, number, number, number, number]> = [
    // type, flags, offset, length, expected
    [CMD.READ, 0, size - 1, 2, NBD_ERR.EINVAL],
    [CMD.WRITE_ZEROES, 0, size, 1, NBD_ERR.ENOSPC],
    [CMD.TRIM, 0, size - 10, 20, NBD_ERR.EINVAL],
    [CMD.READ, 1 << 12, 0, 1, NBD_ERR.EINVAL],
    [99, 0, 0, 0, NBD_ERR.EINVAL],
    [CMD.BLOCK_STATUS, 0, 0, 4096, NBD_ERR.EINVAL], // no meta context negotiated
    [CMD.FLUSH, 0, 5, 0, NBD_ERR.EINVAL],
    [CMD.READ, 0, 0, 40 * 1024 * 1024, NBD_ERR.EOVERFLOW],
  ];
  let cookie = 100n;
  for (const [type, flags, offset, length, expected] of cases) {
    c.sendRequest(type, flags, ++cookie, offset, length);
    if (type === CMD.READ || type === CMD.BLOCK_STATUS) {
      const chunk = await c.readChunk();
      assert.equal(chunk.type, 0x8001, `type ${type}`);
      assert.equal(chunk.payload.readUInt32BE(0), expected, `type ${type} off ${offset} len ${length}`);
      assert.equal(chunk.cookie, cookie);
    } else {
      const r = await c.readSimpleReply();
      assert.equal(r.error, expected, `type ${type}`);
      assert.equal(r.cookie, cookie);
    }
  }
  // write past the end: payload consumed, ENOSPC, stream still in sync
  c.sendRequest(CMD.WRITE, 0, 200n, size - 4, 8, Buffer.alloc(8, 1));
  assert.equal((await c.readSimpleReply()).error, NBD_ERR.ENOSPC);
  // oversize write: payload skipped, EINVAL
  const big = Buffer.alloc(33 * 1024 * 1024, 2);
  c.sendRequest(CMD.WRITE, 0, 201n, 0, big.length, big);
  assert.equal((await c.readSimpleReply()).error, NBD_ERR.EINVAL);
  // an export failure becomes an error reply
  mem.failAt = { offset: 4096, error: strataError('POOL_NO_SPACE', 'pool full') };
  c.sendRequest(CMD.WRITE, 0, 202n, 4096, 10, Buffer.alloc(10));
  assert.equal((await c.readSimpleReply()).error, NBD_ERR.ENOSPC);
  mem.failAt = { offset: 4096, error: new Error('disk on fire') };
  c.sendRequest(CMD.READ, 0, 203n, 4096, 10);
  assert.equal((await c.readChunk()).payload.readUInt32BE(0), NBD_ERR.EIO);
  mem.failAt = undefined;
  c.sendRequest(CMD.READ, 0, 204n, 0, 10);
  assert.equal((await c.readChunk()).type, 1);
  // garbage instead of a request: that client is hung up on, the other goes on
  c.socket.write(Buffer.alloc(28, 0x55));
  assert.equal(await c.closedWithin(2000), true);
  other.sendRequest(CMD.READ, 0, 1n, 0, 10);
  assert.equal((await other.readChunk()).type, 1);
  other.close();
});

test('read-only export: EPERM for writes, READ_ONLY flag', async () => {
  const { c, flags } = await open('ro');
  assert.ok((flags & TFLAG.READ_ONLY) !== 0);
  assert.equal(flags & (TFLAG.SEND_TRIM | TFLAG.SEND_WRITE_ZEROES), 0);
  c.sendRequest(CMD.WRITE, 0, 1n, 0, 4, Buffer.alloc(4));
  assert.equal((await c.readSimpleReply()).error, NBD_ERR.EPERM);
  c.sendRequest(CMD.TRIM, 0, 2n, 0, 4);
  assert.equal((await c.readSimpleReply()).error, NBD_ERR.EPERM);
  c.sendRequest(CMD.WRITE_ZEROES, 0, 3n, 0, 4);
  assert.equal((await c.readSimpleReply()).error, NBD_ERR.EPERM);
  c.close();
});

test('concurrent requests: replies complete out of order but whole', async () => {
  const { c } = await open('mem');
  const pattern = (i: number): Buffer => Buffer.alloc(8192, i);
  for (let i = 0; i < 32; i++) c.sendRequest(CMD.WRITE, 0, BigInt(i), i * 8192, 8192, pattern(i));
  const seen = new Set<bigint>();
  for (let i = 0; i < 32; i++) {
    const r = await c.readSimpleReply();
    assert.equal(r.error, 0);
    seen.add(r.cookie);
  }
  assert.equal(seen.size, 32);
  mem.delayMs = 5;
  for (let i = 0; i < 32; i++) c.sendRequest(CMD.READ, 0, BigInt(1000 + i), i * 8192, 8192);
  for (let i = 0; i < 32; i++) {
    const chunk = await c.readChunk();
    const idx = Number(chunk.cookie - 1000n);
    assert.ok(chunk.payload.subarray(8).equals(pattern(idx)), `cookie ${chunk.cookie}`);
  }
  mem.delayMs = 0;
  c.close();
});

test('a client that never finishes haggling is dropped after the handshake timeout', async () => {
  const impatient = new NbdServer([mem], { handshakeTimeoutMs: 200 });
  const path = join(dir, 'impatient.sock');
  await impatient.listenUnix(path);
  try {
    const c = await RawClient.connect(path);
    await c.greet(3);
    assert.equal(await c.closedWithin(3000), true);
    for (let i = 0; i < 50 && impatient.connectionCount > 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(impatient.connectionCount, 0);
  } finally {
    await impatient.close();
  }
});

test('removeExport refuses while in use unless forced', async () => {
  const extra = new MemoryExport('extra', 1 << 20);
  server.addExport(extra);
  const { c } = await open('extra');
  await assert.rejects(server.removeExport('extra'), (e: unknown) => (e as { code?: string }).code === 'DEVICE_BUSY');
  await server.removeExport('extra', { force: true });
  assert.equal(await c.closedWithin(2000), true);
  assert.equal(server.find('extra'), undefined);
});
