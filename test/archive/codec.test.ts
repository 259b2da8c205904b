// Pure parts of the archive module: header codec, PAX, CRC-64, Go JSON, tar-split records,
// path cleaning and whiteout naming. No filesystem.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { isStrataError } from '../../src/errors.js';
import {
  BLOCK, Crc64, TYPE, TarWriter, buildTar, classifyWhiteout, crc64, decodeHeader, decodeTarSplitEntry, encodeHeader,
  encodePaxRecords, encodeTarSplitEntry, entryPath, goClean, opaqueName, parsePaxRecords, readTar,
  resealHeader, whiteoutName, withChecksum,
} from '../../src/archive/index.js';
import { goJsonString } from '../../src/archive/go-json.js';
import { formatPaxRecord } from '../../src/archive/tar/pax.js';
import { computeChecksum, parseNumeric } from '../../src/archive/tar/header.js';
import { bufferStream } from './helpers.js';

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return isStrataError(err) ? err.code : `non-strata: ${(err as Error).message}`;
  }
  return 'no error';
}

describe('crc64 (CRC-64/GO-ISO)', () => {
  it('matches the check vector and the tar-split sample', () => {
    assert.equal(crc64(Buffer.from('123456789')).toString('hex'), 'b90956c775a41001');
    assert.equal(crc64(Buffer.from('hi\n')).toString('base64'), 'YUmYEAAAAAA=');
    assert.equal(new Crc64().value(), 0n);
  });
  it('gives the same result whatever the chunking (slicing-by-8 vs byte at a time)', () => {
    const data = Buffer.from(Array.from({ length: 4099 }, (_, i) => (i * 131 + 17) & 0xff));
    const whole = crc64(data).toString('hex');
    for (const step of [1, 3, 7, 8, 9, 64, 1000]) {
      const c = new Crc64();
      for (let o = 0; o < data.length; o += step) c.update(data.subarray(o, o + step));
      assert.equal(c.digest().toString('hex'), whole, `step ${step}`);
    }
  });
});

describe('tar header codec', () => {
  it('encodes as Go archive/tar does: the tar-split tiny-layer sample reproduces its DiffID', () => {
    // image-formats.md §1.6: new.txt, mode 0100644, size 3, mtime 0o15300561274, root/root
    const header = encodeHeader({ name: 'new.txt', mode: 0o100644, size: 3, mtime: 0o15300561274, uname: 'root', gname: 'root' });
    assert.equal(header.length, BLOCK);
    const tar = Buffer.concat([header, Buffer.from('hi\n'), Buffer.alloc(509 + 1024)]);
    assert.equal(tar.length, 2048);
    assert.equal(createHash('sha256').update(tar).digest('hex'), 'e03676cdc199431a7b9c61569d8d256fa1a1ac7ead6ee69b0f0005062c98af85');
    const h = decodeHeader(header);
    assert.equal(h.name, 'new.txt');
    assert.equal(h.mode, 0o100644);
    assert.equal(h.size, 3);
    assert.equal(h.mtime, 1795351228);
    assert.equal(h.uname, 'root');
    assert.equal(h.format, 'ustar');
  });

  it('round-trips every field through encode/decode', () => {
    const block = encodeHeader({
      name: 'dev/sda', typeflag: TYPE.block, mode: 0o60660, uid: 1000, gid: 6, mtime: 1700000000,
      devmajor: 8, devminor: 1, uname: 'u', gname: 'disk',
    });
    const h = decodeHeader(block);
    assert.deepEqual(
      [h.name, h.typeflag, h.mode, h.uid, h.gid, h.mtime, h.devmajor, h.devminor, h.uname, h.gname],
      ['dev/sda', '4', 0o60660, 1000, 6, 1700000000, 8, 1, 'u', 'disk'],
    );
  });

  it('splits long ASCII names into prefix/name (USTAR) and uses PAX when it cannot', () => {
    const long = `${'a'.repeat(120)}/${'b'.repeat(90)}`;
    const ustar = encodeHeader({ name: long });
    assert.equal(ustar.length, BLOCK, 'prefix split, no PAX');
    assert.equal(decodeHeader(ustar).name, long);
    const tooLong = 'c'.repeat(300);
    const pax = encodeHeader({ name: tooLong });
    assert.equal(pax.length, 3 * BLOCK, 'PAX header + records + main header');
    assert.equal(decodeHeader(pax.subarray(0, BLOCK)).typeflag, 'x');
    assert.equal(decodeHeader(pax.subarray(0, BLOCK)).name, `PaxHeaders.0/${'c'.repeat(87)}`);
  });

  it('emits PAX only when needed and deterministically (sorted records)', () => {
    assert.equal(encodeHeader({ name: 'plain' }).length, BLOCK);
    const a = encodeHeader({ name: 'x', xattrs: { 'user.b': '2', 'user.a': '1' }, mtime: 1.5 });
    const b = encodeHeader({ name: 'x', xattrs: { 'user.a': '1', 'user.b': '2' }, mtime: 1.5 });
    assert.ok(a.equals(b));
    const text = a.subarray(BLOCK, 2 * BLOCK).toString('latin1');
    assert.ok(text.startsWith('25 SCHILY.xattr.user.a=1\n25 SCHILY.xattr.user.b=2\n13 mtime=1.5\n'), text.slice(0, 80));
    assert.equal(encodeHeader({ name: 'ünï.txt' }).length, 3 * BLOCK, 'non-ASCII names need PAX');
    assert.equal(encodeHeader({ name: 'big', size: 2 ** 34 }).length, 3 * BLOCK, 'size over 8 GiB needs PAX');
  });

  it('parses base-256 numbers, positive and negative', () => {
    const b = Buffer.alloc(12);
    b[0] = 0x80;
    b.writeUInt32BE(0x12345678, 8);
    assert.equal(parseNumeric(b, 0, 12, 'size'), 0x12345678);
    const n = Buffer.alloc(8, 0xff); // two's complement -1
    assert.equal(parseNumeric(n, 0, 8, 'uid'), -1);
    const huge = Buffer.alloc(12, 0x7f);
    huge[0] = 0x80 | 0x3f;
    assert.equal(code(() => parseNumeric(huge, 0, 12, 'size')), 'INVALID_ARCHIVE');
  });

  it('accepts octal fields padded with spaces and NULs, rejects invalid digits', () => {
    const block = encodeHeader({ name: 'f', size: 5 });
    block.write(' 0000005 \0\0\0', 124, 'latin1');
    assert.equal(decodeHeader(resealHeader(block)).size, 5);
    block.write('0000009\0\0\0\0\0', 124, 'latin1');
    assert.equal(code(() => decodeHeader(resealHeader(block))), 'INVALID_ARCHIVE');
  });

  it('accepts signed and unsigned checksums and rejects a wrong one', () => {
    const block = encodeHeader({ name: 'abc', mode: 0o644 });
    block[1] = 0xe9; // a latin1 byte: signed and unsigned sums differ
    block.fill(0x20, 148, 156);
    let signed = 0;
    let unsigned = 0;
    for (const c of block) {
      signed += c >= 0x80 ? c - 256 : c;
      unsigned += c;
    }
    assert.doesNotThrow(() => decodeHeader(withChecksum(block, signed)));
    assert.doesNotThrow(() => decodeHeader(withChecksum(block, unsigned)));
    assert.equal(code(() => decodeHeader(withChecksum(block, 12345))), 'INVALID_ARCHIVE');
  });
});

describe('TarWriter', () => {
  const entries = (): Array<{ name: string; data: Buffer }> => [
    ...Array.from({ length: 3000 }, (_, i) => ({ name: `small/f${i}`, data: Buffer.alloc(i % 700, i) })),
    { name: 'big/exactly-64k', data: Buffer.alloc(64 * 1024, 1) },
    { name: 'big/3m', data: Buffer.alloc(3 * 1024 * 1024 + 5, 2) },
    { name: 'after', data: Buffer.from('the end') },
  ];

  it('writes the bytes buildTar writes, gathering small pushes into blocks (bodies as Buffers and as chunk iterables)', async () => {
    const expected = buildTar(entries().map(({ name, data }) => ({ header: { name }, data })));
    for (const asChunks of [false, true]) {
      const w = new TarWriter();
      const chunks: Buffer[] = [];
      const read = (async () => { for await (const c of w) chunks.push(c as Buffer); })();
      for (const { name, data } of entries()) {
        const body = asChunks ? (async function* () { for (let i = 0; i < data.length; i += 10_000) yield data.subarray(i, i + 10_000); })() : data;
        await w.add({ name, size: data.length }, body);
      }
      await w.finish();
      await read;
      assert.ok(Buffer.concat(chunks).equals(expected), `asChunks=${asChunks}`);
      assert.equal(w.bytes, expected.length);
      assert.ok(chunks.length < 3000 / 10, `${chunks.length} pushes for 3,003 entries`);
    }
  });

  it('waits while nobody reads: what it holds stays bounded', async () => {
    const w = new TarWriter({ highWaterMark: 1 << 20 });
    let added = 0;
    const adding = (async () => {
      for (const { name, data } of entries()) {
        await w.add({ name, size: data.length }, data);
        added++;
      }
      await w.finish();
    })();
    await new Promise((r) => setTimeout(r, 100));
    assert.ok(added < entries().length, 'the producer waits for the reader');
    assert.ok(w.readableLength <= 2 << 20, `${w.readableLength} bytes held`);
    const chunks: Buffer[] = [];
    for await (const c of w) chunks.push(c as Buffer);
    await adding;
    assert.equal(Buffer.concat(chunks).length, w.bytes);
  });

  it('a destroyed writer fails the producer waiting on it', async () => {
    const w = new TarWriter({ highWaterMark: 1024 });
    const adding = (async () => { for (const { name, data } of entries()) await w.add({ name, size: data.length }, data); })();
    await new Promise((r) => setTimeout(r, 50));
    w.destroy();
    await assert.rejects(adding, (err: unknown) => isStrataError(err, 'INTERNAL'));
  });
});

describe('PAX records', () => {
  it('formats the length prefix counting itself, across the digit boundary', () => {
    assert.equal(formatPaxRecord('path', Buffer.from('a')).toString(), '9 path=a\n');
    const v = Buffer.alloc(89, 0x61); // 1 + 5 + 89 + 3 = 98 → with "98" = 100 → "100 ..." is 101
    const rec = formatPaxRecord('path', v);
    assert.equal(Number(rec.toString().split(' ')[0]), rec.length);
  });
  it('round-trips records and keeps binary values', () => {
    const m = new Map<string, Buffer>([['SCHILY.xattr.user.bin', Buffer.from([0, 1, 0xff])], ['path', Buffer.from('ä/b')]]);
    const back = parsePaxRecords(encodePaxRecords(m));
    assert.deepEqual([...back.entries()].map(([k, v]) => [k, v.toString('hex')]), [
      ['SCHILY.xattr.user.bin', '0001ff'], ['path', Buffer.from('ä/b').toString('hex')],
    ]);
  });
  it('rejects lying lengths, missing "=", NUL in path, empty keys', () => {
    for (const bad of ['99 path=a\n', '5 a\n', '10 path=a', '9 =value\n', 'x path=a\n', '3 a=\n']) {
      assert.equal(code(() => parsePaxRecords(Buffer.from(bad))), 'INVALID_ARCHIVE', bad);
    }
    assert.equal(code(() => parsePaxRecords(formatPaxRecord('path', Buffer.from('a\0b')))), 'INVALID_ARCHIVE');
    assert.doesNotThrow(() => parsePaxRecords(formatPaxRecord('comment', Buffer.from('a\0b'))));
  });
});

describe('reader basics', () => {
  it('turns a V7 "name/" with typeflag NUL into a directory, and reads GNU long names', async () => {
    const dir = encodeHeader({ name: 'olddir/', typeflag: '\0' });
    const longName = 'z'.repeat(200);
    const ln = Buffer.from(`${longName}\0`);
    const { rawFileBlocks } = await import('../../src/archive/index.js');
    const tar = Buffer.concat([dir, rawFileBlocks('././@LongLink', 'L', ln), encodeHeader({ name: 'short', size: 0 }), Buffer.alloc(1024)]);
    const got: string[] = [];
    for await (const e of readTar(Readable.from([tar]))) got.push(`${e.header.typeflag}:${e.header.name}`);
    assert.deepEqual(got, ['5:olddir/', `0:${longName}`]);
  });
  it('hands out one entry at a time and skips unread data', async () => {
    const tar = buildTar([
      { header: { name: 'a' }, data: 'A'.repeat(3000) },
      { header: { name: 'b' }, data: 'bbb' },
    ]);
    const names: string[] = [];
    for await (const e of readTar(bufferStream(tar, 100))) {
      names.push(e.header.name);
      if (e.header.name === 'b') {
        let s = '';
        for await (const c of e.body) s += c.toString();
        assert.equal(s, 'bbb');
      }
    }
    assert.deepEqual(names, ['a', 'b']);
  });
  it('gives data at hand when it lies in one chunk received, else null and the chunks as usual', async () => {
    const tar = buildTar([
      { header: { name: 'empty' }, data: '' },
      { header: { name: 'small' }, data: 'S'.repeat(700) },
      { header: { name: 'spans' }, data: 'P'.repeat(5000) },
      { header: { name: 'after' }, data: 'after' },
    ]);
    // chunks of 6 KiB: "spans" starts in the first and ends in the second, which holds "after" whole
    const got: string[] = [];
    for await (const e of readTar(bufferStream(tar, 6144))) {
      const whole = e.dataAtHand();
      if (whole) {
        got.push(`${e.header.name}: at hand ${whole.toString()}`);
        await assert.rejects(e.chunks().next(), /already being read/);
        continue;
      }
      let s = '';
      for await (const c of e.chunks()) s += c.toString();
      got.push(`${e.header.name}: read ${s}`);
    }
    assert.deepEqual(got, ['empty: at hand ', `small: at hand ${'S'.repeat(700)}`, `spans: read ${'P'.repeat(5000)}`, 'after: at hand after']);
  });
});

describe('Go JSON and tar-split records', () => {
  it('escapes as Go encoding/json (HTML-safe, control chars)', () => {
    assert.equal(goJsonString('a<b>&c.txt'), '"a\\u003cb\\u003e\\u0026c.txt"');
    assert.equal(goJsonString('tab\tnl\ncr\r\x01\x1f"\\'), '"tab\\tnl\\ncr\\r\\u0001\\u001f\\"\\\\"');
    assert.equal(goJsonString('ünï\u2028'), '"ünï\\u2028"');
  });
  it('writes keys in Go order and omits empty name/size', () => {
    assert.equal(encodeTarSplitEntry({ type: 1, name: 'new.txt', size: 3, payload: Buffer.from('YUmYEAAAAAA=', 'base64'), position: 1 }),
      '{"type":1,"name":"new.txt","size":3,"payload":"YUmYEAAAAAA=","position":1}\n');
    assert.equal(encodeTarSplitEntry({ type: 1, name: 'bin/', payload: null, position: 0 }),
      '{"type":1,"name":"bin/","payload":null,"position":0}\n');
    assert.equal(encodeTarSplitEntry({ type: 2, payload: Buffer.alloc(0), position: 3 }), '{"type":2,"payload":"","position":3}\n');
    assert.equal(encodeTarSplitEntry({ type: 1, nameRaw: Buffer.from('caf\xe9.txt', 'latin1'), size: 12, payload: Buffer.alloc(8), position: 5 }),
      '{"type":1,"name_raw":"Y2Fm6S50eHQ=","size":12,"payload":"AAAAAAAAAAA=","position":5}\n');
    const back = decodeTarSplitEntry('{"type":1,"name_raw":"Y2Fm6S50eHQ=","size":12,"payload":null,"position":5}');
    assert.equal(back.nameRaw?.toString('latin1'), 'caf\xe9.txt');
  });
  it('reads keys in any case, as Go\'s JSON decoding does', () => {
    assert.deepEqual(decodeTarSplitEntry('{"Type":1,"NAME":"a","Size":3,"payLoad":"YUmYEAAAAAA=","Position":7}'),
      decodeTarSplitEntry('{"type":1,"name":"a","size":3,"payload":"YUmYEAAAAAA=","position":7}'));
    assert.equal(decodeTarSplitEntry('{"type":2,"payload":"aGk=","position":1,"extra":true}').payload?.toString(), 'hi');
    assert.throws(() => decodeTarSplitEntry('{"TYPE":3,"position":1}'), /unknown entry type/);
  });
});

describe('paths and whiteouts', () => {
  it('cleans like Go filepath.Clean', () => {
    const cases: Array<[string, string]> = [
      ['', '.'], ['a/./b/', 'a/b'], ['/../a', '/a'], ['../a', '../a'], ['a/../../b', '../b'], ['//a//b', '/a/b'], ['./', '.'],
    ];
    for (const [i, o] of cases) assert.equal(goClean(i), o, i);
  });
  it('cleans every short path of names, dots and slashes as the rule says (clean ones come back as they are)', () => {
    // Go's rule, written out plainly, against every string of up to 7 of these characters
    const reference = (p: string): string => {
      const rooted = p.startsWith('/');
      const out: string[] = [];
      for (const part of p.split('/')) {
        if (part === '' || part === '.') continue;
        if (part !== '..') out.push(part);
        else if (out.length > 0 && out[out.length - 1] !== '..') out.pop();
        else if (!rooted) out.push('..');
      }
      const s = (rooted ? '/' : '') + out.join('/');
      return s === '' ? '.' : s;
    };
    let paths = [''];
    let checked = 0;
    for (let length = 1; length <= 7; length++) {
      paths = paths.flatMap((p) => ['a', '.', '/'].map((c) => p + c));
      for (const p of paths) {
        assert.equal(goClean(p), reference(p), JSON.stringify(p));
        checked++;
      }
    }
    assert.equal(checked, 3279);
    assert.equal(goClean('usr/lib/x'), 'usr/lib/x');
  });
  it('makes absolute names relative and refuses climbing out', () => {
    assert.equal(entryPath('/etc/passwd'), 'etc/passwd');
    assert.equal(entryPath('./a/b/'), 'a/b');
    assert.equal(entryPath('/../../x'), 'x');
    assert.equal(entryPath('./'), '');
    assert.equal(code(() => entryPath('../x')), 'PATH_ESCAPE');
    assert.equal(code(() => entryPath('a/../../x')), 'PATH_ESCAPE');
    assert.equal(code(() => entryPath('..')), 'PATH_ESCAPE');
  });
  it('classifies whiteouts', () => {
    assert.deepEqual(classifyWhiteout('a/.wh.b'), { kind: 'whiteout', target: 'b' });
    assert.deepEqual(classifyWhiteout('a/.wh..wh..opq'), { kind: 'opaque' });
    assert.deepEqual(classifyWhiteout('.wh..wh..opq'), { kind: 'opaque' });
    assert.deepEqual(classifyWhiteout('.wh..wh.aufs'), { kind: 'meta' });
    assert.deepEqual(classifyWhiteout('.wh..wh.orph/x'), { kind: 'meta' });
    assert.deepEqual(classifyWhiteout('.wh..wh.plnk/123.456'), { kind: 'plnk', name: '123.456' });
    assert.deepEqual(classifyWhiteout('a/b'), { kind: 'none' });
    assert.equal(code(() => classifyWhiteout('a/.wh...')), 'PATH_ESCAPE');
    assert.equal(code(() => classifyWhiteout('a/.wh.')), 'PATH_ESCAPE');
    assert.equal(whiteoutName('/a/b'), 'a/.wh.b');
    assert.equal(whiteoutName('/b'), '.wh.b');
    assert.equal(opaqueName('/a/'), 'a/.wh..wh..opq');
  });
});

describe('mtime comparison (changes)', () => {
  it("follows Go's sameFsTimeSpec, with 2 µs of slack for times set through Node's doubles", async () => {
    const { sameTime } = await import('../../src/archive/changes.js');
    const s = 1796143726n * 1_000_000_000n;
    assert.ok(sameTime(s + 106972023n, s + 106972023n));
    assert.ok(sameTime(s + 106972023n, s), 'one side without nanoseconds');
    assert.ok(sameTime(s + 106972023n, s + 106971000n), 'Node rounding');
    assert.ok(!sameTime(s + 106972023n, s + 106960000n));
    assert.ok(!sameTime(s + 5n, s + 1_000_000_005n), 'different seconds');
  });
});

describe('header checksum', () => {
  /** The sums byte by byte, as the format defines them (the checksum field counted as spaces). */
  function bytewise(block: Uint8Array): [number, number] {
    let unsigned = 0;
    let signed = 0;
    for (let i = 0; i < 512; i++) {
      const c = i >= 148 && i < 156 ? 0x20 : block[i]!;
      unsigned += c;
      signed += c >= 0x80 ? c - 256 : c;
    }
    return [unsigned, signed];
  }

  it('word-at-a-time (aligned blocks) and byte-at-a-time (others) agree with the definition', () => {
    const blocks = [Buffer.alloc(512), Buffer.alloc(512, 0xff), Buffer.alloc(512, 0x80), Buffer.alloc(512, 0x7f), ...Array.from({ length: 50 }, () => randomBytes(512))];
    for (const block of blocks) {
      for (const offset of [0, 1, 2, 4]) {
        const placed = Buffer.alloc(520);
        block.copy(placed, offset);
        const view = placed.subarray(offset, offset + 512);
        assert.deepEqual(computeChecksum(view), bytewise(block), `at offset ${offset}`);
      }
    }
  });
});
