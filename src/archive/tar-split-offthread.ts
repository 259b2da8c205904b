import { Transform, type TransformCallback } from 'node:stream';
import { Worker } from 'node:worker_threads';
import { ERROR_CODES, strataError, type ErrorCode } from '../errors.js';
import type { TarSplitRecorderOptions, TarSplitResult } from './tar-split.js';

export type ToWorker =
  | { type: 'start'; id: number; sinkPath: string; options: TarSplitRecorderOptions }
  | { type: 'chunk'; id: number; data: ArrayBuffer }
  | { type: 'end'; id: number }
  | { type: 'abort'; id: number };

export type FromWorker =
  | { type: 'ack'; id: number; bytes: number }
  | { type: 'done'; id: number; diffId: string; size: number }
  | { type: 'error'; id: number; message: string; code?: string };

/** Bytes handed to the worker and not yet hashed, beyond which the stream waits (bounded memory). */
const MAX_IN_FLIGHT = 16 << 20;
const BATCH = 1 << 20;

interface Recording {
  onAck(bytes: number): void;
  onDone(result: TarSplitResult): void;
  onError(err: Error): void;
}

/**
 * One worker for the process, started on first use and unreferenced while idle: hashing the
 * layer (sha256 for the DiffID, CRC-64 per file for tar-split) costs as much CPU as unpacking
 * it, so it runs beside the applier instead of between its chunks.
 */
class RecorderThread {
  private worker: Worker | null = null;
  private readonly recordings = new Map<number, Recording>();
  private nextId = 1;

  open(sinkPath: string, options: TarSplitRecorderOptions, recording: Recording): number {
    const worker = this.start();
    const id = this.nextId++;
    this.recordings.set(id, recording);
    worker.ref();
    this.send({ type: 'start', id, sinkPath, options });
    return id;
  }

  send(message: ToWorker, transfer: ArrayBuffer[] = []): void {
    this.worker?.postMessage(message, transfer);
  }

  close(id: number): void {
    this.recordings.delete(id);
    if (this.recordings.size === 0) this.worker?.unref();
  }

  private start(): Worker {
    if (this.worker) return this.worker;
    const entry = new URL(`./tar-split-worker${import.meta.url.endsWith('.ts') ? '.ts' : '.js'}`, import.meta.url);
    // Under tsx (the tests) this module is TypeScript and so is the worker's, but a worker does
    // not inherit the loader: register it there first.
    const worker = entry.pathname.endsWith('.ts')
      ? new Worker(`import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then((api) => { api.register(); return import(${JSON.stringify(entry.href)}); });`, { eval: true })
      : new Worker(entry);
    worker.on('message', (m: FromWorker) => {
      const r = this.recordings.get(m.id);
      if (!r) return;
      if (m.type === 'ack') r.onAck(m.bytes);
      else if (m.type === 'done') r.onDone({ diffId: m.diffId, size: m.size });
      else r.onError(strataError(m.code !== undefined && m.code in ERROR_CODES ? (m.code as ErrorCode) : 'INTERNAL', m.message));
    });
    worker.on('error', (err) => this.failAll(err));
    worker.on('exit', () => this.failAll(strataError('INTERNAL', 'the tar-split worker exited')));
    this.worker = worker;
    return worker;
  }

  private failAll(err: Error): void {
    this.worker = null;
    for (const r of this.recordings.values()) r.onError(err);
    this.recordings.clear();
  }
}

const thread = new RecorderThread();

/**
 * TarSplitRecorder's contract — a pass-through whose `finished()` gives the DiffID once the
 * tar-split records are on disk at `sinkPath` — with the parsing and hashing on a worker thread.
 * Chunks are copied to the worker in 1 MiB batches; at most 16 MiB wait there before the stream
 * pauses.
 */
export class OffThreadTarSplitRecorder extends Transform {
  private readonly id: number;
  private readonly done: Promise<TarSplitResult>;
  private inFlight = 0;
  private waiting: (() => void) | null = null;
  private failure: Error | null = null;
  private settled = false;
  private ended = false;
  private rejectDone!: (err: Error) => void;
  private batch = new Uint8Array(BATCH);
  private batchLength = 0;

  constructor(sinkPath: string, options: TarSplitRecorderOptions = {}) {
    super({ highWaterMark: 1 << 20 });
    let resolveDone!: (r: TarSplitResult) => void;
    this.done = new Promise((resolve, reject) => {
      resolveDone = resolve;
      this.rejectDone = reject;
    });
    this.done.catch(() => undefined);
    this.id = thread.open(sinkPath, options, {
      onAck: (bytes) => {
        this.inFlight -= bytes;
        if (this.inFlight <= MAX_IN_FLIGHT && this.waiting) {
          const go = this.waiting;
          this.waiting = null;
          go();
        }
      },
      onDone: (result) => {
        this.settle();
        resolveDone(result);
      },
      onError: (err) => {
        this.settle();
        this.failure = err;
        this.rejectDone(err);
        this.destroy(err);
      },
    });
  }

  finished(): Promise<TarSplitResult> {
    return this.done;
  }

  private settle(): void {
    if (this.settled) return;
    this.settled = true;
    thread.close(this.id);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.failure) return cb(this.failure);
    // copied (the chunk may be a view of a pooled slab, and it still goes downstream) into
    // batches of 1 MiB: one message per batch, not one per 64 KiB read
    for (let at = 0; at < chunk.length;) {
      const n = Math.min(chunk.length - at, BATCH - this.batchLength);
      this.batch.set(chunk.subarray(at, at + n), this.batchLength);
      this.batchLength += n;
      at += n;
      if (this.batchLength === BATCH) this.sendBatch();
    }
    this.push(chunk);
    if (this.inFlight > MAX_IN_FLIGHT) this.waiting = () => cb();
    else cb();
  }

  private sendBatch(): void {
    if (this.batchLength === 0) return;
    const data = this.batchLength === BATCH ? this.batch.buffer : this.batch.slice(0, this.batchLength).buffer;
    this.inFlight += this.batchLength;
    thread.send({ type: 'chunk', id: this.id, data }, [data]);
    this.batch = new Uint8Array(BATCH);
    this.batchLength = 0;
  }

  override _flush(cb: TransformCallback): void {
    this.ended = true;
    this.sendBatch();
    thread.send({ type: 'end', id: this.id });
    // the pass-through side ends now; finished() resolves when the worker has written the records
    cb();
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    // after a clean end (autoDestroy) the worker is still finishing the records: let it
    if (!this.settled && (err !== null || !this.ended)) {
      thread.send({ type: 'abort', id: this.id });
      this.settle();
      this.rejectDone(err ?? strataError('INTERNAL', 'tar-split recording stopped before the layer ended'));
    }
    cb(err);
  }
}
