// zstd layers through both decoders: the host's zstd (run as a filter) and fzstd (JavaScript,
// where the host has none). Same bytes, same error codes, and memory bounded by what is read,
// not by how well the layer compresses.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { PassThrough } from 'node:stream';
import { buildTar, openLayerStream, type LayerStreamOptions } from '../../src/archive/index.js';
import { bufferStream, collect, errorCode, run } from './helpers.js';

const MiB = 1 << 20;
const tar = buildTar([
  { header: { name: 'hello.txt' }, data: 'hello\n'.repeat(100_000) },
  { header: { name: 'noise' }, data: Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7919) % 251)) },
]);
const zst = run('zstd', ['-q', '-c', '-3'], { input: tar });

/** zstd processes this process started that are still there. */
function zstdChildren(): number {
  let n = 0;
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const [name, after] = [stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')), stat.slice(stat.lastIndexOf(')') + 2).split(' ')];
      if (name === 'zstd' && Number(after[1]) === process.pid) n++;
    } catch {
      // gone meanwhile
    }
  }
  return n;
}

const decoders: [string, LayerStreamOptions][] = [['the host\'s zstd', { zstd: 'host' }], ['fzstd', { zstd: 'builtin' }]];

for (const [label, opts] of decoders) {
  describe(`zstd layers through ${label}`, () => {
    it('decompress to the tar, from any chunking, and from several frames in a row', async () => {
      for (const chunk of [1, 7, 4096, 1 << 20]) {
        assert.ok((await collect(await openLayerStream(bufferStream(zst, chunk), opts))).equals(tar), `chunks of ${chunk}`);
      }
      const twice = Buffer.concat([zst, zst]);
      assert.ok((await collect(await openLayerStream(bufferStream(twice, 1000), opts))).equals(Buffer.concat([tar, tar])));
    });

    it('a truncated layer is TRUNCATED_ARCHIVE, a corrupt one INVALID_ARCHIVE, a huge window UNSUPPORTED_ARCHIVE', async () => {
      const open = (data: Buffer) => openLayerStream(bufferStream(data, 999), opts).then(collect);
      assert.equal(await errorCode(open(zst.subarray(0, zst.length - 100))), 'TRUNCATED_ARCHIVE');
      assert.equal(await errorCode(open(zst.subarray(0, 5))), 'TRUNCATED_ARCHIVE');
      if (opts.zstd === 'host') {
        // (fzstd does not check a frame's content checksum: bytes changed in the middle of a block
        // can decode to other bytes; a layer pulled by digest is checked against it anyway)
        const flipped = Buffer.from(zst);
        for (let i = 40; i < flipped.length - 40; i += 97) flipped[i]! ^= 0x5a;
        assert.equal(await errorCode(open(flipped)), 'INVALID_ARCHIVE');
      }
      // garbage after a frame header: zstd finds it corrupt; fzstd reads it as a block header
      // promising more bytes than follow
      const garbage = Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x04, 0x58]), Buffer.alloc(4000, 0xa5)]);
      assert.equal(await errorCode(open(garbage)), opts.zstd === 'host' ? 'INVALID_ARCHIVE' : 'TRUNCATED_ARCHIVE');
      assert.equal(await errorCode(open(Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, 21 << 3]), Buffer.alloc(64)]))), 'UNSUPPORTED_ARCHIVE');
    });

    it('memory follows what is read, not the ratio: 512 MiB of zeros from 17 KB', async () => {
      setFlagsFromString('--expose-gc');
      const gc = runInNewContext('gc') as () => void;
      const bomb = execFileSync('sh', ['-c', 'head -c 536870912 /dev/zero | zstd -q -c -19']);
      assert.ok(bomb.length < 64 * 1024, `${bomb.length} bytes compressed`);
      gc();
      const before = process.memoryUsage().arrayBuffers;
      let peak = 0;
      let bytes = 0;
      let nextCheck = 0;
      for await (const chunk of await openLayerStream(bufferStream(bomb, 1 << 20), opts)) {
        bytes += (chunk as Buffer).length;
        if (bytes >= nextCheck) {
          nextCheck += 32 * MiB;
          peak = Math.max(peak, process.memoryUsage().arrayBuffers - before);
          gc();
        }
      }
      assert.equal(bytes, 512 * MiB);
      assert.ok(peak < 96 * MiB, `${(peak / MiB).toFixed(0)} MiB of buffers held while decompressing`);
    });
  });
}

describe('the host\'s zstd as a filter', () => {
  it('feeds zstd with backpressure and leaves no listeners behind', async () => {
    const random = run('sh', ['-c', 'head -c 16777216 /dev/urandom']);
    const packed = run('zstd', ['-q', '-c', '-1'], { input: random });
    const warnings: string[] = [];
    const onWarning = (w: Error): void => { warnings.push(w.message); };
    process.on('warning', onWarning);
    try {
      const stream = await openLayerStream(bufferStream(packed, 65536), { zstd: 'host' });
      const got: Buffer[] = [];
      for await (const chunk of stream) {
        got.push(chunk as Buffer);
        await new Promise((r) => setImmediate(r)); // a slow reader: zstd's input backs up again and again
      }
      assert.ok(Buffer.concat(got).equals(random));
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(warnings, []);
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('is stopped when the reader gives up, and when the input fails', async () => {
    const stream = await openLayerStream(bufferStream(zst, 100), { zstd: 'host' });
    const first = await new Promise<Buffer>((resolve) => stream.once('data', resolve));
    assert.ok(first.length > 0);
    assert.equal(zstdChildren(), 1);
    stream.destroy();
    for (let i = 0; i < 100 && zstdChildren() > 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(zstdChildren(), 0, 'zstd still runs after the reader gave up');

    const failing = bufferStream(zst.subarray(0, 2000), 500);
    const broken = new PassThrough();
    failing.on('data', (c: Buffer) => broken.write(c));
    failing.on('end', () => broken.destroy(new Error('the disk went away')));
    const err = await openLayerStream(broken, { zstd: 'host' }).then(collect).then(() => null, (e: Error) => e);
    assert.match(String(err?.message), /the disk went away/);
    for (let i = 0; i < 100 && zstdChildren() > 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(zstdChildren(), 0);
  });
});
