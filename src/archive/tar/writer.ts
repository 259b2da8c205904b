/**
 * Streaming tar writer with backpressure: `await writer.add(header, body)` resolves once the
 * bytes are queued and the consumer has room for more. Output is deterministic: headers come
 * from encodeHeader (USTAR, PAX only when a field needs it, sorted records), the archive ends
 * with two zero blocks and no record padding.
 */
import { Readable } from 'node:stream';
import { strataError } from '../../errors.js';
import { BLOCK, blockPadding, encodeHeader, type HeaderInput } from './header.js';

const ZEROS = Buffer.alloc(BLOCK * 2);

export class TarWriter extends Readable {
  private waiting: (() => void) | null = null;
  private ended = false;
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
    if (this.destroyed) throw strataError('INTERNAL', 'tar writer was destroyed');
    if (chunk.length === 0) return;
    this.bytes += chunk.length;
    if (!this.push(chunk)) {
      await new Promise<void>((resolve) => { this.waiting = resolve; });
      if (this.destroyed) throw strataError('INTERNAL', 'tar writer was destroyed');
    }
  }

  /**
   * Add one entry. `body` (a Buffer or an async iterable of chunks) must hold exactly
   * `header.size` bytes; padding is added here.
   */
  async add(header: HeaderInput, body?: Buffer | AsyncIterable<Buffer | Uint8Array>): Promise<void> {
    const size = header.size ?? (Buffer.isBuffer(body) ? body.length : 0);
    await this.write(encodeHeader({ ...header, size }));
    let written = 0;
    if (Buffer.isBuffer(body)) {
      await this.write(body);
      written = body.length;
    } else if (body) {
      for await (const c of body) {
        const chunk = Buffer.isBuffer(c) ? c : Buffer.from(c);
        if (written + chunk.length > size) {
          throw strataError('INVALID_ARGUMENT', `${header.name}: data is longer than its header size ${size}`, { path: header.name });
        }
        await this.write(chunk);
        written += chunk.length;
      }
    }
    if (written !== size) {
      throw strataError('INVALID_ARGUMENT', `${header.name}: wrote ${written} bytes, header says ${size}`, { path: header.name });
    }
    const pad = blockPadding(size);
    if (pad) await this.write(ZEROS.subarray(0, pad));
  }

  /** The end-of-archive marker, then the end of the stream. */
  async finish(): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    await this.write(ZEROS);
    this.push(null);
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
