/**
 * Connections to file-backed exports (plain files, thin devices) served on threads with blocking
 * I/O, as nbdkit serves them.
 *
 * Served from the event loop, every request costs thread hand-offs: the loop reads the socket,
 * a thread-pool thread does the pread/pwrite, the loop is woken to reply. On this VM a hand-off
 * (futex wake, context switch) costs more than copying the 256 KiB payload does; measured with
 * nbdcopy, the server spent a third of its time switching threads and reached ~0.6x nbdkit's
 * throughput. A thread that owns the connection and blocks on the socket, the file and the
 * socket again switches only when the socket has nothing to read: nbdkit's model, and its speed.
 *
 * After the handshake (on the event loop, as for every connection) the socket's descriptor is
 * duplicated, put in blocking mode and handed to an idle thread with the bytes already read past
 * the handshake; Node's socket object is destroyed (closing only its own descriptor). The thread
 * answers READ, WRITE and FLUSH itself and hands every other request to the event loop, which
 * answers it with the same code as on any connection (transmission.ts `answer`).
 *
 * A thin device's bytes are in the pool's data file too, but where is decided by the pool's
 * metadata, which lives on the event loop (NbdExport.blockingFile.plan). Its connections' threads
 * send the READs and WRITEs they have received as one batch for the event loop to plan
 * (ThinDevice.planBatch: one mutex hold, one round trip) and do the data I/O themselves, WRITE
 * payloads staying where they were received, in memory both threads share. While a plan is being
 * made the thread goes on receiving, so the next batch holds what arrived meanwhile; the event
 * loop signals its replies through an eventfd, so the thread can wait for either at once.
 * WRITEs of whole blocks need no plan: the thread writes them into free blocks the pool has
 * leased it, publishes the runs written in shared memory for the event loop to map, and answers
 * (`Leases`, report-ring.ts). READs need none while the thread holds a map of where the blocks
 * they read are (read-map.ts), asked for with a batch of READs and good until the pool's map
 * epoch moves: a sequential reader then costs the event loop one map per 256 MiB.
 *
 * Threads are kept for later connections (up to `maxIdle`), and a few are started with the
 * server so the first clients do not wait for one to boot. Without koffi (no dup/fcntl/shutdown)
 * or past `maxThreads` connections, connections are served on the event loop as before.
 */
import { writeSync } from 'node:fs';
import { MessageChannel, receiveMessageOnPort, type MessagePort, type Worker } from 'node:worker_threads';
import type { Socket } from 'node:net';
import { libcBinding } from '../util/libc.js';
import { startWorker } from '../util/worker-thread.js';
import { BufferPool } from './buffer-pool.js';
import { ReportRing } from './report-ring.js';
import { decodeRequest, REQUEST_HEADER_LENGTH } from './request-codec.js';
import type { CheckContext } from './request-check.js';
import type { Negotiated } from './handshake.js';
import type { SocketReader } from './socket-reader.js';
import { answer, checkContextOf, type Output, type TransmissionHooks } from './transmission.js';
import type { BatchRequest, PlannedBatch, RequestPlan } from '../thin/thin-device.js';
import type { LeasedWrites, ReadMaps } from './nbd-export.js';
import type { ReadMap } from '../thin/read-map.js';

/** A connection for a thread (posted to it). */
interface ThreadJobBase {
  id: number;
  /** The connection, blocking; the main thread closes it once the thread is done. */
  socketFd: number;
  /** Bytes received past the handshake. */
  leftover: Uint8Array;
  /** The export's file (NbdExport.blockingFile). */
  fileFd: number;
  ctx: CheckContext;
  /**
   * Requests handed back: the thread posts a `ThreadCall`, waits for the main thread's signal,
   * takes the reply (`Handed` → the reply's bytes, `PlanCall` → a PlanReply, `Settled` → none).
   */
  rpc: MessagePort;
}

/**
 * A plain file's connection: its thread waits only for the main thread's reply, so the signal
 * is a futex (`Atomics.wait` on `signal`).
 */
export interface PlainFileJob extends ThreadJobBase {
  kind: 'file';
  signal: SharedArrayBuffer;
}

/**
 * A planned export's connection (NbdExport.blockingFile.plan): its thread waits for the reply
 * or for more requests at once, which only poll(2) can do, so the main thread signals an
 * eventfd. The receive buffer is shared so the main thread plans WRITE payloads where they were
 * received.
 */
export interface PlannedJob extends ThreadJobBase {
  kind: 'planned';
  receiveBuffer: SharedArrayBuffer;
  wakeFd: number;
  /** Where the export takes writes into leased blocks (NbdExport.blockingFile.leasedWrites). */
  leased?: LeaseJob;
  /** What the thread plans READs from maps with (NbdExport.blockingFile.readMaps, less the lookup). */
  readMaps?: Omit<ReadMaps, 'lookUp'>;
}

/**
 * A planned connection's leased blocks: WRITEs of whole blocks go into them and are answered at
 * once; the thread publishes each run written in `ring` (report-ring.ts) before answering, asks
 * for more on `port` once it holds fewer than `askBelow` blocks, and gets them there
 * (`{ lease }`).
 */
export interface LeaseJob {
  port: MessagePort;
  ring: SharedArrayBuffer;
  askBelow: number;
  gate: Int32Array;
  /** The pool's map epoch, added to once writes are published (LeasedWrites.mapEpoch). */
  epoch: Int32Array;
  blockBytes: number;
  lease: number[];
}

export type ThreadJob = PlainFileJob | PlannedJob;

/** A request the thread hands to the main thread: its header and WRITE payload. */
export interface Handed {
  header: Uint8Array;
  payload: Uint8Array | undefined;
}

/**
 * A batch of READs and WRITEs to plan; a WRITE's payload is at `at` in the receive buffer.
 * `settled`: the I/O of the batch planned before is done (said here when a batch follows at once,
 * saving the main thread a wake-up).
 */
export interface PlanCall {
  batch: Array<{ write: boolean; offset: number; length: number; at: number }>;
  settled: boolean;
  /** Send a map of where these bytes are (ReadMaps.lookUp) with the plan. */
  lookAhead?: { offset: number; length: number };
}

/** The main thread's answer to a PlanCall: a plan for each request, and the map asked for if it could be made. */
export interface PlanReply {
  plans: RequestPlan[];
  readMap?: ReadMap;
}

/** The I/O of the batch planned last is done (or given up), and no batch follows yet. */
export interface Settled {
  settled: true;
}

export type ThreadCall = Handed | PlanCall | Settled;

/** What a thread posts: once its module has loaded, and after each connection. */
export type ThreadMessage = { ready: true } | { done: number };

/** A connection being served on a thread. */
export interface ThreadedConnection {
  /** Resolves once the thread has let go of the connection and it is closed. */
  done: Promise<void>;
  /** Stop reading requests: the one in hand is answered, then the connection closes. */
  hangUp(): void;
  /** Break the connection, also a reply being written to a client that does not read. */
  destroy(): void;
}

interface SocketCalls {
  dup(fd: number): number;
  fcntl(fd: number, cmd: number, arg: number): number;
  shutdown(fd: number, how: number): number;
  close(fd: number): number;
  eventfd(initval: number, flags: number): number;
}

const F_GETFL = 3;
const F_SETFL = 4;
const O_NONBLOCK = 0o4000;
const SHUT_RD = 0;
const SHUT_RDWR = 2;
const EFD_NONBLOCK = 0o4000;
const EFD_CLOEXEC = 0o2000000;
/** What an eventfd is signalled with: a counter increment of 1 (8 bytes, host order). */
const WAKE = new Uint8Array(new BigUint64Array([1n]).buffer);

/**
 * The largest WRITE a planned connection takes in its receive buffer; a larger one is read into a
 * buffer of its own and handed to the main thread, one at a time. `qemu-img convert` writes in
 * requests of up to 2 MiB (and `nbdcopy --request-size=2M` in 2 MiB): handed over, a 512 MiB copy
 * in 2 MiB writes took 0.6-1.9 s; taken here, 0.26-0.29 s, as in 256 KiB writes.
 */
const LARGEST_PLANNED_WRITE = 2 * 1024 * 1024;

/**
 * A planned export's receive buffer per connection: WRITE payloads wait there for their plan,
 * so it bounds a batch (nbdcopy keeps 64 requests of 256 KiB in flight per connection). Two
 * halves, each filled to a reserve of half its size that must hold the largest request.
 */
const RECEIVE_BUFFER_BYTES = 4 * (LARGEST_PLANNED_WRITE + REQUEST_HEADER_LENGTH);

const socketCalls = libcBinding<SocketCalls>((lib) => ({
  dup: lib.func('int dup(int fd)') as SocketCalls['dup'],
  fcntl: lib.func('int fcntl(int fd, int cmd, int arg)') as SocketCalls['fcntl'],
  shutdown: lib.func('int shutdown(int fd, int how)') as SocketCalls['shutdown'],
  close: lib.func('int close(int fd)') as SocketCalls['close'],
  eventfd: lib.func('int eventfd(unsigned int initval, int flags)') as SocketCalls['eventfd'],
}));

/**
 * Bytes of blocks leased to a connection at a time: what it may write before its reports are
 * taken in. Pools of blocks larger than a quarter of this lease none (few writes cover them).
 */
const LEASE_BYTES = 8 * 1024 * 1024;

/** Longest a run written into leased blocks waits to be mapped when nothing else takes it in. */
const TAKE_IN_MS = 50;

/**
 * The main thread's side of a connection's leased blocks: it gives the thread blocks, takes in
 * the runs the thread has written (ThinDevice.adopt, in the order written), and tops the lease
 * up. Runs are taken in before anything else takes the pool's mutex (Pool.beforeEachLock): the
 * thread publishes a run before it answers the write, so whatever follows the answer (a read on
 * another connection, a flush) finds the write mapped; and whenever the thread asks for blocks.
 */
class Leases {
  readonly job: LeaseJob;
  private readonly port: MessagePort;
  private readonly ring: ReportRing;
  private readonly outstanding = new Set<number>();
  private readonly target: number;
  private readonly unhook: () => void;
  private ended = false;
  private draining = false;
  private readonly timer: NodeJS.Timeout;

  static worthwhile(writes: LeasedWrites): boolean {
    return writes.blockBytes * 4 <= LEASE_BYTES;
  }

  constructor(private readonly writes: LeasedWrites) {
    const channel = new MessageChannel();
    this.port = channel.port1;
    this.target = Math.floor(LEASE_BYTES / writes.blockBytes);
    // every block in the ring is outstanding, and a record takes at most three slots a block
    const memory = ReportRing.create(3 * this.target + 16);
    this.ring = new ReportRing(memory);
    this.job = {
      port: channel.port2, ring: memory, askBelow: Math.ceil(this.target / 2),
      gate: writes.gate, epoch: writes.mapEpoch, blockBytes: writes.blockBytes, lease: this.grant(),
    };
    this.port.on('message', () => this.drain());
    this.unhook = writes.beforeEachLock(() => this.drain());
    // what nothing else takes in soon (a client gone quiet) is mapped within a moment anyway
    this.timer = setInterval(() => this.drain(), TAKE_IN_MS).unref();
  }

  private grant(): number[] {
    const more = this.writes.lease(this.target - this.outstanding.size);
    for (const b of more) this.outstanding.add(b);
    return more;
  }

  /**
   * Take in what the thread has published (and its requests for blocks), then top up. Each
   * adopt takes the pool's mutex, whose hooks call back here: that inner call does nothing, so
   * the runs are queued on the mutex strictly in the order written (a later run may map a
   * block an earlier one mapped too, and must land last).
   */
  private drain(): void {
    if (this.draining) return;
    this.draining = true;
    try {
      while (receiveMessageOnPort(this.port)); // (asks for blocks: what they ask is done below)
      // every run taken in now, mapped in one go: runs of one connection often share leaves
      const { vblocks, blocks, unused } = this.ring.takeAll();
      for (const b of blocks) this.outstanding.delete(b);
      for (const b of unused) this.outstanding.delete(b);
      if (unused.length > 0) this.writes.returnLease(unused);
      // (a failure there turns the pool read-only, and every later request says so)
      if (blocks.length > 0) void this.writes.adopt(vblocks, blocks).catch(() => undefined);
    } finally {
      this.draining = false;
    }
    this.topUp();
  }

  /**
   * Lend more once half is used (a message for many blocks, not one per write). Called when the
   * thread asks, and on each batch of writes it plans the slow way: a connection that got no
   * lease while the pool was short of space writes nothing the leased way, so never asks.
   */
  topUp(): void {
    if (this.ended || this.outstanding.size > this.target / 2) return;
    const more = this.grant();
    if (more.length > 0) this.port.postMessage({ lease: more });
  }

  /** The thread has let go: take in what it published last and give back what it did not write. */
  end(): void {
    this.ended = true;
    clearInterval(this.timer);
    this.drain();
    this.unhook();
    this.port.close();
    this.writes.returnLease([...this.outstanding]);
    this.outstanding.clear();
  }
}

export interface TransmissionThreadsOptions {
  /** Connections served on threads at once; past it, on the event loop. */
  maxThreads?: number;
  /** Idle threads kept for later connections. */
  maxIdle?: number;
}

export class TransmissionThreads {
  /** Loaded threads with no connection. */
  private readonly idle: Worker[] = [];
  /** Threads still loading, each resolving once loaded (or gone). */
  private readonly booting = new Map<Worker, Promise<void>>();
  private readonly serving = new Map<number, { worker: Worker; finish: () => void }>();
  private nextId = 1;
  private closed = false;
  /** Threads started so far. */
  started = 0;
  private readonly maxThreads: number;
  private readonly maxIdle: number;

  constructor(options: TransmissionThreadsOptions = {}) {
    this.maxThreads = options.maxThreads ?? 64;
    this.maxIdle = options.maxIdle ?? 8;
  }

  /** Whether this host can serve connections on threads at all. */
  static get supported(): boolean {
    return socketCalls() !== null;
  }

  /**
   * Start threads ahead of the first connections (nbdcopy opens four at once); resolves once
   * they have loaded, so a server that says it is ready serves its first clients at full speed.
   */
  async warm(count: number): Promise<void> {
    if (!TransmissionThreads.supported) return;
    while (!this.closed && this.idle.length + this.booting.size < Math.min(count, this.maxIdle)) {
      if (!this.spawn()) break;
    }
    await Promise.all(this.booting.values());
  }

  /**
   * Serve a negotiated connection on a thread: null (nothing changed) where it cannot be, and
   * the caller serves it on the event loop.
   */
  take(socket: Socket, reader: SocketReader, neg: Negotiated, hooks: TransmissionHooks): ThreadedConnection | null {
    const file = neg.export.blockingFile;
    const c = socketCalls();
    const fd = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle?.fd;
    if (this.closed || !file || !c || typeof fd !== 'number' || fd < 0 || this.serving.size >= this.maxThreads) return null;
    const worker = this.idle.pop();
    if (!worker) {
      // none loaded: this connection stays on the event loop (a thread takes tens of ms to
      // load), and one is started for the next
      if (this.booting.size === 0 && this.serving.size < this.maxThreads) this.spawn();
      return null;
    }
    const plan = file.plan?.bind(file);
    const wakeFd = plan ? c.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC) : -1;
    const connFd = plan && wakeFd < 0 ? -1 : c.dup(fd);
    if (connFd < 0) {
      if (wakeFd >= 0) c.close(wakeFd);
      this.idle.push(worker);
      return null;
    }
    c.fcntl(connFd, F_SETFL, c.fcntl(connFd, F_GETFL, 0) & ~O_NONBLOCK);
    const leftover = reader.detach();
    socket.destroy(); // closes Node's descriptor; the connection lives on in connFd

    const channel = new MessageChannel();
    const receiveBuffer = plan ? new SharedArrayBuffer(Math.max(RECEIVE_BUFFER_BYTES, 4 * leftover.length)) : undefined;
    const base = { id: this.nextId++, socketFd: connFd, leftover, fileFd: file.fd, ctx: checkContextOf(neg), rpc: channel.port2 };
    const leases = receiveBuffer && file.leasedWrites && Leases.worthwhile(file.leasedWrites) ? new Leases(file.leasedWrites) : null;
    const readMaps = file.readMaps;
    const job: ThreadJob = receiveBuffer
      ? {
        ...base, kind: 'planned', receiveBuffer, wakeFd,
        ...(leases ? { leased: leases.job } : {}),
        ...(readMaps ? { readMaps: { blockBytes: readMaps.blockBytes, epoch: readMaps.epoch, gate: readMaps.gate } } : {}),
      }
      : { ...base, kind: 'file', signal: new SharedArrayBuffer(4) };
    const { id, ctx } = job;
    const wake = job.kind === 'file' ? new Int32Array(job.signal) : null;
    let open = true;
    const reply = (message: unknown): void => {
      if (!open) return; // (the thread has let go, and the eventfd's number may be reused)
      channel.port1.postMessage(message);
      if (wake) {
        Atomics.store(wake, 0, 1);
        Atomics.notify(wake, 0);
      } else {
        writeSync(wakeFd, WAKE);
      }
    };
    const replies: Buffer[] = [];
    const out: Output = {
      pool: new BufferPool(0), // (replies are copied to the thread: nothing to recycle)
      send: (...bufs) => void replies.push(...bufs),
      sendData: (header, data) => void replies.push(header, data),
    };
    const received = receiveBuffer && Buffer.from(receiveBuffer);
    let planned: PlannedBatch | null = null;
    channel.port1.on('message', (msg: ThreadCall) => {
      if ('settled' in msg && msg.settled) {
        planned?.settle();
        planned = null;
      }
      if ('batch' in msg) {
        if (msg.batch.some((r) => r.write)) leases?.topUp();
        const requests = msg.batch.map((r): BatchRequest => r.write
          ? { kind: 'write', offset: r.offset, data: received!.subarray(r.at, r.at + r.length) }
          : { kind: 'read', offset: r.offset, length: r.length });
        // the map first: made after the plan, it would wait for the mutex behind a commit waiting
        // for this batch's I/O, which waits for the plan
        const { lookAhead } = msg;
        const mapped = lookAhead && readMaps ? readMaps.lookUp(lookAhead.offset, lookAhead.length).catch(() => undefined) : Promise.resolve(undefined);
        // a plan that fails leaves every request to the ordinary path, which answers the error
        void mapped.then((readMap) => plan!(requests).then((batch): PlanReply => {
          if (open) planned = batch;
          else batch.settle(); // the thread has let go of the connection meanwhile
          return readMap ? { plans: batch.plans, readMap } : { plans: batch.plans };
        }, (): PlanReply => ({ plans: requests.map(() => 'alone') }))).then(reply);
      } else if ('header' in msg) {
        const req = decodeRequest(Buffer.from(msg.header));
        // (answer() answers failures itself; the thread is woken whatever happens)
        void answer(req, msg.payload && Buffer.from(msg.payload), neg, ctx, out, hooks).catch(() => undefined).then(() => {
          reply(replies.splice(0).map((b) => new Uint8Array(b)));
        });
      }
    });

    let finished!: () => void;
    const done = new Promise<void>((resolve) => { finished = resolve; });
    const finish = (): void => {
      if (!open) return;
      open = false;
      leases?.end();
      planned?.settle();
      this.serving.delete(id);
      channel.port1.close();
      c.close(connFd);
      if (wakeFd >= 0) c.close(wakeFd);
      finished();
    };
    this.serving.set(id, { worker, finish });
    worker.ref();
    worker.postMessage(job, leases ? [channel.port2, leases.job.port] : [channel.port2]);
    return {
      done,
      hangUp: () => { if (open) c.shutdown(connFd, SHUT_RD); },
      destroy: () => { if (open) c.shutdown(connFd, SHUT_RDWR); },
    };
  }

  /** Stop the idle threads; call once no connection is served any more. */
  async close(): Promise<void> {
    this.closed = true;
    const threads = [...this.idle.splice(0), ...this.booting.keys()];
    await Promise.all(threads.map((w) => w.terminate()));
  }

  private spawn(): Worker | null {
    let worker: Worker;
    try {
      worker = startWorker('transmission-thread', import.meta.url);
    } catch {
      return null;
    }
    this.started++;
    worker.unref();
    let loaded!: () => void;
    this.booting.set(worker, new Promise<void>((resolve) => { loaded = resolve; }));
    const park = (): void => {
      worker.unref();
      if (!this.closed && this.idle.length < this.maxIdle) this.idle.push(worker);
      else void worker.terminate();
    };
    worker.on('message', (msg: ThreadMessage) => {
      if ('ready' in msg) {
        this.booting.delete(worker);
        loaded();
      } else {
        this.serving.get(msg.done)?.finish();
      }
      park();
    });
    const gone = (): void => {
      this.booting.delete(worker);
      loaded();
      const i = this.idle.indexOf(worker);
      if (i >= 0) this.idle.splice(i, 1);
      for (const s of this.serving.values()) if (s.worker === worker) s.finish();
    };
    worker.on('error', gone);
    worker.on('exit', gone);
    return worker;
  }
}
