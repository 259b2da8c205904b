/**
 * An NbdExport over a regular file (tests, and raw `dm.datadev`-style files). Holes in a sparse
 * file are reported through SEEK_DATA/SEEK_HOLE, so `nbdinfo --map` and sparse-aware copies see
 * them. Node has no fallocate, so TRIM is not offered and zeroing writes zero buffers, except
 * where the range is already a hole (then there is nothing to do, which also makes FAST_ZERO
 * possible there).
 */
import { open, type FileHandle } from 'node:fs/promises';
import { read as readCb, write as writeCb } from 'node:fs';
import { createRequire } from 'node:module';
import { strataError, isErrno } from '../errors.js';
import type { NbdExport, NbdExtent, WriteOptions, ZeroOptions } from './nbd-export.js';

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

// The callback forms of read/write: measurably cheaper per call than FileHandle's promise forms
// on the hot path (fewer allocations per request).
function pread(fd: number, buf: Buffer, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => readCb(fd, buf, offset, length, position, (err, n) => (err ? reject(err) : resolve(n))));
}

function pwrite(fd: number, buf: Buffer, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => writeCb(fd, buf, offset, length, position, (err, n) => (err ? reject(err) : resolve(n))));
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

  private constructor(private readonly handle: FileHandle, readonly size: number, readonly path: string, options: FileExportOptions) {
    this.name = options.name;
    if (options.description !== undefined) this.description = options.description;
    this.readOnly = options.readOnly === true;
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

  async read(buf: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const bytesRead = await pread(this.handle.fd, buf, done, buf.length - done, offset + done);
      if (bytesRead === 0) {
        buf.fill(0, done); // past the file's end
        return;
      }
      done += bytesRead;
    }
  }

  async write(buf: Buffer, offset: number, options: WriteOptions): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const bytesWritten = await pwrite(this.handle.fd, buf, done, buf.length - done, offset + done);
      done += bytesWritten;
    }
    if (options.fua) await this.handle.datasync();
  }

  async flush(): Promise<void> {
    await this.handle.datasync();
  }

  async writeZeroes(offset: number, length: number, options: ZeroOptions): Promise<void> {
    if (await this.isHole(offset, length)) return;
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
