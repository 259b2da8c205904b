import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  encodeGreeting, decodeOptionHeader, encodeOptionReply, decodeGoData, decodeMetaContextData,
  matchMetaContexts, encodeExportNameReply, encodeInfoExport, encodeServerEntry,
} from '../../src/nbd/option-codec.js';
import {
  decodeRequest, encodeRequest, encodeSimpleReply, encodeBlockStatusChunk, encodeDataChunkHeader, encodeErrorChunk,
} from '../../src/nbd/request-codec.js';
import { shapeExtents } from '../../src/nbd/block-status.js';
import { checkRequest, type CheckContext } from '../../src/nbd/request-check.js';
import { CMD, CMD_FLAG, NBD_ERR, IHAVEOPT, REP } from '../../src/nbd/protocol.js';
import { isStrataError } from '../../src/errors.js';
import { goData, metaData } from './helpers.js';

test('greeting is NBDMAGIC IHAVEOPT with FIXED_NEWSTYLE|NO_ZEROES', () => {
  assert.equal(encodeGreeting().toString('hex'), '4e42444d41474943' + '49484156454f5054' + '0003');
});

test('option header: magic checked, fields big-endian', () => {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(IHAVEOPT, 0);
  h.writeUInt32BE(7, 8);
  h.writeUInt32BE(300, 12);
  assert.deepEqual(decodeOptionHeader(h), { option: 7, length: 300 });
  h[0] = 0;
  assert.throws(() => decodeOptionHeader(h), (e) => isStrataError(e, 'PROTOCOL_ERROR'));
});

test('option reply framing', () => {
  const r = encodeOptionReply(3, REP.SERVER, encodeServerEntry('disk', 'desc'));
  assert.equal(r.readBigUInt64BE(0), 0x0003e889045565a9n);
  assert.equal(r.readUInt32BE(8), 3);
  assert.equal(r.readUInt32BE(12), 2);
  assert.equal(r.readUInt32BE(16), 4 + 4 + 4);
  assert.equal(r.subarray(24, 28).toString(), 'disk');
  assert.equal(r.subarray(28).toString(), 'desc');
});

test('GO data decodes and rejects truncation, trailing bytes, NUL and oversize names', () => {
  assert.deepEqual(decodeGoData(goData('disk', [3, 2])), { name: 'disk', infoRequests: [3, 2] });
  assert.deepEqual(decodeGoData(goData('', [])), { name: '', infoRequests: [] });
  const bad = (b: Buffer): void => assert.throws(() => decodeGoData(b), (e) => isStrataError(e, 'PROTOCOL_ERROR') && e.context.reply === REP.ERR_INVALID);
  bad(goData('disk', [3]).subarray(0, 9));
  bad(Buffer.concat([goData('disk'), Buffer.from([0])]));
  bad(goData('di\0sk'));
  const huge = Buffer.alloc(4 + 5000 + 2);
  huge.writeUInt32BE(5000, 0);
  bad(huge);
  const lying = goData('disk');
  lying.writeUInt32BE(0xffffffff, 0);
  bad(lying);
});

test('meta context data and matching', () => {
  assert.deepEqual(decodeMetaContextData(metaData('x', ['base:allocation', 'qemu:dirty'])), { exportName: 'x', queries: ['base:allocation', 'qemu:dirty'] });
  assert.deepEqual(matchMetaContexts([], true), ['base:allocation']);
  assert.deepEqual(matchMetaContexts([], false), []);
  assert.deepEqual(matchMetaContexts(['base:'], true), ['base:allocation']);
  assert.deepEqual(matchMetaContexts(['base:'], false), []);
  assert.deepEqual(matchMetaContexts(['qemu:dirty-bitmap:x', 'base:allocation'], false), ['base:allocation']);
  assert.deepEqual(matchMetaContexts(['base:nothing'], true), []);
});

test('EXPORT_NAME reply honours NO_ZEROES', () => {
  assert.equal(encodeExportNameReply(1 << 20, 1, true).length, 10);
  const full = encodeExportNameReply(1 << 20, 1, false);
  assert.equal(full.length, 134);
  assert.equal(full.readBigUInt64BE(0), 1048576n);
  assert.ok(full.subarray(10).every((b) => b === 0));
  const info = encodeInfoExport(2 ** 40, 0x0ded);
  assert.equal(info.length, 12);
  assert.equal(info.readBigUInt64BE(2), 2n ** 40n);
});

test('request header round-trips; huge offsets are flagged, bad magic throws', () => {
  const r = decodeRequest(encodeRequest(CMD.WRITE, CMD_FLAG.FUA, 0xdeadbeefcafef00dn, 4096, 512));
  assert.deepEqual(r, { flags: 1, type: 1, cookie: 0xdeadbeefcafef00dn, offset: 4096, offsetOverflow: false, length: 512 });
  assert.equal(decodeRequest(encodeRequest(CMD.READ, 0, 1n, 2n ** 63n, 1)).offsetOverflow, true);
  // offsets whose high half is set, either side of 2^53 (offsets decode from two 32-bit halves)
  for (const offset of [2n ** 32n + 5n, 2n ** 52n + 2n ** 32n - 1n, 2n ** 53n - 1n]) {
    assert.deepEqual(decodeRequest(encodeRequest(CMD.READ, 0, 1n, offset, 1)).offset, Number(offset));
  }
  for (const offset of [2n ** 53n, 2n ** 64n - 1n]) {
    const d = decodeRequest(encodeRequest(CMD.READ, 0, 1n, offset, 1));
    assert.equal(d.offsetOverflow, true, `${offset}`);
    assert.equal(d.offset, Number.MAX_SAFE_INTEGER);
  }
  const bad = encodeRequest(CMD.READ, 0, 1n, 0, 1);
  bad[0] = 0xff;
  assert.throws(() => decodeRequest(bad), (e) => isStrataError(e, 'PROTOCOL_ERROR'));
});

test('simple and structured replies', () => {
  const s = encodeSimpleReply(7n, NBD_ERR.EIO);
  assert.equal(s.toString('hex'), '67446698' + '00000005' + '0000000000000007');
  const d = encodeDataChunkHeader(9n, 4096, 100, true);
  assert.equal(d.readUInt32BE(0), 0x668e33ef);
  assert.equal(d.readUInt16BE(4), 1);
  assert.equal(d.readUInt16BE(6), 1);
  assert.equal(d.readUInt32BE(16), 108);
  assert.equal(d.readBigUInt64BE(20), 4096n);
  assert.equal(encodeDataChunkHeader(9n, 2 ** 52 + 2 ** 32 + 7, 1, false).readBigUInt64BE(20), 2n ** 52n + 2n ** 32n + 7n);
  const e = encodeErrorChunk(9n, NBD_ERR.EINVAL, 'bad');
  assert.equal(e.readUInt16BE(6), 0x8001);
  assert.equal(e.readUInt32BE(20), 22);
  assert.equal(e.readUInt16BE(24), 3);
  const bs = encodeBlockStatusChunk(3n, 1, [
    { offset: 0, length: 65536, hole: true, zero: true },
    { offset: 65536, length: 4096, hole: false, zero: false },
  ], true);
  assert.equal(bs.readUInt16BE(6), 5);
  assert.equal(bs.readUInt32BE(16), 4 + 16);
  assert.deepEqual([bs.readUInt32BE(20), bs.readUInt32BE(24), bs.readUInt32BE(28), bs.readUInt32BE(32), bs.readUInt32BE(36)], [1, 65536, 3, 4096, 0]);
});

const ext = (offset: number, length: number, hole: boolean): { offset: number; length: number; hole: boolean; zero: boolean } => ({ offset, length, hole, zero: hole });

test('block status: clip to request, merge equal flags, REQ_ONE, gaps, empty', () => {
  const map = [ext(0, 100, true), ext(100, 100, true), ext(200, 50, false), ext(250, 1000, true)];
  assert.deepEqual(shapeExtents(map, 50, 300, false), [ext(50, 150, true), ext(200, 50, false), ext(250, 100, true)]);
  assert.deepEqual(shapeExtents(map, 50, 300, true), [ext(50, 150, true)]);
  assert.deepEqual(shapeExtents(map, 210, 10, true), [ext(210, 10, false)]);
  // a gap stops the reply (the client asks again from there)
  assert.deepEqual(shapeExtents([ext(0, 10, true), ext(20, 10, false)], 0, 30, false), [ext(0, 10, true)]);
  // nothing usable: all data is the truthful answer
  assert.deepEqual(shapeExtents([], 5, 10, false), [ext(5, 10, false)]);
  assert.deepEqual(shapeExtents([ext(0, 4, false), ext(4, 4, true), ext(8, 4, false)], 0, 12, false, 2), [ext(0, 4, false), ext(4, 4, true)]);
});

test('request checks', () => {
  const ctx: CheckContext = { size: 1 << 20, readOnly: false, structuredReplies: true, metaContext: true, maxPayload: 1 << 25 };
  const req = (type: number, offset: number, length: number, flags = 0) => decodeRequest(encodeRequest(type, flags, 1n, offset, length));
  assert.equal(checkRequest(req(CMD.READ, 0, 4096), ctx), 0);
  assert.equal(checkRequest(req(CMD.READ, (1 << 20) - 1, 2), ctx), NBD_ERR.EINVAL);
  assert.equal(checkRequest(req(CMD.WRITE, (1 << 20) - 1, 2), ctx), NBD_ERR.ENOSPC);
  assert.equal(checkRequest(req(CMD.WRITE_ZEROES, 1 << 20, 1), ctx), NBD_ERR.ENOSPC);
  assert.equal(checkRequest(req(CMD.TRIM, 1 << 20, 1), ctx), NBD_ERR.EINVAL);
  assert.equal(checkRequest(req(CMD.READ, 0, 4096, 1 << 9), ctx), NBD_ERR.EINVAL, 'unknown flag');
  assert.equal(checkRequest(req(CMD.READ, 0, 4096, CMD_FLAG.NO_HOLE), ctx), NBD_ERR.EINVAL, 'flag on wrong command');
  assert.equal(checkRequest(req(CMD.READ, 0, 4096, CMD_FLAG.FUA), ctx), 0, 'FUA is fine anywhere');
  assert.equal(checkRequest(req(CMD.FLUSH, 1, 0), ctx), NBD_ERR.EINVAL);
  assert.equal(checkRequest(req(12, 0, 0), ctx), NBD_ERR.EINVAL);
  assert.equal(checkRequest(decodeRequest(encodeRequest(CMD.READ, 0, 1n, 2n ** 63n, 1)), ctx), NBD_ERR.EINVAL);
  assert.equal(checkRequest(req(CMD.BLOCK_STATUS, 0, 0), ctx), NBD_ERR.EINVAL);
  assert.equal(checkRequest(req(CMD.BLOCK_STATUS, 0, 10), { ...ctx, metaContext: false }), NBD_ERR.EINVAL);
  assert.equal(checkRequest(req(CMD.READ, 0, 10, CMD_FLAG.DF), { ...ctx, structuredReplies: false }), NBD_ERR.EINVAL);
  const ro = { ...ctx, readOnly: true };
  for (const t of [CMD.WRITE, CMD.TRIM, CMD.WRITE_ZEROES]) assert.equal(checkRequest(req(t, 0, 10), ro), NBD_ERR.EPERM);
  assert.equal(checkRequest(req(CMD.READ, 0, 1 << 20), { ...ctx, maxPayload: 4096 }), NBD_ERR.EOVERFLOW);
});
