import { connect, type Socket } from 'node:net';
import { spawn } from 'node:child_process';
import { mkdir, open } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isErrno, strataError, type ErrorCode, ERROR_CODES } from '../../errors.js';
import { controlSocketPath, type ServiceConfig } from './pool-service.js';
import { lineSplitter, MAX_SOCKET_PATH, type ServiceRequest, type ServiceResponse, type ServiceStatus, type ActiveDevice } from './service-protocol.js';

const START_TIMEOUT_MS = 30_000;

/**
 * A connection to the pool service, starting the service when none runs. Requests go one at a
 * time in order; errors come back as StrataErrors with the service's code.
 */
export class PoolClient {
  private waiters: Array<{ resolve: (r: ServiceResponse) => void; reject: (e: Error) => void }> = [];
  private closed = false;

  private constructor(private readonly socket: Socket, readonly started: boolean) {
    // the connection keeps the process alive only while a request waits for its answer
    socket.unref();
    socket.on('data', lineSplitter((line) => {
      const w = this.waiters.shift();
      if (this.waiters.length === 0) socket.unref();
      w?.resolve(JSON.parse(line) as ServiceResponse);
    }));
    const fail = (): void => {
      this.closed = true;
      const waiting = this.waiters;
      this.waiters = [];
      for (const w of waiting) w.reject(strataError('INTERNAL', 'devicemapper: the pool service went away'));
    };
    socket.on('close', fail);
    socket.on('error', fail);
  }

  /** Connect to the service for `config.runDir`, spawning it first if nothing answers. */
  static async connect(config: ServiceConfig): Promise<PoolClient> {
    const path = controlSocketPath(config.runDir);
    if (Buffer.byteLength(path) > MAX_SOCKET_PATH) {
      throw strataError('INVALID_ARGUMENT', `devicemapper: ${path} is too long for a unix socket; use a shorter --root`, { path });
    }
    await mkdir(config.runDir, { recursive: true, mode: 0o700 });
    let spawned = false;
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (let delay = 20; ; delay = Math.min(delay * 2, 200)) {
      const socket = await tryConnect(path);
      if (socket) {
        const client: PoolClient = new PoolClient(socket, spawned);
        // a service that is just stopping may accept and then hang up: ask again
        try {
          await client.request({ op: 'hello' });
          return client;
        } catch {
          client.close();
        }
      }
      if (!spawned) {
        await spawnService(config);
        spawned = true;
      }
      if (Date.now() > deadline) {
        throw strataError('INTERNAL', `devicemapper: the pool service did not start (see ${join(config.runDir, 'service.log')})`);
      }
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  /** Connect only if a service is running (no spawn); null otherwise. */
  static async connectExisting(config: ServiceConfig): Promise<PoolClient | null> {
    const socket = await tryConnect(controlSocketPath(config.runDir));
    if (!socket) return null;
    const client: PoolClient = new PoolClient(socket, false);
    try {
      await client.request({ op: 'hello' });
      return client;
    } catch {
      client.close();
      return null;
    }
  }

  request(req: ServiceRequest): Promise<ServiceResponse & { ok: true }> {
    if (this.closed) return Promise.reject(strataError('INTERNAL', 'devicemapper: the pool service went away'));
    return new Promise<ServiceResponse>((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      this.socket.ref();
      this.socket.write(`${JSON.stringify(req)}\n`);
    }).then((res) => {
      if (res.ok) return res;
      const code = (res.code in ERROR_CODES ? res.code : 'INTERNAL') as ErrorCode;
      throw strataError(code, res.message);
    });
  }

  async status(): Promise<ServiceStatus> {
    return (await this.request({ op: 'status' })).status!;
  }

  async message(text: string): Promise<void> {
    await this.request({ op: 'message', text });
  }

  async devices(): Promise<number[]> {
    return (await this.request({ op: 'devices' })).ids ?? [];
  }

  async active(): Promise<ActiveDevice[]> {
    return (await this.request({ op: 'active' })).active ?? [];
  }

  close(): void {
    this.closed = true;
    this.socket.destroy();
  }
}

function tryConnect(path: string): Promise<Socket | null> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.removeAllListeners('error');
      resolve(s);
    });
    s.once('error', (err) => {
      if (!isErrno(err, 'ENOENT', 'ECONNREFUSED', 'EAGAIN')) process.emitWarning(`devicemapper: ${err.message}`);
      resolve(null);
    });
  });
}

async function spawnService(config: ServiceConfig): Promise<void> {
  const here = import.meta.url;
  // under tsx the sources run as .ts; built, as .js
  const entry = fileURLToPath(new URL(here.endsWith('.ts') ? './service-main.ts' : './service-main.js', here));
  const args = here.endsWith('.ts') ? ['--import', import.meta.resolve('tsx'), entry] : [entry];
  const log = await open(join(config.runDir, 'service.log'), 'a', 0o600);
  try {
    const child = spawn(process.execPath, [...args, JSON.stringify(config)], {
      detached: true,
      stdio: ['ignore', log.fd, log.fd],
      env: { ...process.env, NODE_OPTIONS: '' },
    });
    child.unref();
  } finally {
    await log.close();
  }
}
