/**
 * A small NBD client (fixed newstyle, structured replies, base:allocation) so strata's own CLI can
 * move bytes through a device the active-devices service serves: while the service runs it holds
 * the pool's flock, and its NBD socket is the way in (`strata thin read|write`). Requests may be
 * in flight together; replies are matched by cookie.
 *
 *     const c = await NbdClient.connect('<root>/mapper/thin0.sock', 'thin0');
 *     await c.write(buf, 0); await c.flush();
 *     const extents = await c.blockStatus(0, c.size);   // holes = unprovisioned
 *     await c.close();
 */
import { connect, type Socket } from 'node:net';
import { isStrataError, strataError, type ErrorCode, type StrataError } from '../errors.js';
import {
  NBDMAGIC, IHAVEOPT, OPTION_REPLY_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, OPT, REP, INFO, TFLAG, CMD, REPLY_FLAG_DONE,
  REPLY_TYPE, NBD_ERR, STATE_HOLE, STATE_ZERO, BASE_ALLOCATION, DEFAULT_MAX_PAYLOAD, MAX_OPTION_DATA,
} from './protocol.js';
import { encodeRequest, SIMPLE_REPLY_LENGTH, CHUNK_HEADER_LENGTH } from './request-codec.js';
import { GREETING_LENGTH } from './option-codec.js';
import { SocketReader } from './socket-reader.js';
import type { NbdExtent } from './nbd-export.js';

/** Largest BLOCK_STATUS length we ask for (the field is a u32). */
const MAX_STATUS_LENGTH = 2 ** 31;

interface Pending {
  type: number;
  offset: number;
  length: number;
  /** READ: where the data goes. */
  buf?: Buffer;
  extents: NbdExtent[];
  error?: StrataError;
  resolve(): void;
  reject(err: unknown): void;
}

/** The strata error an NBD error value stands for (the inverse of errno-map.ts, as far as it goes). */
function errorFor(errno: number, what: string, detail = ''): StrataError {
  const byErrno: Record<number, [ErrorCode, string]> = {
    [NBD_ERR.ENOSPC]: ['POOL_NO_SPACE', 'no space left in the pool'],
    [NBD_ERR.EPERM]: ['POOL_READ_ONLY', 'the device is read-only'],
    [NBD_ERR.EINVAL]: ['INVALID_ARGUMENT', 'invalid request'],
    [NBD_ERR.ENOTSUP]: ['NOT_IMPLEMENTED', 'not supported'],
    [NBD_ERR.ESHUTDOWN]: ['DEVICE_BUSY', 'the server is shutting down'],
  };
  const [code, text] = byErrno[errno] ?? ['INTERNAL', `I/O error (NBD error ${errno})`];
  return strataError(code, `${what}: ${detail || text}`, { nbdError: errno });
}

function optionData(...parts: Array<string | number>): Buffer {
  // strings go as u32 length + bytes, numbers as u32
  return Buffer.concat(parts.map((p) => {
    if (typeof p === 'number') {
      const b = Buffer.alloc(4);
      b.writeUInt32BE(p);
      return b;
    }
    const s = Buffer.from(p, 'utf8');
    const b = Buffer.alloc(4 + s.length);
    b.writeUInt32BE(s.length);
    s.copy(b, 4);
    return b;
  }));
}

export class NbdClient {
  private readonly pending = new Map<bigint, Pending>();
  private readonly inflight = new Set<Promise<unknown>>();
  private nextCookie = 1n;
  private closed = false;
  private readonly receiving: Promise<void>;

  private constructor(
    private readonly socket: Socket,
    private readonly reader: SocketReader,
    readonly name: string,
    readonly size: number,
    readonly flags: number,
    /** base:allocation's id, when the server gave us one. */
    private readonly allocationContext: number | undefined,
  ) {
    this.receiving = this.receive();
  }

  get readOnly(): boolean {
    return (this.flags & TFLAG.READ_ONLY) !== 0;
  }

  /** Connect to a unix socket and haggle for export `name` (with base:allocation when offered). */
  static async connect(path: string, name: string): Promise<NbdClient> {
    const socket = connect(path);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    socket.on('error', () => undefined); // the reader sees the connection end
    const reader = new SocketReader(socket);
    try {
      const greeting = await reader.read(GREETING_LENGTH);
      const serverFlags = greeting.readUInt16BE(16);
      if (greeting.readBigUInt64BE(0) !== NBDMAGIC || greeting.readBigUInt64BE(8) !== IHAVEOPT || !(serverFlags & FLAG_FIXED_NEWSTYLE)) {
        throw strataError('PROTOCOL_ERROR', `${path} is not a fixed-newstyle NBD server`);
      }
      const noZeroes = (serverFlags & FLAG_NO_ZEROES) !== 0;
      const clientFlags = Buffer.alloc(4);
      clientFlags.writeUInt32BE(FLAG_C_FIXED_NEWSTYLE | (noZeroes ? FLAG_C_NO_ZEROES : 0));
      socket.write(clientFlags);
      const option = (opt: number, data?: Buffer) => haggle(socket, reader, opt, data);

      let structured = true;
      await option(OPT.STRUCTURED_REPLY).catch((err: unknown) => {
        if ((err as StrataError).context?.reply !== REP.ERR_UNSUP) throw err;
        structured = false;
      });
      let allocationContext: number | undefined;
      if (structured) {
        for (const r of await option(OPT.SET_META_CONTEXT, optionData(name, 1, BASE_ALLOCATION))) {
          if (r.type === REP.META_CONTEXT && r.data.subarray(4).toString('utf8') === BASE_ALLOCATION) allocationContext = r.data.readUInt32BE(0);
        }
      }
      const go = Buffer.concat([optionData(name), Buffer.alloc(2)]); // no info requests beyond the mandatory
      let size: number | undefined;
      let flags = 0;
      for (const r of await option(OPT.GO, go)) {
        if (r.type !== REP.INFO || r.data.length < 12 || r.data.readUInt16BE(0) !== INFO.EXPORT) continue;
        size = Number(r.data.readBigUInt64BE(2));
        flags = r.data.readUInt16BE(10);
      }
      if (size === undefined) throw strataError('PROTOCOL_ERROR', `${path}: the NBD server sent no export size`);
      return new NbdClient(socket, reader, name, size, flags, allocationContext);
    } catch (err) {
      socket.destroy();
      throw err;
    }
  }

  /** Fill `buf` from `offset`. */
  async read(buf: Buffer, offset: number): Promise<void> {
    this.check('read', offset, buf.length);
    const parts: Promise<void>[] = [];
    for (let pos = 0; pos < buf.length; pos += DEFAULT_MAX_PAYLOAD) {
      const part = buf.subarray(pos, Math.min(buf.length, pos + DEFAULT_MAX_PAYLOAD));
      parts.push(this.request(CMD.READ, offset + pos, part.length, undefined, part).then(() => undefined));
    }
    await Promise.all(parts);
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    this.check('write', offset, buf.length);
    const parts: Promise<void>[] = [];
    for (let pos = 0; pos < buf.length; pos += DEFAULT_MAX_PAYLOAD) {
      const part = buf.subarray(pos, Math.min(buf.length, pos + DEFAULT_MAX_PAYLOAD));
      parts.push(this.request(CMD.WRITE, offset + pos, part.length, part).then(() => undefined));
    }
    await Promise.all(parts);
  }

  /** Make every completed write durable (for a thin device: the pool commits). */
  async flush(): Promise<void> {
    await this.request(CMD.FLUSH, 0, 0);
  }

  /**
   * Allocation from `offset`: contiguous extents starting there, possibly stopping short of
   * `offset + length` (ask again from where they end). All data when the server has no
   * base:allocation.
   */
  async blockStatus(offset: number, length: number): Promise<NbdExtent[]> {
    this.check('block status', offset, length);
    if (length === 0) return [];
    if (this.allocationContext === undefined) return [{ offset, length, hole: false, zero: false }];
    const extents = await this.request(CMD.BLOCK_STATUS, offset, Math.min(length, MAX_STATUS_LENGTH));
    if (extents.length === 0) throw strataError('PROTOCOL_ERROR', `block status of ${this.name} at ${offset}: no extents`);
    return extents;
  }

  /** Disconnect (NBD_CMD_DISC) once every request in flight has been answered. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.allSettled([...this.inflight]);
    if (!this.socket.destroyed) {
      // the server hangs up once it has read DISC (or our end of the stream)
      const gone = new Promise<void>((resolve) => this.socket.once('close', () => resolve()));
      this.socket.end(encodeRequest(CMD.DISC, 0, 0n, 0, 0));
      await gone;
    }
    await this.receiving;
  }

  private check(what: string, offset: number, length: number): void {
    if (this.closed) throw strataError('DEVICE_NOT_FOUND', `the NBD connection to ${this.name} is closed`, { id: this.name });
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw strataError('OUT_OF_RANGE', `${what}: range ${offset}+${length} is outside the ${this.size}-byte device ${this.name}`, { id: this.name });
    }
  }

  private request(type: number, offset: number, length: number, payload?: Buffer, buf?: Buffer): Promise<NbdExtent[]> {
    const cookie = this.nextCookie++;
    const done = new Promise<NbdExtent[]>((resolve, reject) => {
      if (this.reader.closed) {
        reject(strataError('PROTOCOL_ERROR', `the NBD server of ${this.name} closed the connection`));
        return;
      }
      const p: Pending = { type, offset, length, extents: [], resolve: () => resolve(p.extents), reject };
      if (buf) p.buf = buf;
      this.pending.set(cookie, p);
      this.socket.cork();
      this.socket.write(encodeRequest(type, 0, cookie, offset, length));
      if (payload) this.socket.write(payload);
      this.socket.uncork();
    });
    this.inflight.add(done);
    void done.then(() => this.inflight.delete(done), () => this.inflight.delete(done));
    return done;
  }

  /** Read replies until the connection ends; each settles the request with its cookie. */
  private async receive(): Promise<void> {
    try {
      for (;;) {
        const magic = (await this.reader.read(4)).readUInt32BE(0);
        if (magic === SIMPLE_REPLY_MAGIC) await this.simpleReply();
        else if (magic === STRUCTURED_REPLY_MAGIC) await this.chunk();
        else throw strataError('PROTOCOL_ERROR', `bad reply magic from the NBD server of ${this.name}`);
      }
    } catch (err) {
      const reason = isStrataError(err, 'PROTOCOL_ERROR') && err.context.eof
        ? strataError('PROTOCOL_ERROR', `the NBD server of ${this.name} closed the connection`)
        : err;
      for (const p of this.pending.values()) p.reject(reason);
      this.pending.clear();
      this.socket.destroy();
    }
  }

  private take(cookie: bigint): Pending {
    const p = this.pending.get(cookie);
    if (!p) throw strataError('PROTOCOL_ERROR', `the NBD server of ${this.name} answered an unknown request`);
    return p;
  }

  private settle(cookie: bigint, p: Pending): void {
    this.pending.delete(cookie);
    if (p.error) p.reject(p.error);
    else p.resolve();
  }

  private async simpleReply(): Promise<void> {
    const h = await this.reader.read(SIMPLE_REPLY_LENGTH - 4);
    const errno = h.readUInt32BE(0);
    const cookie = h.readBigUInt64BE(4);
    const p = this.take(cookie);
    if (errno !== 0) p.error = errorFor(errno, this.describe(p));
    // without structured replies a successful READ's data follows the reply
    else if (p.type === CMD.READ && p.buf) await this.reader.read(p.length, p.buf);
    this.settle(cookie, p);
  }

  private async chunk(): Promise<void> {
    const h = await this.reader.read(CHUNK_HEADER_LENGTH - 4);
    const flags = h.readUInt16BE(0);
    const type = h.readUInt16BE(2);
    const cookie = h.readBigUInt64BE(4);
    const length = h.readUInt32BE(12);
    const p = this.take(cookie);
    const bad = (): StrataError => strataError('PROTOCOL_ERROR', `malformed reply chunk (type ${type}) from the NBD server of ${this.name}`);
    switch (type) {
      case REPLY_TYPE.NONE:
        if (length !== 0) throw bad();
        break;
      case REPLY_TYPE.OFFSET_DATA: {
        if (length < 8 || !p.buf) throw bad();
        const at = Number((await this.reader.read(8)).readBigUInt64BE(0)) - p.offset;
        if (at < 0 || at + length - 8 > p.buf.length) throw bad();
        await this.reader.read(length - 8, p.buf.subarray(at));
        break;
      }
      case REPLY_TYPE.OFFSET_HOLE: {
        if (length !== 12 || !p.buf) throw bad();
        const body = await this.reader.read(12);
        const at = Number(body.readBigUInt64BE(0)) - p.offset;
        const len = body.readUInt32BE(8);
        if (at < 0 || at + len > p.buf.length) throw bad();
        p.buf.fill(0, at, at + len);
        break;
      }
      case REPLY_TYPE.BLOCK_STATUS: {
        if (length < 4 || (length - 4) % 8 !== 0) throw bad();
        const body = await this.reader.read(length);
        if (body.readUInt32BE(0) !== this.allocationContext) break;
        let pos = p.offset;
        for (let i = 4; i < length; i += 8) {
          const len = body.readUInt32BE(i);
          const state = body.readUInt32BE(i + 4);
          p.extents.push({ offset: pos, length: len, hole: (state & STATE_HOLE) !== 0, zero: (state & STATE_ZERO) !== 0 });
          pos += len;
        }
        break;
      }
      default: {
        const body = await this.reader.read(length);
        if (type & 0x8000) {
          // ERROR and ERROR_OFFSET (and error types we do not know): u32 errno, u16 message length, message
          if (length < 6) throw bad();
          const message = body.subarray(6, 6 + body.readUInt16BE(4)).toString('utf8');
          p.error ??= errorFor(body.readUInt32BE(0), this.describe(p), message);
        }
      }
    }
    if (flags & REPLY_FLAG_DONE) this.settle(cookie, p);
  }

  private describe(p: Pending): string {
    const names: Record<number, string> = { [CMD.READ]: 'read', [CMD.WRITE]: 'write', [CMD.FLUSH]: 'flush', [CMD.BLOCK_STATUS]: 'block status' };
    return `${names[p.type] ?? `command ${p.type}`} of ${this.name} at ${p.offset}+${p.length}`;
  }
}

/** Send one option and collect its replies up to the ACK; an error reply rejects (context.reply). */
async function haggle(socket: Socket, reader: SocketReader, option: number, data: Buffer = Buffer.alloc(0)): Promise<Array<{ type: number; data: Buffer }>> {
  const header = Buffer.alloc(16);
  header.writeBigUInt64BE(IHAVEOPT, 0);
  header.writeUInt32BE(option, 8);
  header.writeUInt32BE(data.length, 12);
  socket.write(Buffer.concat([header, data]));
  const replies: Array<{ type: number; data: Buffer }> = [];
  for (;;) {
    const h = await reader.read(20);
    const type = h.readUInt32BE(12);
    const length = h.readUInt32BE(16);
    if (h.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC || h.readUInt32BE(8) !== option || length > MAX_OPTION_DATA) {
      throw strataError('PROTOCOL_ERROR', `malformed reply to NBD option ${option}`);
    }
    const body = Buffer.from(await reader.read(length));
    if (type === REP.ACK) return replies;
    if (type & 0x80000000) {
      const why = body.toString('utf8') || `error ${type}`;
      // an unknown export: the served device has gone (or never was)
      const code = type === REP.ERR_UNKNOWN ? 'DEVICE_NOT_FOUND' : 'PROTOCOL_ERROR';
      throw strataError(code, `the NBD server refused option ${option}: ${why}`, { reply: type });
    }
    replies.push({ type, data: body });
  }
}
