/**
 * NbdServer: serves a set of named exports over a unix socket (mode 0600 unless told otherwise)
 * and, only when asked, TCP (bound to 127.0.0.1 unless told otherwise).
 *
 *   const server = new NbdServer([await FileExport.open('/tmp/disk.img', { name: 'disk' })]);
 *   await server.listenUnix('/run/strata/disk.sock');
 *   // nbdinfo 'nbd+unix:///disk?socket=/run/strata/disk.sock'
 *   await server.close();
 *
 * Each connection negotiates on its own, then runs requests concurrently; a misbehaving client
 * only ever loses its own connection.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { chmod, rename, rm, lstat } from 'node:fs/promises';
import { dirname, basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { strataError, isErrno } from '../errors.js';
import { SocketReader } from './socket-reader.js';
import { negotiate, type ExportLookup } from './handshake.js';
import { serveTransmission } from './transmission.js';
import { TransmissionThreads } from './transmission-threads.js';
import type { NbdExport } from './nbd-export.js';

/** Bytes read ahead of the requests being handled before the socket is paused: little, so that
 *  WRITE payloads are still in the CPU cache when written out (see transmission.ts). */
const RECEIVE_AHEAD = 2 * 1024 * 1024;
/** A client that has not finished haggling by then is dropped. */
const HANDSHAKE_TIMEOUT_MS = 30_000;

export interface NbdServerOptions {
  /** Called with failures the server answered or hung up on (default: ignore). */
  log?: (message: string) => void;
  /** Drop clients that have not finished option haggling by then (default 30 s). */
  handshakeTimeoutMs?: number;
  /**
   * Serve connections to file-backed exports (files, thin devices on a file or block device) on
   * threads with blocking I/O (transmission-threads.ts; default true): how many at once, false
   * to serve every connection on the event loop, or threads shared with other servers (whose
   * owner closes them), so a thread that served one export serves the next with its code compiled.
   */
  threads?: number | boolean | TransmissionThreads;
}

/** Threads started with the first listener when a file-backed export is served. */
const WARM_THREADS = 4;

interface Connection {
  socket: Socket;
  reader: SocketReader;
  exportName: string | undefined;
  done: Promise<void>;
  /** Stop taking requests; those in hand are answered, then the connection closes. */
  hangUp(): void;
  /** Break the connection now. */
  destroy(): void;
  threaded: boolean;
}

export class NbdServer implements ExportLookup {
  private readonly exports = new Map<string, NbdExport>();
  private readonly listeners: Server[] = [];
  private readonly unixPaths: string[] = [];
  private readonly connections = new Set<Connection>();
  private closing = false;
  private readonly threads: TransmissionThreads | null;
  private readonly ownsThreads: boolean;

  constructor(exports: NbdExport[] = [], private readonly options: NbdServerOptions = {}) {
    const threads = options.threads ?? true;
    this.ownsThreads = !(threads instanceof TransmissionThreads);
    this.threads = threads instanceof TransmissionThreads ? threads
      : threads === false || threads === 0 ? null : new TransmissionThreads(typeof threads === 'number' ? { maxThreads: threads } : {});
    for (const exp of exports) this.addExport(exp);
  }

  find(name: string): NbdExport | undefined {
    return this.closing ? undefined : this.exports.get(name);
  }

  list(): NbdExport[] {
    return this.closing ? [] : [...this.exports.values()];
  }

  /**
   * Serve `exp` too. One added while listening gets threads started for it, as at listen; await
   * `warmThreads()` for them to have loaded (a first client otherwise may be served on the event
   * loop, as when no thread is idle).
   */
  addExport(exp: NbdExport): void {
    if (this.exports.has(exp.name)) throw strataError('DEVICE_EXISTS', `export "${exp.name}" already exists`, { id: exp.name });
    this.exports.set(exp.name, exp);
    if (this.listeners.length > 0) void this.warmThreads();
  }

  /** Connections currently attached to an export. */
  clientsOf(name: string): number {
    let n = 0;
    for (const c of this.connections) if (c.exportName === name) n++;
    return n;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Connections being served on threads (transmission-threads.ts). */
  get threadedCount(): number {
    let n = 0;
    for (const c of this.connections) if (c.threaded) n++;
    return n;
  }

  /**
   * Stop serving an export. Refused with DEVICE_BUSY while clients use it, unless `force`, which
   * hangs up on them first (their in-flight requests are finished, not abandoned).
   */
  async removeExport(name: string, options: { force?: boolean } = {}): Promise<NbdExport> {
    const exp = this.exports.get(name);
    if (!exp) throw strataError('DEVICE_NOT_FOUND', `no export named "${name}"`, { id: name });
    const users = [...this.connections].filter((c) => c.exportName === name);
    if (users.length > 0 && !options.force) {
      throw strataError('DEVICE_BUSY', `export "${name}" is in use by ${users.length} client(s)`, { id: name });
    }
    this.exports.delete(name);
    for (const c of users) c.hangUp();
    await Promise.all(users.map((c) => c.done));
    return exp;
  }

  /** Listen on a unix socket. The socket appears at `path` already with `mode`. */
  async listenUnix(path: string, mode = 0o600): Promise<void> {
    await removeStaleSocket(path);
    // Bind under a temporary name, chmod, then rename into place: no moment where the socket
    // exists at `path` with the umask's permissions.
    const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(4).toString('hex')}`);
    const server = this.newListener();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(tmp, () => {
        server.off('error', reject);
        resolve();
      });
    });
    try {
      await chmod(tmp, mode);
      await rename(tmp, path);
    } catch (err) {
      server.close();
      await rm(tmp, { force: true });
      throw err;
    }
    this.listeners.push(server);
    this.unixPaths.push(path);
    await this.warmThreads();
  }

  /** Listen on TCP; loopback unless `host` says otherwise. Resolves with the bound port. */
  async listenTcp(port = 10809, host = '127.0.0.1'): Promise<number> {
    const server = this.newListener();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.listeners.push(server);
    await this.warmThreads();
    const addr = server.address();
    return typeof addr === 'object' && addr !== null ? addr.port : port;
  }

  /** Stop listening, hang up on every client after its in-flight requests, remove socket files. */
  async close(): Promise<void> {
    this.closing = true;
    // a listener's close callback waits for its connections to end: hang up on them meanwhile
    const listening = Promise.all(this.listeners.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    this.listeners.length = 0;
    for (const c of this.connections) c.hangUp();
    const deadline = setTimeout(() => { for (const c of this.connections) c.destroy(); }, 5000);
    await Promise.all([...this.connections].map((c) => c.done));
    clearTimeout(deadline);
    if (this.ownsThreads) await this.threads?.close();
    await listening;
    for (const path of this.unixPaths) await rm(path, { force: true });
    this.unixPaths.length = 0;
  }

  /** Start threads ahead of clients when a file-backed export is served; resolves once loaded. */
  async warmThreads(): Promise<void> {
    if ([...this.exports.values()].some((e) => e.blockingFile)) await this.threads?.warm(WARM_THREADS);
  }

  private newListener(): Server {
    const server = createServer({ pauseOnConnect: true }, (socket) => this.accept(socket));
    server.on('error', (err) => this.options.log?.(`nbd listener: ${err.message}`));
    return server;
  }

  private accept(socket: Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    socket.on('error', () => { /* seen by the reader as EOF */ });
    const reader = new SocketReader(socket, RECEIVE_AHEAD, { receiveSlabs: true });
    const conn: Connection = {
      socket, reader, exportName: undefined, done: Promise.resolve(),
      hangUp: () => reader.abort(),
      destroy: () => socket.destroy(),
      threaded: false,
    };
    this.connections.add(conn);
    conn.done = this.run(conn).finally(() => this.connections.delete(conn));
  }

  private async run(conn: Connection): Promise<void> {
    const { socket, reader } = conn;
    const timer = setTimeout(() => socket.destroy(), this.options.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS);
    try {
      const neg = await negotiate(socket, reader, this);
      clearTimeout(timer);
      if (!neg) return;
      conn.exportName = neg.export.name;
      const hooks = {
        onRequestError: (err: unknown) => this.options.log?.(`nbd ${neg.export.name}: ${err instanceof Error ? err.message : String(err)}`),
      };
      const threaded = this.closing ? null : this.threads?.take(socket, reader, neg, hooks);
      if (threaded) {
        conn.hangUp = threaded.hangUp;
        conn.destroy = threaded.destroy;
        conn.threaded = true;
        await threaded.done;
      } else {
        await serveTransmission(socket, reader, neg, hooks);
      }
    } catch (err) {
      if (!reader.closed) this.options.log?.(`nbd connection dropped: ${err instanceof Error ? err.message : String(err)}`);
    } finally {
      clearTimeout(timer);
      await endSocket(socket);
    }
  }
}

/** Half-close after queued replies are written, then make sure the descriptor goes away. */
function endSocket(socket: Socket): Promise<void> {
  if (socket.destroyed) return Promise.resolve();
  return new Promise<void>((resolve) => {
    const timer = setTimeout(() => socket.destroy(), 2000);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
    socket.end(() => socket.destroy());
  });
}

/** A socket file nobody listens on (left by a killed server) is removed; a live one is an error. */
async function removeStaleSocket(path: string): Promise<void> {
  try {
    const st = await lstat(path);
    if (!st.isSocket()) throw strataError('DEVICE_EXISTS', `${path} exists and is not a socket`, { path });
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return;
    throw err;
  }
  const live = await new Promise<boolean>((resolve) => {
    const probe = connect(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) throw strataError('DEVICE_BUSY', `a server is already listening on ${path}`, { path });
  await rm(path, { force: true });
}
