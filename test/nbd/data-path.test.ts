// The server's bulk data paths: on threads (transmission-threads.ts), and on the event loop, where
// WRITE payloads are kept as the socket delivered them (receive slabs, reused across requests
// and connections) and written with pwritev, sequential requests merged into one pwritev/preadv
// in FileExport. Many pipelined requests of awkward sizes from two
// connections must land and read back intact.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { writeFile, readFile, stat } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { NbdServer } from '../../src/nbd/server.js';
import { FileExport } from '../../src/nbd/file-export.js';
import { CMD, CMD_FLAG } from '../../src/nbd/protocol.js';
import { RawClient, attach, tempDir, until, serveSparseFile } from './helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** Pipelined WRITEs (all sent before any reply is read); resolves once every one is answered. */
async function writeAll(c: RawClient, writes: Array<{ offset: number; data: Buffer }>, firstCookie: bigint): Promise<void> {
  writes.forEach((w, i) => c.sendRequest(CMD.WRITE, 0, firstCookie + BigInt(i), w.offset, w.data.length, w.data));
  const seen = new Set<bigint>();
  for (let i = 0; i < writes.length; i++) {
    const r = await c.readSimpleReply();
    assert.equal(r.error, 0, `write ${r.cookie} failed`);
    seen.add(r.cookie);
  }
  assert.equal(seen.size, writes.length);
}

/** Pipelined READs; replies may come in any order, each carries its cookie. */
async function readAll(c: RawClient, reads: Array<{ offset: number; length: number }>, firstCookie: bigint): Promise<Buffer[]> {
  reads.forEach((r, i) => c.sendRequest(CMD.READ, 0, firstCookie + BigInt(i), r.offset, r.length));
  const out: Buffer[] = new Array(reads.length);
  for (let i = 0; i < reads.length; i++) {
    const h = await c.reader.read(16);
    assert.equal(h.readUInt32BE(4), 0, 'read failed');
    const idx = Number(h.readBigUInt64BE(8) - firstCookie);
    out[idx] = Buffer.from(await c.reader.read(reads[idx]!.length));
  }
  return out;
}

for (const threads of [true, false]) test(`pipelined writes of awkward sizes from two connections land intact; reads read back (${threads ? 'on threads' : 'on the event loop, merged'})`, async () => {
  const size = 48 * MiB;
  const { file, server, sock, close } = await serveSparseFile(size, { threads });
  const model = Buffer.alloc(size);
  try {
    const [a, b] = [await attach(sock, 'disk'), await attach(sock, 'disk')];
    await until(() => server.threadedCount === (threads ? 2 : 0));
    // each connection writes its own half: runs of adjacent writes (merged into one pwritev)
    // broken by gaps, sizes from 1 byte to 1.5 MiB so payloads straddle receive slabs
    const plan = (base: number): Array<{ offset: number; data: Buffer }> => {
      const out: Array<{ offset: number; data: Buffer }> = [];
      let pos = base;
      const sizes = [1, 511, 4096, 65536, 65537, 256 * KiB, 300 * KiB + 3, 1536 * KiB, 7, 128 * KiB];
      for (let i = 0; pos < base + 20 * MiB; i++) {
        const len = sizes[i % sizes.length]!;
        if (pos + len > base + 20 * MiB) break;
        out.push({ offset: pos, data: randomBytes(len) });
        pos += len + (i % 7 === 6 ? 4096 + 13 : 0); // a gap now and then
      }
      return out;
    };
    const wa = plan(0);
    const wb = plan(24 * MiB);
    await Promise.all([writeAll(a, wa, 1n), writeAll(b, wb, 1_000_000n)]);
    for (const w of [...wa, ...wb]) w.data.copy(model, w.offset);

    // the file holds exactly what was written (nothing else)
    assert.ok((await readFile(file)).equals(model), 'file contents');

    // read back in 256 KiB requests, pipelined, plus a few unaligned ones
    const reads: Array<{ offset: number; length: number }> = [];
    for (let pos = 0; pos < size; pos += 256 * KiB) reads.push({ offset: pos, length: 256 * KiB });
    reads.push({ offset: 3, length: 5 }, { offset: 24 * MiB - 100, length: 300 * KiB }, { offset: size - 1, length: 1 });
    const got = await readAll(a, reads, 5_000_000n);
    reads.forEach((r, i) => assert.ok(got[i]!.equals(model.subarray(r.offset, r.offset + r.length)), `read ${r.offset}+${r.length}`));

    // the same data again over the other connection (slabs and read buffers now reused)
    await writeAll(b, wa, 2_000_000n);
    assert.ok((await readFile(file)).equals(model), 'rewrite leaves the file as it was');
    a.close();
    b.close();
  } finally {
    await close();
  }
});

test('reads past the end of a short file come back as zeroes, merged or not', async () => {
  const { dir, cleanup } = await tempDir('strata-nbd-data-');
  const file = join(dir, 'short');
  const content = randomBytes(MiB + 12345);
  await writeFile(file, content);
  const exp = await FileExport.open(file, { name: 'short', size: 4 * MiB, readOnly: true });
  const server = new NbdServer([exp]);
  const sock = join(dir, 'nbd.sock');
  await server.listenUnix(sock);
  try {
    const c = await attach(sock, 'short');
    const reads: Array<{ offset: number; length: number }> = [];
    for (let pos = 0; pos < 4 * MiB; pos += 64 * KiB) reads.push({ offset: pos, length: 64 * KiB });
    const got = await readAll(c, reads, 1n);
    const expected = Buffer.alloc(4 * MiB);
    content.copy(expected);
    reads.forEach((r, i) => assert.ok(got[i]!.equals(expected.subarray(r.offset, r.offset + r.length)), `read ${r.offset}`));
    c.close();
  } finally {
    await server.close();
    await exp.close();
    await cleanup();
  }
});

test('file export: TRIM and WRITE_ZEROES punch holes (the file gives its space back); NO_HOLE writes zeros instead', async () => {
  const { file, exp, sock, close } = await serveSparseFile(8 * MiB);
  const allocated = async () => (await stat(file)).blocks * 512;
  try {
    assert.ok(exp.trim, 'TRIM is offered where holes can be punched');
    const c = await attach(sock, 'disk');
    const data = randomBytes(8 * MiB);
    await writeAll(c, [{ offset: 0, data }], 1n);
    assert.ok((await allocated()) >= 8 * MiB);

    c.sendRequest(CMD.TRIM, CMD_FLAG.FUA, 10n, MiB, 2 * MiB);
    assert.equal((await c.readSimpleReply()).error, 0);
    c.sendRequest(CMD.WRITE_ZEROES, CMD_FLAG.FAST_ZERO, 11n, 4 * MiB, MiB);
    assert.equal((await c.readSimpleReply()).error, 0);
    assert.ok((await allocated()) <= 5 * MiB + 64 * KiB, `3 MiB punched out (${await allocated()} bytes left)`);
    const holes = (await exp.blockStatus(0, 8 * MiB)).filter((e) => e.hole).map((e) => [e.offset, e.length]);
    assert.deepEqual(holes, [[MiB, 2 * MiB], [4 * MiB, MiB]]);

    // NO_HOLE: zeros are written, the space stays allocated; with FAST_ZERO too it is refused
    c.sendRequest(CMD.WRITE_ZEROES, CMD_FLAG.NO_HOLE, 12n, 6 * MiB, MiB);
    assert.equal((await c.readSimpleReply()).error, 0);
    c.sendRequest(CMD.WRITE_ZEROES, CMD_FLAG.NO_HOLE | CMD_FLAG.FAST_ZERO, 13n, 7 * MiB, MiB);
    assert.notEqual((await c.readSimpleReply()).error, 0);
    assert.deepEqual((await exp.blockStatus(6 * MiB, MiB)).map((e) => e.hole), [false]);

    const [back] = await readAll(c, [{ offset: 0, length: 8 * MiB }], 20n);
    const expected = Buffer.from(data);
    expected.fill(0, MiB, 3 * MiB);
    expected.fill(0, 4 * MiB, 5 * MiB);
    expected.fill(0, 6 * MiB, 7 * MiB);
    assert.ok(back!.equals(expected), 'trimmed and zeroed ranges read as zeros, the rest is intact');
    c.close();
  } finally {
    await close();
  }
});
