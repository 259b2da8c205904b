/**
 * Producing layer tars: diffTar (a layer's changes against its parent, with whiteouts),
 * tarUpperDir (a union upper dir, converting overlay whiteouts to OCI ones), tarDirectory
 * (a whole tree, docker export). All stream with backpressure; none builds the tar in memory.
 *
 * Deterministic for the same content: entries sorted, headers from encodeHeader (USTAR, PAX
 * only when needed, records sorted), mode with the file-type bits as Docker writes it, mtime in
 * whole seconds as on disk, no atime/ctime, empty uname/gname (no host user lookups),
 * whiteouts with mode 0 and mtime 0, hardlinks within one tar as link entries to the first name.
 */
import { closeSync, openSync, readSync, readlinkSync, type BigIntStats } from 'node:fs';
import type { Readable } from 'node:stream';
import { strataError } from '../errors.js';
import { changesWithStats, isAufsMeta, type UnionFormat } from './changes.js';
import { getXattrSync, listXattrsSync } from './native.js';
import { TYPE, type HeaderInput } from './tar/header.js';
import { TarWriter } from './tar/writer.js';
import { lstatBig, walk } from './tree.js';
import { opaqueName, whiteoutName } from './whiteouts.js';

const READ_CHUNK = 1 << 20;

/** Hardlink bookkeeping for one tar: dev:ino → first name written. */
type SeenInodes = Map<string, string>;

function major(rdev: bigint): number {
  const r = Number(rdev);
  return ((r >>> 8) & 0xfff) | (Math.floor(r / 2 ** 32) & ~0xfff);
}

function minor(rdev: bigint): number {
  const r = Number(rdev);
  return (r & 0xff) | ((r >>> 12) & 0xfff00);
}

/** The tar header Docker's tarAppender would write for a file (minus host name lookups). */
export function headerFor(name: string, abs: string, st: BigIntStats, seen: SeenInodes | null): HeaderInput | null {
  const h: HeaderInput = {
    name,
    mode: Number(st.mode),
    uid: Number(st.uid),
    gid: Number(st.gid),
    mtime: Number(st.mtimeNs / 1_000_000_000n),
  };
  if (st.isDirectory()) {
    h.typeflag = TYPE.dir;
    if (!h.name.endsWith('/')) h.name += '/';
  } else if (st.isFile()) {
    h.typeflag = TYPE.file;
    h.size = Number(st.size);
  } else if (st.isSymbolicLink()) {
    h.typeflag = TYPE.symlink;
    h.linkname = readlinkSync(abs);
  } else if (st.isCharacterDevice() || st.isBlockDevice()) {
    h.typeflag = st.isCharacterDevice() ? TYPE.char : TYPE.block;
    h.devmajor = major(st.rdev);
    h.devminor = minor(st.rdev);
  } else if (st.isFIFO()) {
    h.typeflag = TYPE.fifo;
  } else {
    return null; // sockets: not representable in tar (Docker skips them too)
  }
  if (seen && !st.isDirectory() && st.nlink > 1n) {
    const key = `${st.dev}:${st.ino}`;
    const first = seen.get(key);
    if (first !== undefined) {
      h.typeflag = TYPE.link;
      h.linkname = first;
      h.size = 0;
    } else {
      seen.set(key, h.name);
    }
  }
  const xattrs = listXattrsSync(abs);
  for (const k of [...xattrs.keys()]) if (k.startsWith('trusted.overlay.')) xattrs.delete(k);
  if (xattrs.size > 0) h.xattrs = xattrs;
  return h;
}

async function addFile(w: TarWriter, h: HeaderInput, abs: string): Promise<void> {
  if (h.typeflag !== TYPE.file || !h.size) {
    await w.add(h);
    return;
  }
  const size = h.size;
  const fd = openSync(abs, 'r');
  try {
    const read = (length: number): Buffer => {
      const buf = Buffer.allocUnsafe(length);
      let at = 0;
      while (at < length) {
        const n = readSync(fd, buf, at, length - at, null);
        if (n === 0) throw strataError('INVALID_ARGUMENT', `${abs} shrank while it was being archived`, { path: abs });
        at += n;
      }
      return buf;
    };
    if (size <= READ_CHUNK) {
      // most files: one read, no generator
      await w.add(h, read(size));
      return;
    }
    async function* body(): AsyncGenerator<Buffer> {
      for (let left = size; left > 0; left -= READ_CHUNK) yield read(Math.min(READ_CHUNK, left));
    }
    await w.add(h, body());
  } finally {
    closeSync(fd);
  }
}

function produce(run: (w: TarWriter) => Promise<void>): Readable {
  const w = new TarWriter();
  run(w).then(
    () => w.finish(),
    (err: Error) => w.destroy(err),
  ).catch((err: Error) => w.destroy(err));
  return w;
}

/**
 * An OCI layer tar of `layerDir`'s changes against `parentDir` (null: the whole tree), with
 * `.wh.` whiteouts for deletions. Entries are sorted by path, as moby's ExportChanges does.
 */
export function diffTar(layerDir: string, parentDir: string | null): Readable {
  return produce(async (w) => {
    const list = await changesWithStats(layerDir, parentDir);
    const seen: SeenInodes = new Map();
    for (const change of list) {
      const rel = change.path.slice(1);
      if (change.kind === 'D') {
        await w.add({ name: whiteoutName(rel), typeflag: TYPE.file, mode: 0, mtime: 0 });
        continue;
      }
      const abs = `${layerDir}/${rel}`;
      const st = change.st ?? lstatBig(abs);
      if (!st) continue; // vanished: moby logs and goes on
      const h = headerFor(rel, abs, st, seen);
      if (h) await addFile(w, h, abs);
    }
  });
}

/**
 * A union upper dir as an OCI layer tar (overlay2's and aufs' native Diff): overlay whiteouts
 * (0/0 char devices) become `.wh.<name>` files mode 0600, `trusted.overlay.opaque=y` becomes a
 * `.wh..wh..opq` entry after its directory; aufs housekeeping `.wh..wh.*` (but `.wh..wh..opq`)
 * is left out. Walk order: names sorted, each directory before its contents.
 */
export function tarUpperDir(upperDir: string, format: UnionFormat): Readable {
  return produce(async (w) => {
    const seen: SeenInodes = new Map();
    if (format === 'overlay' && isOverlayOpaque(upperDir)) {
      const st = lstatBig(upperDir)!;
      await w.add(opaqueHeader('', st));
    }
    const skip = format === 'aufs' ? (item: { path: string }) => isAufsMeta(item.path.slice(item.path.lastIndexOf('/') + 1)) : undefined;
    for (const { path, abs, st } of walk(upperDir, skip)) {
      const rel = path.slice(1);
      if (format === 'overlay' && st.isCharacterDevice() && st.rdev === 0n) {
        await w.add({
          name: whiteoutName(rel), typeflag: TYPE.file, mode: 0o600,
          uid: Number(st.uid), gid: Number(st.gid), mtime: Number(st.mtimeNs / 1_000_000_000n),
        });
        continue;
      }
      const h = headerFor(rel, abs, st, seen);
      if (!h) continue;
      await addFile(w, h, abs);
      if (format === 'overlay' && st.isDirectory() && isOverlayOpaque(abs)) await w.add(opaqueHeader(rel, st));
    }
  });
}

function isOverlayOpaque(abs: string): boolean {
  const v = getXattrSync(abs, 'trusted.overlay.opaque');
  return v !== null && v.length === 1 && v[0] === 0x79;
}

function opaqueHeader(rel: string, dirSt: BigIntStats): HeaderInput {
  return {
    name: opaqueName(rel), typeflag: TYPE.file, mode: Number(dirSt.mode) & 0o777,
    uid: Number(dirSt.uid), gid: Number(dirSt.gid), mtime: Number(dirSt.mtimeNs / 1_000_000_000n),
  };
}

/** A whole tree as a tar (docker export): walk order, the root itself left out. */
export function tarDirectory(dir: string): Readable {
  return produce(async (w) => {
    const seen: SeenInodes = new Map();
    for (const { path, abs, st } of walk(dir)) {
      const h = headerFor(path.slice(1), abs, st, seen);
      if (h) await addFile(w, h, abs);
    }
  });
}

