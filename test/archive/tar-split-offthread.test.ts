// The off-thread recorder writes the same tar-split file and DiffID as the in-thread one, stops
// at the same errors, and fails its promise (never hangs) when the stream is cut short.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { isStrataError } from '../../src/errors.js';
import { OffThreadTarSplitRecorder, TarSplitRecorder, buildTar } from '../../src/archive/index.js';
import { bufferStream, collect, sink, tempDir } from './helpers.js';

describe('OffThreadTarSplitRecorder', () => {
  it('matches TarSplitRecorder byte for byte and passes every byte through', async () => {
    const entries = Array.from({ length: 200 }, (_, i) => ({ header: { name: `d${i % 7}/f${i}` }, data: randomBytes(i * 997) }));
    const tar = buildTar(entries);
    const t = tempDir();
    try {
      const inline = sink();
      const a = new TarSplitRecorder(inline.stream);
      bufferStream(tar, 4096).pipe(a).resume();
      const expected = await a.finished();

      const path = `${t.dir}/tar-split.json.gz`;
      const b = new OffThreadTarSplitRecorder(path);
      const passed = collect(bufferStream(tar, 4096).pipe(b));
      const got = await b.finished();
      assert.deepEqual(got, expected);
      assert.ok((await passed).equals(tar), 'the pass-through side is the input');
      assert.ok(readFileSync(path).equals(inline.data()));
    } finally {
      t.cleanup();
    }
  });

  it('rejects a duplicate path as the in-thread recorder does', async () => {
    const t = tempDir();
    try {
      const rec = new OffThreadTarSplitRecorder(`${t.dir}/ts`);
      rec.on('error', () => undefined);
      bufferStream(buildTar([{ header: { name: 'a' }, data: 'x' }, { header: { name: './a' }, data: 'y' }]), 512).pipe(rec).resume();
      await assert.rejects(rec.finished(), (err) => isStrataError(err, 'DUPLICATE_PATH'));
    } finally {
      t.cleanup();
    }
  });

  it('a stream destroyed before its end fails finished()', async () => {
    const t = tempDir();
    try {
      const rec = new OffThreadTarSplitRecorder(`${t.dir}/ts`);
      rec.on('error', () => undefined);
      Readable.from([buildTar([{ header: { name: 'a' }, data: 'x'.repeat(5000) }]).subarray(0, 1024)]).pipe(rec).resume();
      rec.destroy(new Error('input went away'));
      await assert.rejects(rec.finished(), /input went away/);
    } finally {
      t.cleanup();
    }
  });
});
