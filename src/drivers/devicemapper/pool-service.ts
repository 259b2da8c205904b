/**
 * The pool service: a long-running process that holds one thin pool open and serves its active
 * thin devices over NBD, as the kernel's dm-thin holds a pool and /dev/mapper holds devices.
 * Strata CLI calls are short-lived, so a device mounted by one call must be served by something
 * that outlives it. Started on demand by pool-client.ts; exits on SIGTERM, on `shutdown`, or
 * after `idleMs` with no active device and no client. One per pool (a flock on service.lock;
 * the pool itself also flocks its metadata file).
 *
 *   <home>/run/service.lock   held while the service lives
 *   <home>/run/control.sock   JSON-lines control (service-protocol.ts)
 *   <home>/run/nbd.sock       NBD: one export per active device, named after it
 *   <home>/run/service.log    its stderr
 */
import { createServer, type Socket } from 'node:net';
import { rm, chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { Pool, type ThinDevice } from '../../thin/index.js';
import { NbdServer } from '../../nbd/server.js';
import { lockFile, type FileLock } from '../../util/file-lock.js';
import { isStrataError, strataError } from '../../errors.js';
import { ThinExport } from '../../nbd/thin-export.js';
import { lineSplitter, type ActiveDevice, type ServiceRequest, type ServiceResponse } from './service-protocol.js';

export interface ServiceConfig {
  runDir: string;
  metadataPath: string;
  dataPath: string;
  blockSectors: number;
  idleMs: number;
}

export function controlSocketPath(runDir: string): string {
  return join(runDir, 'control.sock');
}

export function nbdSocketPath(runDir: string): string {
  return join(runDir, 'nbd.sock');
}

export async function runPoolService(config: ServiceConfig): Promise<void> {
  let lock: FileLock;
  try {
    lock = await lockFile(join(config.runDir, 'service.lock'), { timeoutMs: 0 });
  } catch (err) {
    if (isStrataError(err, 'LOCK_TIMEOUT')) return; // another service already runs for this pool
    throw err;
  }
  // zeroing skipped as moby's pool table asks: filesystems never read blocks they did not write
  const pool = await Pool.open({
    metadataPath: config.metadataPath,
    dataPath: config.dataPath,
    dataBlockSectors: config.blockSectors,
    features: ['skip_block_zeroing'],
    lockTimeoutMs: 10_000,
  });
  const nbd = new NbdServer([], { log: (m) => process.stderr.write(`nbd: ${m}\n`) });
  const active = new Map<string, { dev: ThinDevice; exp: ThinExport }>();
  const clients = new Set<Socket>();
  let stopping: Promise<void> | null = null;
  let idleTimer: NodeJS.Timeout | null = null;

  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      if (idleTimer) clearTimeout(idleTimer);
      control.close();
      for (const c of clients) c.destroy();
      await nbd.close();
      for (const { dev } of active.values()) {
        await dev.flush().catch(() => undefined);
        await dev.close();
      }
      active.clear();
      await pool.close();
      await rm(controlSocketPath(config.runDir), { force: true });
      await lock.release();
    })();
    return stopping;
  };

  const armIdle = (): void => {
    if (idleTimer) clearTimeout(idleTimer);
    idleTimer = null;
    if (active.size === 0 && clients.size === 0 && config.idleMs > 0) {
      idleTimer = setTimeout(() => void stop().then(() => process.exit(0)), config.idleMs);
    }
  };

  async function deactivate(name: string): Promise<void> {
    const cur = active.get(name);
    if (!cur) return;
    await nbd.removeExport(name, { force: true });
    await cur.dev.flush();
    await cur.dev.close();
    active.delete(name);
    armIdle();
  }

  async function handle(req: ServiceRequest): Promise<ServiceResponse> {
    switch (req.op) {
      case 'hello':
        return { ok: true, pid: process.pid };
      case 'status': {
        const s = await pool.status();
        const { toString: _drop, ...fields } = s;
        return { ok: true, status: { pool: fields, blockBytes: pool.blockBytes } };
      }
      case 'message': {
        const words = req.text.trim().split(/\s+/);
        // dm asks for the origin to be suspended around create_snap: hold its I/O
        const origin = words[0] === 'create_snap' ? Number(words[2]) : NaN;
        const busy = [...active.values()].filter((a) => a.dev.id === origin);
        for (const a of busy) await a.dev.suspend();
        try {
          await pool.message(req.text);
        } finally {
          for (const a of busy) a.dev.resume();
        }
        return { ok: true };
      }
      case 'devices':
        return { ok: true, ids: pool.devices() };
      case 'activate': {
        const cur = active.get(req.name);
        if (cur) {
          if (cur.dev.id !== req.deviceId) throw strataError('DEVICE_EXISTS', `${req.name} is active with device ${cur.dev.id}`, { id: req.name });
          return { ok: true };
        }
        const dev = await pool.openThin(req.deviceId, req.size);
        const exp = new ThinExport(dev, { name: req.name });
        nbd.addExport(exp);
        active.set(req.name, { dev, exp });
        await nbd.warmThreads(); // (its client is served on a thread from the start)
        return { ok: true };
      }
      case 'deactivate': {
        if (!active.has(req.name)) return { ok: true };
        if (req.deferred && nbd.clientsOf(req.name) > 0) {
          // deferred removal: stop serving once the last client (a lazily unmounted nbdfuse) goes
          const poll = setInterval(() => {
            if (nbd.clientsOf(req.name) > 0) return;
            clearInterval(poll);
            void deactivate(req.name).catch((err: unknown) => process.stderr.write(`deferred removal of ${req.name}: ${String(err)}\n`));
          }, 200);
          return { ok: true };
        }
        await deactivate(req.name);
        return { ok: true };
      }
      case 'discard': {
        // BLKDISCARD of a whole device before it is deleted (dm.blkdiscard)
        const dev = await pool.openThin(req.deviceId, req.size);
        try {
          await dev.discard(0, req.size);
          await dev.flush();
        } finally {
          await dev.close();
        }
        return { ok: true };
      }
      case 'active': {
        const list: ActiveDevice[] = [...active.entries()].map(([name, a]) => ({ name, deviceId: a.dev.id, size: a.dev.size, clients: nbd.clientsOf(name) }));
        return { ok: true, active: list };
      }
      case 'shutdown':
        if (active.size > 0 && !req.force) return { ok: true, stopping: false };
        setImmediate(() => void stop().then(() => process.exit(0)));
        return { ok: true, stopping: true };
    }
  }

  const control = createServer((socket) => {
    clients.add(socket);
    armIdle();
    // one request at a time per connection, answered in order
    let chain = Promise.resolve();
    socket.on('data', lineSplitter((line) => {
      chain = chain.then(async () => {
        let res: ServiceResponse;
        try {
          res = await handle(JSON.parse(line) as ServiceRequest);
        } catch (err) {
          const code = isStrataError(err) ? err.code : 'INTERNAL';
          res = { ok: false, code, message: err instanceof Error ? err.message : String(err) };
        }
        if (!socket.destroyed) socket.write(`${JSON.stringify(res)}\n`);
      });
    }));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clients.delete(socket);
      armIdle();
    });
  });

  await rm(controlSocketPath(config.runDir), { force: true });
  await nbd.listenUnix(nbdSocketPath(config.runDir));
  await new Promise<void>((resolve, reject) => {
    control.once('error', reject);
    control.listen(controlSocketPath(config.runDir), () => resolve());
  });
  await chmod(controlSocketPath(config.runDir), 0o600);
  process.on('SIGTERM', () => void stop().then(() => process.exit(0)));
  process.on('SIGINT', () => void stop().then(() => process.exit(0)));
  armIdle();
}
