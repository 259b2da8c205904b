/**
 * Requests to one backing store with at most `width` calls in flight. Requests waiting behind
 * them that continue one another (a client's sequential 256 KiB requests) go out as one call:
 * for a file, one preadv/pwritev instead of one thread-pool job each (every job costs thread
 * wake-ups on both sides); for a thin device, one pass under the pool's lock, one mapping lookup
 * and one data I/O per contiguous run instead of one per request. A failed call fails every
 * request merged into it.
 */

export interface IoQueueOptions {
  /** Calls in flight. */
  width: number;
  /** A merged call stops at this many bytes. */
  maxBytes: number;
  /** ... or this many pieces (IOV_MAX is 1024). */
  maxPieces?: number;
}

interface QueuedIo {
  bufs: readonly Buffer[];
  offset: number;
  length: number;
  resolve(): void;
  reject(err: unknown): void;
}

export class IoQueue {
  private readonly queue: QueuedIo[] = [];
  private inFlight = 0;
  private readonly maxPieces: number;

  /** `io(bufs, position)`: the whole of `bufs`, back to back from `position`. */
  constructor(private readonly options: IoQueueOptions, private readonly io: (bufs: Buffer[], position: number) => Promise<void>) {
    this.maxPieces = options.maxPieces ?? 1024;
  }

  run(bufs: readonly Buffer[], offset: number): Promise<void> {
    let length = 0;
    for (const b of bufs) length += b.length;
    if (length === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ bufs, offset, length, resolve, reject });
      this.pump();
    });
  }

  private pump(): void {
    const queue = this.queue;
    while (this.inFlight < this.options.width && queue.length > 0) {
      const first = queue.shift()!;
      const batch = [first];
      const offset = first.offset;
      let end = offset + first.length;
      let pieces = first.bufs.length;
      for (let i = 0; i < queue.length;) {
        const q = queue[i]!;
        if (q.offset !== end || pieces + q.bufs.length > this.maxPieces || end - offset + q.length > this.options.maxBytes) {
          i++;
          continue;
        }
        batch.push(q);
        queue.splice(i, 1);
        end += q.length;
        pieces += q.bufs.length;
        i = 0; // an earlier one may continue this one
      }
      const bufs = batch.length === 1 ? [...first.bufs] : batch.flatMap((q) => q.bufs);
      this.inFlight++;
      this.io(bufs, offset).then(
        () => { for (const q of batch) q.resolve(); },
        (err: unknown) => { for (const q of batch) q.reject(err); },
      ).finally(() => {
        this.inFlight--;
        this.pump();
      });
    }
  }
}
