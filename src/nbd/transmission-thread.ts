/**
 * Worker side of TransmissionThreads (transmission-threads.ts): serves one connection at a time
 * with blocking calls, as nbdkit's connection threads do. The socket is in blocking mode; each
 * request is read, carried out and answered on this thread, so the bytes of a WRITE go from the
 * socket to the page cache, and those of a READ back, without waking any other thread.
 *
 * Only READ, WRITE and FLUSH of a plain file are done here, and only when the request passes its
 * checks and the call succeeds. Everything else (other commands, refusals, failures, which are
 * retried there) is handed to the main thread, which answers it as it answers any request
 * (transmission.ts `answer`); this thread waits for the reply bytes and writes them.
 */
import { parentPort, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { fdatasyncSync, readSync, writeSync, writevSync } from 'node:fs';
import { CMD, CMD_FLAG } from './protocol.js';
import { checkRequest } from './request-check.js';
import {
  decodeRequest, encodeDataChunkHeader, encodeSimpleReply, REQUEST_HEADER_LENGTH, type Request,
} from './request-codec.js';
import { dropFront } from './iovec.js';
import type { Handed, ThreadJob, ThreadMessage } from './transmission-threads.js';

const port = parentPort!;

/** Blocking reads and writes on a connected socket, starting with bytes already received. */
class BlockingSocket {
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

/** Ask the main thread to answer a request; its reply bytes, once ready. */
function handOver(rpc: MessagePort, signal: Int32Array, header: Buffer, payload: Buffer | undefined): Buffer[] {
  const msg: Handed = { header: new Uint8Array(header), payload: payload && new Uint8Array(payload) };
  rpc.postMessage(msg, payload ? [msg.header.buffer as ArrayBuffer, msg.payload!.buffer as ArrayBuffer] : [msg.header.buffer as ArrayBuffer]);
  Atomics.wait(signal, 0, 0);
  Atomics.store(signal, 0, 0);
  const reply = receiveMessageOnPort(rpc)?.message as Uint8Array[] | undefined;
  return (reply ?? []).map((b) => Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/** The fast path: the reply, or null for the main thread to answer (then nothing was sent). */
function serveHere(job: ThreadJob, req: Request, data: Buffer): Buffer[] | null {
  const { fileFd, ctx } = job;
  try {
    switch (req.type) {
      case CMD.READ: {
        if (req.length === 0) return null;
        const buf = data.subarray(0, req.length);
        for (let done = 0; done < req.length;) {
          const n = readSync(fileFd, buf, done, req.length - done, req.offset + done);
          if (n === 0) {
            buf.fill(0, done); // past the file's end (an export larger than its file)
            break;
          }
          done += n;
        }
        const head = ctx.structuredReplies ? encodeDataChunkHeader(req.cookie, req.offset, req.length, true) : encodeSimpleReply(req.cookie, 0);
        return [head, buf];
      }
      case CMD.WRITE:
        for (let done = 0; done < req.length;) done += writeSync(fileFd, data, done, req.length - done, req.offset + done);
        if ((req.flags & CMD_FLAG.FUA) !== 0) fdatasyncSync(fileFd);
        return [encodeSimpleReply(req.cookie, 0)];
      case CMD.FLUSH:
        fdatasyncSync(fileFd);
        return [encodeSimpleReply(req.cookie, 0)];
      default:
        return null;
    }
  } catch {
    return null; // the main thread tries again and answers with the error it gets
  }
}

function serve(job: ThreadJob): void {
  const socket = new BlockingSocket(job.socketFd, Buffer.from(job.leftover));
  const signal = new Int32Array(job.signal);
  const header = Buffer.alloc(REQUEST_HEADER_LENGTH);
  let data = Buffer.allocUnsafe(1 << 20);
  for (;;) {
    if (!socket.readFully(header, REQUEST_HEADER_LENGTH)) return;
    let req: Request;
    try {
      req = decodeRequest(header);
    } catch {
      return; // bad magic: no way to find the next request, so hang up
    }
    if (req.type === CMD.DISC) return;
    const carried = req.type === CMD.WRITE || req.type === CMD.READ ? req.length : 0;
    if (carried > data.length && carried <= job.ctx.maxPayload) data = Buffer.allocUnsafe(carried);
    if (req.type === CMD.WRITE) {
      // the payload follows whatever we think of the request; one too large to take is dropped
      // (the main thread's check refuses the request)
      const ok = req.length > job.ctx.maxPayload ? socket.skip(req.length, data) : socket.readFully(data, req.length);
      if (!ok) return;
    }
    const withPayload = req.type === CMD.WRITE && req.length <= job.ctx.maxPayload ? data.subarray(0, req.length) : undefined;
    const reply = (checkRequest(req, job.ctx) === 0 ? serveHere(job, req, data) : null)
      ?? handOver(job.rpc, signal, header, withPayload);
    if (!socket.writeAll(reply)) return;
  }
}

port.on('message', (job: ThreadJob) => {
  try {
    serve(job);
  } finally {
    job.rpc.close();
    port.postMessage({ done: job.id } satisfies ThreadMessage);
  }
});
port.postMessage({ ready: true } satisfies ThreadMessage);
