import { open, type FileHandle } from 'node:fs/promises';
import { strataError } from '../errors.js';
import { discarder } from '../util/discard.js';

/**
 * The one I/O seam under the pool: byte-addressed storage with an explicit flush. The pool keeps
 * its metadata on one BlockDevice (read and written in 4 KiB blocks) and its data on another.
 *
 * Contract: `read` fills the whole buffer (zeros past the end of the device, as a sparse file
 * reads); `write` is volatile until `flush` returns, like a disk with a write cache.
 */
export interface BlockDevice {
  /** The open file behind it, for callers that do their own I/O on it (NBD threads). */
  readonly fd?: number;
  /** Current size in bytes. */
  size(): Promise<number>;
  read(buf: Buffer, offset: number): Promise<void>;
  write(buf: Buffer, offset: number): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
  /**
   * Give a byte range back to the storage underneath (it then reads as zeros): a hole punched in
   * a file, BLKDISCARD on a block device. Absent where the storage cannot.
   */
  discard?(offset: number, length: number): Promise<void>;
}

/** A file (sparse or preallocated) or a block device node, through one file descriptor. */
export class FileBlockDevice implements BlockDevice {
  readonly discard?: (offset: number, length: number) => Promise<void>;

  private constructor(private readonly handle: FileHandle, readonly path: string, blockDevice: boolean) {
    const discard = discarder(handle.fd, path, blockDevice);
    if (discard) this.discard = discard;
  }

  get fd(): number {
    return this.handle.fd;
  }

  static async open(path: string, options: { readOnly?: boolean } = {}): Promise<FileBlockDevice> {
    const handle = await open(path, options.readOnly ? 'r' : 'r+');
    try {
      return new FileBlockDevice(handle, path, (await handle.stat()).isBlockDevice());
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  async size(): Promise<number> {
    const st = await this.handle.stat();
    return st.isBlockDevice() ? this.probeSize() : st.size;
  }

  /**
   * A block device's stat size is 0 and Node has no BLKGETSIZE64 ioctl: find the end by binary
   * search over 512-byte sectors (a read at or past the end returns 0 bytes). About 50 reads.
   */
  private async probeSize(): Promise<number> {
    const probe = Buffer.alloc(1);
    const readable = async (sector: number): Promise<boolean> =>
      (await this.handle.read(probe, 0, 1, sector * 512)).bytesRead === 1;
    let lo = 0; // sectors known readable: [0, lo)
    let hi = 1;
    while (await readable(hi - 1)) {
      lo = hi;
      hi *= 2;
    }
    // sector lo-1 is readable (or lo = 0), sector hi-1 is not
    while (hi - lo > 1) {
      const mid = Math.floor((lo + hi) / 2);
      if (await readable(mid - 1)) lo = mid;
      else hi = mid;
    }
    return lo * 512;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const { bytesRead } = await this.handle.read(buf, done, buf.length - done, offset + done);
      if (bytesRead === 0) {
        buf.fill(0, done);
        return;
      }
      done += bytesRead;
    }
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const { bytesWritten } = await this.handle.write(buf, done, buf.length - done, offset + done);
      done += bytesWritten;
    }
  }

  async flush(): Promise<void> {
    await this.handle.datasync();
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

/** Thrown by MemoryBlockDevice once its crash point is reached. */
export class SimulatedCrash extends Error {
  override readonly name = 'SimulatedCrash';
}

/**
 * Shared by the devices of one simulated machine: counts writes across all of them and "crashes"
 * (every later write and flush throws SimulatedCrash, nothing more reaches the media) after write
 * number `crashAfterWrites`.
 */
export class CrashController {
  writes = 0;
  crashed = false;
  constructor(public crashAfterWrites = Infinity) {}

  beforeWrite(): void {
    if (this.crashed || this.writes >= this.crashAfterWrites) {
      this.crashed = true;
      throw new SimulatedCrash(`simulated crash after ${this.writes} writes`);
    }
    this.writes++;
  }
}

const PAGE = 4096;

/**
 * In-memory sparse device for tests. Faults: a CrashController (crash after write K), and
 * `failReads`/`failWrites` (byte offsets of 4 KiB pages that return EIO).
 * With `loseUnflushed`, a crash also drops writes made since the last flush (power-loss model);
 * otherwise it keeps them (process-kill model: the page cache survives).
 */
export class MemoryBlockDevice implements BlockDevice {
  private pages = new Map<number, Buffer>();
  private unflushed = new Map<number, Buffer | undefined>();
  readonly failReads = new Set<number>();
  readonly failWrites = new Set<number>();

  constructor(
    private bytes: number,
    readonly crash: CrashController = new CrashController(),
    readonly loseUnflushed = false,
  ) {}

  async size(): Promise<number> {
    return this.bytes;
  }

  /** Grow or shrink (a data device the pool can then `resize()` onto). */
  resize(bytes: number): void {
    this.bytes = bytes;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    for (let done = 0; done < buf.length;) {
      const pos = offset + done;
      const page = Math.floor(pos / PAGE);
      if (this.failReads.has(page)) throw Object.assign(new Error('EIO (injected)'), { code: 'EIO' });
      const within = pos - page * PAGE;
      const n = Math.min(PAGE - within, buf.length - done);
      const data = this.pages.get(page);
      if (data) data.copy(buf, done, within, within + n);
      else buf.fill(0, done, done + n);
      done += n;
    }
  }

  async write(buf: Buffer, offset: number): Promise<void> {
    this.crash.beforeWrite();
    if (offset + buf.length > this.bytes) {
      throw strataError('OUT_OF_RANGE', `write past the end of a ${this.bytes}-byte memory device`, { offset });
    }
    for (let done = 0; done < buf.length;) {
      const pos = offset + done;
      const page = Math.floor(pos / PAGE);
      if (this.failWrites.has(page)) throw Object.assign(new Error('EIO (injected)'), { code: 'EIO' });
      const within = pos - page * PAGE;
      const n = Math.min(PAGE - within, buf.length - done);
      let data = this.pages.get(page);
      if (this.loseUnflushed && !this.unflushed.has(page)) this.unflushed.set(page, data ? Buffer.from(data) : undefined);
      if (!data) {
        data = this.newPage();
        this.pages.set(page, data);
      }
      buf.copy(data, within, done, done + n);
      done += n;
    }
  }

  private slab = Buffer.alloc(0);
  private slabUsed = 0;

  /** Zeroed pages carved from 1 MiB slabs: one allocation per 256 pages keeps big tests fast. */
  private newPage(): Buffer {
    if (this.slabUsed === this.slab.length) {
      this.slab = Buffer.alloc(256 * PAGE);
      this.slabUsed = 0;
    }
    this.slabUsed += PAGE;
    return this.slab.subarray(this.slabUsed - PAGE, this.slabUsed);
  }

  async flush(): Promise<void> {
    if (this.crash.crashed) throw new SimulatedCrash('flush after crash');
    this.unflushed.clear();
  }

  /** Drop whole pages in the range (a partial page is zeroed), as a punched hole reads. */
  async discard(offset: number, length: number): Promise<void> {
    this.crash.beforeWrite();
    for (let pos = offset; pos < offset + length;) {
      const page = Math.floor(pos / PAGE);
      const within = pos - page * PAGE;
      const n = Math.min(PAGE - within, offset + length - pos);
      const data = this.pages.get(page);
      if (data && this.loseUnflushed && !this.unflushed.has(page)) this.unflushed.set(page, Buffer.from(data));
      if (data && n === PAGE) this.pages.delete(page);
      else data?.fill(0, within, within + n);
      pos += n;
    }
  }

  /** 4 KiB pages that hold data (a discarded page holds none). */
  get pagesHeld(): number {
    return this.pages.size;
  }

  async close(): Promise<void> {}

  /** The device as it would be found after the crash (unflushed writes dropped if so configured). */
  afterCrash(): MemoryBlockDevice {
    const copy = new MemoryBlockDevice(this.bytes);
    for (const [page, data] of this.pages) copy.pages.set(page, Buffer.from(data));
    if (this.loseUnflushed) {
      for (const [page, before] of this.unflushed) {
        if (before) copy.pages.set(page, Buffer.from(before));
        else copy.pages.delete(page);
      }
    }
    return copy;
  }
}
