/**
 * What both kinds of connection thread use (transmission-thread.ts for plain files,
 * planned-connection.ts for planned exports): a blocking socket, and handing a request to the
 * main thread.
 */
import { readSync, writeSync, writevSync } from 'node:fs';
import { receiveMessageOnPort } from 'node:worker_threads';
import { dropFront } from './iovec.js';
import { encodeDataChunkHeader, encodeSimpleReply, type Request } from './request-codec.js';
import type { CheckContext } from './request-check.js';
import type { Handed, ThreadJob } from './transmission-threads.js';

/** Fill `buf[at, at+length)` from `position` of file `fd`; zeros past the file's end. */
export function preadFully(fd: number, buf: Buffer, at: number, length: number, position: number): void {
  for (let done = 0; done < length;) {
    const n = readSync(fd, buf, at + done, length - done, position + done);
    if (n === 0) {
      buf.fill(0, at + done, at + length);
      return;
    }
    done += n;
  }
}

/** Write `buf[at, at+length)` at `position` of file `fd`. */
export function pwriteFully(fd: number, buf: Buffer, at: number, length: number, position: number): void {
  for (let done = 0; done < length;) done += writeSync(fd, buf, at + done, length - done, position + done);
}

/** The reply header for a successful READ whose data follows it. */
export function readReplyHead(ctx: CheckContext, req: Request): Buffer {
  return ctx.structuredReplies ? encodeDataChunkHeader(req.cookie, req.offset, req.length, true) : encodeSimpleReply(req.cookie, 0);
}

/** Blocking reads and writes on a connected socket, starting with bytes already received. */
export class BlockingSocket {
  constructor(private readonly fd: number, private leftover: Buffer) {}

  /** Fill `buf[0, n)`; false once the peer has gone. */
  readFully(buf: Buffer, n: number): boolean {
    let got = 0;
    if (this.leftover.length > 0) {
      got = this.leftover.copy(buf, 0, 0, n);
      this.leftover = this.leftover.subarray(got);
    }
    while (got < n) {
      let r: number;
      try {
        r = readSync(this.fd, buf, got, n - got, null);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EINTR') continue;
        return false; // ECONNRESET and the like: the connection is gone
      }
      if (r === 0) return false;
      got += r;
    }
    return true;
  }

  /** Read and drop n bytes (a payload too large to take). */
  skip(n: number, scratch: Buffer): boolean {
    while (n > 0) {
      const len = Math.min(n, scratch.length);
      if (!this.readFully(scratch, len)) return false;
      n -= len;
    }
    return true;
  }

  /** Write all of `bufs`; false once the peer has gone. */
  writeAll(bufs: Buffer[]): boolean {
    try {
      let left = 0;
      for (const b of bufs) left += b.length;
      while (left > 0) {
        const n = writevSync(this.fd, bufs);
        left -= n;
        if (left > 0) bufs = dropFront(bufs, n);
      }
      return true;
    } catch {
      return false; // EPIPE, ECONNRESET: the client went away
    }
  }
}

/**
 * Post a request for the main thread to answer (transmission.ts `answer`). A payload in shared
 * memory (a receive buffer) is read there; any other is copied for it.
 */
export function postHanded(job: ThreadJob, header: Buffer, payload: Buffer | undefined): void {
  const shared = payload?.buffer instanceof SharedArrayBuffer;
  const msg: Handed = { header: new Uint8Array(header), payload: payload && (shared ? payload : new Uint8Array(payload)) };
  const transfer = [msg.header.buffer as ArrayBuffer];
  if (msg.payload && !shared) transfer.push(msg.payload.buffer as ArrayBuffer);
  job.rpc.postMessage(msg, transfer);
}

/** The main thread's reply to the call in flight, if it has come. */
export function takeReply<T>(job: ThreadJob): T | undefined {
  return receiveMessageOnPort(job.rpc)?.message as T | undefined;
}

/** The bytes of the main thread's answer to a handed-over request, if it has come. */
export function takeHandedReply(job: ThreadJob): Buffer[] | undefined {
  return takeReply<Uint8Array[]>(job)?.map((b) => Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}
