/**
 * A connection to a planned export (a thin device: NbdExport.blockingFile.plan) served on a
 * thread (transmission-threads.ts): the worker side, run by transmission-thread.ts.
 */
import { readSync } from 'node:fs';
import { receiveMessageOnPort } from 'node:worker_threads';
import { CMD, CMD_FLAG } from './protocol.js';
import { checkRequest } from './request-check.js';
import { decodeRequest, encodeSimpleReply, REQUEST_HEADER_LENGTH, type Request } from './request-codec.js';
import { BlockingSocket, postHanded, preadFully, pwriteFully, readReplyHead, takeHandedReply, takeReply } from './thread-io.js';
import { libcBinding } from '../util/libc.js';
import { FAST_INFLIGHT, FAST_OPEN, zeroOutside, type DataRun, type RequestPlan } from '../thin/thin-device.js';
import { runsFromMap, type ReadMap } from '../thin/read-map.js';
import type { LeaseJob, PlanCall, PlannedJob, PlanReply, Settled } from './transmission-threads.js';
import { ReportRing } from './report-ring.js';

/** A request parsed in the receive buffer: its header there, and a WRITE's payload after it. */
interface Received {
  req: Request;
  headerAt: number;
}

const FIONREAD = 0x541b;
/** Bytes a map asked for covers (ReadMaps.lookUp): nbdcopy reads each connection's share in order. */
const LOOK_AHEAD_BYTES = 256 * 1024 * 1024;
/** WRITEs into leased blocks answered together at most, while more requests keep coming. */
const DIRECT_ANSWERS_TOGETHER = 16;
const POLLIN = 1;

/** Bytes the socket has received and not yet given us (0 where this cannot be asked). */
const bytesWaiting = libcBinding((lib) => {
  // (into a typed array: koffi fills an `_Out_ int *` array slower, and the array is garbage)
  const ioctl = lib.func('int ioctl(int fd, unsigned long request, void *count)') as (fd: number, request: number, count: Int32Array) => number;
  const count = new Int32Array(1);
  return (fd: number): number => (ioctl(fd, FIONREAD, count) === 0 ? count[0]! : 0);
});

/** poll(2) over `struct pollfd` entries laid out in a buffer (8 bytes each). */
const pollCall = libcBinding((lib) => lib.func('int poll(void *fds, unsigned long count, int timeout)') as (fds: Buffer, count: number, timeout: number) => number);

/**
 * A connection's receive buffer, in memory shared with the main thread: requests are parsed
 * where they arrived, and the main thread plans WRITE payloads there too (no copies).
 *
 * Two halves, filled in turn. Requests received stay where they are until done with; once the
 * half being filled is nearly full and nothing in the other is needed any more, the bytes not
 * yet parsed (part of one request) move to the start of the other, which is filled next.
 * (Moving back everything still queued instead copied a third of all bytes received, from
 * memory long out of cache.) Reads stop `reserve` short of a half's end but for the request in
 * hand, so that, once it is done with and nothing else is, the half is filled again from its
 * start with nothing to move (V8 copies shared memory slowly: moves cost ~5% of a thread's time).
 */
class ReceiveBuffer {
  readonly buf: Buffer;
  readonly half: number;
  /** Free room below which the next half is taken: a request larger than this less a header goes elsewhere. */
  readonly reserve: number;
  /** Where the half being filled starts. */
  private base = 0;
  /** The first byte not yet parsed. */
  start = 0;
  /** The end of what was received. */
  end: number;
  /** Bytes the request begun at `start` still needs (0 when none is begun). */
  inHandNeeds = 0;

  constructor(shared: SharedArrayBuffer, leftover: Uint8Array, private readonly fd: number) {
    this.buf = Buffer.from(shared);
    this.half = this.buf.length / 2;
    this.reserve = this.half / 2;
    this.buf.set(leftover);
    this.end = leftover.length;
  }

  /** Room left in the half being filled. */
  get room(): number {
    return this.base + this.half - this.end;
  }

  /** Make room to receive, given where the requests still needed are (their headers). */
  release(live: readonly number[]): void {
    if (live.length === 0 && this.start === this.end) {
      this.start = this.end = this.base;
      return;
    }
    const other = this.half - this.base;
    const inHandFits = this.inHandNeeds > 0 && this.inHandNeeds <= this.room;
    if (this.room >= this.reserve || inHandFits || live.some((at) => at >= other && at < other + this.half)) return;
    // (at the same alignment: V8 copies shared memory byte by byte otherwise, 8x slower)
    const to = other + (this.start % 8);
    this.buf.copyWithin(to, this.start, this.end);
    this.end = to + (this.end - this.start);
    this.start = to;
    this.base = other;
  }

  /**
   * Receive what the socket holds, as far as there is room; with `wait`, block until something
   * comes. false once the peer has gone.
   */
  receive(wait: boolean): boolean {
    // a half is filled to `reserve` from its end, then only the request in hand is completed (it
    // fits: no request is larger); once nothing in it is needed, `release` starts it again
    let want = this.room > this.reserve ? this.room - this.reserve : Math.min(this.room, this.inHandNeeds);
    // (requests still queued kept the half, and the other one too: take what room there is)
    if (want === 0 && wait && this.inHandNeeds === 0) want = this.room;
    if (!wait) want = Math.min(want, bytesWaiting()?.(this.fd) ?? 0);
    while (want > 0) {
      try {
        const n = readSync(this.fd, this.buf, this.end, want, null);
        if (n === 0) return false;
        this.end += n;
        this.inHandNeeds = Math.max(0, this.inHandNeeds - n); // (until the next parse says)
        return true;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EINTR') return false;
      }
    }
    return true;
  }
}

/**
 * A connection to a planned export (a thin device: NbdExport.blockingFile.plan), served as a
 * pipeline. The requests received are posted to the main thread as one batch to plan (where
 * their bytes are in the file: ThinDevice.planBatch); while the plan is being made, the thread
 * keeps receiving, so the next batch holds everything that arrived meanwhile. (A client cannot
 * get far ahead on its own: a unix socket holds less than one 256 KiB WRITE.) Once the plan is
 * back the thread carries it out with pread/pwrite, answers, and tells the main thread the batch
 * is settled. Requests that go alone (FLUSH, TRIM, refusals, failures, ...) are handed over only
 * while no batch is in flight: a FLUSH's commit waits for the batch's I/O.
 */
export class PlannedConnection {
  private readonly socket: BlockingSocket;
  private readonly input: ReceiveBuffer;
  /** Parsed, waiting for the next batch. */
  private queued: Received[] = [];
  /** Parsed, waiting to be handed over alone. */
  private alone: Received[] = [];
  /** The batch whose plan is being made. */
  private posted: Received[] | null = null;
  /** The last batch's I/O is done and the main thread has not been told yet. */
  private unsettled = false;
  /** The client has closed its side: waits for a reply no longer include the socket. */
  private inputEnded = false;
  /** Parsing stopped at a request past which nothing is read before it is dealt with. */
  private stop: 'disconnect' | Received | undefined;
  /** A WRITE payload larger than this is read into a buffer of its own and handed over. */
  private readonly largest: number;
  private readBuf = Buffer.allocUnsafe(1 << 20);
  private readonly pollFds = Buffer.alloc(16);
  private readonly drain = Buffer.alloc(8);

  /** Leased blocks WRITEs of whole blocks go straight into (LeaseJob), if the export has them. */
  private readonly leased: DirectWrites | null;
  /** The map READs are planned from here, if the export gives maps. */
  private readonly reads: MappedReads | null;

  constructor(private readonly job: PlannedJob) {
    this.socket = new BlockingSocket(job.socketFd, Buffer.alloc(0));
    this.input = new ReceiveBuffer(job.receiveBuffer, job.leftover, job.socketFd);
    this.largest = this.input.reserve - REQUEST_HEADER_LENGTH;
    this.leased = job.leased ? new DirectWrites(job.leased, job.fileFd) : null;
    this.reads = job.readMaps ? new MappedReads(job.readMaps, job.fileFd) : null;
  }

  /** Until the client disconnects or goes away. */
  run(): void {
    try {
      this.serve();
    } finally {
      // (blocks written for a client that has gone are still reported, and the gate let go)
      this.leased?.flush(null);
      this.settle();
    }
  }

  /**
   * Answer the WRITEs written into leased blocks, after reporting them: before anything that
   * may block (the gate must not stay held, so a suspend can finish) and before requests that go
   * alone (a FLUSH covers what was answered). false once the client has gone.
   */
  private answerDirect(): boolean {
    return this.leased?.flush(this.socket) ?? true;
  }

  /**
   * Whether the WRITEs written into leased blocks may wait to be answered with the next ones (fewer
   * reports, one writev for their answers): up to a point, never past a request that goes alone
   * or one read on its own, and only while the socket has bytes waiting, so that the receive that
   * follows cannot block with the gate held (a client stalled mid-request would hold up a suspend).
   */
  private holdAnswers(): boolean {
    const pending = this.leased?.pending ?? 0;
    return pending > 0 && pending < DIRECT_ANSWERS_TOGETHER && this.alone.length === 0 && this.stop === undefined &&
      (bytesWaiting()?.(this.job.socketFd) ?? 0) > 0;
  }

  private serve(): void {
    const { input, socket } = this;
    for (;;) {
      if (!input.receive(false)) return;
      this.parse();
      if (!this.readFromMap()) return;
      if (this.posted) {
        const reply = takeReply<PlanReply>(this.job);
        if (!reply) {
          if (!this.answerDirect()) return;
          this.wait(input.room > 0);
          continue;
        }
        if (reply.readMap) this.reads?.got(reply.readMap);
        if (!this.answerDirect() || !this.carryOut(this.posted, reply.plans)) return;
      }
      if (this.queued.length > 0 && this.alone.length === 0) {
        this.post();
        continue;
      }
      if (!this.holdAnswers() && !this.answerDirect()) return;
      // (what goes alone may wait for the last batch's I/O: a FLUSH commits)
      this.settle();
      for (const r of this.alone.splice(0)) {
        if (!socket.writeAll(this.handOver(this.headerOf(r), this.payloadOf(r)))) return;
      }
      if (this.queued.length > 0) {
        this.post();
        continue;
      }
      if (this.stop === 'disconnect') return;
      if (this.stop) {
        if (!this.oversize(this.stop)) return;
        this.stop = undefined;
        continue;
      }
      input.release([]);
      if (!input.receive(true)) return;
    }
  }

  /**
   * Parse what has been received into requests to plan and requests to hand over alone; WRITEs
   * of whole blocks go into leased blocks at once (answered by `answerDirect`).
   */
  private parse(): void {
    const { input } = this;
    input.inHandNeeds = 0;
    while (this.stop === undefined && input.end - input.start >= REQUEST_HEADER_LENGTH) {
      const headerAt = input.start;
      let req: Request;
      try {
        req = decodeRequest(input.buf.subarray(headerAt, headerAt + REQUEST_HEADER_LENGTH));
      } catch {
        this.stop = 'disconnect'; // bad magic: no way to find the next request, so hang up
        return;
      }
      const payload = req.type === CMD.WRITE ? req.length : 0;
      if (req.type === CMD.DISC) {
        this.stop = 'disconnect';
      } else if (payload > this.largest) {
        input.start += REQUEST_HEADER_LENGTH;
        this.stop = { req, headerAt };
      } else if (input.end - headerAt >= REQUEST_HEADER_LENGTH + payload) {
        input.start += REQUEST_HEADER_LENGTH + payload;
        const plannable = req.length > 0 && (req.type === CMD.READ || (req.type === CMD.WRITE && (req.flags & CMD_FLAG.FUA) === 0));
        const r = { req, headerAt };
        if (!plannable || checkRequest(req, this.job.ctx) !== 0) this.alone.push(r);
        else if (req.type !== CMD.WRITE || !this.leased?.write(req, this.payloadOf(r)!)) this.queued.push(r);
      } else {
        input.inHandNeeds = headerAt + REQUEST_HEADER_LENGTH + payload - input.end;
        return;
      }
    }
    if (this.stop === undefined && input.end > input.start) input.inHandNeeds = REQUEST_HEADER_LENGTH - (input.end - input.start);
  }

  /**
   * Answer the queued READs the map covers, up to the first request that is not one, unless
   * requests received before them may still change the device: WRITEs unanswered, or anything
   * waiting to go alone (a FUA WRITE, a TRIM), which queued requests never overtake either.
   * false once the client has gone.
   */
  private readFromMap(): boolean {
    const { reads } = this;
    if (!reads?.usable || this.alone.length > 0 || (this.leased?.pending ?? 0) > 0 || this.posted?.some((r) => r.req.type === CMD.WRITE)) return true;
    let i = 0;
    for (; i < this.queued.length; i++) {
      const { req } = this.queued[i]!;
      if (req.type !== CMD.READ) break;
      const buf = this.readBufFor(req.length);
      if (!reads.read(buf, req.offset)) break;
      if (!this.socket.writeAll([readReplyHead(this.job.ctx, req), buf])) return false;
    }
    if (i > 0) this.queued.splice(0, i);
    return true;
  }

  private readBufFor(length: number): Buffer {
    if (length > this.readBuf.length) this.readBuf = Buffer.allocUnsafe(length);
    return this.readBuf.subarray(0, length);
  }

  /** Post the queued requests for planning (nothing of the buffer is in use by the main thread). */
  private post(): void {
    const live = this.queued.map((r) => r.headerAt);
    if (typeof this.stop === 'object') live.push(this.stop.headerAt);
    this.input.release(live);
    this.posted = this.queued;
    this.queued = [];
    const call: PlanCall = {
      batch: this.posted.map((r) => ({ write: r.req.type === CMD.WRITE, offset: r.req.offset, length: r.req.length, at: r.headerAt + REQUEST_HEADER_LENGTH })),
      settled: this.unsettled,
    };
    // a batch of READs only asks for a map from its first: those that follow are planned here
    const lookAhead = this.posted.every((r) => r.req.type === CMD.READ) ? this.reads?.ask(this.posted[0]!.req.offset) : undefined;
    if (lookAhead) call.lookAhead = lookAhead;
    this.unsettled = false;
    this.job.rpc.postMessage(call);
  }

  /** Tell the main thread the last batch is settled, unless a batch posted since said so. */
  private settle(): void {
    if (!this.unsettled) return;
    this.unsettled = false;
    this.job.rpc.postMessage({ settled: true } satisfies Settled);
  }

  /** Do what the plan says, answer, settle. false once the client has gone. */
  private carryOut(batch: Received[], plans: RequestPlan[]): boolean {
    this.posted = null;
    const later: Received[] = [];
    let connected = true;
    for (let i = 0; i < batch.length; i++) {
      const r = batch[i]!;
      const plan = plans[i] ?? 'alone';
      if (plan === 'later') {
        later.push(r);
        continue;
      }
      if (plan === 'alone') {
        this.alone.push(r);
        continue;
      }
      const { req } = r;
      const reply = doPlanned(this.job, req, plan, req.type === CMD.READ ? this.readBufFor(req.length) : this.payloadOf(r)!);
      if (!reply) this.alone.push(r); // the main thread tries again and answers with the error it gets
      else if (connected) connected = this.socket.writeAll(reply);
    }
    this.unsettled = true;
    this.queued.unshift(...later);
    return connected;
  }

  /** A WRITE too large for the receive buffer: read into a buffer of its own (or dropped if over the limit, which the main thread's check refuses) and handed over. */
  private oversize(r: Received): boolean {
    const { input } = this;
    const { req } = r;
    const keep = req.length <= this.job.ctx.maxPayload;
    const payload = Buffer.allocUnsafe(keep ? req.length : 1 << 20);
    const inBuffer = Math.min(req.length, input.end - input.start);
    if (keep) input.buf.copy(payload, 0, input.start, input.start + inBuffer);
    input.start += inBuffer;
    const rest = req.length - inBuffer;
    const ok = keep ? this.socket.readFully(payload.subarray(inBuffer), rest) : this.socket.skip(rest, payload);
    return ok && this.socket.writeAll(this.handOver(this.headerOf(r), keep ? payload : undefined));
  }

  private handOver(header: Buffer, payload: Buffer | undefined): Buffer[] {
    postHanded(this.job, header, payload);
    let reply: Buffer[] | undefined;
    while (!(reply = takeHandedReply(this.job))) this.wait(false);
    return reply;
  }

  /**
   * Block until the main thread signals, or (with `orInput`) the socket has bytes. A signal is
   * drained once seen; one for a reply already taken costs a spurious wake, nothing more.
   */
  private wait(orInput: boolean): void {
    const fds = this.pollFds;
    fds.writeInt32LE(this.job.wakeFd, 0);
    fds.writeInt32LE(POLLIN, 4); // (and revents cleared)
    fds.writeInt32LE(this.job.socketFd, 8);
    fds.writeInt32LE(POLLIN, 12);
    const withInput = orInput && !this.inputEnded;
    pollCall()!(fds, withInput ? 2 : 1, -1);
    if ((fds.readInt16LE(6) & POLLIN) !== 0) readSync(this.job.wakeFd, this.drain, 0, 8, null);
    // ready with nothing to read: the client has closed its side, and polling it again would spin
    if (withInput && fds.readInt16LE(14) !== 0 && bytesWaiting()?.(this.job.socketFd) === 0) this.inputEnded = true;
  }

  private headerOf(r: Received): Buffer {
    return this.input.buf.subarray(r.headerAt, r.headerAt + REQUEST_HEADER_LENGTH);
  }

  private payloadOf(r: Received): Buffer | undefined {
    const at = r.headerAt + REQUEST_HEADER_LENGTH;
    return r.req.type === CMD.WRITE ? this.input.buf.subarray(at, at + r.req.length) : undefined;
  }
}

/**
 * READs planned here from a map of where the device's blocks are (read-map.ts), asked for with a
 * batch of READs and valid while the pool's map epoch stays what it was before asking. Each read
 * is made in the gate (a suspend waits for it, as for writes into leased blocks), and the epoch
 * is checked again once it is done: a block freed and handed out meanwhile may hold someone
 * else's bytes, and the read then goes the planned way.
 */
export class MappedReads {
  private map: ReadMap | null = null;
  /** The epoch the map is valid in. */
  private validIn = 0;
  /** The epoch when the map in flight was asked for. */
  private askedIn = 0;
  /** Maps dropped before they served a read, in a row: ask for fewer (writes keep changing things). */
  private wasted = 0;
  private servedSinceMap = 0;
  private batchesSinceAsk = 0;

  constructor(private readonly maps: NonNullable<PlannedJob['readMaps']>, private readonly fileFd: number) {}

  /** Whether a map is held that nothing has changed since (else it is dropped). */
  get usable(): boolean {
    if (this.map && Atomics.load(this.maps.epoch, 0) !== this.validIn) this.drop();
    return this.map !== null;
  }

  /** What to ask a map for with a batch of READs from `offset`, if one is worth asking for. */
  ask(offset: number): { offset: number; length: number } | undefined {
    // after maps that went unused, one batch in 2, 4, ... up to 64 asks
    if (++this.batchesSinceAsk < 1 << Math.min(this.wasted, 6)) return undefined;
    this.batchesSinceAsk = 0;
    this.askedIn = Atomics.load(this.maps.epoch, 0);
    return { offset, length: LOOK_AHEAD_BYTES };
  }

  got(map: ReadMap): void {
    this.drop();
    this.map = map;
    this.validIn = this.askedIn;
    this.servedSinceMap = 0;
  }

  /** Fill `buf` from `offset` if the map covers it and holds; false: it goes the planned way. */
  read(buf: Buffer, offset: number): boolean {
    const runs = this.map && runsFromMap(this.map, this.maps.blockBytes, offset, buf.length);
    if (!runs) return false;
    const { gate, epoch } = this.maps;
    Atomics.add(gate, FAST_INFLIGHT, 1);
    try {
      if (Atomics.load(gate, FAST_OPEN) !== 1) return false;
      zeroOutside(buf, runs);
      for (const r of runs) preadFully(this.fileFd, buf, r.at, r.length, r.dataOffset);
    } catch {
      return false; // the planned way answers with the error it meets
    } finally {
      Atomics.sub(gate, FAST_INFLIGHT, 1);
    }
    if (Atomics.load(epoch, 0) !== this.validIn) {
      this.drop();
      return false;
    }
    this.servedSinceMap++;
    return true;
  }

  private drop(): void {
    if (!this.map) return;
    this.wasted = this.servedSinceMap > 0 ? 0 : this.wasted + 1;
    this.map = null;
  }
}

/** A planned READ or WRITE: its reply, or null if the I/O failed. */
function doPlanned(job: PlannedJob, req: Request, runs: readonly DataRun[], data: Buffer): Buffer[] | null {
  try {
    if (req.type === CMD.WRITE) {
      for (const r of runs) pwriteFully(job.fileFd, data, r.at, r.length, r.dataOffset);
      return [encodeSimpleReply(req.cookie, 0)];
    }
    zeroOutside(data, runs);
    for (const r of runs) preadFully(job.fileFd, data, r.at, r.length, r.dataOffset);
    return [readReplyHead(job.ctx, req), data];
  } catch {
    return null;
  }
}

/**
 * A connection's leased blocks (LeaseJob): a WRITE of whole, aligned blocks is written into them
 * and answered without waiting for the main thread, which maps them once it takes in the runs
 * this thread publishes (ThinDevice.adopt). The first such write enters the device's gate
 * (FAST_INFLIGHT, then FAST_OPEN); `flush` publishes the runs written, leaves the gate, then
 * answers: whatever the client does after an answer finds the write mapped.
 */
class DirectWrites {
  private readonly blocks: number[];
  private readonly bs: number;
  private readonly ring: ReportRing;
  /** In the gate since the last flush, and whether it was open then. */
  private entered = false;
  private open = false;
  private written: number[] = [];
  private unused: number[] = [];
  private replies: Buffer[] = [];
  /** A WRITE since the last flush went the planned way: the rest do too, so none overtakes it. */
  private declined = false;
  /** More blocks were asked for and have not come yet. */
  private asked = false;

  constructor(private readonly job: LeaseJob, private readonly fileFd: number) {
    this.blocks = [...job.lease];
    this.bs = job.blockBytes;
    this.ring = new ReportRing(job.ring);
  }

  /** Writes answered by the next flush. */
  get pending(): number {
    return this.replies.length;
  }

  /** Write `data` into leased blocks if it covers whole blocks and enough are leased. */
  write(req: Request, data: Buffer): boolean {
    const { bs } = this;
    if (!this.entered) {
      for (let m = receiveMessageOnPort(this.job.port); m; m = receiveMessageOnPort(this.job.port)) {
        this.blocks.push(...(m.message as { lease: number[] }).lease);
        this.asked = false;
      }
      Atomics.add(this.job.gate, FAST_INFLIGHT, 1);
      this.entered = true;
      this.open = Atomics.load(this.job.gate, FAST_OPEN) === 1;
    }
    const n = req.length / bs;
    // (room for its run, or for its blocks given back: never short while the lease is its size)
    const room = this.ring.room() - ReportRing.slotsFor(this.written, this.unused) - 2 * (2 + n);
    if (!this.open || this.declined || req.offset % bs !== 0 || !Number.isInteger(n) || n > this.blocks.length || room < 0) {
      this.declined = true;
      return false;
    }
    const blocks = this.blocks.splice(0, n);
    try {
      // consecutive data blocks in one pwrite
      for (let i = 0; i < n;) {
        let j = i + 1;
        while (j < n && blocks[j] === blocks[j - 1]! + 1) j++;
        pwriteFully(this.fileFd, data, i * bs, (j - i) * bs, blocks[i]! * bs);
        i = j;
      }
    } catch {
      this.unused.push(...blocks); // the planned way answers with the error it meets
      this.declined = true;
      return false;
    }
    this.written.push(req.offset / bs, n, ...blocks);
    this.replies.push(encodeSimpleReply(req.cookie, 0));
    return true;
  }

  /** Report, leave the gate, answer (unless the client has gone: null). false once it has. */
  flush(socket: BlockingSocket | null): boolean {
    if (!this.entered) return true;
    if (this.written.length > 0 || this.unused.length > 0) {
      this.ring.publish(this.written, this.unused); // (room was checked as they were added)
      // maps are out of date once these writes are answered (MappedReads); counted once they are
      // published, so a map asked for after the count is made after they are taken in
      if (this.written.length > 0) Atomics.add(this.job.epoch, 0, 1);
      this.written = [];
      this.unused = [];
      if (!this.asked && this.blocks.length < this.job.askBelow) {
        this.job.port.postMessage(null);
        this.asked = true;
      }
    }
    Atomics.sub(this.job.gate, FAST_INFLIGHT, 1);
    this.entered = false;
    this.declined = false;
    const replies = this.replies;
    this.replies = [];
    return replies.length === 0 || socket === null || socket.writeAll(replies);
  }
}
