// Shared helpers for the NBD tests: temp dirs, async child processes (never spawnSync: the
// server under test runs in this process and must keep serving), and a raw protocol client.
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile, truncate } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SocketReader } from '../../src/nbd/socket-reader.js';
import { encodeRequest } from '../../src/nbd/request-codec.js';
import assert from 'node:assert/strict';
import { CMD, IHAVEOPT, OPT } from '../../src/nbd/protocol.js';
import { FileExport } from '../../src/nbd/file-export.js';
import { NbdServer } from '../../src/nbd/server.js';

export async function tempDir(prefix = 'strata-nbd-'): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/**
 * A pool's sparse metadata and data files, `<dir>/<prefix>meta` and `<dir>/<prefix>data`, and the
 * thin-pool table line for them (64 KiB blocks, low water mark 16).
 */
export async function poolFiles(dir: string, metaBytes: number, dataBytes: number, prefix = ''): Promise<{ meta: string; data: string; table: string }> {
  const meta = join(dir, `${prefix}meta`);
  const data = join(dir, `${prefix}data`);
  for (const [path, bytes] of [[meta, metaBytes], [data, dataBytes]] as const) {
    await writeFile(path, '');
    await truncate(path, bytes);
  }
  return { meta, data, table: `0 ${dataBytes / 512} thin-pool ${meta} ${data} 128 16` };
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: string[], options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? process.env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Run and insist on success. */
export async function runOk(cmd: string, args: string[], options?: { timeoutMs?: number }): Promise<string> {
  const r = await run(cmd, args, options);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
  return r.stdout;
}

export async function haveCommand(cmd: string): Promise<boolean> {
  const r = await run('sh', ['-c', `command -v ${cmd}`]).catch(() => undefined);
  return r?.code === 0;
}

export function unixUri(socketPath: string, name = ''): string {
  return `nbd+unix:///${name}?socket=${socketPath}`;
}

/** A hand-driven NBD client for protocol edge cases no real client would produce. */
export class RawClient {
  readonly reader: SocketReader;
  private constructor(readonly socket: Socket) {
    this.reader = new SocketReader(socket);
  }

  static async connect(path: string): Promise<RawClient> {
    const socket = connect(path);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    socket.on('error', () => {});
    return new RawClient(socket);
  }

  /** Read the greeting and send client flags. Returns the handshake flags. */
  async greet(clientFlags = 3): Promise<number> {
    const g = await this.reader.read(18);
    const b = Buffer.alloc(4);
    b.writeUInt32BE(clientFlags);
    this.socket.write(b);
    return g.readUInt16BE(16);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0), declaredLength = data.length): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(IHAVEOPT, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(declaredLength, 12);
    this.socket.write(Buffer.concat([h, data]));
  }

  async readOptionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = await this.reader.read(20);
    const len = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.reader.read(len) };
  }

  /** Option replies up to and including the final one (ACK or an error). */
  async readOptionReplies(): Promise<Array<{ option: number; type: number; data: Buffer }>> {
    const out = [];
    for (;;) {
      const r = await this.readOptionReply();
      out.push(r);
      if (r.type === 1 || r.type >= 0x80000000) return out;
    }
  }

  sendRequest(type: number, flags: number, cookie: bigint, offset: bigint | number, length: number, payload?: Buffer): void {
    const h = encodeRequest(type, flags, cookie, offset, length);
    this.socket.write(payload ? Buffer.concat([h, payload]) : h);
  }

  async readSimpleReply(dataLength = 0): Promise<{ magic: number; error: number; cookie: bigint; data: Buffer }> {
    const h = await this.reader.read(16);
    const error = h.readUInt32BE(4);
    return {
      magic: h.readUInt32BE(0), error, cookie: h.readBigUInt64BE(8),
      data: error === 0 ? await this.reader.read(dataLength) : Buffer.alloc(0),
    };
  }

  async readChunk(): Promise<{ magic: number; flags: number; type: number; cookie: bigint; payload: Buffer }> {
    const h = await this.reader.read(20);
    const magic = h.readUInt32BE(0);
    if (magic !== 0x668e33ef) throw new Error(`expected a structured chunk, got magic ${magic.toString(16)}`);
    return {
      magic, flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: h.readBigUInt64BE(8),
      payload: await this.reader.read(h.readUInt32BE(16)),
    };
  }

  /** Resolves true when the server closes the connection within `ms`. */
  closedWithin(ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      if (this.socket.destroyed || this.reader.closed) return resolve(true);
      const timer = setTimeout(() => resolve(false), ms);
      this.socket.once('close', () => {
        clearTimeout(timer);
        resolve(true);
      });
      this.socket.resume();
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

/** GO/INFO option data for `name` with the given info requests. */
export function goData(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2 + infos.length * 2);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + i * 2));
  return b;
}

export function metaData(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const n = Buffer.from(name);
  const h = Buffer.alloc(4);
  h.writeUInt32BE(n.length);
  parts.push(h, n);
  const c = Buffer.alloc(4);
  c.writeUInt32BE(queries.length);
  parts.push(c);
  for (const q of queries) {
    const qb = Buffer.from(q);
    const l = Buffer.alloc(4);
    l.writeUInt32BE(qb.length);
    parts.push(l, qb);
  }
  return Buffer.concat(parts);
}

/** A server on a unix socket serving a fresh sparse file of `size` bytes as export `disk`. */
export async function serveSparseFile(size: number, options: { threads?: number | boolean } = {}): Promise<{
  file: string; exp: FileExport; server: NbdServer; sock: string; close(): Promise<void>;
}> {
  const { dir, cleanup } = await tempDir('strata-nbd-file-');
  const file = join(dir, 'disk');
  await writeFile(file, '');
  await truncate(file, size);
  const exp = await FileExport.open(file, { name: 'disk' });
  const server = new NbdServer([exp], options.threads === undefined ? {} : { threads: options.threads });
  const sock = join(dir, 'nbd.sock');
  await server.listenUnix(sock);
  return {
    file, exp, server, sock,
    close: async () => {
      await server.close();
      await exp.close();
      await cleanup();
    },
  };
}

/** Resolves once `cond()` holds (polled), or rejects after `ms`. */
export async function until(cond: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Connect, haggle and GO on export `name`; the client is then in transmission. */
export async function attach(sock: string, name: string): Promise<RawClient> {
  const c = await RawClient.connect(sock);
  await c.greet();
  c.sendOption(OPT.GO, goData(name));
  const replies = await c.readOptionReplies();
  assert.equal(replies[replies.length - 1]!.type, 1, 'GO acknowledged');
  return c;
}

/** Attach with structured replies and base:allocation selected (so BLOCK_STATUS is allowed). */
export async function attachWithMeta(sock: string, name: string): Promise<RawClient> {
  const c = await RawClient.connect(sock);
  await c.greet();
  c.sendOption(OPT.STRUCTURED_REPLY);
  await c.readOptionReplies();
  c.sendOption(OPT.SET_META_CONTEXT, metaData(name, ['base:allocation']));
  await c.readOptionReplies();
  c.sendOption(OPT.GO, goData(name));
  const replies = await c.readOptionReplies();
  assert.equal(replies[replies.length - 1]!.type, 1, 'GO acknowledged');
  return c;
}

/** n simple replies, sorted by cookie (pipelined requests may be answered in any order). */
export async function inCookieOrder(c: RawClient, n: number): Promise<Array<{ cookie: bigint; error: number }>> {
  const replies = [];
  for (let i = 0; i < n; i++) replies.push(await c.readSimpleReply());
  return replies.sort((x, y) => Number(x.cookie - y.cookie));
}

/**
 * The end of a scripted session on a threaded connection (threads.test.ts, thin-threads.test.ts),
 * cookies from `cookie` on: requests handed over (BLOCK_STATUS, TRIM, WRITE_ZEROES, CACHE);
 * refusals that keep the stream in sync (a READ past the end, a WRITE past the end with its
 * payload consumed, an oversize WRITE with its payload skipped, an unknown flag); a zero-length
 * READ; then garbage, which gets a hang-up. Returns the answers, comparable between sessions.
 */
export async function handedOverAndRefused(c: RawClient, size: number, cookie: bigint): Promise<unknown[]> {
  const answers: unknown[] = [];
  const MiB = 1024 * 1024;
  c.sendRequest(CMD.BLOCK_STATUS, 0, cookie, 0, size);
  const bs = await c.readChunk();
  answers.push({ type: bs.type, cookie: bs.cookie, extents: bs.payload.subarray(4).toString('hex') });
  c.sendRequest(CMD.TRIM, 0, cookie + 1n, 4 * MiB, MiB);
  c.sendRequest(CMD.WRITE_ZEROES, 0, cookie + 2n, 0, 4096);
  c.sendRequest(CMD.CACHE, 0, cookie + 3n, 0, MiB);
  answers.push(...await inCookieOrder(c, 3));
  c.sendRequest(CMD.READ, 0, cookie + 4n, size - 1, 2);
  const refused = await c.readChunk();
  answers.push({ type: refused.type, cookie: refused.cookie, errno: refused.payload.readUInt32BE(0) });
  c.sendRequest(CMD.WRITE, 0, cookie + 5n, size - 4, 8, Buffer.alloc(8, 1));
  answers.push(await c.readSimpleReply());
  const big = Buffer.alloc(33 * MiB, 2);
  c.sendRequest(CMD.WRITE, 0, cookie + 6n, 0, big.length, big);
  answers.push(await c.readSimpleReply());
  c.sendRequest(CMD.FLUSH, 1 << 12, cookie + 7n, 0, 0);
  answers.push(await c.readSimpleReply());
  c.sendRequest(CMD.READ, 0, cookie + 8n, 0, 0);
  const none = await c.readChunk();
  answers.push({ type: none.type, cookie: none.cookie });
  c.socket.write(Buffer.alloc(28, 0x55));
  answers.push({ closed: await c.closedWithin(2000) });
  return answers;
}

/**
 * Run the same scripted session with connections served on threads and on the event loop: each
 * must be served where asked, and every answer must be the same. Returns both runs (on threads
 * first) and each answer's error code, for the caller's own checks.
 */
export async function sameOnThreadsAndLoop<T extends { answers: unknown[]; threaded: number }>(
  session: (threads: boolean) => Promise<T>,
): Promise<{ onThreads: T; onLoop: T; errors: Array<number | undefined> }> {
  const onThreads = await session(true);
  const onLoop = await session(false);
  assert.equal(onThreads.threaded, 1, 'the connection was served on a thread');
  assert.equal(onLoop.threaded, 0);
  assert.deepEqual(onThreads.answers, onLoop.answers);
  const errors = onThreads.answers.map((a) => (a as { error?: number; errno?: number }).error ?? (a as { errno?: number }).errno);
  return { onThreads, onLoop, errors };
}
