import { createHash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { strataError } from '../errors.js';

/** Passes bytes through and fails at the end if their sha256 is not `expected` (`sha256:<hex>`). */
export class DigestVerifier extends Transform {
  private readonly hash = createHash('sha256');

  constructor(private readonly expected: string, private readonly what = expected) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.hash.update(chunk);
    done(null, chunk);
  }

  override _flush(done: TransformCallback): void {
    const actual = `sha256:${this.hash.digest('hex')}`;
    if (actual !== this.expected) {
      done(strataError('DIGEST_MISMATCH', `could not verify ${this.what}: expected ${this.expected}, got ${actual}`, { id: this.expected }));
    } else done();
  }
}
