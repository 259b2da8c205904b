/**
 * Handshake codec: the greeting, client options and the server's option replies, as pure
 * functions over buffers (proto.md "Fixed newstyle negotiation", "Option types").
 */
import { strataError } from '../errors.js';
import {
  NBDMAGIC, IHAVEOPT, OPTION_REPLY_MAGIC, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, INFO, REP,
  MAX_STRING, BASE_ALLOCATION,
} from './protocol.js';

export const GREETING_LENGTH = 18;
export const OPTION_HEADER_LENGTH = 16;

export function encodeGreeting(): Buffer {
  const buf = Buffer.alloc(GREETING_LENGTH);
  buf.writeBigUInt64BE(NBDMAGIC, 0);
  buf.writeBigUInt64BE(IHAVEOPT, 8);
  buf.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  return buf;
}

export interface OptionHeader {
  option: number;
  length: number;
}

/** Parse the 16-byte option header; a wrong magic means the peer is not a newstyle client. */
export function decodeOptionHeader(buf: Buffer): OptionHeader {
  if (buf.length !== OPTION_HEADER_LENGTH || buf.readBigUInt64BE(0) !== IHAVEOPT) {
    throw strataError('PROTOCOL_ERROR', 'bad option magic (not a newstyle NBD client)');
  }
  return { option: buf.readUInt32BE(8), length: buf.readUInt32BE(12) };
}

export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const buf = Buffer.alloc(20 + data.length);
  buf.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  buf.writeUInt32BE(option, 8);
  buf.writeUInt32BE(type, 12);
  buf.writeUInt32BE(data.length, 16);
  data.copy(buf, 20);
  return buf;
}

export function encodeErrorReply(option: number, type: number, message: string): Buffer {
  return encodeOptionReply(option, type, Buffer.from(message, 'utf8'));
}

/** NBD_REP_SERVER payload: u32 name length, name, then the description. */
export function encodeServerEntry(name: string, description = ''): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const descBytes = Buffer.from(description, 'utf8');
  const buf = Buffer.alloc(4 + nameBytes.length + descBytes.length);
  buf.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(buf, 4);
  descBytes.copy(buf, 4 + nameBytes.length);
  return buf;
}

export function encodeInfoExport(size: number, transmissionFlags: number): Buffer {
  const buf = Buffer.alloc(12);
  buf.writeUInt16BE(INFO.EXPORT, 0);
  buf.writeBigUInt64BE(BigInt(size), 2);
  buf.writeUInt16BE(transmissionFlags, 10);
  return buf;
}

export function encodeInfoText(type: typeof INFO.NAME | typeof INFO.DESCRIPTION, text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const buf = Buffer.alloc(2 + bytes.length);
  buf.writeUInt16BE(type, 0);
  bytes.copy(buf, 2);
  return buf;
}

export function encodeInfoBlockSize(min: number, preferred: number, max: number): Buffer {
  const buf = Buffer.alloc(14);
  buf.writeUInt16BE(INFO.BLOCK_SIZE, 0);
  buf.writeUInt32BE(min, 2);
  buf.writeUInt32BE(preferred, 6);
  buf.writeUInt32BE(max, 10);
  return buf;
}

export function encodeMetaContext(id: number, name: string): Buffer {
  const bytes = Buffer.from(name, 'utf8');
  const buf = Buffer.alloc(4 + bytes.length);
  buf.writeUInt32BE(id, 0);
  bytes.copy(buf, 4);
  return buf;
}

/** The EXPORT_NAME success reply: size, flags, and 124 zero bytes unless NO_ZEROES was agreed. */
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const buf = Buffer.alloc(noZeroes ? 10 : 134);
  buf.writeBigUInt64BE(BigInt(size), 0);
  buf.writeUInt16BE(transmissionFlags, 8);
  return buf;
}

/** Option data that does not parse: answered NBD_REP_ERR_INVALID, haggling carries on. */
function invalid(message: string): never {
  throw strataError('PROTOCOL_ERROR', message, { reply: REP.ERR_INVALID });
}

/** A bounds-checked cursor over option data. */
class Cursor {
  private pos = 0;
  constructor(private readonly buf: Buffer) {}
  u16(): number {
    if (this.pos + 2 > this.buf.length) invalid('option data too short');
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  u32(): number {
    if (this.pos + 4 > this.buf.length) invalid('option data too short');
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  string(length: number): string {
    if (length > MAX_STRING) invalid(`string of ${length} bytes exceeds ${MAX_STRING}`);
    if (this.pos + length > this.buf.length) invalid('option data too short');
    const bytes = this.buf.subarray(this.pos, this.pos + length);
    this.pos += length;
    if (bytes.includes(0)) invalid('string contains NUL');
    return bytes.toString('utf8');
  }
  end(): void {
    if (this.pos !== this.buf.length) invalid('trailing bytes in option data');
  }
}

export interface GoRequest {
  name: string;
  infoRequests: number[];
}

/** NBD_OPT_GO / NBD_OPT_INFO data: u32 name length, name, u16 count, count x u16 info type. */
export function decodeGoData(data: Buffer): GoRequest {
  const c = new Cursor(data);
  const name = c.string(c.u32());
  const count = c.u16();
  const infoRequests: number[] = [];
  for (let i = 0; i < count; i++) infoRequests.push(c.u16());
  c.end();
  return { name, infoRequests };
}

export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

/** LIST/SET_META_CONTEXT data: u32 name length, name, u32 count, count x (u32 length, query). */
export function decodeMetaContextData(data: Buffer): MetaContextRequest {
  const c = new Cursor(data);
  const exportName = c.string(c.u32());
  const count = c.u32();
  const queries: string[] = [];
  for (let i = 0; i < count; i++) queries.push(c.string(c.u32()));
  c.end();
  return { exportName, queries };
}

/**
 * The contexts a query list selects. We offer only `base:allocation`. LIST treats no queries and
 * the bare namespace `base:` as "everything in base"; SET needs the exact leaf. Other namespaces
 * are ignored, not errors (proto.md "Metadata querying").
 */
export function matchMetaContexts(queries: string[], listing: boolean): string[] {
  if (listing && queries.length === 0) return [BASE_ALLOCATION];
  const hit = queries.some((q) => q === BASE_ALLOCATION || (listing && q === 'base:'));
  return hit ? [BASE_ALLOCATION] : [];
}
