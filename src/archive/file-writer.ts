import type { Worker } from 'node:worker_threads';
import { startWorker } from '../util/worker-thread.js';
import type { TarHeader } from './tar/header.js';
import type { BatchReply, FileBatch } from './file-batch.js';

/**
 * New small files of a layer, written on a worker thread in batches. Each file costs half a dozen
 * system calls (open, write, chown, chmod, utimes, close); made from the applier's thread they
 * cost as much as everything else it does (a 10,000-file layer: ~0.55 s of ~1.4 s on tmpfs), and
 * each thread-pool round trip costs that thread tens of µs more. Batched to one worker, they run
 * beside the tar parsing and the tar-split recording instead.
 *
 * Only files nobody can see yet go here (fresh paths in directories this apply created, no
 * xattrs), so their order against the applier's own calls does not matter until it drains,
 * which it does before anything that could depend on them.
 */

/** A batch is sent once it holds this many bytes or files. */
const BATCH_BYTES = 1 << 20;
const BATCH_FILES = 256;
/** Largest file a batch takes. */
export const MAX_FILE = 1 << 20;
/** Room for a batch: under BATCH_BYTES before the last file, so at most BATCH_BYTES + MAX_FILE. */
const BUFFER_BYTES = BATCH_BYTES + MAX_FILE;

export class SmallFileWriter {
  private paths: string[] = [];
  private fields: number[] = [];
  private rels: string[] = [];
  /** The batch being filled: files' bytes are copied in as they arrive. */
  private data: ArrayBuffer | null = null;
  private bytes = 0;
  private nextId = 1;
  /** Batch buffers back from the worker: reused, since fresh memory costs page faults to fill. */
  private readonly spare: ArrayBuffer[] = [];
  private readonly pending = new Map<number, { rels: string[]; resolve: () => void; reject: (err: unknown) => void }>();

  private constructor(private readonly worker: Worker, private readonly chown: boolean) {
    worker.on('message', (reply: BatchReply) => {
      const p = this.pending.get(reply.id);
      if (!p) return;
      this.pending.delete(reply.id);
      this.spare.push(reply.data);
      if (!reply.failed) return p.resolve();
      const f = reply.failed;
      p.reject(Object.assign(new Error(f.message), { code: f.code, errno: f.errno, syscall: f.syscall, rel: p.rels[f.index] }));
    });
    worker.on('error', (err) => this.failAll(err));
    worker.on('exit', () => this.failAll(new Error('the file writer thread exited')));
  }

  /** A writer with its thread started, or null where no worker thread can be started. */
  static start(chown: boolean): SmallFileWriter | null {
    try {
      const worker = startWorker('file-writer-worker', import.meta.url);
      return new SmallFileWriter(worker, chown);
    } catch {
      return null;
    }
  }

  /**
   * Room in the batch for the next file's `length` bytes (at most MAX_FILE): fill it, then `add`
   * the file. Until then the room is not taken, so a file whose data fails to arrive leaves none.
   */
  reserve(length: number): Buffer {
    if (length > MAX_FILE) throw new RangeError(`SmallFileWriter: a file of ${length} bytes is over ${MAX_FILE}`);
    this.data ??= this.spare.pop() ?? new ArrayBuffer(BUFFER_BYTES);
    return Buffer.from(this.data, this.bytes, length);
  }

  /**
   * Queue the file whose bytes were put in the room `reserve(length)` gave. Returns the promise
   * of the batch it completed when that batch was sent (it rejects with the first failure; `rel`
   * on the error names the entry), else null.
   */
  add(path: string, rel: string, length: number, h: TarHeader): Promise<void> | null {
    this.paths.push(path);
    // (in FileField order: file-batch.ts)
    this.fields.push(this.bytes, length, h.mode & 0o7777, h.uid, h.gid, h.atime ?? h.mtime, h.mtime);
    this.rels.push(rel);
    this.bytes += length;
    return this.bytes >= BATCH_BYTES || this.paths.length >= BATCH_FILES ? this.send() : null;
  }

  /** Send what is queued; the promise of that batch, or null if nothing was queued. */
  send(): Promise<void> | null {
    if (this.paths.length === 0) return null;
    const data = this.data!;
    const fields = Float64Array.from(this.fields);
    const batch: FileBatch = { id: this.nextId++, chown: this.chown, data, paths: this.paths.join('\0'), fields };
    const done = new Promise<void>((resolve, reject) => this.pending.set(batch.id, { rels: this.rels, resolve, reject }));
    this.worker.postMessage(batch, [data, fields.buffer]);
    this.paths = [];
    this.fields = [];
    this.rels = [];
    this.data = null;
    this.bytes = 0;
    return done;
  }

  /** Batches sent and not yet answered. */
  get inFlight(): number {
    return this.pending.size;
  }

  /** Stop the thread (after the last batch was answered, or to abandon the rest). */
  close(): void {
    this.worker.removeAllListeners('exit');
    void this.worker.terminate();
  }

  private failAll(err: unknown): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}
