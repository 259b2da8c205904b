/**
 * Worker side of TransmissionThreads (transmission-threads.ts): serves one connection at a time
 * with blocking calls, as nbdkit's connection threads do. The socket is in blocking mode; each
 * request is read, carried out and answered on this thread, so the bytes of a WRITE go from the
 * socket to the page cache, and those of a READ back, without waking any other thread.
 *
 * Only READ, WRITE and FLUSH of a plain file are done here (READ and WRITE of a planned export,
 * as the main thread plans them: PlannedConnection), and only when the request passes its checks
 * and the call succeeds. Everything else (other commands, refusals, failures, which are retried
 * there) is handed to the main thread, which answers it as it answers any request
 * (transmission.ts `answer`); this thread waits for the reply bytes and writes them.
 */
import { parentPort } from 'node:worker_threads';
import { fdatasyncSync } from 'node:fs';
import { CMD, CMD_FLAG } from './protocol.js';
import { checkRequest } from './request-check.js';
import { decodeRequest, encodeSimpleReply, REQUEST_HEADER_LENGTH, type Request } from './request-codec.js';
import { BlockingSocket, postHanded, preadFully, pwriteFully, readReplyHead, takeHandedReply } from './thread-io.js';
import { PlannedConnection } from './planned-connection.js';
import type { PlainFileJob, ThreadJob, ThreadMessage } from './transmission-threads.js';

const port = parentPort!;

/** Ask the main thread to answer a request; its reply bytes, once ready. */
function handOver(job: PlainFileJob, signal: Int32Array, header: Buffer, payload: Buffer | undefined): Buffer[] {
  postHanded(job, header, payload);
  Atomics.wait(signal, 0, 0);
  Atomics.store(signal, 0, 0);
  return takeHandedReply(job) ?? [];
}

/** The fast path: the reply, or null for the main thread to answer (then nothing was sent). */
function serveHere(job: PlainFileJob, req: Request, data: Buffer): Buffer[] | null {
  const { fileFd, ctx } = job;
  try {
    switch (req.type) {
      case CMD.READ:
        if (req.length === 0) return null;
        // (zeros past the file's end: an export larger than its file)
        preadFully(fileFd, data, 0, req.length, req.offset);
        return [readReplyHead(ctx, req), data.subarray(0, req.length)];
      case CMD.WRITE:
        pwriteFully(fileFd, data, 0, req.length, req.offset);
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

function serve(job: PlainFileJob): void {
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
      ?? handOver(job, signal, header, withPayload);
    if (!socket.writeAll(reply)) return;
  }
}

port.on('message', (job: ThreadJob) => {
  try {
    if (job.kind === 'planned') new PlannedConnection(job).run();
    else serve(job);
  } finally {
    job.rpc.close();
    port.postMessage({ done: job.id } satisfies ThreadMessage);
  }
});
port.postMessage({ ready: true } satisfies ThreadMessage);
