// applyLayerTar, changes, diffTar, tarUpperDir, tarDirectory on real trees: whiteout modes,
// metadata (modes incl. setuid/sticky, owners, mtimes, xattrs, devices, fifos, long names),
// round trips (apply then diff gives the same content) and GNU tar interop both ways.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  chmodSync, chownSync, linkSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, symlinkSync,
  utimesSync, writeFileSync, lutimesSync, rmSync, existsSync,
} from 'node:fs';
import { getAttributeSync } from '@napi-rs/xattr';
import { createReadStream } from 'node:fs';
import { PassThrough, Readable } from 'node:stream';
import {
  TarSplitRecorder, TarWriter, applyLayerTar, assembleTar, buildTar, changes, changesFromUpper, diffTar, readTar, tarDirectory, tarUpperDir, TYPE,
} from '../../src/archive/index.js';
import { isStrataError } from '../../src/errors.js';
import { directorySize } from '../../src/drivers/overlay2/dir-size.js';
import { IS_ROOT, bufferStream, collect, hasTrustedXattrs, run, sha256, sink, snapshot, tempDir } from './helpers.js';

let t: { dir: string; cleanup: () => void };
before(() => { t = tempDir(); });
after(() => t.cleanup());

function fresh(name: string): string {
  return mkdtempSync(`${t.dir}/${name}-`);
}

/** A tree with every kind of entry and attribute we support. */
function richTree(root: string): void {
  mkdirSync(`${root}/etc/ssl/certs`, { recursive: true });
  mkdirSync(`${root}/tmp`);
  chmodSync(`${root}/tmp`, 0o1777);
  writeFileSync(`${root}/etc/passwd`, 'root:x:0:0::/root:/bin/sh\n');
  writeFileSync(`${root}/etc/ssl/certs/ca.pem`, Buffer.alloc(70_000, 0x41));
  writeFileSync(`${root}/empty`, '');
  writeFileSync(`${root}/suid`, '#!/bin/sh\n');
  chmodSync(`${root}/suid`, 0o4755);
  mkdirSync(`${root}/sgid`);
  chmodSync(`${root}/sgid`, 0o2775);
  symlinkSync('/etc/passwd', `${root}/abs-link`);
  symlinkSync('etc/passwd', `${root}/rel-link`);
  linkSync(`${root}/etc/passwd`, `${root}/etc/passwd.hard`);
  const long = `${root}/${'n'.repeat(120)}`;
  mkdirSync(long);
  writeFileSync(`${long}/${'m'.repeat(150)}`, 'long\n');
  writeFileSync(`${root}/ünï.txt`, 'utf8\n');
  run('setfattr', ['-n', 'user.comment', '-v', 'xattr-value', `${root}/etc/passwd`]);
  run('mknod', [`${root}/fifo`, 'p']);
  if (IS_ROOT) {
    run('mknod', [`${root}/null`, 'c', '1', '3']);
    run('mknod', [`${root}/loop9`, 'b', '7', '9']);
    // a minor past 8 bits (the kernel's largest, 20): dev_t's split encoding
    run('mknod', [`${root}/nvme`, 'b', '259', '1048575']);
    chownSync(`${root}/etc/ssl`, 1000, 1001);
    chownSync(`${root}/empty`, 65534, 65534);
    if (hasTrustedXattrs(root)) run('setfattr', ['-n', 'trusted.strata', '-v', 'secret', `${root}/empty`]);
  }
  for (const p of ['etc/passwd', 'etc/ssl/certs/ca.pem', 'empty', 'suid', 'fifo', `${'n'.repeat(120)}/${'m'.repeat(150)}`]) {
    utimesSync(`${root}/${p}`, 1600000000, 1600000000);
  }
  lutimesSync(`${root}/abs-link`, 1500000000, 1500000000);
  for (const d of ['etc/ssl/certs', 'etc/ssl', 'etc', 'tmp', 'sgid', 'n'.repeat(120)]) utimesSync(`${root}/${d}`, 1550000000, 1550000000);
}

async function apply(target: string, tar: Buffer, whiteouts: 'apply' | 'overlay' | 'aufs' = 'apply', lowerDirs?: string[]) {
  return applyLayerTar(target, bufferStream(tar, 4096), { whiteouts, ...(lowerDirs ? { lowerDirs } : {}) });
}

describe('apply metadata matches GNU tar extraction', () => {
  it('a rich tree tarred by GNU tar (posix, xattrs) extracts identically with tar -xpf and applyLayerTar', async () => {
    const src = fresh('rich');
    richTree(src);
    const tar = run('tar', ['--format=posix', '--xattrs', '--xattrs-include=*', '--numeric-owner', '-cf', '-', '-C', src, '.']);
    const viaTar = fresh('via-tar');
    run('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-xpf', '-', '-C', viaTar], { input: tar });
    const viaUs = fresh('via-us');
    const { size } = await apply(viaUs, tar);
    assert.ok(size > 70_000);
    assert.deepEqual(snapshot(viaUs), snapshot(viaTar));
    assert.deepEqual(snapshot(viaUs), snapshot(src));
    assert.equal(lstatSync(`${viaUs}/suid`).mode & 0o7777, 0o4755);
    assert.equal(lstatSync(`${viaUs}/tmp`).mode & 0o7777, 0o1777);
    assert.equal(getAttributeSync(`${viaUs}/etc/passwd`, 'user.comment')?.toString(), 'xattr-value');
    assert.equal(lstatSync(`${viaUs}/etc`).mtimeMs, 1550000000 * 1000, 'directory mtimes set after their contents');
  });

  it('a layer of many small files (written in batches on the file writer thread) extracts identically with tar -xpf', async () => {
    const src = fresh('many');
    for (let i = 0; i < 900; i++) {
      const d = `${src}/d${i % 13}/e${i % 5}`;
      mkdirSync(d, { recursive: true });
      const p = `${d}/f${i}`;
      writeFileSync(p, Buffer.alloc(i % 7 === 0 ? 0 : (i * 37) % 5000 + (i % 50 === 0 ? 300_000 : 0), i % 251));
      chmodSync(p, [0o644, 0o600, 0o755, 0o4755, 0o2750, 0o444][i % 6]!);
      if (IS_ROOT) chownSync(p, 1000 + (i % 4), 2000 + (i % 3));
      if (i % 97 === 0) run('setfattr', ['-n', 'user.note', '-v', `n${i}`, p]);
      if (i % 101 === 0) linkSync(p, `${d}/hard${i}`);
      if (i % 103 === 0) symlinkSync(`f${i}`, `${d}/sym${i}`);
      utimesSync(p, 1_600_000_000 + i, 1_600_000_000 + i);
    }
    for (const d of readdirSync(src)) utimesSync(`${src}/${d}`, 1_550_000_000, 1_550_000_000);
    const tar = run('tar', ['--format=posix', '--xattrs', '--xattrs-include=*', '--numeric-owner', '-cf', '-', '-C', src, '.']);
    const viaTar = fresh('many-tar');
    run('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-xpf', '-', '-C', viaTar], { input: tar });
    const viaUs = fresh('many-us');
    await apply(viaUs, tar);
    assert.deepEqual(snapshot(viaUs, { dirMtimes: false }), snapshot(viaTar, { dirMtimes: false }));
    assert.deepEqual(snapshot(viaUs, { dirMtimes: false }), snapshot(src, { dirMtimes: false }));
  });

  it('a file the file writer thread cannot create fails the apply with a clear error', async () => {
    const w = new TarWriter();
    const parts: Buffer[] = [];
    const done = (async () => { for await (const c of w) parts.push(c as Buffer); })();
    await w.add({ name: 'd/', typeflag: TYPE.dir, mode: 0o755 });
    for (let i = 0; i < 600; i++) await w.add({ name: `d/f${i}` }, Buffer.from(`file ${i}\n`));
    await w.add({ name: `d/${'x'.repeat(300)}` }, Buffer.from('too long\n')); // ENAMETOOLONG, in a batch
    for (let i = 600; i < 700; i++) await w.add({ name: `d/f${i}` }, Buffer.from(`file ${i}\n`));
    await w.finish();
    await done;
    const target = fresh('writer-fails');
    await assert.rejects(apply(target, Buffer.concat(parts)), (err: unknown) => {
      assert.ok(isStrataError(err, 'INVALID_ARCHIVE'), String(err));
      assert.match((err as Error).message, new RegExp(`cannot apply d/${'x'.repeat(300)}: .*name too long`));
      return true;
    });
  });

  it('diffTar(tree, null) is deterministic, GNU tar extracts it, and applying it rebuilds the tree', async () => {
    const src = fresh('rich2');
    richTree(src);
    const a = await collect(diffTar(src, null));
    const b = await collect(diffTar(src, null));
    assert.equal(sha256(a), sha256(b), 'same content, same bytes');
    const viaUs = fresh('rt-us');
    await apply(viaUs, a);
    assert.deepEqual(snapshot(viaUs), snapshot(src));
    const viaTar = fresh('rt-tar');
    run('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-xpf', '-', '-C', viaTar], { input: a });
    assert.deepEqual(snapshot(viaTar), snapshot(src));
    // hardlinks stay hardlinks, entries come sorted by path
    const names: string[] = [];
    let hard = '';
    for await (const e of readTar(bufferStream(a))) {
      names.push(e.header.name);
      if (e.header.typeflag === TYPE.link) hard = `${e.header.name} -> ${e.header.linkname}`;
    }
    assert.equal(hard, 'etc/passwd.hard -> etc/passwd');
    const sorted = [...names].sort((x, y) => Buffer.compare(Buffer.from(`/${x.replace(/\/$/, '')}`), Buffer.from(`/${y.replace(/\/$/, '')}`)));
    assert.deepEqual(names, sorted);
  });

  it('apply → tar-split → assembleTar gives the same sha256 for the rich tree (devices, fifo, xattrs, setuid, hardlinks)', async () => {
    const src = fresh('rich-ts');
    richTree(src);
    const tar = run('tar', ['--format=posix', '--xattrs', '--xattrs-include=*', '--numeric-owner', '-cf', '-', '-C', src, '.']);
    const target = fresh('rich-ts-apply');
    const out = sink();
    const rec = new TarSplitRecorder(out.stream);
    await applyLayerTar(target, bufferStream(tar, 3000).pipe(rec), { whiteouts: 'apply' });
    const r = await rec.finished();
    assert.equal(r.diffId, sha256(tar));
    const rebuilt = new PassThrough();
    const done = collect(rebuilt);
    await assembleTar(Readable.from([out.data()]), async (name) => createReadStream(`${target}/${name}`), rebuilt);
    rebuilt.end();
    assert.equal(sha256(await done), sha256(tar));
  });

  it('tarDirectory (export) round-trips through GNU tar and applyLayerTar', async () => {
    const src = fresh('exp');
    richTree(src);
    const tar = await collect(tarDirectory(src));
    const viaTar = fresh('exp-tar');
    run('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '-xpf', '-', '-C', viaTar], { input: tar });
    assert.deepEqual(snapshot(viaTar), snapshot(src));
    const viaUs = fresh('exp-us');
    await apply(viaUs, tar);
    assert.deepEqual(snapshot(viaUs), snapshot(src));
  });
});

describe('whiteouts', () => {
  function lower(): string {
    const d = fresh('lower');
    mkdirSync(`${d}/dir/sub`, { recursive: true });
    writeFileSync(`${d}/dir/old`, 'old');
    writeFileSync(`${d}/dir/sub/older`, 'older');
    writeFileSync(`${d}/gone`, 'bye');
    mkdirSync(`${d}/gonedir/x`, { recursive: true });
    writeFileSync(`${d}/keep`, 'keep');
    return d;
  }

  it("'apply': .wh.x deletes x (file or tree); an opaque dir keeps only this layer's entries, marker first or last", async () => {
    for (const opaqueFirst of [true, false]) {
      const target = lower();
      const entries = [
        { header: { name: 'dir/', typeflag: TYPE.dir, mode: 0o40755 } },
        { header: { name: 'dir/new' }, data: 'new' },
        { header: { name: 'dir/sub/', typeflag: TYPE.dir, mode: 0o40755 } },
      ];
      const marker = { header: { name: 'dir/.wh..wh..opq' } };
      const tar = buildTar([
        ...(opaqueFirst ? [entries[0]!, marker, ...entries.slice(1)] : [...entries, marker]),
        { header: { name: '.wh.gone' } },
        { header: { name: '.wh.gonedir' } },
        { header: { name: '.wh..wh.aufs' } },
        { header: { name: '.wh..wh.orph/', typeflag: TYPE.dir } },
      ]);
      await apply(target, tar);
      assert.deepEqual(readdirSync(target).sort(), ['dir', 'keep'], `opaque first: ${opaqueFirst}`);
      assert.deepEqual(readdirSync(`${target}/dir`).sort(), ['new', 'sub']);
      assert.deepEqual(readdirSync(`${target}/dir/sub`), [], 'opaque reaches down the tree');
    }
  });

  it("'overlay': .wh.x becomes a 0/0 char device owned as the header says; opaque becomes trusted.overlay.opaque=y", async (ctx) => {
    if (!IS_ROOT || !hasTrustedXattrs(t.dir)) return ctx.skip('needs root (mknod, trusted.* xattrs)');
    const upper = fresh('upper');
    const tar = buildTar([
      { header: { name: 'dir/', typeflag: TYPE.dir, mode: 0o40750 } },
      { header: { name: 'dir/.wh..wh..opq' } },
      { header: { name: 'dir/.wh.gone', uid: 1234, gid: 5678, mtime: 1234567890 } },
      { header: { name: 'dir/kept' }, data: 'k' },
    ]);
    await apply(upper, tar, 'overlay');
    const st = lstatSync(`${upper}/dir/gone`);
    assert.ok(st.isCharacterDevice());
    assert.equal(st.rdev, 0);
    assert.equal(st.uid, 1234);
    assert.equal(st.gid, 5678);
    assert.equal(st.mtimeMs, 1234567890000, 'the whiteout keeps the header mtime, so a re-diff is identical');
    assert.equal(getAttributeSync(`${upper}/dir`, 'trusted.overlay.opaque')?.toString(), 'y');
    assert.ok(!existsSync(`${upper}/dir/.wh.gone`));
    // and back: tarUpperDir converts to OCI whiteouts, changesFromUpper sees D and A
    const back = await collect(tarUpperDir(upper, 'overlay'));
    const got: string[] = [];
    for await (const e of readTar(bufferStream(back))) got.push(`${e.header.name} ${(e.header.mode & 0o7777).toString(8)} ${e.header.uid}`);
    assert.deepEqual(got, ['dir/ 750 0', 'dir/.wh..wh..opq 750 0', 'dir/.wh.gone 600 1234', 'dir/kept 644 0']);
    const lowerDir = fresh('ovl-lower');
    mkdirSync(`${lowerDir}/dir`);
    writeFileSync(`${lowerDir}/dir/gone`, 'x');
    assert.deepEqual(await changesFromUpper(upper, 'overlay', { lowerDirs: [lowerDir] }), [
      { path: '/dir', kind: 'D' }, { path: '/dir/gone', kind: 'D' }, { path: '/dir/kept', kind: 'A' },
    ]);
  });

  it("'aufs': whiteouts are written as files; housekeeping skipped; plnk hardlinks resolved", async () => {
    const upper = fresh('aufs');
    const tar = buildTar([
      { header: { name: '.wh..wh.plnk/', typeflag: TYPE.dir } },
      { header: { name: '.wh..wh.plnk/1234.5678', mode: 0o100640, mtime: 1600000000 }, data: 'linked content' },
      { header: { name: 'd/', typeflag: TYPE.dir } },
      { header: { name: 'd/.wh.gone' } },
      { header: { name: 'd/.wh..wh..opq' } },
      { header: { name: 'd/hl', typeflag: TYPE.link, linkname: '.wh..wh.plnk/1234.5678' } },
    ]);
    await apply(upper, tar, 'aufs');
    assert.deepEqual(readdirSync(upper).sort(), ['d']);
    assert.deepEqual(readdirSync(`${upper}/d`).sort(), ['.wh..wh..opq', '.wh.gone', 'hl']);
    assert.equal(readFileSync(`${upper}/d/hl`, 'utf8'), 'linked content');
    assert.equal(lstatSync(`${upper}/d/hl`).mode & 0o777, 0o640);
    const tarred: string[] = [];
    for await (const e of readTar(tarUpperDir(upper, 'aufs'))) tarred.push(e.header.name);
    assert.deepEqual(tarred, ['d/', 'd/.wh..wh..opq', 'd/.wh.gone', 'd/hl']);
    assert.deepEqual(await changesFromUpper(upper, 'aufs'), [
      { path: '/d', kind: 'D' }, { path: '/d/gone', kind: 'D' }, { path: '/d/hl', kind: 'A' },
    ]);
  });

  it("'overlay' with lowerDirs: a hardlink to a file only in a lower layer is copied up", async () => {
    const lowerDir = fresh('hl-lower');
    mkdirSync(`${lowerDir}/bin`);
    writeFileSync(`${lowerDir}/bin/busybox`, 'BB');
    const upper = fresh('hl-upper');
    await apply(upper, buildTar([{ header: { name: 'bin/sh', typeflag: TYPE.link, linkname: 'bin/busybox', mode: 0o100755 } }]), 'overlay', [lowerDir]);
    assert.equal(readFileSync(`${upper}/bin/sh`, 'utf8'), 'BB');
  });
});

describe('pipelined small files', () => {
  it('gives the same tree one at a time and eight at a time', async () => {
    const src = fresh('pipe-src');
    richTree(src);
    for (let i = 0; i < 300; i++) writeFileSync(`${src}/etc/f${i}`, `file ${i}\n`.repeat(i));
    const tar = run('tar', ['--format=posix', '--xattrs', '--xattrs-include=*', '-cf', '-', '-C', src, '.']);
    const one = fresh('pipe-1');
    const eight = fresh('pipe-8');
    await applyLayerTar(one, bufferStream(tar), { whiteouts: 'apply', concurrency: 1 });
    await applyLayerTar(eight, bufferStream(tar), { whiteouts: 'apply', concurrency: 8 });
    assert.deepEqual(snapshot(eight), snapshot(one));
    assert.deepEqual(snapshot(eight), snapshot(src));
  });

  it("a file re-added after its overlay whiteout in the same layer replaces the 0/0 device", async (ctx) => {
    if (!IS_ROOT) return ctx.skip('needs root (mknod)');
    const upper = fresh('pipe-ovl');
    await applyLayerTar(upper, bufferStream(buildTar([
      { header: { name: '.wh.x' } }, { header: { name: 'x' }, data: 'back' },
    ])), { whiteouts: 'overlay' });
    assert.equal(readFileSync(`${upper}/x`, 'utf8'), 'back');
  });
});

describe('entries over existing paths', () => {
  it('dir over dir merges attributes; other combinations replace', async () => {
    const target = fresh('over');
    mkdirSync(`${target}/d`);
    writeFileSync(`${target}/d/child`, 'c');
    mkdirSync(`${target}/was-dir/inner`, { recursive: true });
    writeFileSync(`${target}/was-file`, 'f');
    symlinkSync('/nowhere', `${target}/was-link`);
    await apply(target, buildTar([
      { header: { name: 'd/', typeflag: TYPE.dir, mode: 0o40700, mtime: 1234567890 } },
      { header: { name: 'was-dir' }, data: 'now a file' },
      { header: { name: 'was-file/', typeflag: TYPE.dir, mode: 0o40755 } },
      { header: { name: 'was-link/', typeflag: TYPE.dir, mode: 0o40755 } },
      { header: { name: 'was-link/x' }, data: 'inside a real dir' },
    ]));
    assert.equal(readFileSync(`${target}/d/child`, 'utf8'), 'c');
    assert.equal(lstatSync(`${target}/d`).mode & 0o777, 0o700);
    assert.equal(lstatSync(`${target}/d`).mtimeMs, 1234567890000);
    assert.equal(readFileSync(`${target}/was-dir`, 'utf8'), 'now a file');
    assert.ok(lstatSync(`${target}/was-file`).isDirectory());
    assert.ok(lstatSync(`${target}/was-link`).isDirectory());
    assert.equal(readFileSync(`${target}/was-link/x`, 'utf8'), 'inside a real dir');
  });

  it('writes through a symlink to a directory inside the root stay inside it (chroot semantics)', async () => {
    const target = fresh('through');
    mkdirSync(`${target}/usr/lib`, { recursive: true });
    symlinkSync('usr/lib', `${target}/lib`);
    symlinkSync('/usr', `${target}/abs-usr`);
    await apply(target, buildTar([
      { header: { name: 'lib/libc.so' }, data: 'libc' },
      { header: { name: 'abs-usr/lib/libm.so' }, data: 'libm' },
    ]));
    assert.equal(readFileSync(`${target}/usr/lib/libc.so`, 'utf8'), 'libc');
    assert.equal(readFileSync(`${target}/usr/lib/libm.so`, 'utf8'), 'libm');
  });
});

describe('changes and diffTar against a parent', () => {
  it('lists A/C/D like docker diff and diffTar applied on the parent gives the layer', async () => {
    const parent = fresh('parent');
    richTree(parent);
    const layer = fresh('layer');
    rmSync(layer, { recursive: true });
    run('cp', ['-a', parent, layer]);
    writeFileSync(`${layer}/etc/passwd`, 'changed\n'); // C (and its hardlink twin)
    writeFileSync(`${layer}/etc/ssl/certs/new.pem`, 'new'); // A, parents C
    rmSync(`${layer}/rel-link`); // D
    rmSync(`${layer}/${'n'.repeat(120)}`, { recursive: true }); // D of a tree
    chmodSync(`${layer}/empty`, 0o600); // C (mode)
    run('setfattr', ['-n', 'user.extra', '-v', '1', `${layer}/suid`]); // C (xattr)
    const list = await changes(layer, parent);
    assert.deepEqual(list, [
      { path: '/empty', kind: 'C' },
      { path: '/etc', kind: 'C' },
      { path: '/etc/passwd', kind: 'C' },
      { path: '/etc/passwd.hard', kind: 'C' },
      { path: '/etc/ssl', kind: 'C' },
      { path: '/etc/ssl/certs', kind: 'C' },
      { path: '/etc/ssl/certs/new.pem', kind: 'A' },
      { path: `/${'n'.repeat(120)}`, kind: 'D' },
      { path: '/rel-link', kind: 'D' },
      { path: '/suid', kind: 'C' },
    ]);
    const tar = await collect(diffTar(layer, parent));
    assert.equal(sha256(tar), sha256(await collect(diffTar(layer, parent))), 'deterministic');
    const rebuilt = fresh('rebuilt');
    rmSync(rebuilt, { recursive: true });
    run('cp', ['-a', parent, rebuilt]);
    await apply(rebuilt, tar);
    assert.deepEqual(snapshot(rebuilt), snapshot(layer));
    assert.deepEqual(await changes(rebuilt, layer), []);
  });
});

describe("applyLayerTar's diskSize: a walk's size (moby directory.Size) without the walk", () => {
  it('equals a walk of the target for files, hardlinks, symlinks (multibyte targets), fifos, devices and many small files', async () => {
    const src = fresh('size-src');
    richTree(src);
    symlinkSync('ünï.txt', `${src}/utf8-link`);
    mkdirSync(`${src}/many`);
    for (let i = 0; i < 600; i++) writeFileSync(`${src}/many/f${i}`, 'x'.repeat(i)); // past the file writer's start
    linkSync(`${src}/many/f599`, `${src}/many/f599.hard`);
    const tar = run('tar', ['--format=posix', '--numeric-owner', '-cf', '-', '-C', src, '.']);
    const target = fresh('size-target');
    const { diskSize } = await apply(target, tar);
    assert.equal(diskSize, await directorySize(target));
    assert.ok(diskSize! > 70_000 + 600 * 299);
  });

  it('equals a walk of an overlay upper dir with whiteouts, an opaque dir and a hardlink copied up from a lower layer', async (ctx) => {
    if (!IS_ROOT || !hasTrustedXattrs(t.dir)) return ctx.skip('needs root (mknod, trusted.* xattrs)');
    const lower = fresh('size-lower');
    writeFileSync(`${lower}/big`, Buffer.alloc(12_345, 1));
    const upper = fresh('size-upper');
    const tar = buildTar([
      { header: { name: 'dir/', typeflag: TYPE.dir, mode: 0o40755 } },
      { header: { name: 'dir/.wh..wh..opq' } },
      { header: { name: 'dir/.wh.gone' } },
      { header: { name: 'dir/kept' }, data: 'kept' },
      { header: { name: 'dir/link-to-lower', typeflag: TYPE.link, linkname: 'big' } },
      { header: { name: 'dir/sym', typeflag: TYPE.symlink, linkname: '../somewhere/else' } },
    ]);
    const { diskSize } = await apply(upper, tar, 'overlay', [lower]);
    assert.equal(diskSize, 4 + 12_345 + '../somewhere/else'.length);
    assert.equal(diskSize, await directorySize(upper));
  });

  it('is left unknown where a walk is needed: a target not empty, or an entry replaced within the layer', async () => {
    const used = fresh('size-used');
    writeFileSync(`${used}/already`, 'here');
    const one = buildTar([{ header: { name: 'a' }, data: 'aaaa' }]);
    assert.equal((await apply(used, one)).diskSize, undefined);
    const replaced = fresh('size-replaced');
    const twice = buildTar([{ header: { name: 'a' }, data: 'aaaa' }, { header: { name: 'a' }, data: 'bb' }]);
    const result = await applyLayerTar(replaced, bufferStream(twice, 4096), { whiteouts: 'apply', allowDuplicates: true });
    assert.equal(result.diskSize, undefined);
    assert.equal(await directorySize(replaced), 2);
  });
});
