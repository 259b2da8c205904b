/**
 * Exact-length reads from a socket: `read(n)` resolves with exactly n bytes, or rejects once the
 * peer has gone. Chunks are kept as the socket delivered them; `readv(n)` hands them on as views
 * (a WRITE payload goes to pwritev without being copied), `read(n)` copies into the caller's
 * buffer when given one (or when the chunks live in reused receive slabs), else returns a
 * zero-copy view when the bytes sit inside one chunk. Past `highWater` buffered bytes the socket
 * is paused, which pushes back on the client through flow control.
 */
import type { Socket } from 'node:net';
import { strataError } from '../errors.js';
import { attachReceiveSlabs, releaseSlab, type Slab } from './receive-slabs.js';

export interface SocketReaderOptions {
  /**
   * Read into reused slabs (receive-slabs.ts) instead of a fresh allocation per read. For a
   * socket accepted paused (`pauseOnConnect`); the reader resumes it.
   */
  receiveSlabs?: boolean;
}

/** Bytes from `readv`: call `release()` once done with `bufs` (they may be reused after). */
export interface Received {
  bufs: Buffer[];
  release(): void;
}

const noop = (): void => undefined;

export class SocketReader {
  private chunks: Buffer[] = [];
  /** The slab each chunk lives in (undefined: the socket's own allocation). */
  private slabs: Array<Slab | undefined> = [];
  private head = 0;
  private buffered = 0;
  private ended = false;
  private aborted = false;
  private paused = false;
  private wake: (() => void) | undefined;
  /** Chunks may live in slabs: never hand out a view except through readv. */
  private readonly slabbed: boolean;

  constructor(private readonly socket: Socket, private readonly highWater = 8 * 1024 * 1024, options: SocketReaderOptions = {}) {
    const push = (chunk: Buffer, slab: Slab | undefined): void => {
      this.chunks.push(chunk);
      this.slabs.push(slab);
      this.buffered += chunk.length;
      if (this.buffered >= this.highWater && !this.paused) {
        this.paused = true;
        socket.pause();
      }
      const w = this.wake;
      this.wake = undefined;
      w?.();
    };
    this.slabbed = options.receiveSlabs === true && attachReceiveSlabs(socket, push);
    if (!this.slabbed) socket.on('data', (chunk: Buffer) => push(chunk, undefined));
    const finish = (): void => {
      this.ended = true;
      const w = this.wake;
      this.wake = undefined;
      w?.();
    };
    socket.on('end', finish);
    socket.on('close', finish);
    socket.on('error', finish);
    if (options.receiveSlabs) socket.resume();
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

  /**
   * Stop reading and take what is buffered beyond the last read (a connection handed on to be
   * read some other way): later reads reject as after `abort()`.
   */
  detach(): Buffer {
    this.socket.pause();
    const rest = this.take(this.buffered, this.buffered > 0 ? Buffer.allocUnsafe(this.buffered) : undefined);
    this.abort();
    return rest;
  }

  /** n bytes; copied into `into` (its first n bytes) when given. */
  async read(n: number, into?: Buffer): Promise<Buffer> {
    if (this.buffered < n || this.aborted) await this.fill(n);
    return this.take(n, into);
  }

  /** n bytes as views of the chunks they arrived in, nothing copied. */
  async readv(n: number): Promise<Received> {
    if (this.buffered < n || this.aborted) await this.fill(n);
    return this.takev(n);
  }

  /** Consume and drop n bytes without holding them all (an oversize payload we refuse). */
  async skip(n: number): Promise<void> {
    const step = 1024 * 1024;
    while (n > 0) {
      const len = Math.min(step, n);
      (await this.readv(len)).release();
      n -= len;
    }
  }

  /** Wait until n bytes are buffered; rejects once the peer has gone (or on abort). */
  private async fill(n: number): Promise<void> {
    for (;;) {
      if (this.aborted) throw strataError('PROTOCOL_ERROR', 'connection is shutting down', { eof: true });
      if (this.buffered >= n) return;
      if (this.ended) throw strataError('PROTOCOL_ERROR', this.buffered > 0 ? 'peer closed mid-message' : 'peer closed the connection', { eof: true });
      if (this.paused) {
        // asked for more than we hold: we must read on whatever the limit says
        this.paused = false;
        this.socket.resume();
      }
      await new Promise<void>((resolve) => { this.wake = resolve; });
    }
  }

  private take(n: number, into: Buffer | undefined): Buffer {
    if (n === 0) return into ? into.subarray(0, 0) : Buffer.alloc(0);
    const first = this.chunks[this.head]!;
    let out: Buffer;
    if (!into && !this.slabbed && first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.dropHead();
      else this.chunks[this.head] = first.subarray(n);
    } else {
      out = into ? into.subarray(0, n) : Buffer.allocUnsafe(n);
      let filled = 0;
      while (filled < n) {
        const c = this.chunks[this.head]!;
        const len = Math.min(c.length, n - filled);
        c.copy(out, filled, 0, len);
        filled += len;
        if (len === c.length) {
          const slab = this.slabs[this.head];
          this.dropHead();
          if (slab) releaseSlab(slab);
        } else {
          this.chunks[this.head] = c.subarray(len);
        }
      }
    }
    this.consumed(n);
    return out;
  }

  private takev(n: number): Received {
    const bufs: Buffer[] = [];
    const held: Slab[] = [];
    let left = n;
    while (left > 0) {
      const c = this.chunks[this.head]!;
      const slab = this.slabs[this.head];
      if (c.length <= left) {
        bufs.push(c);
        this.dropHead(); // its reference moves to the caller
        left -= c.length;
      } else {
        bufs.push(c.subarray(0, left));
        this.chunks[this.head] = c.subarray(left);
        if (slab) slab.refs++; // one for the caller's view, one for what stays buffered
        left = 0;
      }
      if (slab) held.push(slab);
    }
    this.consumed(n);
    if (held.length === 0) return { bufs, release: noop };
    let released = false;
    return {
      bufs,
      release: () => {
        if (released) return;
        released = true;
        for (const s of held) releaseSlab(s);
      },
    };
  }

  private dropHead(): void {
    this.chunks[this.head] = undefined as unknown as Buffer;
    this.slabs[this.head] = undefined;
    this.head++;
    if (this.head === this.chunks.length) {
      this.chunks.length = 0;
      this.slabs.length = 0;
      this.head = 0;
    } else if (this.head >= 1024) {
      this.chunks = this.chunks.slice(this.head);
      this.slabs = this.slabs.slice(this.head);
      this.head = 0;
    }
  }

  private consumed(n: number): void {
    this.buffered -= n;
    if (this.paused && this.buffered < this.highWater / 2) {
      this.paused = false;
      this.socket.resume();
    }
  }
}
