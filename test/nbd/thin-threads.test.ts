// Connections to a thin export served on threads (transmission-threads.ts, planned exports): the
// thread batches the READs and WRITEs it has received, the event loop plans each batch
// (ThinDevice.planBatch) and the thread does the data I/O; everything else is handed over.
// Checked here: one scripted session, run with threads on and off, gets the same answers and
// leaves the same bytes on the device and its snapshot, and every answer is the right one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { writeFile, truncate } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { NbdServer } from '../../src/nbd/server.js';
import { ThinExport } from '../../src/nbd/thin-export.js';
import { CMD, CMD_FLAG, NBD_ERR } from '../../src/nbd/protocol.js';
import { Pool } from '../../src/thin/pool.js';
import type { BatchRequest, ThinDevice } from '../../src/thin/thin-device.js';
import { type RawClient, attach, attachWithMeta, handedOverAndRefused, inCookieOrder, sameOnThreadsAndLoop, tempDir, until } from './helpers.js';
import { rng, thinTools, tool } from '../thin/helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 64 * KiB;
const SIZE = 24 * MiB;

/** After the pool is closed: thin_check accepts its metadata (where the tools are installed). */
function thinCheckClean(metadataPath: string): void {
  if (thinTools) assert.equal(tool('thin_check', [metadataPath]).status, 0);
}

async function servePool(threads: boolean, features: string[] = [], dataBytes = 64 * MiB): Promise<{
  pool: Pool; dev: ThinDevice; server: NbdServer; sock: string; exp: ThinExport;
  /** Stop serving, close the pool, run `closed` on its metadata file, remove everything. */
  close(closed?: (metadataPath: string) => void): Promise<void>;
}> {
  const { dir, cleanup } = await tempDir('strata-nbd-thin-threads-');
  for (const [f, size] of [['meta', 8 * MiB], ['data', dataBytes]] as const) {
    await writeFile(join(dir, f), '');
    await truncate(join(dir, f), size);
  }
  const pool = await Pool.open({ metadataPath: join(dir, 'meta'), dataPath: join(dir, 'data'), dataBlockSectors: BLOCK / 512, features });
  await pool.message('create_thin 0');
  const dev = await pool.openThin(0, SIZE);
  const exp = new ThinExport(dev, { name: 't' });
  const server = new NbdServer([exp], { threads });
  const sock = join(dir, 's.sock');
  await server.listenUnix(sock);
  return {
    pool, dev, server, sock, exp,
    close: async (closed) => {
      try {
        await server.close();
        await dev.close();
        await pool.close();
        closed?.(join(dir, 'meta'));
      } finally {
        await cleanup();
      }
    },
  };
}

/** A client (structured replies, base:allocation) of export `t` whose connection a thread has taken. */
async function attachOnThread(server: NbdServer, sock: string): Promise<RawClient> {
  const c = await attachWithMeta(sock, 't');
  await until(() => server.threadedCount === 1);
  return c;
}

async function readChunkData(c: RawClient, cookie: bigint, offset: number, length: number): Promise<Buffer> {
  c.sendRequest(CMD.READ, 0, cookie, offset, length);
  const chunk = await c.readChunk();
  assert.equal(chunk.type, 1, 'one data chunk');
  return chunk.payload.subarray(8);
}

async function session(threads: boolean, data: Buffer): Promise<{ answers: unknown[]; origin: Buffer; snapshot: Buffer; threaded: number }> {
  const { pool, dev, server, sock, close } = await servePool(threads);
  const answers: unknown[] = [];
  try {
    const c = await attachWithMeta(sock, 't');
    if (threads) await until(() => server.threadedCount === 1);
    const threaded = server.threadedCount;
    // pipelined, so they arrive together: whole blocks, a partial block (zeroed around by the
    // pool), a write into a block the first one writes (planned in a later batch), a FUA write
    // (goes alone), a read of blocks nothing wrote
    c.sendRequest(CMD.WRITE, 0, 1n, 0, 4 * BLOCK, data.subarray(0, 4 * BLOCK));
    c.sendRequest(CMD.WRITE, 0, 2n, 5 * BLOCK + 100, 1000, data.subarray(4 * BLOCK, 4 * BLOCK + 1000));
    c.sendRequest(CMD.WRITE, 0, 3n, BLOCK + 7, 10, Buffer.alloc(10, 0xaa));
    c.sendRequest(CMD.WRITE, CMD_FLAG.FUA, 4n, 8 * BLOCK, 2 * BLOCK, data.subarray(5 * BLOCK, 7 * BLOCK));
    answers.push(...await inCookieOrder(c, 4));
    c.sendRequest(CMD.FLUSH, 0, 5n, 0, 0);
    answers.push(await c.readSimpleReply());
    const view = await readChunkData(c, 6n, 0, 12 * BLOCK);
    const expected = Buffer.alloc(12 * BLOCK);
    data.copy(expected, 0, 0, 4 * BLOCK);
    expected.fill(0xaa, BLOCK + 7, BLOCK + 17);
    data.copy(expected, 5 * BLOCK + 100, 4 * BLOCK, 4 * BLOCK + 1000);
    data.copy(expected, 8 * BLOCK, 5 * BLOCK, 7 * BLOCK);
    assert.ok(view.equals(expected), 'reads back what was written, zeroes elsewhere');

    // a snapshot shares every block; writing to the origin then copies: a partial write (the
    // pool copies the block), a whole-block write (a fresh block, no copy)
    await pool.message('create_snap 1 0');
    c.sendRequest(CMD.WRITE, 0, 7n, 2 * BLOCK + 3, 5, Buffer.from('hello'));
    c.sendRequest(CMD.WRITE, 0, 8n, 3 * BLOCK, BLOCK, Buffer.alloc(BLOCK, 0xbb));
    answers.push(...await inCookieOrder(c, 2));
    const after = await readChunkData(c, 9n, 2 * BLOCK, 2 * BLOCK);
    const afterExpected = Buffer.concat([data.subarray(2 * BLOCK, 3 * BLOCK), Buffer.alloc(BLOCK, 0xbb)]);
    afterExpected.write('hello', 3);
    assert.ok(after.equals(afterExpected), 'the origin sees its new bytes');

    // a WRITE too large for the receive buffer but within the limit: read into a buffer of its
    // own and handed over
    const large = data.subarray(0, 5 * MiB);
    c.sendRequest(CMD.WRITE, 0, 10n, 10 * MiB + 1, large.length, large);
    answers.push(await c.readSimpleReply());
    assert.ok((await readChunkData(c, 11n, 10 * MiB + 1, large.length)).equals(large), 'the large write landed');
    answers.push(...await handedOverAndRefused(c, SIZE, 12n));
    await until(() => server.connectionCount === 0);

    const snap = await pool.openThin(1, SIZE);
    const snapshot = Buffer.alloc(12 * BLOCK);
    await snap.read(snapshot, 0);
    await snap.close();
    assert.ok(snapshot.equals(expected), 'the snapshot kept the bytes from before it');
    const originBytes = Buffer.alloc(SIZE);
    await dev.read(originBytes, 0);
    return { answers, origin: originBytes, snapshot, threaded };
  } finally {
    await close();
  }
}

test('thin export on threads: planned there, and every answer matches the event-loop path', async () => {
  const data = randomBytes(6 * MiB);
  const { onThreads, onLoop, errors: errs } = await sameOnThreadsAndLoop((threads) => session(threads, data));
  assert.ok(onThreads.origin.equals(onLoop.origin), 'the origins end up the same');
  assert.ok(onThreads.snapshot.equals(onLoop.snapshot), 'the snapshots end up the same');
  assert.deepEqual(errs.slice(0, 8), [0, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual(errs.slice(9, 16), [0, 0, 0, NBD_ERR.EINVAL, NBD_ERR.ENOSPC, NBD_ERR.EINVAL, NBD_ERR.EINVAL]);
  assert.deepEqual(onThreads.answers.at(-1), { closed: true });
});

test('thin export on threads: out of data space is answered ENOSPC and the connection goes on', async () => {
  const { server, sock, close } = await servePool(true, ['error_if_no_space'], 4 * BLOCK);
  try {
    const c = await attachOnThread(server, sock);
    c.sendRequest(CMD.WRITE, 0, 1n, 0, 4 * BLOCK, Buffer.alloc(4 * BLOCK, 1));
    assert.equal((await c.readSimpleReply()).error, 0);
    c.sendRequest(CMD.WRITE, 0, 2n, 8 * BLOCK, BLOCK, Buffer.alloc(BLOCK, 2));
    const full = await c.readSimpleReply();
    assert.deepEqual([full.cookie, full.error], [2n, NBD_ERR.ENOSPC]);
    assert.ok((await readChunkData(c, 3n, BLOCK - 8, 16)).equals(Buffer.alloc(16, 1)));
    c.close();
  } finally {
    await close();
  }
});

test('thin export on threads: several connections writing and reading at once each see their own bytes', async () => {
  const { server, sock, close } = await servePool(true);
  try {
    const clients = await Promise.all([0, 1, 2].map(() => attachWithMeta(sock, 't')));
    await until(() => server.threadedCount === 3);
    // several MiB each (the receive buffers switch halves a few times on the way); neighbours
    // share a block without overlapping
    const regions = clients.map((_, i) => randomBytes(5 * MiB + i * 4099));
    await Promise.all(clients.map(async (c, i) => {
      const base = i * (5 * MiB + 8200);
      const region = regions[i]!;
      // pipelined writes of uneven pieces, then reads across them
      let n = 0;
      for (let pos = 0; pos < region.length; pos += 96 * KiB + 17) {
        const piece = region.subarray(pos, pos + 96 * KiB + 17);
        c.sendRequest(CMD.WRITE, 0, BigInt(++n), base + pos, piece.length, piece);
      }
      const replies = await inCookieOrder(c, n);
      assert.ok(replies.every((r) => r.error === 0));
      assert.ok((await readChunkData(c, BigInt(++n), base, region.length)).equals(region), `connection ${i} reads back its bytes`);
    }));
    for (const c of clients) c.close();
  } finally {
    await close();
  }
});

test('thin export on threads: random writes, trims, zeroes, flushes and reads on three connections match a model; thin_check clean', async () => {
  const { server, sock, close } = await servePool(true);
  let closed = false;
  try {
    const clients = await Promise.all([0, 1, 2].map(() => attach(sock, 't')));
    await until(() => server.threadedCount === 3);
    const REGION = 6 * MiB;
    await Promise.all(clients.map(async (c, ci) => {
      // each connection owns a region (neighbours share a block); a model of what it must read
      const base = ci * (REGION + 12_345);
      const model = Buffer.alloc(REGION);
      let x = ci + 1;
      const rnd = (n: number): number => {
        x = (x * 1103515245 + 12345) >>> 0;
        return Math.floor((x / 4294967296) * n);
      };
      let cookie = 0n;
      const check = async (off: number, len: number): Promise<void> => {
        c.sendRequest(CMD.READ, 0, ++cookie, base + off, len);
        const r = await c.readSimpleReply(len);
        assert.equal(r.error, 0);
        assert.ok(r.data.equals(model.subarray(off, off + len)), `connection ${ci} reads ${len} bytes at ${off} as written`);
      };
      for (let step = 0; step < 120; step++) {
        const op = rnd(10);
        if (op < 5) {
          // a burst of pipelined writes to disjoint places (one batch, or several)
          const n = 1 + rnd(6);
          const slot = Math.floor(REGION / n);
          for (let i = 0; i < n; i++) {
            const len = 1 + rnd(Math.min(200 * KiB, slot - 1));
            const off = i * slot + rnd(slot - len);
            const data = randomBytes(len);
            data.copy(model, off);
            c.sendRequest(CMD.WRITE, rnd(4) === 0 ? CMD_FLAG.FUA : 0, ++cookie, base + off, len, data);
          }
          assert.ok((await inCookieOrder(c, n)).every((r) => r.error === 0));
        } else if (op < 6) {
          // TRIM unmaps the whole blocks inside the range: they read as zeros
          const off = rnd(REGION - 1);
          const len = 1 + rnd(Math.min(REGION - off, 1 * MiB));
          c.sendRequest(CMD.TRIM, 0, ++cookie, base + off, len);
          assert.equal((await c.readSimpleReply()).error, 0);
          const first = Math.ceil((base + off) / BLOCK) * BLOCK;
          const end = Math.floor((base + off + len) / BLOCK) * BLOCK;
          if (end > first) model.fill(0, first - base, end - base);
        } else if (op < 7) {
          const off = rnd(REGION - 1);
          const len = 1 + rnd(Math.min(REGION - off, 512 * KiB));
          c.sendRequest(CMD.WRITE_ZEROES, 0, ++cookie, base + off, len);
          assert.equal((await c.readSimpleReply()).error, 0);
          model.fill(0, off, off + len);
        } else if (op < 8) {
          c.sendRequest(CMD.FLUSH, 0, ++cookie, 0, 0);
          assert.equal((await c.readSimpleReply()).error, 0);
        } else {
          const off = rnd(REGION - 1);
          await check(off, 1 + rnd(Math.min(REGION - off, 300 * KiB)));
        }
      }
      await check(0, REGION);
    }));
    for (const c of clients) c.close();
    closed = true;
    await close((metadata) => {
      if (!thinTools) return;
      const r = tool('thin_check', [metadata]);
      assert.equal(r.status, 0, r.stderr + r.stdout);
    });
  } finally {
    if (!closed) await close();
  }
});

test('thin export on threads: a client that sends writes and hangs up at once is let go, and commits go on', async () => {
  const { pool, server, sock, close } = await servePool(true);
  try {
    for (let round = 0; round < 3; round++) {
      const c = await attach(sock, 't');
      await until(() => server.threadedCount === 1);
      for (let i = 0; i < 8; i++) c.sendRequest(CMD.WRITE, 0, BigInt(i), (round * 8 + i) * BLOCK, BLOCK, Buffer.alloc(BLOCK, i + 1));
      if (round === 0) c.socket.end(); // half-closed: the replies may still go out
      else c.close();
      await until(() => server.connectionCount === 0, 5000);
      // nothing the connection planned is left unsettled: a commit does not wait for it forever
      await Promise.race([pool.commit(), new Promise((_, reject) => setTimeout(() => reject(new Error('commit stuck')), 5000))]);
    }
  } finally {
    await close();
  }
});

test('thin export on threads: whole-block writes go into leased blocks, answered at once; a read on another connection right after sees them; FLUSH commits them', async () => {
  const { dev, server, sock, close } = await servePool(true);
  const { ThinMetadata } = await import('../../src/thin/metadata.js');
  const { FileBlockDevice } = await import('../../src/thin/block-device.js');
  let metadataPath = '';
  try {
    const [a, b] = await Promise.all([attachWithMeta(sock, 't'), attachWithMeta(sock, 't')]);
    await until(() => server.threadedCount === 2);
    let cookie = 0n;
    for (let i = 0; i < 64; i++) {
      const data = randomBytes(2 * BLOCK);
      const offset = (i * 5 % 64) * 2 * BLOCK;
      a.sendRequest(CMD.WRITE, 0, ++cookie, offset, data.length, data);
      assert.equal((await a.readSimpleReply()).error, 0);
      assert.ok((await readChunkData(b, ++cookie, offset, data.length)).equals(data), `write ${i}, read on the other connection`);
    }
    assert.equal(dev.adoptedBlocks, 128, 'every block went the leased way');
    a.sendRequest(CMD.FLUSH, 0, ++cookie, 0, 0);
    assert.equal((await a.readSimpleReply()).error, 0);
    // what the flush committed, read beside the live pool
    metadataPath = join(sock, '..', 'meta');
    const metaDev = await FileBlockDevice.open(metadataPath, { readOnly: true });
    try {
      const committed = await ThinMetadata.open(metaDev, { readOnly: true });
      assert.equal(committed.deviceDetails(0).mappedBlocks, 128);
    } finally {
      await metaDev.close();
    }
    a.close();
    b.close();
  } finally {
    await close(thinCheckClean);
  }
});

test('thin export on threads: a suspend waits for writes into leased blocks under way and holds new ones; a snapshot then holds every write answered before it', async () => {
  const { pool, dev, server, sock, close } = await servePool(true);
  try {
    const c = await attachOnThread(server, sock);
    const blocks = SIZE / BLOCK;
    const data = Array.from({ length: blocks }, () => randomBytes(BLOCK));
    let answeredBeforeSnapshot = -1;
    let snapshot: Promise<void> | null = null;
    let cookie = 0n;
    for (let round = 0; round * 8 < blocks; round++) {
      for (let k = round * 8; k < round * 8 + 8; k++) c.sendRequest(CMD.WRITE, 0, ++cookie, k * BLOCK, BLOCK, data[k]!);
      if (round === 12) {
        // while this round's writes are on their way
        answeredBeforeSnapshot = round * 8;
        snapshot = (async () => {
          await dev.suspend();
          await pool.message('create_snap 1 0');
          dev.resume();
        })();
      }
      for (const r of await inCookieOrder(c, 8)) assert.equal(r.error, 0);
    }
    await snapshot;
    assert.ok(dev.adoptedBlocks > 0);
    const snap = await pool.openThin(1, SIZE);
    const zero = Buffer.alloc(BLOCK);
    for (let k = 0; k < blocks; k++) {
      const got = Buffer.alloc(BLOCK);
      await snap.read(got, k * BLOCK);
      if (k < answeredBeforeSnapshot) assert.ok(got.equals(data[k]!), `block ${k} was answered before the snapshot`);
      else assert.ok(got.equals(data[k]!) || got.equals(zero), `block ${k}: written or not, nothing else`);
    }
    const origin = Buffer.alloc(SIZE);
    await dev.read(origin, 0);
    assert.ok(origin.equals(Buffer.concat(data)));
    // and while suspended, a whole-block write waits too (no leased block takes it meanwhile)
    await dev.suspend();
    c.sendRequest(CMD.WRITE, 0, ++cookie, 0, BLOCK, randomBytes(BLOCK));
    let answered = false;
    const reply = c.readSimpleReply().then((r) => { answered = true; return r; });
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(answered, false, 'answered while suspended');
    dev.resume();
    assert.equal((await reply).error, 0);
    await snap.close();
    c.close();
  } finally {
    await close(thinCheckClean);
  }
});

test('thin export on threads: a client that stalls halfway through a request still gets the answers before it, and a suspend does not wait for it', async () => {
  const { dev, server, sock, close } = await servePool(true);
  const { encodeRequest } = await import('../../src/nbd/request-codec.js');
  try {
    const c = await attachOnThread(server, sock);
    const data = randomBytes(2 * BLOCK);
    const next = encodeRequest(CMD.WRITE, 0, 2n, 4 * BLOCK, BLOCK);
    // a whole-block write, then the first 10 bytes of the next request's header, then nothing
    c.socket.write(Buffer.concat([encodeRequest(CMD.WRITE, 0, 1n, 0, data.length), data, next.subarray(0, 10)]));
    const first = await Promise.race([c.readSimpleReply(), new Promise<null>((r) => setTimeout(() => r(null), 3000))]);
    assert.equal(first?.error, 0, 'the write before the stall is answered');
    await until(() => dev.adoptedBlocks === 2); // (it went the leased way)
    const suspended = await Promise.race([dev.suspend().then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 3000))]);
    assert.equal(suspended, true, 'a suspend completes while the client stalls');
    dev.resume();
    c.socket.write(Buffer.concat([next.subarray(10), randomBytes(BLOCK)]));
    assert.equal((await c.readSimpleReply()).error, 0);
    c.close();
  } finally {
    await close();
  }
});

test('thin export on threads: a connection that got no lease while the pool was short of space gets one once space is freed', async () => {
  // 768 data blocks; another device takes 320, so fewer than 4 leases' worth (512) are free
  const { pool, dev, server, sock, close } = await servePool(true, [], 48 * MiB);
  try {
    await pool.message('create_thin 1');
    const other = await pool.openThin(1, 20 * MiB);
    await other.write(randomBytes(20 * MiB), 0);
    await other.close();
    await pool.commit();
    const c = await attachOnThread(server, sock);
    let cookie = 0n;
    const writeBlocks = async (round: number): Promise<void> => {
      const data = randomBytes(2 * BLOCK);
      c.sendRequest(CMD.WRITE, 0, ++cookie, round * 2 * BLOCK, data.length, data);
      assert.equal((await c.readSimpleReply()).error, 0);
      assert.ok((await readChunkData(c, ++cookie, round * 2 * BLOCK, data.length)).equals(data));
    };
    for (let i = 0; i < 4; i++) await writeBlocks(i);
    assert.equal(dev.adoptedBlocks, 0, 'no lease while space is short: every write planned');
    await pool.message('delete 1');
    await pool.commit(); // (blocks freed in a transaction are free once it is committed)
    // the next planned write tops the lease up; the writes after it go the leased way
    for (let i = 4; i < 12; i++) await writeBlocks(i);
    assert.ok(dev.adoptedBlocks > 0, 'whole-block writes went the leased way once space was freed');
    c.close();
  } finally {
    await close(thinCheckClean);
  }
});

test('thin export on threads: whole-block writes rewriting the same blocks, pipelined, are mapped in the order written', async () => {
  const { dev, server, sock, close } = await servePool(true);
  try {
    const c = await attachOnThread(server, sock);
    const last = new Map<number, Buffer>();
    let cookie = 0n;
    for (let round = 0; round < 200; round++) {
      // a burst of writes to four blocks, each block rewritten several times, answers awaited after
      const burst = 1 + (round % 12);
      for (let i = 0; i < burst; i++) {
        const block = (round * 7 + i * 3) % 4;
        const data = randomBytes(BLOCK);
        c.sendRequest(CMD.WRITE, 0, ++cookie, block * BLOCK, BLOCK, data);
        last.set(block, data);
      }
      for (let i = 0; i < burst; i++) assert.equal((await c.readSimpleReply()).error, 0);
      if (round % 10 === 9) {
        for (const [block, data] of last) assert.ok((await readChunkData(c, ++cookie, block * BLOCK, BLOCK)).equals(data), `round ${round}, block ${block}`);
      }
    }
    assert.ok(dev.adoptedBlocks > 0);
    for (const [block, data] of last) assert.ok((await readChunkData(c, ++cookie, block * BLOCK, BLOCK)).equals(data), `block ${block} at the end`);
    c.close();
  } finally {
    await close(thinCheckClean);
  }
});

test('thin export on threads: pipelined writes of every size, from a byte to past the receive buffer, cycle its halves and read back as written', async () => {
  const { dev, server, sock, close } = await servePool(true);
  try {
    const c = await attachOnThread(server, sock);
    const model = Buffer.alloc(SIZE);
    // (2 MiB is the largest a receive-buffer half takes; larger ones are handed over)
    const sizes = [1, 27, 28, 4 * KiB, BLOCK, 4 * BLOCK, 4 * BLOCK + 7, MiB, 2 * MiB - 28, 2 * MiB, 2 * MiB + 1, 3 * MiB];
    const random = rng(7);
    const rnd = (n: number): number => Math.floor(random() * n);
    let cookie = 0n;
    let written = 0;
    for (let burst = 0; written < 96 * MiB; burst++) {
      const n = 1 + rnd(8);
      for (let i = 0; i < n; i++) {
        const len = sizes[rnd(sizes.length)]!;
        // whole blocks aligned half the time (the leased way), anywhere otherwise
        const off = rnd(2) === 0 ? rnd((SIZE - len) / BLOCK) * BLOCK : rnd(SIZE - len);
        const data = randomBytes(len);
        data.copy(model, off);
        c.sendRequest(CMD.WRITE, 0, ++cookie, off, len, data);
        written += len;
      }
      assert.ok((await inCookieOrder(c, n)).every((r) => r.error === 0), `burst ${burst}`);
      if (burst % 16 === 15) {
        const off = rnd(SIZE - MiB);
        assert.ok((await readChunkData(c, ++cookie, off, MiB)).equals(model.subarray(off, off + MiB)), `burst ${burst}: 1 MiB at ${off}`);
      }
    }
    for (let off = 0; off < SIZE; off += 4 * MiB) {
      assert.ok((await readChunkData(c, ++cookie, off, 4 * MiB)).equals(model.subarray(off, off + 4 * MiB)), `4 MiB at ${off} at the end`);
    }
    assert.ok(dev.adoptedBlocks > 0, 'some went into leased blocks');
    c.close();
  } finally {
    await close(thinCheckClean);
  }
});

test('thin export on threads: READs inside a map are planned on the thread; what another connection (or the pool) changes is read at once; a suspend holds them', async () => {
  const { pool, dev, server, sock, exp, close } = await servePool(true);
  // count the batches planned and the maps made on the event loop
  const file = exp.blockingFile!;
  const counts = { plans: 0, maps: 0 };
  Object.assign(exp, {
    blockingFile: {
      ...file,
      plan: (requests: readonly BatchRequest[]) => (counts.plans++, file.plan!(requests)),
      readMaps: { ...file.readMaps!, lookUp: (offset: number, length: number) => (counts.maps++, file.readMaps!.lookUp(offset, length)) },
    },
  });
  try {
    const image = randomBytes(64 * BLOCK);
    await dev.write(image, 0);
    const [c, w] = await Promise.all([attachWithMeta(sock, 't'), attachWithMeta(sock, 't')]);
    await until(() => server.threadedCount === 2);
    let cookie = 0n;
    const readsAs = async (offset: number, expected: Buffer, what: string): Promise<void> => {
      assert.ok((await readChunkData(c, ++cookie, offset, expected.length)).equals(expected), what);
    };
    await readsAs(0, image.subarray(0, BLOCK), 'the first read');
    assert.deepEqual(counts, { plans: 1, maps: 1 }, 'the first read is planned, and a map asked for with it');
    for (let i = 1; i < 40; i++) await readsAs(i * BLOCK + 7, image.subarray(i * BLOCK + 7, (i + 1) * BLOCK + 7), `read ${i}`);
    await readsAs(60 * BLOCK, Buffer.concat([image.subarray(60 * BLOCK), Buffer.alloc(4 * BLOCK)]), 'into blocks never written');
    assert.deepEqual(counts, { plans: 1, maps: 1 }, 'the reads inside the map were planned on the thread');

    // each change, answered on the other connection (or made by the pool), is what the next read finds
    const changes: Array<[string, () => Promise<void>, number, Buffer]> = [
      ['a whole-block write (leased)', async () => {
        w.sendRequest(CMD.WRITE, 0, ++cookie, 5 * BLOCK, BLOCK, Buffer.alloc(BLOCK, 1));
        assert.equal((await w.readSimpleReply()).error, 0);
      }, 5 * BLOCK, Buffer.alloc(BLOCK, 1)],
      ['a partial write (planned)', async () => {
        w.sendRequest(CMD.WRITE, 0, ++cookie, 6 * BLOCK + 10, 5, Buffer.from('hello'));
        assert.equal((await w.readSimpleReply()).error, 0);
      }, 6 * BLOCK + 10, Buffer.from('hello')],
      ['a trim', async () => {
        w.sendRequest(CMD.TRIM, 0, ++cookie, 7 * BLOCK, 2 * BLOCK);
        assert.equal((await w.readSimpleReply()).error, 0);
      }, 7 * BLOCK, Buffer.alloc(2 * BLOCK)],
      ['a write through the pool after a snapshot', async () => {
        await dev.suspend();
        await pool.message('create_snap 1 0');
        dev.resume();
        await dev.write(Buffer.alloc(100, 2), 9 * BLOCK);
      }, 9 * BLOCK, Buffer.alloc(100, 2)],
    ];
    for (const [what, change, offset, expected] of changes) {
      const before = Buffer.alloc(expected.length);
      await dev.read(before, offset);
      await readsAs(offset, before, `before ${what}`);
      await change();
      await readsAs(offset, expected, `after ${what}`);
    }

    // a map is in use again (the read after this one is not planned on the event loop) ...
    await readsAs(20 * BLOCK, image.subarray(20 * BLOCK, 21 * BLOCK), 'a read that asks for a map');
    const plans = counts.plans;
    await readsAs(21 * BLOCK, image.subarray(21 * BLOCK, 22 * BLOCK), 'a read from the map');
    assert.equal(counts.plans, plans);
    // ... and does not let a READ overtake a FUA WRITE sent before it on the same connection
    // (which goes alone, to the event loop)
    c.sendRequest(CMD.WRITE, CMD_FLAG.FUA, ++cookie, 23 * BLOCK, BLOCK, Buffer.alloc(BLOCK, 3));
    c.sendRequest(CMD.READ, 0, ++cookie, 23 * BLOCK, BLOCK);
    assert.equal((await c.readSimpleReply()).error, 0, 'the write is answered first');
    assert.ok((await c.readChunk()).payload.subarray(8).equals(Buffer.alloc(BLOCK, 3)), 'the read after it sees it');
    await readsAs(24 * BLOCK, image.subarray(24 * BLOCK, 25 * BLOCK), 'a read that asks for a map');
    // ... and a suspend holds the reads made from it
    await dev.suspend();
    c.sendRequest(CMD.READ, 0, ++cookie, 25 * BLOCK, BLOCK);
    let answered = false;
    const reply = c.readChunk().then((chunk) => { answered = true; return chunk; });
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(answered, false, 'answered while suspended');
    dev.resume();
    assert.ok((await reply).payload.subarray(8).equals(image.subarray(25 * BLOCK, 26 * BLOCK)));
    c.close();
    w.close();
  } finally {
    await close(thinCheckClean);
  }
});
