// TappedChunks: any source of chunks made tappable, as a gzip or zstd layer and stdin are, so the
// tar-split recorder and the progress meter watch them as they watch a plain tar file.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { gzipSync } from 'node:zlib';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { TappedChunks, buildTar, isTappable, openLayerStream } from '../../src/archive/index.js';

async function* pieces(n: number, log: string[]): AsyncGenerator<Buffer> {
  try {
    for (let i = 0; i < n; i++) {
      log.push(`made ${i}`);
      yield Buffer.from([i]);
    }
  } finally {
    log.push('source closed');
  }
}

describe('TappedChunks', () => {
  it('shows each chunk to its taps, in order, before the reader gets it; a tap that waits holds the reading back', async () => {
    const log: string[] = [];
    const chunks = new TappedChunks(pieces(3, log));
    chunks.tap((c) => { log.push(`tap ${c[0]}`); });
    chunks.tap(async (c) => {
      await new Promise((r) => setTimeout(r, 5));
      log.push(`slow tap ${c[0]}`);
    });
    for await (const c of chunks) log.push(`read ${(c as Buffer)[0]}`);
    // each chunk's taps have all seen it before it is read, and the next is made only after
    for (let i = 0; i < 3; i++) {
      const at = (s: string) => log.indexOf(s);
      assert.ok(at(`made ${i}`) < at(`tap ${i}`) && at(`tap ${i}`) < at(`slow tap ${i}`) && at(`slow tap ${i}`) < at(`read ${i}`), log.join(', '));
    }
    assert.ok(log.includes('source closed'));
  });

  it('closes its source when destroyed early, and refuses taps once reading has begun', async () => {
    const log: string[] = [];
    const chunks = new TappedChunks(pieces(1000, log));
    for await (const c of chunks) {
      if ((c as Buffer)[0] === 2) break; // destroys the stream
    }
    assert.equal(log.at(-1), 'source closed');
    assert.ok(log.length < 20, `read on after the reader stopped: ${log.length} entries`);
    const late = new TappedChunks(pieces(3, []));
    late.read();
    assert.throws(() => late.tap(() => undefined), /after reading began/);
  });

  it('fails with the error of its source or of a tap', async () => {
    async function* broken(): AsyncGenerator<Buffer> {
      yield Buffer.from('a');
      throw new Error('disk on fire');
    }
    await assert.rejects(async () => { for await (const _ of new TappedChunks(broken())) { /* drain */ } }, /disk on fire/);
    const tapped = new TappedChunks(pieces(3, []));
    tapped.tap(() => { throw new Error('tap refused'); });
    await assert.rejects(async () => { for await (const _ of tapped) { /* drain */ } }, /tap refused/);
  });

  it('is what openLayerStream gives for a gzip layer: a tap sees exactly the uncompressed tar', async () => {
    const tar = buildTar([{ header: { name: 'a.txt' }, data: Buffer.alloc(300_000, 7) }, { header: { name: 'b/', typeflag: '5' } }]);
    const stream = await openLayerStream(Readable.from([gzipSync(tar)]));
    assert.ok(isTappable(stream));
    const seen = createHash('sha256');
    stream.tap((c) => { seen.update(c); });
    const read = createHash('sha256');
    for await (const c of stream) read.update(c as Buffer);
    const want = createHash('sha256').update(tar).digest('hex');
    assert.equal(seen.digest('hex'), want);
    assert.equal(read.digest('hex'), want);
  });
});
