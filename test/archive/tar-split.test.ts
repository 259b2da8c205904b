// tar-split: byte-exact records (moby 20.10 / tar-split v0.11.2) and byte-exact reassembly, with
// tars from GNU tar (gnu, posix, ustar), Python's tarfile and our own writer; compression detection.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createReadStream, mkdirSync, mkdtempSync, openSync, readFileSync, symlinkSync, linkSync, writeFileSync } from 'node:fs';
import { PassThrough, Readable } from 'node:stream';
import { gunzipSync, gzipSync } from 'node:zlib';
import {
  TarSplitRecorder, applyLayerTar, assembleTar, assembledTarSize, buildTar, crc64, encodeHeader, openLayerStream, decodeTarSplitEntry, readTar,
} from '../../src/archive/index.js';
import { bufferStream, collect, errorCode, run, sha256, sink, tempDir } from './helpers.js';

async function record(tar: Buffer, chunk = 65536): Promise<{ json: string; gz: Buffer; diffId: string; size: number }> {
  const out = sink();
  const rec = new TarSplitRecorder(out.stream);
  rec.on('error', () => undefined); // surfaced by finished()
  bufferStream(tar, chunk).pipe(rec).resume();
  const r = await rec.finished();
  const gz = out.data();
  return { json: gunzipSync(gz).toString('utf8'), gz, ...r };
}

/** Rebuild from `root`, each file given to the assembler as a stream or as a descriptor. */
async function assemble(gz: Buffer, root: string, via: 'stream' | 'descriptor' = 'stream'): Promise<Buffer> {
  const out = new PassThrough();
  const done = collect(out);
  const path = (name: string, raw?: Buffer) => (raw ? Buffer.concat([Buffer.from(`${root}/`), raw]) : `${root}/${name}`);
  await assembleTar(Readable.from([gz]), (name, raw) => (via === 'stream' ? Promise.resolve(createReadStream(path(name, raw))) : openSync(path(name, raw), 'r')), out);
  out.end();
  return done;
}

describe('tar-split records', () => {
  it('reproduces the tiny-layer sample exactly (4 lines, 2914 bytes)', async () => {
    const header = encodeHeader({ name: 'new.txt', mode: 0o100644, size: 3, mtime: 0o15300561274, uname: 'root', gname: 'root' });
    const tar = Buffer.concat([header, Buffer.from('hi\n'), Buffer.alloc(1533)]);
    const { json, diffId, size } = await record(tar);
    assert.equal(diffId, 'sha256:e03676cdc199431a7b9c61569d8d256fa1a1ac7ead6ee69b0f0005062c98af85');
    assert.equal(size, 2048);
    const expected = [
      `{"type":2,"payload":"${header.toString('base64')}","position":0}`,
      '{"type":1,"name":"new.txt","size":3,"payload":"YUmYEAAAAAA=","position":1}',
      `{"type":2,"payload":"${Buffer.alloc(1533).toString('base64')}","position":2}`,
      '{"type":2,"payload":"","position":3}',
      '',
    ].join('\n');
    assert.equal(json, expected);
    assert.equal(Buffer.byteLength(json), 2914);
  });

  it('puts GNU long-name blocks, padding and the header in one segment (§1.8)', async () => {
    const name = `d/${'x'.repeat(120)}`;
    const { rawFileBlocks } = await import('../../src/archive/index.js');
    const tar = Buffer.concat([
      encodeHeader({ name: 'a', size: 11 }), Buffer.from('hello world'), Buffer.alloc(501),
      rawFileBlocks('././@LongLink', 'L', Buffer.from(`${name}\0`)), encodeHeader({ name: name.slice(0, 100), size: 0 }),
      Buffer.alloc(1024), Buffer.alloc(4608),
    ]);
    const lines = (await record(tar)).json.trim().split('\n').map((l) => decodeTarSplitEntry(l));
    assert.deepEqual(lines.map((e) => [e.type, e.name ?? '', e.payload?.length ?? null]), [
      [2, '', 512], [1, 'a', 8], [2, '', 2037], [1, name, null], [2, '', 1024], [2, '', 4608], [2, '', 0],
    ]);
  });

  it('records a PAX global header as an entry of its own, its padding in the next segment (as Go)', async () => {
    const { rawFileBlocks } = await import('../../src/archive/index.js');
    const g = rawFileBlocks('pax_global_header', 'g', Buffer.from('20 comment=globally\n'));
    const tar = Buffer.concat([g, encodeHeader({ name: 'f', size: 2 }), Buffer.from('hi'), Buffer.alloc(510 + 1024)]);
    const { json, gz } = await record(tar);
    const lines = json.trim().split('\n').map((l) => decodeTarSplitEntry(l));
    assert.deepEqual(lines.map((e) => [e.type, e.name ?? '', e.size ?? 0, e.payload?.length ?? null]), [
      [2, '', 0, 512 + 20], [1, 'pax_global_header', 0, null], [2, '', 0, 492 + 512], [1, 'f', 2, 8], [2, '', 0, 510 + 1024], [2, '', 0, 0],
    ]);
    const t = tempDir();
    try {
      writeFileSync(`${t.dir}/f`, 'hi');
      assert.equal(sha256(await assemble(gz, t.dir)), sha256(tar));
    } finally {
      t.cleanup();
    }
  });

  it('rejects duplicate cleaned paths (DUPLICATE_PATH), as Docker does', async () => {
    const tar = buildTar([{ header: { name: 'a.txt' }, data: 'x' }, { header: { name: './a.txt' }, data: 'y' }]);
    assert.equal(await errorCode(record(tar)), 'DUPLICATE_PATH');
  });

  it('fails reassembly when a file changed (DIGEST_MISMATCH)', async () => {
    const t = tempDir();
    try {
      const big = Buffer.alloc(600_000, 3); // read on the thread pool from a descriptor
      const tar = buildTar([{ header: { name: 'f' }, data: 'original' }, { header: { name: 'big' }, data: big }]);
      const { gz } = await record(tar);
      writeFileSync(`${t.dir}/big`, big);
      for (const via of ['stream', 'descriptor'] as const) {
        for (const changed of ['tampered', 'original+', 'origina']) {
          writeFileSync(`${t.dir}/f`, changed);
          assert.equal(await errorCode(assemble(gz, t.dir, via)), 'DIGEST_MISMATCH', `${via}: ${changed}`);
        }
        writeFileSync(`${t.dir}/f`, 'original');
        for (const changed of [Buffer.concat([big, Buffer.from('+')]), big.subarray(1), Buffer.from(big).fill(4, 500_000, 500_001)]) {
          writeFileSync(`${t.dir}/big`, changed);
          assert.equal(await errorCode(assemble(gz, t.dir, via)), 'DIGEST_MISMATCH', `${via}: big of ${changed.length}`);
        }
        writeFileSync(`${t.dir}/big`, big);
        assert.equal(sha256(await assemble(gz, t.dir, via)), sha256(tar), via);
      }
    } finally {
      t.cleanup();
    }
  });
});

describe('reading tar-split records', () => {
  /**
   * Records as tar-split writes them and as other writers might: keys reordered or in other case,
   * spaces, CRLF, blank lines, JSON escapes in a payload; across many inflated pieces. Segments in
   * tar-split's own shape are read without JSON (tar-split.ts segmentLine), the rest through it:
   * the bytes rebuilt, and the size summed, must not tell them apart.
   */
  it('reads every spelling of a record the same way, whatever line crosses a piece boundary', async () => {
    let seed = 7;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return seed % n;
    };
    const files = new Map<string, Buffer>();
    const expected: Buffer[] = [];
    const lines: string[] = [];
    for (let i = 0; i < 3000; i++) {
      const payload = Buffer.from(Array.from({ length: rand(1500) }, () => rand(256)));
      expected.push(payload);
      const b64 = payload.toString('base64');
      switch (i % 6) {
        case 0: lines.push(`{"type":2,"payload":${JSON.stringify(b64)},"position":${i}}`); break;
        case 1: lines.push(`{"position":${i},"type":2,"payload":"${b64}"}`); break;
        case 2: lines.push(`  {"Type":2,"PAYLOAD":"${b64}","position":${i}}\r`); break;
        case 3: lines.push(`{"type":2,"payload":"${b64.replaceAll('+', '\\u002b').replaceAll('/', '\\/')}","position":${i}}`); break;
        case 4: lines.push(`{"type":2,"payload":"${b64}","position":${i}}   `, ''); break;
        default: {
          const name = `dir/fïle ${i}`;
          const data = Buffer.from(`data of ${i}\n`);
          files.set(name, data);
          expected.push(data);
          lines.push(`{"type":2,"payload":"${b64}","position":${i}}`);
          lines.push(`{"type":1,"name":${JSON.stringify(name)},"size":${data.length},"payload":"${crc64(data).toString('base64')}","position":${i}}`);
        }
      }
    }
    const gz = gzipSync(`${lines.join('\n')}\n`);
    const want = Buffer.concat(expected);
    for (const piece of [13, 4096, 65_536]) {
      assert.equal(await assembledTarSize(bufferStream(gz, piece)), want.length);
      const out = new PassThrough();
      const done = collect(out);
      await assembleTar(bufferStream(gz, piece), (name) => Promise.resolve(Readable.from([files.get(name)!])), out);
      out.end();
      assert.ok((await done).equals(want), `pieces of ${piece}`);
    }
  });

  it('refuses a record line past 64 MiB instead of holding it', async () => {
    const gz = gzipSync(Buffer.alloc(65 << 20, 0x41));
    assert.equal(await errorCode(assembledTarSize(Readable.from([gz]))), 'INVALID_ARCHIVE');
  });
});

describe('apply → tar-split → assembleTar reproduces the exact tar', () => {
  let t: { dir: string; cleanup: () => void };
  let tree: string;
  before(() => {
    t = tempDir();
    tree = `${t.dir}/tree`;
    mkdirSync(`${tree}/etc/deep/er`, { recursive: true });
    writeFileSync(`${tree}/etc/hosts`, '127.0.0.1 localhost\n');
    writeFileSync(`${tree}/empty`, '');
    writeFileSync(`${tree}/etc/deep/er/big`, Buffer.alloc(300_000, 7));
    symlinkSync('hosts', `${tree}/etc/hosts.link`);
    linkSync(`${tree}/etc/hosts`, `${tree}/etc/hosts.hard`);
    const long = `${tree}/${'l'.repeat(110)}`;
    mkdirSync(long);
    writeFileSync(`${long}/${'m'.repeat(120)}`, 'long names\n');
    writeFileSync(`${tree}/ünï.txt`, 'utf-8 name\n');
    run('setfattr', ['-n', 'user.note', '-v', 'hello', `${tree}/etc/hosts`]);
  });
  after(() => t.cleanup());

  const cases: Array<[string, string[]]> = [
    ['GNU tar --format=gnu', ['--format=gnu']],
    ['GNU tar --format=posix with xattrs', ['--format=posix', '--xattrs', '--xattrs-include=*']],
    ['GNU tar --format=ustar (short names only)', ['--format=ustar', '--exclude=./l*', '--exclude=./ü*']],
    ['GNU tar --format=gnu, odd record size', ['--format=gnu', '--blocking-factor=3']],
  ];
  for (const [label, args] of cases) {
    it(label, async () => {
      const tar = run('tar', [...args, '-cf', '-', '-C', tree, '.']);
      const target = mkdtempSync(`${t.dir}/apply-`);
      const out = sink();
      const rec = new TarSplitRecorder(out.stream);
      const { size } = await applyLayerTar(target, bufferStream(tar, 10000).pipe(rec), { whiteouts: 'apply' });
      const r = await rec.finished();
      assert.equal(r.diffId, sha256(tar));
      assert.equal(r.size, tar.length);
      assert.ok(size >= 300_000);
      assert.equal(await assembledTarSize(Readable.from([out.data()])), tar.length);
      for (const via of ['stream', 'descriptor'] as const) {
        const rebuilt = await assemble(out.data(), target, via);
        assert.equal(rebuilt.length, tar.length, via);
        assert.equal(sha256(rebuilt), sha256(tar), via);
      }
    });
  }

  it('Python tarfile (GNU with a non-UTF-8 name, and PAX)', async (ctx) => {
    try {
      run('python3', ['-c', 'import tarfile']);
    } catch {
      return ctx.skip('python3 is not installed');
    }
    const py = `
import tarfile, io, sys
for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w', format=fmt, encoding='utf-8', errors='surrogateescape') as tf:
        for name, data in ((b'caf\\xe9.txt'.decode('utf-8', 'surrogateescape'), b'hello latin1'), ('x' * 122, b'long'), ('empty.txt', b'')):
            ti = tarfile.TarInfo(name); ti.size = len(data); ti.mtime = 1700000000
            tf.addfile(ti, io.BytesIO(data))
    sys.stdout.buffer.write(buf.getvalue())
    sys.stdout.buffer.write(b'SPLIT')
`;
    const parts = run('python3', ['-c', py]).toString('latin1').split('SPLIT').filter((s) => s).map((s) => Buffer.from(s, 'latin1'));
    assert.equal(parts.length, 2);
    for (const tar of parts) {
      const { json, gz, diffId } = await record(tar);
      assert.equal(diffId, sha256(tar));
      const dir = mkdtempSync(`${t.dir}/py-`);
      writeFileSync(Buffer.from(`${dir}/caf\xe9.txt`, 'latin1'), 'hello latin1');
      writeFileSync(`${dir}/${'x'.repeat(122)}`, 'long');
      writeFileSync(`${dir}/empty.txt`, '');
      if (tar === parts[0]) assert.ok(json.includes('"name_raw":"Y2Fm6S50eHQ="'), 'non-UTF-8 name stored raw');
      assert.equal(sha256(await assemble(gz, dir)), sha256(tar));
    }
  });

  it('our own writer, fed one byte at a time', async () => {
    const tar = buildTar([
      { header: { name: 'dir/', typeflag: '5', mode: 0o40755 } },
      { header: { name: 'dir/file', mode: 0o100600, xattrs: { 'user.k': 'v' } }, data: 'abc' },
      { header: { name: 'dir/link', typeflag: '1', linkname: 'dir/file' } },
    ]);
    const target = mkdtempSync(`${t.dir}/own-`);
    const out = sink();
    const rec = new TarSplitRecorder(out.stream);
    await applyLayerTar(target, bufferStream(tar, 1).pipe(rec), { whiteouts: 'apply' });
    await rec.finished();
    assert.equal(sha256(await assemble(out.data(), target)), sha256(tar));
  });
});

describe('openLayerStream (compression by magic)', () => {
  const tar = buildTar([{ header: { name: 'hello.txt' }, data: 'hello\n'.repeat(1000) }]);
  it('passes plain tar, gunzips gzip, decompresses zstd', async () => {
    assert.ok((await collect(await openLayerStream(bufferStream(tar)))).equals(tar));
    assert.ok((await collect(await openLayerStream(bufferStream(gzipSync(tar), 7)))).equals(tar));
    const zst = run('zstd', ['-q', '-c'], { input: tar });
    assert.ok((await collect(await openLayerStream(bufferStream(zst, 5)))).equals(tar));
  });
  it('refuses bzip2 and xz with UNSUPPORTED_ARCHIVE', async () => {
    assert.equal(await errorCode(openLayerStream(bufferStream(Buffer.concat([Buffer.from('BZh91AY&SY'), tar])))), 'UNSUPPORTED_ARCHIVE');
    assert.equal(await errorCode(openLayerStream(bufferStream(Buffer.concat([Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]), tar])))), 'UNSUPPORTED_ARCHIVE');
  });
  it('reports truncated gzip and corrupt zstd', async () => {
    const gz = gzipSync(tar);
    assert.equal(await errorCode(openLayerStream(bufferStream(gz.subarray(0, gz.length - 20))).then(collect)), 'TRUNCATED_ARCHIVE');
    const garbage = Buffer.concat([Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x04, 0x58]), Buffer.alloc(200, 0xa5)]);
    const c = await errorCode(openLayerStream(bufferStream(garbage)).then(collect));
    assert.ok(c === 'INVALID_ARCHIVE' || c === 'TRUNCATED_ARCHIVE', c);
  });
});

void readFileSync;

describe('the push disassembler agrees with readTar on every archive we have', () => {
  /** The oracle: tar-split records derived from readTar's raw accounting. */
  async function oracle(tar: Buffer, chunk: number): Promise<{ records: string[]; error: string | null }> {
    const { readTar, encodeTarSplitEntry: enc } = await import('../../src/archive/index.js');
    const { goClean } = await import('../../src/archive/paths.js');
    const { isUtf8 } = await import('node:buffer');
    const { Crc64 } = await import('../../src/archive/crc64.js');
    const records: string[] = [];
    let pos = 0;
    const seen = new Set<string>();
    const add = (e: Parameters<typeof enc>[0]): void => { records.push(enc({ ...e, position: pos++ })); };
    try {
      for await (const e of readTar(bufferStream(tar, chunk), {
        raw: true,
        onEnd: (raw) => { if (raw.length) add({ type: 2, payload: raw, position: 0 }); },
        onTrailing: (c) => add({ type: 2, payload: c, position: 0 }),
      })) {
        if (e.raw!.length) add({ type: 2, payload: e.raw!, position: 0 });
        let payload: Buffer | null = null;
        if (e.header.size > 0) {
          const crc = new Crc64();
          for await (const c of e.chunks()) crc.update(c);
          payload = crc.digest();
        }
        const key = goClean(e.header.nameRaw.toString('latin1'));
        if (seen.has(key)) throw Object.assign(new Error('dup'), { code: 'DUPLICATE_PATH' });
        seen.add(key);
        add({ type: 1, ...(isUtf8(e.header.nameRaw) ? { name: e.header.name } : { nameRaw: e.header.nameRaw }), size: e.header.size, payload, position: 0 });
      }
      add({ type: 2, payload: Buffer.alloc(0), position: 0 });
      return { records, error: null };
    } catch (err) {
      return { records, error: (err as { code?: string }).code ?? String(err) };
    }
  }

  async function actual(tar: Buffer, chunk: number): Promise<{ records: string[]; error: string | null }> {
    const out = sink();
    const rec = new TarSplitRecorder(out.stream);
    rec.on('error', () => undefined);
    bufferStream(tar, chunk).pipe(rec).resume();
    try {
      await rec.finished();
      return { records: gunzipSync(out.data()).toString().split('\n').filter(Boolean).map((l) => `${l}\n`), error: null };
    } catch (err) {
      return { records: [], error: (err as { code?: string }).code ?? String(err) };
    }
  }

  it('the hostile corpus and GNU tar archives, in several chunk sizes', async () => {
    const { hostileCases, fillSentinel } = await import('./hostile-corpus.js');
    const t = tempDir();
    try {
      const env = { base: t.dir, target: `${t.dir}/target`, sentinel: `${t.dir}/sentinel` };
      mkdirSync(env.target);
      fillSentinel(env.sentinel);
      const tars: Array<[string, Buffer]> = [];
      for (const c of hostileCases) {
        const blob = await c.build(env);
        try {
          tars.push([c.name, await collect(await openLayerStream(bufferStream(blob)))]);
        } catch {
          // compression-level cases have no tar to compare
        }
      }
      const tree = `${t.dir}/tree`;
      mkdirSync(`${tree}/${'d'.repeat(120)}`, { recursive: true });
      writeFileSync(`${tree}/${'d'.repeat(120)}/${'f'.repeat(120)}`, 'x'.repeat(1000));
      writeFileSync(`${tree}/small`, 'y');
      for (const fmt of ['gnu', 'posix', 'ustar', 'v7', 'oldgnu']) {
        try {
          tars.push([`GNU tar ${fmt}`, run('tar', [`--format=${fmt}`, '-cf', '-', '-C', tree, '.'])]);
        } catch {
          tars.push([`GNU tar ${fmt} (short names)`, run('tar', [`--format=${fmt}`, '-cf', '-', '-C', tree, 'small'])]);
        }
      }
      let compared = 0;
      for (const [name, tar] of tars) {
        for (const chunk of [1, 511, 4096, 1 << 20]) {
          if (chunk === 1 && tar.length > 200_000) continue;
          const want = await oracle(tar, chunk);
          const got = await actual(tar, chunk);
          assert.equal(got.error, want.error, `${name} (chunk ${chunk})`);
          if (!want.error) {
            // trailing segments follow input chunking; compare their concatenation
            assert.deepEqual(got.records.join(''), want.records.join(''), `${name} (chunk ${chunk})`);
          }
          compared++;
        }
      }
      assert.ok(compared > 100);
    } finally {
      t.cleanup();
    }
  });
});

describe('bounded memory', () => {
  it('streams a 512 MiB entry through TarSplitRecorder and readTar without holding it', async () => {
    const SIZE = 512 * 1024 * 1024;
    const zero = Buffer.alloc(1 << 20);
    async function* layer(): AsyncGenerator<Buffer> {
      yield encodeHeader({ name: 'big.bin', size: SIZE });
      for (let i = 0; i < SIZE / zero.length; i++) yield zero;
      yield encodeHeader({ name: 'after', size: 1 });
      yield Buffer.concat([Buffer.from('!'), Buffer.alloc(511 + 1024)]);
    }
    const before = process.memoryUsage().rss;
    let peak = before;
    const timer = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss); }, 20);
    try {
      const out = sink();
      const rec = new TarSplitRecorder(out.stream);
      const names: string[] = [];
      let bytes = 0;
      for await (const e of readTar(Readable.from(layer()).pipe(rec))) {
        names.push(e.header.name);
        for await (const c of e.chunks()) bytes += c.length;
      }
      const r = await rec.finished();
      assert.deepEqual(names, ['big.bin', 'after']);
      assert.equal(bytes, SIZE + 1);
      assert.equal(r.size, SIZE + 2048 + 512);
      const records = gunzipSync(out.data()).toString().trim().split('\n').map((l) => decodeTarSplitEntry(l));
      assert.equal(records.find((e) => e.name === 'big.bin')?.size, SIZE);
    } finally {
      clearInterval(timer);
    }
    assert.ok(peak - before < 96 * 1024 * 1024, `RSS grew by ${((peak - before) / 2 ** 20).toFixed(0)} MiB`);
  });
});
