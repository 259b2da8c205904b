/**
 * A layer's uncompressed bytes as an object-mode Readable of Buffers whose taps see each chunk,
 * in order, before its reader does: how the tar-split recorder (tar-split-tap.ts) and a progress
 * meter watch a layer go by without a stream stage between the input and the driver.
 * FileChunks is one (a plain tar file, its chunks lent); TappedChunks makes one of any source of
 * chunks (a decompressor's output, a pipe).
 */
import { Readable } from 'node:stream';
import { strataError } from '../errors.js';

/** Sees a chunk before the reader does; a promise holds the reading back until it settles. */
export type ChunkTap = (chunk: Buffer) => Promise<void> | undefined | void;

export interface TappableChunks extends Readable {
  /** Show every chunk to `fn` before it is pushed (only before reading starts). */
  tap(fn: ChunkTap): void;
}

export function isTappable(source: Readable): source is TappableChunks {
  return typeof (source as Partial<TappableChunks>).tap === 'function';
}

/** Show `chunk` to each tap in turn, waiting for those that ask to be waited for. */
export async function showTaps(taps: readonly ChunkTap[], chunk: Buffer): Promise<void> {
  for (const tap of taps) {
    const wait = tap(chunk);
    if (wait) await wait;
  }
}

export class TappedChunks extends Readable implements TappableChunks {
  private readonly taps: ChunkTap[] = [];
  private started = false;

  constructor(private readonly source: AsyncIterator<Buffer>) {
    // chunks pass as they are: a byte-mode Readable would concatenate whatever it has buffered
    super({ objectMode: true, highWaterMark: 2 });
  }

  tap(fn: ChunkTap): void {
    if (this.started) throw strataError('INTERNAL', 'TappedChunks: tap added after reading began');
    this.taps.push(fn);
  }

  override _read(): void {
    this.started = true;
    this.source.next().then(async (r) => {
      if (r.done) {
        this.push(null);
        return;
      }
      await showTaps(this.taps, r.value);
      this.push(r.value);
    }).catch((err: Error) => this.destroy(err));
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    // let the source clean up behind it (a decompressor destroys its input), as Readable.from does
    Promise.resolve(this.source.return?.()).then(() => cb(err), () => cb(err));
  }
}
