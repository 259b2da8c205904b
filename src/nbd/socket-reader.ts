/**
 * Exact-length reads from a socket: `read(n)` resolves with exactly n bytes, or rejects once the
 * peer has gone. Chunks are kept as the socket delivered them; a read inside one chunk is a
 * zero-copy view, a read spanning chunks is copied into the caller's buffer (a pooled one for
 * WRITE payloads, which avoids a fresh 256 KiB allocation per request). Past `highWater` buffered
 * bytes the socket is paused, which pushes back on the client through flow control.
 */
import type { Socket } from 'node:net';
import { strataError } from '../errors.js';

export class SocketReader {
  private readonly chunks: Buffer[] = [];
  private buffered = 0;
  private ended = false;
  private aborted = false;
  private paused = false;
  private wake: (() => void) | undefined;

  constructor(private readonly socket: Socket, private readonly highWater = 8 * 1024 * 1024) {
    const rouse = (): void => {
      const w = this.wake;
      this.wake = undefined;
      w?.();
    };
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
      if (this.buffered >= this.highWater && !this.paused) {
        this.paused = true;
        socket.pause();
      }
      rouse();
    });
    const finish = (): void => {
      this.ended = true;
      rouse();
    };
    socket.on('end', finish);
    socket.on('close', finish);
    socket.on('error', finish);
  }

  get closed(): boolean {
    return this.ended;
  }

  /** Stop reading: a pending and every later read rejects as if the peer had gone. */
  abort(): void {
    this.aborted = true;
    this.ended = true;
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /** n bytes; copied into `into` (its first n bytes) when given. */
  async read(n: number, into?: Buffer): Promise<Buffer> {
    for (;;) {
      if (this.aborted) throw strataError('PROTOCOL_ERROR', 'connection is shutting down', { eof: true });
      if (this.buffered >= n) return this.take(n, into);
      if (this.ended) throw strataError('PROTOCOL_ERROR', this.buffered > 0 ? 'peer closed mid-message' : 'peer closed the connection', { eof: true });
      if (this.paused) {
        // asked for more than we hold: we must read on whatever the limit says
        this.paused = false;
        this.socket.resume();
      }
      await new Promise<void>((resolve) => { this.wake = resolve; });
    }
  }

  /** Consume and drop n bytes without holding them all (an oversize payload we refuse). */
  async skip(n: number): Promise<void> {
    const step = 1024 * 1024;
    while (n > 0) {
      const len = Math.min(step, n);
      await this.read(len);
      n -= len;
    }
  }

  private take(n: number, into: Buffer | undefined): Buffer {
    const first = this.chunks[0];
    let out: Buffer;
    if (n === 0) {
      out = into ? into.subarray(0, 0) : Buffer.alloc(0);
    } else if (!into && first && first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = into ? into.subarray(0, n) : Buffer.allocUnsafe(n);
      let filled = 0;
      while (filled < n) {
        const c = this.chunks[0]!;
        const len = Math.min(c.length, n - filled);
        c.copy(out, filled, 0, len);
        filled += len;
        if (len === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(len);
      }
    }
    this.buffered -= n;
    if (this.paused && this.buffered < this.highWater / 2) {
      this.paused = false;
      this.socket.resume();
    }
    return out;
  }
}
