/**
 * An NbdExport over a regular file (tests, and raw `dm.datadev`-style files). Holes in a sparse
 * file are reported through SEEK_DATA/SEEK_HOLE, so `nbdinfo --map` and sparse-aware copies see
 * them. TRIM punches a hole, and so does WRITE_ZEROES unless the client forbids holes, as
 * nbdkit's file plugin does; where holes cannot be punched (no koffi), TRIM is not offered and
 * zeroing writes zero buffers, except where the range is already a hole.
 *
 * The file is the export's `blockingFile`: connections served on threads (transmission-threads.ts)
 * read, write and flush it themselves and call these methods only for the other commands; those
 * served on the event loop use them for everything.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { writev as writevCb, readv as readvCb } from 'node:fs';
import { createRequire } from 'node:module';
import { strataError, isErrno } from '../errors.js';
import type { NbdExport, NbdExtent, WriteOptions, ZeroOptions } from './nbd-export.js';
import { IoQueue } from './io-queue.js';
import { dropFront } from './iovec.js';
import { discarder } from '../util/discard.js';

const require = createRequire(import.meta.url);
const fsExt = require('fs-ext') as {
  seek(fd: number, offset: number, whence: number, cb: (err: NodeJS.ErrnoException | null, pos: number) => void): void;
};
// lseek(2) whence values on Linux (<unistd.h>); fs-ext passes them straight through.
const SEEK_DATA = 3;
const SEEK_HOLE = 4;
/** Extents per blockStatus call; the client asks again for the rest. */
const MAX_EXTENTS_PER_CALL = 4096;
const ZERO_STEP = 1024 * 1024;
/**
 * preadv/pwritev calls in flight per file. Buffered writes to one file take its inode lock, so
 * more writers would only spin on it (measured: 16 threads writing 256 KiB each spent more CPU
 * spinning than copying). Reads run wider (a disk serves several at once); either way, requests
 * queued behind these are merged (IoQueue).
 */
const WRITES_IN_FLIGHT = 2;
const READS_IN_FLIGHT = 4;
/** A merged call stops at this many bytes. */
const MERGE_MAX_BYTES = 32 * 1024 * 1024;

// The callback forms of read/write: measurably cheaper per call than FileHandle's promise forms
// on the hot path (fewer allocations per request).
function pwritev(fd: number, bufs: Buffer[], position: number): Promise<number> {
  return new Promise((resolve, reject) => writevCb(fd, bufs, position, (err, n) => (err ? reject(err) : resolve(n))));
}

function preadv(fd: number, bufs: Buffer[], position: number): Promise<number> {
  return new Promise((resolve, reject) => readvCb(fd, bufs, position, (err, n) => (err ? reject(err) : resolve(n))));
}

/** All of `bufs` at `position`, however the kernel splits it. */
async function pwritevAll(fd: number, bufs: Buffer[], position: number): Promise<void> {
  let total = 0;
  for (const b of bufs) total += b.length;
  let done = 0;
  while (done < total) {
    const n = await pwritev(fd, bufs, position + done);
    done += n;
    if (done < total) bufs = dropFront(bufs, n);
  }
}

/** Fill all of `bufs` from `position`; past the file's end they read as zeroes. */
async function preadvAll(fd: number, bufs: Buffer[], position: number): Promise<void> {
  let total = 0;
  for (const b of bufs) total += b.length;
  let done = 0;
  while (done < total) {
    const n = await preadv(fd, bufs, position + done);
    if (n === 0) {
      for (const b of bufs) b.fill(0);
      return;
    }
    done += n;
    if (done < total) bufs = dropFront(bufs, n);
  }
}

function seek(fd: number, offset: number, whence: number): Promise<number | null> {
  return new Promise((resolve, reject) => {
    fsExt.seek(fd, offset, whence, (err, pos) => {
      if (err && isErrno(err, 'ENXIO')) resolve(null); // no data at or after offset
      else if (err) reject(err);
      else resolve(pos);
    });
  });
}

export interface FileExportOptions {
  name: string;
  description?: string;
  readOnly?: boolean;
  /** Export size; default the file's size. A file shorter than this reads as zeroes past EOF. */
  size?: number;
}

export class FileExport implements NbdExport {
  readonly name: string;
  readonly description?: string;
  readonly readOnly: boolean;
  readonly prefBlock = 4096;
  readonly blockingFile: { readonly fd: number };
  readonly trim?: (offset: number, length: number, options: WriteOptions) => Promise<void>;
  private readonly punchHole: ((offset: number, length: number) => Promise<void>) | null;

  private constructor(private readonly handle: FileHandle, readonly size: number, readonly path: string, options: FileExportOptions) {
    this.name = options.name;
    if (options.description !== undefined) this.description = options.description;
    this.readOnly = options.readOnly === true;
    this.blockingFile = { fd: handle.fd };
    this.punchHole = this.readOnly ? null : discarder(handle.fd, path, false);
    if (this.punchHole) this.trim = (offset, length, opts) => this.deallocate(offset, length, opts);
  }

  private async deallocate(offset: number, length: number, options: WriteOptions): Promise<void> {
    await this.punchHole!(offset, length);
    if (options.fua) await this.handle.datasync();
  }

  static async open(path: string, options: FileExportOptions): Promise<FileExport> {
    const handle = await open(path, options.readOnly ? 'r' : 'r+');
    try {
      const st = await handle.stat();
      if (!st.isFile()) throw strataError('INVALID_ARGUMENT', `${path} is not a regular file`, { path });
      return new FileExport(handle, options.size ?? st.size, path, options);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  private readonly reads = new IoQueue({ width: READS_IN_FLIGHT, maxBytes: MERGE_MAX_BYTES }, (bufs, position) => preadvAll(this.handle.fd, bufs, position));
  private readonly writes = new IoQueue({ width: WRITES_IN_FLIGHT, maxBytes: MERGE_MAX_BYTES }, (bufs, position) => pwritevAll(this.handle.fd, bufs, position));

  async read(buf: Buffer, offset: number): Promise<void> {
    await this.reads.run([buf], offset);
  }

  /** The payload as the socket delivered it; queued writes that continue one another merge. */
  async writev(bufs: readonly Buffer[], offset: number, options: WriteOptions): Promise<void> {
    await this.writes.run(bufs, offset);
    if (options.fua) await this.handle.datasync();
  }

  write(buf: Buffer, offset: number, options: WriteOptions): Promise<void> {
    return this.writev([buf], offset, options);
  }

  async flush(): Promise<void> {
    await this.handle.datasync();
  }

  async writeZeroes(offset: number, length: number, options: ZeroOptions): Promise<void> {
    if (await this.isHole(offset, length)) return;
    if (this.punchHole && !options.noHole) return this.deallocate(offset, length, options);
    if (options.fastZero) throw strataError('NOT_IMPLEMENTED', 'zeroing allocated file data is no faster than writing');
    const zeroes = Buffer.alloc(Math.min(ZERO_STEP, length));
    for (let pos = 0; pos < length; pos += zeroes.length) {
      await this.write(zeroes.subarray(0, Math.min(zeroes.length, length - pos)), offset + pos, { fua: false });
    }
    if (options.fua) await this.handle.datasync();
  }

  async blockStatus(offset: number, length: number): Promise<NbdExtent[]> {
    const end = offset + length;
    const out: NbdExtent[] = [];
    let pos = offset;
    while (pos < end && out.length < MAX_EXTENTS_PER_CALL) {
      const data = await seek(this.handle.fd, pos, SEEK_DATA);
      if (data === null || data >= end) {
        out.push({ offset: pos, length: end - pos, hole: true, zero: true });
        break;
      }
      if (data > pos) out.push({ offset: pos, length: data - pos, hole: true, zero: true });
      const hole = (await seek(this.handle.fd, data, SEEK_HOLE)) ?? end;
      const stop = Math.min(hole, end);
      out.push({ offset: data, length: stop - data, hole: false, zero: false });
      pos = stop;
    }
    return out;
  }

  async close(): Promise<void> {
    await this.handle.close();
  }

  private async isHole(offset: number, length: number): Promise<boolean> {
    const data = await seek(this.handle.fd, offset, SEEK_DATA);
    return data === null || data >= offset + length;
  }
}
