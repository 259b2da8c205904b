// FileChunks lends recycled buffers: readTar, the applier and the file writer's batches must be
// done with a chunk's bytes when they give it back. The tests that read lent chunks scribble over
// each buffer the moment it is released, so a byte used after release shows up as a wrong file or
// a wrong digest.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { createHash } from 'node:crypto';
import { FileChunks, applyLayerTar, buildTar, openFileInput, readTar, recordTarSplit } from '../../src/archive/index.js';
import { Strata } from '../../src/strata.js';
import { isStrataError } from '../../src/errors.js';
import { bufferStream, collect, run, snapshot, tempDir } from './helpers.js';

let t: { dir: string; cleanup: () => void };
before(() => { t = tempDir('strata-chunks-'); });
after(() => t.cleanup());

/** FileChunks over `path` that fills each buffer with 0xee as it is given back. */
async function poisoned(path: string, chunkSize: number): Promise<{ chunks: FileChunks; buffers: Set<ArrayBufferLike>; reads: () => number }> {
  const chunks = await FileChunks.open(path, { chunkSize });
  const buffers = new Set<ArrayBufferLike>();
  let reads = 0;
  chunks.tap((chunk) => {
    buffers.add(chunk.buffer);
    reads++;
  });
  const release = chunks.release.bind(chunks);
  chunks.release = (chunk) => {
    new Uint8Array(chunk.buffer).fill(0xee);
    release(chunk);
  };
  return { chunks, buffers, reads: () => reads };
}

/** A tree whose tar has headers, PAX records and file data across many chunk boundaries. */
function sourceTree(): { src: string; tar: string } {
  const src = `${t.dir}/src-${Math.random().toString(36).slice(2)}`;
  mkdirSync(`${src}/many`, { recursive: true });
  // over 256 small files: the file writer's thread takes them in batches
  for (let i = 0; i < 400; i++) writeFileSync(`${src}/many/f${i}`, createHash('sha256').update(String(i)).digest('hex').repeat(i % 40));
  writeFileSync(`${src}/pipelined-max`, Buffer.alloc(1 << 20, 7)); // the largest pipelined file
  writeFileSync(`${src}/big`, Buffer.from(Array.from({ length: 3_000_000 }, (_, i) => (i * 31) & 0xff))); // written in place
  mkdirSync(`${src}/${'d'.repeat(150)}`);
  writeFileSync(`${src}/${'d'.repeat(150)}/${'n'.repeat(200)}`, 'long names in PAX records\n');
  run('setfattr', ['-n', 'user.note', '-v', 'kept', `${src}/many/f1`]);
  const tar = `${src}.tar`;
  run('tar', ['--format=posix', '--xattrs', '--xattrs-include=user.*', '-cf', tar, '-C', src, '.']);
  return { src, tar };
}

describe('FileChunks: lent, recycled buffers', () => {
  it('a tar applied from lent chunks is the tree it came from, and the buffers are reused', async () => {
    const { src, tar } = sourceTree();
    // 1000 bytes: no chunk boundary falls on a 512-byte block boundary for long
    const { chunks, buffers, reads } = await poisoned(tar, 1000);
    const target = `${t.dir}/applied`;
    mkdirSync(target);
    await applyLayerTar(target, chunks, { whiteouts: 'apply' });
    assert.deepEqual(snapshot(target), snapshot(src));
    assert.ok(reads() > 4000, `${reads()} reads`);
    assert.ok(buffers.size < 20, `${buffers.size} buffers for ${reads()} reads: they are not being reused`);
  });

  it('readAll, body and chunks keep what they returned after the reader has moved on', async () => {
    const { tar } = sourceTree();
    const expected = new Map<string, string>();
    for await (const e of readTar(bufferStream(readFileSync(tar)))) {
      expected.set(e.header.name, createHash('sha256').update(await e.readAll()).digest('hex'));
    }
    const { chunks } = await poisoned(tar, 700);
    const kept = new Map<string, Buffer>();
    let i = 0;
    for await (const e of readTar(chunks)) {
      const way = i++ % 3;
      if (way === 0) kept.set(e.header.name, await e.readAll());
      else if (way === 1) kept.set(e.header.name, await collect(e.body));
      else {
        const copies: Buffer[] = [];
        for await (const c of e.chunks()) copies.push(Buffer.from(c));
        kept.set(e.header.name, Buffer.concat(copies));
      }
    }
    assert.equal(kept.size, expected.size);
    for (const [name, data] of kept) assert.equal(createHash('sha256').update(data).digest('hex'), expected.get(name), name);
  });

  it('an import from FileChunks records the digest of the file and rebuilds it byte for byte', async () => {
    const { src, tar } = sourceTree();
    const root = `${t.dir}/root-ok`;
    const strata = await Strata.open({ root, driver: 'vfs' });
    const { chunks } = await poisoned(tar, 4096 + 100);
    const id = await strata.importImage(chunks, { ref: 'chunks:1' });
    const [layer] = await strata.imageLayers(id);
    const fileDigest = `sha256:${createHash('sha256').update(readFileSync(tar)).digest('hex')}`;
    assert.equal(layer!.diffId, fileDigest);
    const rebuilt = await collect(await layer!.open());
    assert.equal(`sha256:${createHash('sha256').update(rebuilt).digest('hex')}`, fileDigest);
    // the library takes the file's path too, and a directory's
    const byPath = await strata.importImage(tar, { ref: 'chunks:2' });
    assert.equal((await strata.imageLayers(byPath))[0]!.diffId, fileDigest);
    const fromDir = await strata.importImage(src, { ref: 'chunks:3' });
    const container = await strata.createContainer('chunks:3');
    const initLayer = (rel: string) => /^(\.dockerenv|dev|etc|proc|sys)(\/|$)/.test(rel); // the container's own, not the image's
    assert.deepEqual(snapshot(await strata.mount(container), { dirMtimes: false, exclude: initLayer }), snapshot(src, { dirMtimes: false }));
    await strata.unmount(container);
    assert.match(fromDir, /^sha256:/);
    await strata.close();
  });

  it('chunks a consumer never gives back are not kept (a gzip layer read as FileChunks, say)', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const big = `${t.dir}/big.bin`;
    writeFileSync(big, Buffer.alloc(96 << 20, 1));
    const input = await FileChunks.open(big);
    gc();
    const before = process.memoryUsage().arrayBuffers;
    let peak = 0;
    let bytes = 0;
    for await (const chunk of input) {
      bytes += (chunk as Buffer).length; // never released
      if (bytes % (16 << 20) === 0) {
        gc();
        peak = Math.max(peak, process.memoryUsage().arrayBuffers - before);
      }
    }
    assert.equal(bytes, 96 << 20);
    assert.ok(peak < 32 << 20, `${(peak / 2 ** 20).toFixed(0)} MiB still held after reading 96 MiB`);
  });

  it('a recording whose input is closed before its end fails instead of waiting forever', async () => {
    const { tar } = sourceTree();
    const input = await FileChunks.open(tar, { chunkSize: 4096 });
    const recorded = recordTarSplit(input, `${t.dir}/closed.tar-split.json.gz`);
    let seen = 0;
    input.on('data', (chunk: Buffer) => {
      input.release(chunk);
      if (++seen === 3) input.destroy(); // closed, with no error of its own
    });
    await assert.rejects(recorded, (e) => isStrataError(e, 'INTERNAL') && /closed before its end/.test(e.message));
  });

  it('a pipe given by path (bash\'s <(...)) is read as a stream, a regular file as FileChunks', async () => {
    const { tar } = sourceTree();
    const fifo = `${t.dir}/fifo`;
    run('mkfifo', [fifo]);
    const writer = spawn('sh', ['-c', `cat "$0" > "$1"`, tar, fifo]);
    const written = new Promise((resolve) => writer.once('exit', resolve));
    const piped = await openFileInput(fifo);
    assert.ok(!(piped instanceof FileChunks));
    assert.ok((await collect(piped)).equals(readFileSync(tar)));
    assert.equal(await written, 0);
    const file = await openFileInput(tar);
    assert.ok(file instanceof FileChunks);
    file.destroy();
  });

  it('an import of a tar with a duplicate path or a bad header checksum is refused and leaves nothing behind', async () => {
    const root = `${t.dir}/root-refused`;
    const strata = await Strata.open({ root, driver: 'vfs' });
    const duplicate = buildTar([{ header: { name: 'a' }, data: 'one' }, { header: { name: 'b' }, data: 'x'.repeat(5000) }, { header: { name: './a' }, data: 'two' }]);
    const badSum = buildTar([{ header: { name: 'a' }, data: 'one' }, { header: { name: 'b' }, data: 'two' }]);
    badSum.writeUInt8(badSum[1024 + 148]! ^ 1, 1024 + 148); // the second header's checksum field
    for (const [name, tar, code] of [['dup.tar', duplicate, 'DUPLICATE_PATH'], ['sum.tar', badSum, 'INVALID_ARCHIVE']] as const) {
      writeFileSync(`${t.dir}/${name}`, tar);
      await assert.rejects(strata.importImage(`${t.dir}/${name}`), (e) => isStrataError(e, code), name);
    }
    assert.deepEqual(await strata.listImages(), []);
    assert.deepEqual(readdirSync(`${root}/vfs/dir`), []);
    assert.deepEqual((await strata.fsck()).problems, []);
    await strata.close();
  });

  it('a truncated tar read from FileChunks is refused and leaves nothing behind', async () => {
    const { tar } = sourceTree();
    const cut = `${t.dir}/cut.tar`;
    writeFileSync(cut, readFileSync(tar).subarray(0, 1_500_000));
    const root = `${t.dir}/root-cut`;
    const strata = await Strata.open({ root, driver: 'vfs' });
    await assert.rejects(strata.importImage(await FileChunks.open(cut)), (e) => isStrataError(e, 'TRUNCATED_ARCHIVE'));
    assert.deepEqual(await strata.listImages(), []);
    assert.deepEqual(readdirSync(`${root}/vfs/dir`), []);
    assert.deepEqual((await strata.fsck()).problems, []);
    await strata.close();
  });
});
