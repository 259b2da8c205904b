/**
 * Connections to file-backed exports served on threads with blocking I/O, as nbdkit serves them.
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
 * Threads are kept for later connections (up to `maxIdle`), and a few are started with the
 * server so the first clients do not wait for one to boot. Without koffi (no dup/fcntl/shutdown)
 * or past `maxThreads` connections, connections are served on the event loop as before.
 */
import { MessageChannel, type MessagePort, type Worker } from 'node:worker_threads';
import type { Socket } from 'node:net';
import { libcBinding } from '../util/libc.js';
import { startWorker } from '../util/worker-thread.js';
import { BufferPool } from './buffer-pool.js';
import { decodeRequest } from './request-codec.js';
import type { CheckContext } from './request-check.js';
import type { Negotiated } from './handshake.js';
import type { SocketReader } from './socket-reader.js';
import { answer, checkContextOf, type Output, type TransmissionHooks } from './transmission.js';

/** A connection for a thread (posted to it). */
export interface ThreadJob {
  id: number;
  /** The connection, blocking; the main thread closes it once the thread is done. */
  socketFd: number;
  /** Bytes received past the handshake. */
  leftover: Uint8Array;
  /** The export's file (NbdExport.blockingFile). */
  fileFd: number;
  ctx: CheckContext;
  /** Requests handed back: the thread posts `Handed`, waits on `signal`, takes the reply. */
  rpc: MessagePort;
  signal: SharedArrayBuffer;
}

/** A request the thread hands to the main thread: its header and WRITE payload. */
export interface Handed {
  header: Uint8Array;
  payload: Uint8Array | undefined;
}

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
}

const F_GETFL = 3;
const F_SETFL = 4;
const O_NONBLOCK = 0o4000;
const SHUT_RD = 0;
const SHUT_RDWR = 2;

const socketCalls = libcBinding<SocketCalls>((lib) => ({
  dup: lib.func('int dup(int fd)') as SocketCalls['dup'],
  fcntl: lib.func('int fcntl(int fd, int cmd, int arg)') as SocketCalls['fcntl'],
  shutdown: lib.func('int shutdown(int fd, int how)') as SocketCalls['shutdown'],
  close: lib.func('int close(int fd)') as SocketCalls['close'],
}));

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
    const connFd = c.dup(fd);
    if (connFd < 0) {
      this.idle.push(worker);
      return null;
    }
    c.fcntl(connFd, F_SETFL, c.fcntl(connFd, F_GETFL, 0) & ~O_NONBLOCK);
    const leftover = reader.detach();
    socket.destroy(); // closes Node's descriptor; the connection lives on in connFd

    const id = this.nextId++;
    const ctx = checkContextOf(neg);
    const channel = new MessageChannel();
    const signal = new SharedArrayBuffer(4);
    const wake = new Int32Array(signal);
    const replies: Buffer[] = [];
    const out: Output = {
      pool: new BufferPool(0), // (replies are copied to the thread: nothing to recycle)
      send: (...bufs) => void replies.push(...bufs),
      sendData: (header, data) => void replies.push(header, data),
    };
    channel.port1.on('message', (msg: Handed) => {
      const req = decodeRequest(Buffer.from(msg.header));
      // (answer() answers failures itself; the thread is woken whatever happens)
      void answer(req, msg.payload && Buffer.from(msg.payload), neg, ctx, out, hooks).catch(() => undefined).then(() => {
        const reply = replies.splice(0).map((b) => new Uint8Array(b));
        channel.port1.postMessage(reply);
        Atomics.store(wake, 0, 1);
        Atomics.notify(wake, 0);
      });
    });

    let open = true;
    let finished!: () => void;
    const done = new Promise<void>((resolve) => { finished = resolve; });
    const finish = (): void => {
      if (!open) return;
      open = false;
      this.serving.delete(id);
      channel.port1.close();
      c.close(connFd);
      finished();
    };
    this.serving.set(id, { worker, finish });
    worker.ref();
    const job: ThreadJob = { id, socketFd: connFd, leftover, fileFd: file.fd, ctx, rpc: channel.port2, signal };
    worker.postMessage(job, [channel.port2]);
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
