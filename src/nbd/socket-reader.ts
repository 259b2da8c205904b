/**
 * Exact-length reads from a socket in paused mode: `read(n)` resolves with exactly n bytes, or
 * rejects once the peer has gone. Data stays in the socket's own buffer until asked for, so a
 * slow consumer pushes back on the client through TCP/unix flow control.
 */
import type { Socket } from 'node:net';
import { strataError } from '../errors.js';

export class SocketReader {
  private ended = false;
  private aborted = false;
  private wake: (() => void) | undefined;

  constructor(private readonly socket: Socket) {
    const rouse = (): void => {
      const w = this.wake;
      this.wake = undefined;
      w?.();
    };
    socket.on('readable', rouse);
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

  async read(n: number): Promise<Buffer> {
    if (n === 0) return Buffer.alloc(0);
    for (;;) {
      if (this.aborted) throw strataError('PROTOCOL_ERROR', 'connection is shutting down', { eof: true });
      const chunk = this.socket.read(n) as Buffer | null;
      if (chunk !== null) {
        if (chunk.length < n) throw strataError('PROTOCOL_ERROR', 'peer closed mid-message');
        return chunk;
      }
      if (this.ended || this.socket.readableEnded || this.socket.destroyed) {
        throw strataError('PROTOCOL_ERROR', 'peer closed the connection', { eof: true });
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
}
