/**
 * Talking to the active-devices service from any process: `callService` sends one control
 * request, `ensureService` starts the service (a detached child) when none answers for this root,
 * `stopService` sends SIGTERM and waits for the flush/commit/close to finish.
 */
import { connect } from 'node:net';
import { spawn } from 'node:child_process';
import { open, readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { strataError, isErrno } from '../errors.js';
import { processAlive } from '../util/process-alive.js';
import { mkdirDurable } from '../util/atomic.js';
import { servicePaths } from './service-paths.js';
import { replyError, type ActiveDevice, type ServiceReply, type ServiceRequest, type SyncResult } from './service-protocol.js';

const START_TIMEOUT_MS = 15_000;
const STOP_TIMEOUT_MS = 30_000;

/** Send one request; resolves with the result or rejects with the service's StrataError. */
export async function callService(root: string, request: ServiceRequest, timeoutMs = 120_000): Promise<unknown> {
  const path = servicePaths(root).control;
  const text = await new Promise<string>((resolve, reject) => {
    const socket = connect(path);
    let data = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(strataError('LOCK_TIMEOUT', `the strata NBD service did not answer ${request.op} within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(`${JSON.stringify(request)}\n`));
    socket.on('data', (d: string) => { data += d; });
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on('end', () => {
      clearTimeout(timer);
      resolve(data);
    });
  });
  let reply: ServiceReply;
  try {
    reply = JSON.parse(text) as ServiceReply;
  } catch {
    throw strataError('PROTOCOL_ERROR', 'the strata NBD service sent a malformed reply');
  }
  if (!reply.ok) throw replyError(reply);
  return reply.result;
}

/**
 * The control socket was gone or refused the connection: the request never reached a service
 * (there is none, or it had just stopped: an idle one stops on its own).
 */
export function neverReached(err: unknown): boolean {
  return isErrno(err, 'ENOENT', 'ECONNREFUSED');
}

/** The running service's pid, or null when nothing answers on the control socket. */
export async function servicePid(root: string): Promise<number | null> {
  try {
    const r = (await callService(root, { op: 'ping' }, 5000)) as { pid: number };
    return r.pid;
  } catch (err) {
    if (neverReached(err)) return null;
    throw err;
  }
}

/** The devices the service serves; none when it is not running (or stopped meanwhile). */
export async function servedDevices(root: string): Promise<ActiveDevice[]> {
  try {
    return await service.list(root);
  } catch (err) {
    if (neverReached(err)) return [];
    throw err;
  }
}

/** How the child runs our entry: compiled JS directly, TypeScript sources through tsx. */
function entryCommand(root: string): string[] {
  const entryUrl = new URL(import.meta.url.endsWith('.ts') ? './service-main.ts' : './service-main.js', import.meta.url);
  const args: string[] = [];
  if (import.meta.url.endsWith('.ts')) args.push('--import', import.meta.resolve('tsx'));
  args.push(fileURLToPath(entryUrl), root);
  return args;
}

/** Start the service for `root` unless one is running. Resolves with its pid once it answers. */
export async function ensureService(root: string): Promise<number> {
  const running = await servicePid(root);
  if (running !== null) return running;
  const paths = servicePaths(root);
  await mkdirDurable(paths.dir);
  const log = await open(paths.log, 'a', 0o600);
  const child = spawn(process.execPath, entryCommand(root), {
    detached: true,
    stdio: ['ignore', log.fd, log.fd],
    // more libuv threads: every NBD read and write is a thread-pool job
    env: { ...process.env, UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? '16' },
  });
  let exited: number | null = null;
  child.once('exit', (code) => { exited = code ?? -1; });
  child.unref();
  await log.close();
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const pid = await servicePid(root).catch(() => null);
    if (pid !== null) return pid;
    if (exited !== null) {
      // another process may have won the race to start it
      const other = await servicePid(root).catch(() => null);
      if (other !== null) return other;
      const tail = (await readFile(paths.log, 'utf8').catch(() => '')).trim().split('\n').slice(-3).join(' | ');
      throw strataError('INTERNAL', `the strata NBD service exited with status ${exited}: ${tail}`, { path: paths.log });
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw strataError('LOCK_TIMEOUT', `the strata NBD service did not start within ${START_TIMEOUT_MS} ms`, { path: paths.log });
}

/** SIGTERM the service and wait until it has flushed, committed and exited. False if none ran. */
export async function stopService(root: string): Promise<boolean> {
  const pid = await servicePid(root);
  if (pid === null) return false;
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + STOP_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (!processAlive(pid)) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw strataError('LOCK_TIMEOUT', `the strata NBD service (pid ${pid}) did not stop within ${STOP_TIMEOUT_MS} ms`);
}

/** Typed wrappers for the common requests. */
export const service = {
  list: (root: string) => callService(root, { op: 'list' }) as Promise<ActiveDevice[]>,
  sync: (root: string) => callService(root, { op: 'sync' }) as Promise<SyncResult>,
  activate: (root: string, name: string) => callService(root, { op: 'activate', name }) as Promise<ActiveDevice>,
  deactivate: (root: string, name: string, force = false) => callService(root, { op: 'deactivate', name, force }).then(() => undefined),
  create: (root: string, name: string, table: string) => callService(root, { op: 'create', name, table }) as Promise<ActiveDevice | null>,
  remove: (root: string, name: string, force = false) => callService(root, { op: 'remove', name, force }).then(() => undefined),
  message: (root: string, pool: string, text: string) => callService(root, { op: 'message', pool, text }).then(() => undefined),
  suspend: (root: string, name: string) => callService(root, { op: 'suspend', name }).then(() => undefined),
  resume: (root: string, name: string) => callService(root, { op: 'resume', name }).then(() => undefined),
  status: (root: string, name: string) => callService(root, { op: 'status', name }) as Promise<string>,
};
