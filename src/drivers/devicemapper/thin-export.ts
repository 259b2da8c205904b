import type { ThinDevice } from '../../thin/index.js';
import type { NbdExport, NbdExtent, WriteOptions, ZeroOptions } from '../../nbd/nbd-export.js';

/**
 * A thin device served over NBD (glue until src/nbd offers its own thin export): TRIM is a thin
 * discard, WRITE_ZEROES unmaps whole blocks, BLOCK_STATUS reports unprovisioned blocks as holes.
 */
export class ThinExport implements NbdExport {
  readonly prefBlock: number;

  constructor(readonly name: string, readonly dev: ThinDevice) {
    this.prefBlock = Math.min(dev.pool.blockBytes, 64 * 1024);
  }

  get size(): number {
    return this.dev.size;
  }

  read(buf: Buffer, offset: number): Promise<void> {
    return this.dev.read(buf, offset);
  }

  write(buf: Buffer, offset: number, options: WriteOptions): Promise<void> {
    return this.dev.write(buf, offset, { fua: options.fua });
  }

  flush(): Promise<void> {
    return this.dev.flush();
  }

  async trim(offset: number, length: number, options: WriteOptions): Promise<void> {
    await this.dev.discard(offset, length);
    if (options.fua) await this.dev.flush();
  }

  async writeZeroes(offset: number, length: number, options: ZeroOptions): Promise<void> {
    await this.dev.writeZeroes(offset, length);
    if (options.fua) await this.dev.flush();
  }

  async blockStatus(offset: number, length: number): Promise<NbdExtent[]> {
    const extents = await this.dev.mapped(offset, Math.min(length, this.dev.size - offset));
    return extents.map((e) => ({ offset: e.offset, length: e.length, hole: !e.mapped, zero: !e.mapped }));
  }
}
