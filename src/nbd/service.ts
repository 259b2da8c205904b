/**
 * The active-devices service: what /dev/mapper is for the kernel. One long-running process per
 * data root holds the thin pools of active thin devices open and serves each active thin device
 * over NBD at `<root>/mapper/<name>.sock`; the mapper registry (src/thin/mapper.ts) stays the
 * record of which names exist, this process is the one that has them open.
 *
 *     const svc = await NbdService.start(root);     // or ensureService(root) from any process
 *     await svc.activate('thin0');                    // nbd+unix:///?socket=<root>/mapper/thin0.sock
 *     await svc.suspend('thin0'); await svc.message('pool', 'create_snap 1 0'); await svc.resume('thin0');
 *     await svc.stop();                               // SIGTERM does this: flush, commit, close
 *
 * While the service holds a pool, it holds the pool's exclusive flock: pool messages and new thin
 * devices on that pool must go through the service (`message`, `create`). A pool is released as
 * soon as its last active device is deactivated; with `idleExitMs`, the service itself stops once
 * it has served nothing for that long (the process entry sets it: a forgotten service would hold
 * ~100 MB and its threads for nothing), and the next command that needs it starts it again.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { chmod, rename, rm } from 'node:fs/promises';
import { strataError, isStrataError } from '../errors.js';
import { mkdirDurable, writeFileAtomic } from '../util/atomic.js';
import { lockFile, type FileLock } from '../util/file-lock.js';
import { MapperRegistry, openPoolFromTable, poolNameOf } from '../thin/mapper.js';
import { dmCreate, dmMessage, dmRemove, dmResume, dmStatus, dmSuspend } from '../thin/dmsetup.js';
import { formatTable, parseTable } from '../thin/table.js';
import { parseMessage } from '../thin/message.js';
import type { Pool } from '../thin/pool.js';
import type { ThinDevice } from '../thin/thin-device.js';
import { NbdServer } from './server.js';
import { TransmissionThreads } from './transmission-threads.js';
import { ThinExport } from './thin-export.js';
import { servicePaths, type ServicePaths } from './service-paths.js';
import {
  decodeServiceRequest, encodeReplyError, type ActiveDevice, type ServiceReply, type ServiceRequest, type SyncResult,
} from './service-protocol.js';

interface HeldPool {
  pool: Pool;
  users: Set<string>;
}

interface Active {
  name: string;
  poolName: string;
  devId: number;
  table: string;
  device: ThinDevice;
  server: NbdServer;
}

export interface ServiceOptions {
  log?: (message: string) => void;
  /** Stop once no device has been active, and no control request open, for this long (default: never). */
  idleExitMs?: number;
}

export class NbdService {
  readonly paths: ServicePaths;
  private readonly registry: MapperRegistry;
  private readonly pools = new Map<string, HeldPool>();
  private readonly active = new Map<string, Active>();
  /**
   * Connection threads every device's server shares: a thread kept from one device serves the
   * next warm. Up to 64 connections at once on threads (past that, on the event loop), and as
   * many idle as nbdcopy opens connections (each idle thread holds a V8 heap of its own).
   */
  private readonly threads = new TransmissionThreads({ maxIdle: 4 });
  private control: Server | undefined;
  /** Control connections open: a request may be on its way in one. */
  private controlOpen = 0;
  private idleTimer: NodeJS.Timeout | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private stopping: Promise<void> | undefined;
  /** Resolves once `stop()` has finished (the process entry exits on it). */
  readonly stopped: Promise<void>;
  private markStopped!: () => void;

  private constructor(readonly root: string, private readonly lock: FileLock, private readonly options: ServiceOptions) {
    this.paths = servicePaths(root);
    this.registry = new MapperRegistry(root);
    this.stopped = new Promise((resolve) => { this.markStopped = resolve; });
  }

  /** Take the root's service lock (SERVICE_RUNNING-style LOCK_TIMEOUT if another holds it), listen, serve the registry. */
  static async start(root: string, options: ServiceOptions = {}): Promise<NbdService> {
    const paths = servicePaths(root);
    await mkdirDurable(paths.dir);
    const lock = await lockFile(paths.lock, { timeoutMs: 0 });
    const svc = new NbdService(root, lock, options);
    try {
      // serve the registry first: once the control socket answers, the devices are there
      const synced = await svc.sync();
      for (const f of synced.failed) svc.log(`not activated: ${f.name}: ${f.message}`);
      // the pid file first: once the control socket answers, everything a client looks at is there
      await writeFileAtomic(paths.pid, `${process.pid}\n`);
      await svc.listenControl();
      svc.watchIdle();
    } catch (err) {
      await svc.stop();
      throw err;
    }
    return svc;
  }

  private log(message: string): void {
    this.options.log?.(message);
  }

  /**
   * Arm the idle stop while nothing is served and no request is open; disarm it otherwise. It
   * stops from inside the control queue, so no operation runs meanwhile, and in the same tick
   * as its check, so no control connection can arrive in between.
   */
  private watchIdle(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
    const ms = this.options.idleExitMs;
    if (ms === undefined || this.stopping || this.active.size > 0 || this.controlOpen > 0) return;
    this.idleTimer = setTimeout(() => {
      void this.serial(async () => {
        if (this.stopping || this.active.size > 0 || this.controlOpen > 0) return;
        this.log(`nothing served for ${ms} ms: stopping`);
        void this.stop(); // (not awaited: stop waits for this queue)
      });
    }, ms);
  }

  /** Control operations run one at a time (the queue also runs the idle stop). */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.queue.then(fn, fn);
    // (what an operation activated or deactivated decides whether idling starts)
    this.queue = next.catch(() => undefined).then(() => this.watchIdle());
    return next;
  }

  list(): ActiveDevice[] {
    return [...this.active.values()].map((a) => ({
      name: a.name, socket: this.paths.device(a.name), pool: a.poolName, devId: a.devId,
      size: a.device.size, suspended: a.device.suspended, clients: a.server.clientsOf(a.name),
    }));
  }

  activate(name: string): Promise<ActiveDevice> {
    return this.serial(() => this.activateNow(name));
  }

  deactivate(name: string, options: { force?: boolean } = {}): Promise<void> {
    return this.serial(() => this.deactivateNow(name, options.force === true));
  }

  /** Serve every thin device of the registry; stop serving names that left it (or changed). */
  sync(): Promise<SyncResult> {
    return this.serial(async () => {
      const result: SyncResult = { activated: [], deactivated: [], failed: [] };
      const entries = await this.registry.list();
      const wanted = new Map<string, string>();
      for (const e of entries) if (parseTable(e.table).target === 'thin') wanted.set(e.name, e.table);
      for (const [name, a] of [...this.active]) {
        if (wanted.get(name) === a.table) continue;
        await this.deactivateNow(name, false).then(
          () => result.deactivated.push(name),
          (err: unknown) => result.failed.push(failure(name, err)),
        );
      }
      for (const name of wanted.keys()) {
        if (this.active.has(name)) continue;
        await this.activateNow(name).then(
          () => result.activated.push(name),
          (err: unknown) => result.failed.push(failure(name, err)),
        );
      }
      return result;
    });
  }

  /** `dmsetup create`: a pool line goes to the registry as usual; a thin line is also activated. */
  create(name: string, table: string): Promise<ActiveDevice | null> {
    return this.serial(async () => {
      const t = parseTable(table);
      if (t.target === 'thin-pool') {
        await dmCreate(this.registry, name, table);
        return null;
      }
      const held = this.pools.get(poolNameOf(t.poolDev));
      if (!held) {
        await dmCreate(this.registry, name, table);
      } else {
        // the pool is ours (its flock too): check the device here, then record the name
        held.pool.md.deviceDetails(t.devId);
        await this.registry.locked(async () => {
          if (await this.registry.find(name)) throw strataError('DEVICE_EXISTS', `device ${name} already exists`, { id: name });
          await this.registry.put({ name, table: formatTable(t), suspended: false });
        });
      }
      return this.activateNow(name);
    });
  }

  /** `dmsetup remove`: refused while clients are connected, unless `force`. */
  remove(name: string, options: { force?: boolean } = {}): Promise<void> {
    return this.serial(async () => {
      if (this.active.has(name)) await this.deactivateNow(name, options.force === true);
      await dmRemove(this.registry, name);
    });
  }

  /** `dmsetup message`: applied to the pool we hold, or through the registry when we do not. */
  message(poolName: string, text: string): Promise<void> {
    return this.serial(async () => {
      const held = this.pools.get(poolName);
      if (!held) return dmMessage(this.registry, poolName, '0', text);
      const msg = parseMessage(text);
      await this.registry.locked(async () => {
        if (msg.kind === 'delete') {
          const users = (await this.registry.thinsOf(poolName)).filter((u) => u.table.devId === msg.id);
          if (users.length > 0) throw strataError('DEVICE_BUSY', `thin device ${msg.id} is active as ${users.map((u) => u.entry.name).join(', ')}`, { id: String(msg.id) });
        }
        await held.pool.apply(msg);
      });
    });
  }

  /** Quiesce: in-flight I/O finishes, new I/O waits (clients stay connected) until resume. */
  suspend(name: string): Promise<void> {
    return this.serial(async () => {
      const a = this.activeOr(name);
      await a.device.suspend();
      await a.device.flush();
      await dmSuspend(this.registry, name);
    });
  }

  resume(name: string): Promise<void> {
    return this.serial(async () => {
      const held = this.pools.get(name);
      if (held) return this.resumePool(name, held);
      const a = this.activeOr(name);
      await dmResume(this.registry, name);
      a.device.resume();
    });
  }

  /**
   * Resume a pool we hold (its flock is ours, so the registry cannot reopen it): swap in a
   * reloaded table and take in grown data and metadata devices, as dm-thin's preresume does.
   */
  private async resumePool(name: string, held: HeldPool): Promise<void> {
    await this.registry.locked(async () => {
      const e = await this.registry.get(name);
      const table = e.inactiveTable ?? e.table;
      const t = parseTable(table);
      if (t.target !== 'thin-pool') throw strataError('INTERNAL', `${name} is held as a pool but its table is ${t.target}`);
      await held.pool.resize(Math.floor(t.length / t.dataBlockSectors));
      await this.registry.put({ name, table, suspended: false });
    });
  }

  /** `dmsetup status NAME`: answered from the pools we hold (whose flock we have), else as usual. */
  status(name: string): Promise<string> {
    return this.serial(async () => {
      const entry = await this.registry.get(name);
      const t = parseTable(entry.table);
      if (t.target === 'thin-pool') {
        const held = this.pools.get(name);
        if (held) return `${t.start} ${t.length} thin-pool ${(await held.pool.status()).toString()}`;
      } else {
        const a = this.active.get(name);
        if (a) return `${t.start} ${t.length} thin ${(await a.device.status()).toString()}`;
        const held = this.pools.get(poolNameOf(t.poolDev));
        if (held) {
          const dev = await held.pool.openThin(t.devId, t.length * 512);
          try {
            return `${t.start} ${t.length} thin ${(await dev.status()).toString()}`;
          } finally {
            await dev.close();
          }
        }
      }
      return dmStatus(this.registry, name);
    });
  }

  /** Stop serving everything: finish in-flight requests, flush, commit and close the pools. */
  stop(): Promise<void> {
    clearTimeout(this.idleTimer);
    this.stopping ??= (async () => {
      await new Promise<void>((resolve) => (this.control ? this.control.close(() => resolve()) : resolve()));
      await this.queue.catch(() => undefined);
      for (const name of [...this.active.keys()]) {
        await this.deactivateNow(name, true).catch((err: unknown) => this.log(`closing ${name}: ${String(err)}`));
      }
      for (const [name, held] of this.pools) {
        await held.pool.close().catch((err: unknown) => this.log(`closing pool ${name}: ${String(err)}`));
      }
      this.pools.clear();
      await this.threads.close();
      await rm(this.paths.control, { force: true });
      await rm(this.paths.pid, { force: true });
      await this.lock.release();
      this.markStopped();
    })();
    return this.stopping;
  }

  private activeOr(name: string): Active {
    const a = this.active.get(name);
    if (!a) throw strataError('DEVICE_NOT_FOUND', `device ${name} is not active`, { id: name });
    return a;
  }

  private async activateNow(name: string): Promise<ActiveDevice> {
    if (this.stopping) throw strataError('DEVICE_BUSY', 'the service is stopping');
    const existing = this.active.get(name);
    if (existing) return this.list().find((d) => d.name === name)!;
    const { entry, table } = await this.registry.thinTable(name);
    const poolName = poolNameOf(table.poolDev);
    const poolEntry = await this.registry.poolTable(poolName);
    if (poolEntry.entry.suspended) throw strataError('DEVICE_SUSPENDED', `pool ${poolName} is suspended`, { id: poolName });
    let held = this.pools.get(poolName);
    if (!held) {
      held = { pool: await openPoolFromTable(poolEntry.table, { lockTimeoutMs: 10_000 }), users: new Set() };
      this.pools.set(poolName, held);
    }
    let device: ThinDevice | undefined;
    try {
      device = await held.pool.openThin(table.devId, table.length * 512);
      const server = new NbdServer([
        new ThinExport(device, {
          name, description: `thin device ${table.devId} of pool ${poolName}`, readOnly: poolEntry.table.features.readOnly,
        }),
      ], { log: (m) => this.log(m), threads: this.threads });
      await server.listenUnix(this.paths.device(name));
      if (entry.suspended) await device.suspend();
      held.users.add(name);
      this.active.set(name, { name, poolName, devId: table.devId, table: entry.table, device, server });
      this.log(`active: ${name} (thin ${table.devId} of ${poolName}) at ${this.paths.device(name)}`);
    } catch (err) {
      await device?.close();
      await this.releasePool(poolName);
      throw err;
    }
    return this.list().find((d) => d.name === name)!;
  }

  private async deactivateNow(name: string, force: boolean): Promise<void> {
    const a = this.activeOr(name);
    if (!force && a.server.clientsOf(name) > 0) {
      throw strataError('DEVICE_BUSY', `device ${name} is open by ${a.server.clientsOf(name)} NBD client(s)`, { id: name });
    }
    // a suspended device would hold its in-flight requests forever
    a.device.resume();
    await a.server.close();
    await a.device.flush().catch((err: unknown) => this.log(`flush ${name}: ${String(err)}`));
    await a.device.close();
    this.active.delete(name);
    this.pools.get(a.poolName)?.users.delete(name);
    await this.releasePool(a.poolName);
    this.log(`inactive: ${name}`);
  }

  private async releasePool(poolName: string): Promise<void> {
    const held = this.pools.get(poolName);
    if (!held || held.users.size > 0) return;
    this.pools.delete(poolName);
    await held.pool.close();
  }

  // --- control socket -------------------------------------------------------------------------

  private async listenControl(): Promise<void> {
    const path = this.paths.control;
    await rm(path, { force: true }); // we hold the service lock, so any socket here is stale
    const tmp = `${path}.${process.pid}`;
    const server = createServer((socket) => void this.serveControl(socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(tmp, () => resolve());
    });
    await chmod(tmp, 0o600);
    await rename(tmp, path);
    this.control = server;
  }

  private async serveControl(socket: Socket): Promise<void> {
    this.controlOpen++;
    this.watchIdle();
    socket.on('close', () => {
      this.controlOpen--;
      this.watchIdle();
    });
    socket.on('error', () => undefined);
    // (not `for await`: leaving that loop early destroys the socket before we can answer)
    const text = await new Promise<string>((resolve) => {
      let buf = '';
      socket.setEncoding('utf8');
      socket.on('data', (chunk: string) => {
        buf += chunk;
        if (buf.includes('\n') || buf.length > 1 << 20) resolve(buf);
      });
      socket.on('end', () => resolve(buf));
      socket.on('close', () => resolve(buf));
    });
    let reply: ServiceReply;
    let req: ServiceRequest | undefined;
    try {
      req = decodeServiceRequest(text.split('\n')[0] ?? '');
      reply = { ok: true, result: (await this.dispatch(req)) ?? null };
    } catch (err) {
      reply = encodeReplyError(err);
      if (!isStrataError(err)) this.log(`control ${req?.op ?? '?'}: ${String(err)}`);
    }
    socket.end(`${JSON.stringify(reply)}\n`);
    if (req?.op === 'stop') void this.stop();
  }

  private async dispatch(req: ServiceRequest): Promise<unknown> {
    switch (req.op) {
      case 'ping': return { pid: process.pid, root: this.root };
      case 'list': return this.list();
      case 'sync': return this.sync();
      case 'activate': return this.activate(req.name);
      case 'deactivate': return this.deactivate(req.name, { force: req.force === true });
      case 'create': return this.create(req.name, req.table);
      case 'remove': return this.remove(req.name, { force: req.force === true });
      case 'message': return this.message(req.pool, req.text);
      case 'suspend': return this.suspend(req.name);
      case 'resume': return this.resume(req.name);
      case 'status': return this.status(req.name);
      case 'stop': return { pid: process.pid };
    }
  }
}

function failure(name: string, err: unknown): { name: string; code: string; message: string } {
  return { name, code: isStrataError(err) ? err.code : 'INTERNAL', message: err instanceof Error ? err.message : String(err) };
}
