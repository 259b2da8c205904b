// Connections to a file export served on threads with blocking I/O (transmission-threads.ts):
// the thread answers READ, WRITE and FLUSH itself and hands everything else to the event loop,
// which answers as on any connection. Checked here: the connection really is on a thread; what
// it answers itself and what it hands over both come back right, in order, with the stream in
// sync after refusals and failures; the same requests give the same answers with threads off.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { writeFile, truncate, readFile, mkdir } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { NbdServer } from '../../src/nbd/server.js';
import { FileExport } from '../../src/nbd/file-export.js';
import { CMD, CMD_FLAG, NBD_ERR } from '../../src/nbd/protocol.js';
import { attach, attachWithMeta, handedOverAndRefused, inCookieOrder, sameOnThreadsAndLoop, tempDir, run, until, serveSparseFile } from './helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** One scripted session; returns what the server answered, for comparing the two paths. */
async function session(threads: boolean, data: Buffer): Promise<{ answers: unknown[]; file: Buffer; threaded: number }> {
  const size = 8 * MiB;
  const { file, server, sock, close } = await serveSparseFile(size, { threads });
  const answers: unknown[] = [];
  try {
    const c = await attachWithMeta(sock, 'disk');
    if (threads) await until(() => server.threadedCount === 1);
    const threaded = server.threadedCount;
    // pipelined writes of `data` (answered on the thread), then a FLUSH
    c.sendRequest(CMD.WRITE, 0, 1n, 0, MiB, data.subarray(0, MiB));
    c.sendRequest(CMD.WRITE, CMD_FLAG.FUA, 2n, MiB + 7, 2 * MiB, data.subarray(MiB, 3 * MiB));
    c.sendRequest(CMD.FLUSH, 0, 3n, 0, 0);
    answers.push(...await inCookieOrder(c, 3));
    // read back across both writes (structured reply with the data)
    c.sendRequest(CMD.READ, 0, 4n, MiB - 5, 64 * KiB);
    const chunk = await c.readChunk();
    answers.push({ type: chunk.type, cookie: chunk.cookie, offset: chunk.payload.readBigUInt64BE(0) });
    const expected = Buffer.alloc(64 * KiB);
    data.copy(expected, 0, MiB - 5, MiB);
    data.copy(expected, 12, MiB, MiB + 64 * KiB - 12);
    assert.ok(chunk.payload.subarray(8).equals(expected), 'read back');
    answers.push(...await handedOverAndRefused(c, size, 5n));
    return { answers, file: await readFile(file), threaded };
  } finally {
    await close();
  }
}

test('file export on threads: served there, and every answer (own or handed over) matches the event-loop path', async () => {
  const data = randomBytes(3 * MiB);
  const { onThreads, onLoop, errors: errs } = await sameOnThreadsAndLoop((threads) => session(threads, data));
  assert.ok(onThreads.file.equals(onLoop.file), 'the files end up the same');
  // and the answers are the right ones, not just equal
  assert.deepEqual(errs.slice(0, 3), [0, 0, 0]);
  assert.deepEqual(errs.slice(5, 12), [0, 0, 0, NBD_ERR.EINVAL, NBD_ERR.ENOSPC, NBD_ERR.EINVAL, NBD_ERR.EINVAL]);
  assert.deepEqual(onThreads.answers.at(-1), { closed: true });
});

test('file export on threads: a failing write (full filesystem) is answered ENOSPC and the connection goes on', async (t) => {
  if (process.getuid?.() !== 0) return t.skip('needs root to mount a small tmpfs');
  const { dir, cleanup } = await tempDir('strata-nbd-threads-');
  const mnt = join(dir, 'small');
  await mkdir(mnt);
  await run('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt]);
  const file = join(mnt, 'disk');
  await writeFile(file, '');
  await truncate(file, 8 * MiB); // larger than the filesystem: writes past 1 MiB fail
  const exp = await FileExport.open(file, { name: 'disk' });
  const errors: string[] = [];
  const server = new NbdServer([exp], { log: (m) => errors.push(m) });
  const sock = join(dir, 'nbd.sock');
  await server.listenUnix(sock);
  try {
    const c = await attach(sock, 'disk');
    await until(() => server.threadedCount === 1);
    c.sendRequest(CMD.WRITE, 0, 1n, 0, 512 * KiB, Buffer.alloc(512 * KiB, 1));
    assert.equal((await c.readSimpleReply()).error, 0);
    c.sendRequest(CMD.WRITE, 0, 2n, 2 * MiB, 2 * MiB, Buffer.alloc(2 * MiB, 2));
    const full = await c.readSimpleReply();
    assert.equal(full.cookie, 2n);
    assert.equal(full.error, NBD_ERR.ENOSPC);
    assert.ok(errors.some((e) => /ENOSPC/.test(e)), 'the failure reached the log');
    c.sendRequest(CMD.READ, 0, 3n, 0, 16);
    const r = await c.readSimpleReply(16);
    assert.equal(r.error, 0);
    assert.ok(r.data.equals(Buffer.alloc(16, 1)));
    c.close();
  } finally {
    await server.close();
    await exp.close();
    await run('umount', [mnt]);
    await cleanup();
  }
});

test('close() and a forced removeExport() hang up on clients served on threads', async () => {
  const { exp, server, sock, close } = await serveSparseFile(MiB);
  try {
    const a = await attach(sock, 'disk');
    const b = await attach(sock, 'disk');
    await until(() => server.threadedCount === 2);
    await assert.rejects(server.removeExport('disk'), /in use/);
    await server.removeExport('disk', { force: true });
    assert.ok(await a.closedWithin(2000));
    assert.ok(await b.closedWithin(2000));
    assert.equal(server.connectionCount, 0);
    server.addExport(exp);
    const c = await attach(sock, 'disk');
    await until(() => server.threadedCount === 1);
    const t0 = Date.now();
    await server.close();
    assert.ok(Date.now() - t0 < 4000);
    assert.ok(await c.closedWithin(2000));
  } finally {
    await close();
  }
});

test('past the thread limit, connections are served on the event loop, and both kinds serve the same file', async () => {
  const { server, sock, close } = await serveSparseFile(MiB, { threads: 1 });
  try {
    const a = await attach(sock, 'disk');
    await until(() => server.threadedCount === 1);
    const b = await attach(sock, 'disk');
    await until(() => server.connectionCount === 2);
    assert.equal(server.threadedCount, 1, 'the second connection is not on a thread');
    // what one writes, the other reads, whichever way each is served
    a.sendRequest(CMD.WRITE, 0, 1n, 4096, 5, Buffer.from('hello'));
    assert.equal((await a.readSimpleReply()).error, 0);
    b.sendRequest(CMD.READ, 0, 2n, 4096, 5);
    assert.equal((await b.readSimpleReply(5)).data.toString(), 'hello');
    b.sendRequest(CMD.WRITE, 0, 3n, 8192, 5, Buffer.from('world'));
    assert.equal((await b.readSimpleReply()).error, 0);
    a.sendRequest(CMD.READ, 0, 4n, 8192, 5);
    assert.equal((await a.readSimpleReply(5)).data.toString(), 'world');
    a.close();
    b.close();
  } finally {
    await close();
  }
});


test('an export added while listening has threads from its first client; threads shared by two servers outlive either', async () => {
  const { TransmissionThreads } = await import('../../src/nbd/transmission-threads.js');
  const { dir, cleanup } = await tempDir('strata-nbd-shared-threads-');
  const shared = new TransmissionThreads();
  const servers: NbdServer[] = [];
  try {
    const serve = async (name: string): Promise<{ server: NbdServer; sock: string }> => {
      const file = join(dir, `${name}.img`);
      await writeFile(file, '');
      await truncate(file, MiB);
      const server = new NbdServer([], { threads: shared });
      servers.push(server);
      const sock = join(dir, `${name}.sock`);
      await server.listenUnix(sock); // (no export yet: nothing to start threads for)
      server.addExport(await FileExport.open(file, { name: 'disk' }));
      await server.warmThreads();
      return { server, sock };
    };
    const one = await serve('one');
    const a = await attach(one.sock, 'disk');
    await until(() => one.server.threadedCount === 1, 1000); // (on the event loop it never is)
    a.sendRequest(CMD.WRITE, 0, 1n, 0, 5, Buffer.from('first'));
    assert.equal((await a.readSimpleReply()).error, 0);
    a.close();
    await until(() => one.server.connectionCount === 0);
    const started = shared.started;
    const two = await serve('two');
    await one.server.close();
    const b = await attach(two.sock, 'disk');
    await until(() => two.server.threadedCount === 1, 1000);
    b.sendRequest(CMD.WRITE, 0, 2n, 0, 6, Buffer.from('second'));
    assert.equal((await b.readSimpleReply()).error, 0);
    b.sendRequest(CMD.READ, 0, 3n, 0, 6);
    assert.equal((await b.readSimpleReply(6)).data.toString(), 'second');
    assert.equal(shared.started, started, 'the second server was served by the threads the first had started');
    b.close();
  } finally {
    for (const s of servers) await s.close();
    await shared.close();
    await cleanup();
  }
});
