/**
 * An NbdExport over a thin device: TRIM is a thin discard, WRITE_ZEROES unmaps whole blocks (so
 * it is fast, and FAST_ZERO is honoured) unless the client said NO_HOLE, and BLOCK_STATUS reports
 * unprovisioned blocks as holes that read as zero. FLUSH (and FUA) commit the pool, as a flush
 * to a dm-thin device does.
 */
import { strataError } from '../errors.js';
import type { BatchRequest, ThinDevice } from '../thin/thin-device.js';
import type { LeasedWrites, NbdExport, NbdExtent, ReadMaps, WriteOptions, ZeroOptions } from './nbd-export.js';

const ZERO_STEP = 1024 * 1024;

export interface ThinExportOptions {
  name: string;
  description?: string;
  readOnly?: boolean;
}

export class ThinExport implements NbdExport {
  readonly name: string;
  readonly description?: string;
  readonly readOnly: boolean;
  readonly size: number;
  /** The pool's data block: writes of whole, aligned blocks avoid copy-on-write reads. */
  readonly prefBlock: number;
  /** The pool's data file, where connections on threads read and write as planned. */
  readonly blockingFile?: NbdExport['blockingFile'];

  constructor(readonly device: ThinDevice, options: ThinExportOptions) {
    this.name = options.name;
    if (options.description !== undefined) this.description = options.description;
    this.readOnly = options.readOnly === true;
    this.size = device.size;
    this.prefBlock = device.pool.blockBytes;
    const pool = device.pool;
    const fd = pool.dataDevice.fd;
    if (fd === undefined) return;
    const plan = (requests: readonly BatchRequest[]) => device.planBatch(requests);
    const readMaps: ReadMaps = { blockBytes: pool.blockBytes, epoch: pool.mapEpoch, gate: device.fastWriteGate, lookUp: (offset, length) => device.readMap(offset, length) };
    if (this.readOnly) {
      this.blockingFile = { fd, plan, readMaps };
      return;
    }
    const leasedWrites: LeasedWrites = {
      blockBytes: pool.blockBytes,
      gate: device.fastWriteGate,
      mapEpoch: pool.mapEpoch,
      lease: (max) => pool.leaseDataBlocks(max),
      returnLease: (blocks) => pool.returnLease(blocks),
      adopt: (vblocks, blocks) => device.adopt(vblocks, blocks),
      beforeEachLock: (hook) => pool.beforeEachLock(hook),
    };
    this.blockingFile = { fd, plan, leasedWrites, readMaps };
  }

  read(buf: Buffer, offset: number): Promise<void> {
    return this.device.read(buf, offset);
  }

  write(buf: Buffer, offset: number, options: WriteOptions): Promise<void> {
    return this.device.write(buf, offset, { fua: options.fua });
  }

  flush(): Promise<void> {
    return this.device.flush();
  }

  async trim(offset: number, length: number, options: WriteOptions): Promise<void> {
    await this.device.discard(offset, length);
    if (options.fua) await this.device.flush();
  }

  async writeZeroes(offset: number, length: number, options: ZeroOptions): Promise<void> {
    if (options.noHole) {
      // blocks must stay provisioned: only writing zeroes does that, which is not fast
      if (options.fastZero) throw strataError('NOT_IMPLEMENTED', 'zeroing without holes means writing zeroes');
      const zeroes = Buffer.alloc(Math.min(ZERO_STEP, length));
      for (let pos = 0; pos < length; pos += zeroes.length) {
        await this.device.write(zeroes.subarray(0, Math.min(zeroes.length, length - pos)), offset + pos);
      }
    } else {
      await this.device.writeZeroes(offset, length);
    }
    if (options.fua) await this.device.flush();
  }

  async blockStatus(offset: number, length: number): Promise<NbdExtent[]> {
    const extents = await this.device.mapped(offset, length);
    return extents.map((e) => ({ offset: e.offset, length: e.length, hole: !e.mapped, zero: !e.mapped }));
  }
}
