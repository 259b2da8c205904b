/**
 * Transmission codec: request headers, simple replies and structured reply chunks, as pure
 * functions over buffers (proto.md "Request message", "Simple reply message", "Structured reply
 * chunk message"). The cookie is echoed untouched, so it stays a bigint.
 */
import { strataError } from '../errors.js';
import {
  REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE, REPLY_TYPE,
  STATE_HOLE, STATE_ZERO,
} from './protocol.js';
import type { NbdExtent } from './nbd-export.js';

export const REQUEST_HEADER_LENGTH = 28;
export const SIMPLE_REPLY_LENGTH = 16;
export const CHUNK_HEADER_LENGTH = 20;
/** The high 32 bits of Number.MAX_SAFE_INTEGER (2^53 - 1). */
const MAX_SAFE_HIGH_WORD = 0x1fffff;

export interface Request {
  flags: number;
  type: number;
  cookie: bigint;
  /** u64 on the wire; above 2^53 it cannot be a valid offset anyway, so it is kept as a number
   *  only when safe and flagged otherwise (`offsetOverflow`). */
  offset: number;
  offsetOverflow: boolean;
  length: number;
}

/** A wrong magic leaves us unable to find the next request: the caller must hang up. */
export function decodeRequest(buf: Buffer): Request {
  if (buf.length !== REQUEST_HEADER_LENGTH || buf.readUInt32BE(0) !== REQUEST_MAGIC) {
    throw strataError('PROTOCOL_ERROR', 'bad request magic');
  }
  // (as two halves: a BigInt per request is garbage the connection threads would collect)
  const offsetHigh = buf.readUInt32BE(16);
  const offsetOverflow = offsetHigh > MAX_SAFE_HIGH_WORD;
  return {
    flags: buf.readUInt16BE(4),
    type: buf.readUInt16BE(6),
    cookie: buf.readBigUInt64BE(8),
    offset: offsetOverflow ? Number.MAX_SAFE_INTEGER : offsetHigh * 2 ** 32 + buf.readUInt32BE(20),
    offsetOverflow,
    length: buf.readUInt32BE(24),
  };
}

/** Build a request header (used by tests and the raw-protocol client). */
export function encodeRequest(type: number, flags: number, cookie: bigint, offset: bigint | number, length: number): Buffer {
  const buf = Buffer.alloc(REQUEST_HEADER_LENGTH);
  buf.writeUInt32BE(REQUEST_MAGIC, 0);
  buf.writeUInt16BE(flags, 4);
  buf.writeUInt16BE(type, 6);
  buf.writeBigUInt64BE(cookie, 8);
  buf.writeBigUInt64BE(BigInt(offset), 16);
  buf.writeUInt32BE(length, 24);
  return buf;
}

// The replies every READ and WRITE gets are cut from Node's shared pool (allocUnsafe; each of
// their bytes is written): an ArrayBuffer of their own per request kept a connection thread's
// garbage collector busy.

export function encodeSimpleReply(cookie: bigint, error: number): Buffer {
  const buf = Buffer.allocUnsafe(SIMPLE_REPLY_LENGTH);
  buf.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  buf.writeUInt32BE(error, 4);
  buf.writeBigUInt64BE(cookie, 8);
  return buf;
}

function chunkHeader(buf: Buffer, done: boolean, type: number, cookie: bigint, payloadLength: number): void {
  buf.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  buf.writeUInt16BE(done ? REPLY_FLAG_DONE : 0, 4);
  buf.writeUInt16BE(type, 6);
  buf.writeBigUInt64BE(cookie, 8);
  buf.writeUInt32BE(payloadLength, 16);
}

/** OFFSET_DATA chunk header plus the u64 offset; the data follows separately (no copy). */
export function encodeDataChunkHeader(cookie: bigint, offset: number, dataLength: number, done: boolean): Buffer {
  const buf = Buffer.allocUnsafe(CHUNK_HEADER_LENGTH + 8);
  chunkHeader(buf, done, REPLY_TYPE.OFFSET_DATA, cookie, 8 + dataLength);
  buf.writeUInt32BE(Math.floor(offset / 2 ** 32), CHUNK_HEADER_LENGTH);
  buf.writeUInt32BE(offset >>> 0, CHUNK_HEADER_LENGTH + 4);
  return buf;
}

export function encodeHoleChunk(cookie: bigint, offset: number, length: number, done: boolean): Buffer {
  const buf = Buffer.alloc(CHUNK_HEADER_LENGTH + 12);
  chunkHeader(buf, done, REPLY_TYPE.OFFSET_HOLE, cookie, 12);
  buf.writeBigUInt64BE(BigInt(offset), CHUNK_HEADER_LENGTH);
  buf.writeUInt32BE(length, CHUNK_HEADER_LENGTH + 8);
  return buf;
}

export function encodeNoneChunk(cookie: bigint): Buffer {
  const buf = Buffer.alloc(CHUNK_HEADER_LENGTH);
  chunkHeader(buf, true, REPLY_TYPE.NONE, cookie, 0);
  return buf;
}

export function encodeErrorChunk(cookie: bigint, error: number, message: string): Buffer {
  const msg = Buffer.from(message.slice(0, 1024), 'utf8');
  const buf = Buffer.alloc(CHUNK_HEADER_LENGTH + 6 + msg.length);
  chunkHeader(buf, true, REPLY_TYPE.ERROR, cookie, 6 + msg.length);
  buf.writeUInt32BE(error, CHUNK_HEADER_LENGTH);
  buf.writeUInt16BE(msg.length, CHUNK_HEADER_LENGTH + 4);
  msg.copy(buf, CHUNK_HEADER_LENGTH + 6);
  return buf;
}

export function extentFlags(extent: NbdExtent): number {
  return (extent.hole ? STATE_HOLE : 0) | (extent.zero ? STATE_ZERO : 0);
}

/** One BLOCK_STATUS chunk for context `contextId`: (length, flags) pairs, already clipped. */
export function encodeBlockStatusChunk(cookie: bigint, contextId: number, extents: readonly NbdExtent[], done: boolean): Buffer {
  const payload = 4 + extents.length * 8;
  const buf = Buffer.alloc(CHUNK_HEADER_LENGTH + payload);
  chunkHeader(buf, done, REPLY_TYPE.BLOCK_STATUS, cookie, payload);
  buf.writeUInt32BE(contextId, CHUNK_HEADER_LENGTH);
  let pos = CHUNK_HEADER_LENGTH + 4;
  for (const e of extents) {
    buf.writeUInt32BE(e.length, pos);
    buf.writeUInt32BE(extentFlags(e), pos + 4);
    pos += 8;
  }
  return buf;
}
