/**
 * What both kinds of connection thread use (transmission-thread.ts for plain files,
 * planned-connection.ts for planned exports): a blocking socket, and handing a request to the
 * main thread.
 */
import { readSync, writevSync } from 'node:fs';
import { dropFront } from './iovec.js';
import type { Handed, ThreadJob } from './transmission-threads.js';

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
