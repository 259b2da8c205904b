// An in-memory sparse export for protocol tests: 64 KiB blocks provisioned on first write,
// released by TRIM and by WRITE_ZEROES without NO_HOLE, like a tiny thin device.
import { strataError } from '../../src/errors.js';
import type { NbdExport, NbdExtent, WriteOptions, ZeroOptions } from '../../src/nbd/nbd-export.js';

export const MEM_BLOCK = 64 * 1024;

export class MemoryExport implements NbdExport {
  readonly blocks = new Map<number, Buffer>();
  flushes = 0;
  fuaWrites = 0;
  /** Delay each read/write by this many ms (to overlap requests). */
  delayMs = 0;
  /** Fail reads and writes touching this offset with the given error. */
  failAt: { offset: number; error: Error } | undefined;

  constructor(readonly name: string, readonly size: number, readonly readOnly = false, readonly description?: string) {}

  private async pause(offset: number, length: number): Promise<void> {
    if (this.delayMs > 0) await new Promise((r) => setTimeout(r, this.delayMs));
    const f = this.failAt;
    if (f && f.offset >= offset && f.offset < offset + length) throw f.error;
  }

  async read(buf: Buffer, offset: number): Promise<void> {
    await this.pause(offset, buf.length);
    for (let pos = 0; pos < buf.length;) {
      const abs = offset + pos;
      const b = Math.floor(abs / MEM_BLOCK);
      const within = abs - b * MEM_BLOCK;
      const len = Math.min(MEM_BLOCK - within, buf.length - pos);
      const block = this.blocks.get(b);
      if (block) block.copy(buf, pos, within, within + len);
      else buf.fill(0, pos, pos + len);
      pos += len;
    }
  }

  async write(buf: Buffer, offset: number, options: WriteOptions): Promise<void> {
    await this.pause(offset, buf.length);
    if (options.fua) this.fuaWrites++;
    for (let pos = 0; pos < buf.length;) {
      const abs = offset + pos;
      const b = Math.floor(abs / MEM_BLOCK);
      const within = abs - b * MEM_BLOCK;
      const len = Math.min(MEM_BLOCK - within, buf.length - pos);
      let block = this.blocks.get(b);
      if (!block) {
        block = Buffer.alloc(MEM_BLOCK);
        this.blocks.set(b, block);
      }
      buf.copy(block, within, pos, pos + len);
      pos += len;
    }
  }

  async flush(): Promise<void> {
    this.flushes++;
  }

  async trim(offset: number, length: number): Promise<void> {
    this.release(offset, length);
  }

  async writeZeroes(offset: number, length: number, options: ZeroOptions): Promise<void> {
    if (options.noHole) {
      if (options.fastZero) throw strataError('NOT_IMPLEMENTED', 'no fast zero with NO_HOLE');
      await this.write(Buffer.alloc(length), offset, options);
      return;
    }
    this.release(offset, length);
  }

  async blockStatus(offset: number, length: number): Promise<NbdExtent[]> {
    const out: NbdExtent[] = [];
    const end = offset + length;
    for (let pos = offset; pos < end;) {
      const b = Math.floor(pos / MEM_BLOCK);
      const next = Math.min((b + 1) * MEM_BLOCK, this.size);
      const hole = !this.blocks.has(b);
      out.push({ offset: pos, length: next - pos, hole, zero: hole });
      pos = next;
    }
    return out;
  }

  /** Whole blocks inside the range are dropped; partial ends are zeroed. */
  private release(offset: number, length: number): void {
    const end = offset + length;
    for (let pos = offset; pos < end;) {
      const b = Math.floor(pos / MEM_BLOCK);
      const blockEnd = (b + 1) * MEM_BLOCK;
      const stop = Math.min(blockEnd, end);
      if (pos === b * MEM_BLOCK && stop === blockEnd) this.blocks.delete(b);
      else this.blocks.get(b)?.fill(0, pos - b * MEM_BLOCK, stop - b * MEM_BLOCK);
      pos = stop;
    }
  }
}
