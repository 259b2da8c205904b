/**
 * Streaming tar writer with backpressure: `await writer.add(header, body)` resolves once the
 * bytes are queued and the consumer has room for more. Output is deterministic: headers come
 * from encodeHeader (USTAR, PAX only when a field needs it, sorted records), the archive ends
 * with two zero blocks and no record padding.
 *
 * Headers, padding and small bodies are gathered into blocks of up to 1 MiB, each pushed once:
 * a push, and a wait, per 512-byte header cost more than the archive itself when a tree holds
 * hundreds of thousands of small files. Only bodies of GATHER_BELOW or more are pushed as they
 * are (after the block before them).
 */
import { Readable } from 'node:stream';
import { strataError } from '../../errors.js';
import { BLOCK, blockPadding, encodeHeader, type HeaderInput } from './header.js';

const ZEROS = Buffer.alloc(BLOCK * 2);
const GATHER_BYTES = 1 << 20;
const GATHER_BELOW = 64 * 1024;

export class TarWriter extends Readable {
  private waiting: (() => void) | null = null;
  private ended = false;
  /** The block being gathered (handed to the consumer when pushed, so never reused). */
  private block: Buffer | null = null;
  private fill = 0;
  /** Bytes emitted so far. */
  bytes = 0;

  constructor(opts: { highWaterMark?: number } = {}) {
    super({ highWaterMark: opts.highWaterMark ?? 1 << 20 });
  }

  override _read(): void {
    const w = this.waiting;
    this.waiting = null;
    w?.();
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    const w = this.waiting;
    this.waiting = null;
    w?.();
    cb(err);
  }

  /** Queue raw bytes (hostile archives, record padding); waits while the consumer is full. */
  async write(chunk: Buffer): Promise<void> {
    const full = this.queue(chunk);
    if (full) await full;
  }

  /**
   * Add one entry. `body` (a Buffer or an async iterable of chunks) must hold exactly
   * `header.size` bytes; padding is added here.
   */
  async add(header: HeaderInput, body?: Buffer | AsyncIterable<Buffer | Uint8Array>): Promise<void> {
    const size = header.size ?? (Buffer.isBuffer(body) ? body.length : 0);
    let full = this.queue(encodeHeader({ ...header, size }));
    let written = 0;
    if (Buffer.isBuffer(body)) {
      if (full) await full;
      full = this.queue(body);
      written = body.length;
    } else if (body) {
      if (full) await full;
      full = null;
      for await (const c of body) {
        const chunk = Buffer.isBuffer(c) ? c : Buffer.from(c);
        if (written + chunk.length > size) {
          throw strataError('INVALID_ARGUMENT', `${header.name}: data is longer than its header size ${size}`, { path: header.name });
        }
        const wait = this.queue(chunk);
        if (wait) await wait;
        written += chunk.length;
      }
    }
    if (written !== size) {
      throw strataError('INVALID_ARGUMENT', `${header.name}: wrote ${written} bytes, header says ${size}`, { path: header.name });
    }
    const pad = blockPadding(size);
    if (pad) {
      if (full) await full;
      full = this.queue(ZEROS.subarray(0, pad));
    }
    if (full) await full;
  }

  /** The end-of-archive marker, then the end of the stream. */
  async finish(): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    await this.write(ZEROS);
    const full = this.flushBlock();
    if (full) await full;
    this.push(null);
  }

  /**
   * Queue `chunk`: copied into the block being gathered if it is small, else pushed after that
   * block. A promise to wait for when the consumer is full, else null.
   */
  private queue(chunk: Buffer): Promise<void> | null {
    if (this.destroyed) throw strataError('INTERNAL', 'tar writer was destroyed');
    if (chunk.length === 0) return null;
    this.bytes += chunk.length;
    if (chunk.length >= GATHER_BELOW) {
      const full = this.flushBlock();
      return this.pushOrWait(chunk) ?? full;
    }
    if (this.block !== null && this.fill + chunk.length > this.block.length) {
      const full = this.flushBlock();
      this.gather(chunk);
      return full;
    }
    this.gather(chunk);
    return null;
  }

  private gather(chunk: Buffer): void {
    this.block ??= Buffer.allocUnsafe(GATHER_BYTES);
    chunk.copy(this.block, this.fill);
    this.fill += chunk.length;
  }

  private flushBlock(): Promise<void> | null {
    if (this.block === null || this.fill === 0) return null;
    const gathered = this.block.subarray(0, this.fill);
    this.block = null;
    this.fill = 0;
    return this.pushOrWait(gathered);
  }

  private pushOrWait(chunk: Buffer): Promise<void> | null {
    if (this.push(chunk)) return null;
    return new Promise<void>((resolve) => { this.waiting = resolve; }).then(() => {
      if (this.destroyed) throw strataError('INTERNAL', 'tar writer was destroyed');
    });
  }
}

/** Build a whole archive in memory (tests and tiny archives only). */
export function buildTar(entries: Array<{ header: HeaderInput; data?: Buffer | string }>, opts: { end?: boolean } = {}): Buffer {
  const parts: Buffer[] = [];
  for (const { header, data } of entries) {
    const body = typeof data === 'string' ? Buffer.from(data) : data ?? Buffer.alloc(0);
    parts.push(encodeHeader({ ...header, size: header.size ?? body.length }));
    parts.push(body, Buffer.alloc(blockPadding(body.length)));
  }
  if (opts.end !== false) parts.push(ZEROS);
  return Buffer.concat(parts);
}
