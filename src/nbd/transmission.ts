/**
 * The transmission phase of one connection on the event loop: read requests in order, run them
 * concurrently against the export, and write each reply as one corked burst so replies of
 * different requests never interleave mid-message (they may complete out of order, which the
 * protocol allows). `answer()` is also what answers the requests a transmission thread hands
 * back (transmission-threads.ts).
 */
import type { Socket } from 'node:net';
import { CMD, CMD_FLAG, NBD_ERR, DEFAULT_MAX_PAYLOAD } from './protocol.js';
import {
  decodeRequest, encodeSimpleReply, encodeDataChunkHeader, encodeNoneChunk, encodeErrorChunk,
  encodeBlockStatusChunk, REQUEST_HEADER_LENGTH, type Request,
} from './request-codec.js';
import { checkRequest, type CheckContext } from './request-check.js';
import { shapeExtents } from './block-status.js';
import { nbdErrnoFor } from './errno-map.js';
import { blockSizesOf, BASE_ALLOCATION_ID, type Negotiated } from './handshake.js';
import type { SocketReader, Received } from './socket-reader.js';
import { BufferPool } from './buffer-pool.js';
import { drainedOrClosed } from '../util/drained.js';
import type { NbdExport } from './nbd-export.js';

/** Requests in flight per connection before we stop reading more (nbdcopy keeps 64 per conn). */
const MAX_INFLIGHT = 64;
/**
 * WRITE and READ bytes in flight per connection before we stop reading requests (bounds memory:
 * 64 requests of 32 MiB would otherwise be 2 GiB). One request is always let through. Small for
 * WRITEs on purpose: payloads then go from the socket to the page cache while still in the CPU
 * cache, and the receive slabs are reused instead of freshly faulted in (at 64 MiB, copying
 * payloads into the page cache was the server's largest cost). READs keep more in flight
 * (nbdcopy's 64 x 256 KiB per connection): measured slower at 4 MiB, no better beyond 16.
 */
const MAX_INFLIGHT_WRITE_BYTES = 4 * 1024 * 1024;
const MAX_INFLIGHT_READ_BYTES = 16 * 1024 * 1024;
/** Reply bytes queued in the socket before we stop reading requests. */
const MAX_QUEUED_REPLY = 16 * 1024 * 1024;
/** Zero buffer used when an export cannot zero natively. */
const ZERO_STEP = 1024 * 1024;

export interface TransmissionHooks {
  /** An export failure answered with an error (for logs); the connection carries on. */
  onRequestError?(err: unknown, req: Request): void;
}

export async function serveTransmission(
  socket: Socket, reader: SocketReader, neg: Negotiated, hooks: TransmissionHooks = {},
): Promise<void> {
  const exp = neg.export;
  const ctx = checkContextOf(neg);
  const inflight = new Set<Promise<void>>();
  let inflightWrite = 0;
  let inflightRead = 0;
  // Woken whenever a request finishes (cheaper than Promise.race over every pending request).
  let slotFreed: (() => void) | undefined;
  const nextCompletion = (): Promise<void> => new Promise((resolve) => { slotFreed = resolve; });
  const pool = new BufferPool();
  const out: Output = {
    pool,
    /** One reply in one burst. */
    send: (...bufs) => {
      if (!socket.writable) return;
      socket.cork();
      for (const b of bufs) socket.write(b);
      socket.uncork();
    },
    /** READ data goes back to the pool once written out. */
    sendData: (header, data) => {
      if (!socket.writable) return;
      socket.cork();
      socket.write(header);
      socket.write(data, (err) => { if (!err) pool.put(data); });
      socket.uncork();
    },
  };

  try {
    await readLoop();
  } finally {
    // NBD_CMD_DISC, EOF or shutdown: finish what was asked before the socket is closed
    await Promise.all(inflight);
  }

  async function readLoop(): Promise<void> {
    for (;;) {
      while (inflight.size >= MAX_INFLIGHT) await nextCompletion();
      if (socket.writableLength > MAX_QUEUED_REPLY) await drainedOrClosed(socket);
      let header: Buffer;
      try {
        header = await reader.read(REQUEST_HEADER_LENGTH);
      } catch {
        break; // the client went away without NBD_CMD_DISC; nothing left to answer
      }
      // A bad magic leaves no way to find the next request: decodeRequest throws and we hang up.
      const req = decodeRequest(header);
      let payload: Payload;
      if (req.type === CMD.WRITE) {
        // the payload follows whatever we think of the request, so it is always consumed; one
        // too large to take is skipped, and the check below refuses it
        if (req.length > ctx.maxPayload) await reader.skip(req.length);
        // pieces straight from the socket when the export takes them (no copy), else one buffer
        else payload = exp.writev ? await reader.readv(req.length) : await reader.read(req.length, pool.get(req.length));
      }
      if (req.type === CMD.DISC) break;
      const writing = req.type === CMD.WRITE ? req.length : 0;
      const reading = req.type === CMD.READ ? req.length : 0;
      inflightWrite += writing;
      inflightRead += reading;
      const p: Promise<void> = answer(req, payload, neg, ctx, out, hooks).finally(() => {
        // exports must not hold on to a WRITE payload once they have answered (see NbdExport)
        if (Buffer.isBuffer(payload)) pool.put(payload);
        else payload?.release();
        inflight.delete(p);
        inflightWrite -= writing;
        inflightRead -= reading;
        const wake = slotFreed;
        slotFreed = undefined;
        wake?.();
      });
      inflight.add(p);
      while ((inflightWrite > MAX_INFLIGHT_WRITE_BYTES || inflightRead > MAX_INFLIGHT_READ_BYTES) && inflight.size > 0) {
        await nextCompletion();
      }
    }
  }
}

/** What requests are checked against on a negotiated connection. */
export function checkContextOf(neg: Negotiated): CheckContext {
  const exp = neg.export;
  return {
    size: exp.size,
    readOnly: exp.readOnly === true,
    structuredReplies: neg.structuredReplies,
    metaContext: neg.metaContext,
    maxPayload: Math.min(blockSizesOf(exp).max, DEFAULT_MAX_PAYLOAD),
  };
}

/**
 * Check one request and carry it out, answering through `out` whatever happens: a refused
 * request or a failed export call is answered with its NBD error, and the connection carries on.
 */
export async function answer(
  req: Request, payload: Payload, neg: Negotiated, ctx: CheckContext, out: Output, hooks: TransmissionHooks = {},
): Promise<void> {
  const errno = checkRequest(req, ctx);
  if (errno !== 0) {
    sendError(out, neg, req, errno, 'request refused');
    return;
  }
  try {
    await execute(neg.export, req, payload, neg, out);
  } catch (err) {
    hooks.onRequestError?.(err, req);
    const fastZero = (req.flags & CMD_FLAG.FAST_ZERO) !== 0;
    sendError(out, neg, req, nbdErrnoFor(err, fastZero), err instanceof Error ? err.message : String(err));
  }
}

function sendError(out: Output, neg: Negotiated, req: Request, errno: number, message: string): void {
  // READ and BLOCK_STATUS answers must be structured once negotiated; others may be simple.
  if (neg.structuredReplies && (req.type === CMD.READ || req.type === CMD.BLOCK_STATUS)) {
    out.send(encodeErrorChunk(req.cookie, errno, message));
  } else {
    out.send(encodeSimpleReply(req.cookie, errno));
  }
}

/** A WRITE payload: one (pooled) buffer, or the socket's pieces for `writev`. */
export type Payload = Buffer | Received | undefined;

/** Where a connection's replies go: each `send` is one reply, never interleaved with another. */
export interface Output {
  send(...bufs: Buffer[]): void;
  /** A READ reply: `data` came from `pool` and goes back to it once written. */
  sendData(header: Buffer, data: Buffer): void;
  pool: BufferPool;
}

async function execute(exp: NbdExport, req: Request, payload: Payload, neg: Negotiated, out: Output): Promise<void> {
  const { send } = out;
  const fua = (req.flags & CMD_FLAG.FUA) !== 0;
  switch (req.type) {
    case CMD.READ: {
      if (req.length === 0) {
        send(neg.structuredReplies ? encodeNoneChunk(req.cookie) : encodeSimpleReply(req.cookie, 0));
        return;
      }
      const buf = out.pool.get(req.length);
      try {
        await exp.read(buf, req.offset);
      } catch (err) {
        out.pool.put(buf);
        throw err;
      }
      out.sendData(neg.structuredReplies ? encodeDataChunkHeader(req.cookie, req.offset, req.length, true) : encodeSimpleReply(req.cookie, 0), buf);
      return;
    }
    case CMD.WRITE:
      if (payload === undefined || Buffer.isBuffer(payload)) await exp.write(payload ?? Buffer.alloc(0), req.offset, { fua });
      else await exp.writev!(payload.bufs, req.offset, { fua });
      break;
    case CMD.FLUSH:
      await exp.flush();
      break;
    case CMD.TRIM:
      if (!exp.trim) {
        send(encodeSimpleReply(req.cookie, NBD_ERR.EINVAL)); // not advertised
        return;
      }
      if (req.length > 0) await exp.trim(req.offset, req.length, { fua });
      break;
    case CMD.WRITE_ZEROES: {
      const noHole = (req.flags & CMD_FLAG.NO_HOLE) !== 0;
      const fastZero = (req.flags & CMD_FLAG.FAST_ZERO) !== 0;
      if (req.length === 0) break;
      if (exp.writeZeroes) {
        await exp.writeZeroes(req.offset, req.length, { fua, noHole, fastZero });
      } else if (fastZero) {
        send(encodeSimpleReply(req.cookie, NBD_ERR.ENOTSUP));
        return;
      } else {
        const zeroes = Buffer.alloc(Math.min(ZERO_STEP, req.length));
        for (let pos = 0; pos < req.length; pos += zeroes.length) {
          const len = Math.min(zeroes.length, req.length - pos);
          await exp.write(zeroes.subarray(0, len), req.offset + pos, { fua });
        }
      }
      break;
    }
    case CMD.CACHE:
      if (exp.cache && req.length > 0) await exp.cache(req.offset, req.length);
      break;
    case CMD.BLOCK_STATUS: {
      const reqOne = (req.flags & CMD_FLAG.REQ_ONE) !== 0;
      const raw = exp.blockStatus ? await exp.blockStatus(req.offset, req.length) : [];
      const extents = shapeExtents(raw, req.offset, req.length, reqOne);
      send(encodeBlockStatusChunk(req.cookie, BASE_ALLOCATION_ID, extents, true));
      return;
    }
  }
  send(encodeSimpleReply(req.cookie, 0));
}
