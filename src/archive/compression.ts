/**
 * Layer compression by magic number: gzip (zlib), zstd (fzstd, streaming), plain tar.
 * bzip2 and xz are recognised and refused with UNSUPPORTED_ARCHIVE, as Docker 20.10 refuses
 * what it cannot decompress. Decompression errors become INVALID_ARCHIVE or TRUNCATED_ARCHIVE.
 */
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import type * as FzstdModule from 'fzstd';
import { isStrataError, strataError } from '../errors.js';
import { FileChunks } from './file-chunks.js';
import { detectCompression } from './magic.js';
import { TappedChunks, type TappableChunks } from './tapped-chunks.js';
import { requireCommonJs } from '../util/require-cjs.js';

/** Largest zstd window accepted (zstd's own default decoder limit is 128 MiB, --long=27). */
const MAX_ZSTD_WINDOW = 128 << 20;

/**
 * Window size a zstd frame header asks for, or null if the header is not complete yet.
 * Frames bigger than the limit are refused before any allocation.
 */
export function zstdWindowSize(head: Uint8Array): number | null {
  if (head.length < 6) return null;
  const fhd = head[4]!;
  const singleSegment = (fhd & 0x20) !== 0;
  if (!singleSegment) {
    const wd = head[5]!;
    const exponent = wd >> 3;
    const mantissa = wd & 7;
    const base = 2 ** (10 + exponent);
    return base + (base / 8) * mantissa;
  }
  // single segment: the window is the frame content size
  const dictIdFlag = fhd & 3;
  const fcsFlag = fhd >> 6;
  const dictBytes = [0, 1, 2, 4][dictIdFlag]!;
  const fcsBytes = [1, 2, 4, 8][fcsFlag]!;
  const off = 5 + dictBytes;
  if (head.length < off + fcsBytes) return null;
  let size = 0;
  for (let i = fcsBytes - 1; i >= 0; i--) size = size * 256 + head[off + i]!;
  if (fcsBytes === 2) size += 256;
  return size;
}

async function* rest(head: Buffer[], it: AsyncIterator<unknown>): AsyncGenerator<Buffer> {
  for (const h of head) yield h;
  for (;;) {
    const r = await it.next();
    if (r.done) return;
    yield Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value as Uint8Array);
  }
}

function mapZlibError(err: unknown): Error {
  if (isStrataError(err)) return err;
  const e = err as NodeJS.ErrnoException;
  if (e?.code === 'Z_BUF_ERROR' || /unexpected end/i.test(String(e?.message))) {
    return strataError('TRUNCATED_ARCHIVE', 'gzip layer is truncated (unexpected end of file)', {}, err);
  }
  if (typeof e?.code === 'string' && e.code.startsWith('Z_')) {
    return strataError('INVALID_ARCHIVE', `gzip layer is corrupt: ${e.message}`, {}, err);
  }
  return err as Error;
}

async function* gunzip(input: AsyncGenerator<Buffer>): AsyncGenerator<Buffer> {
  const z = createGunzip({ chunkSize: 256 * 1024 });
  const feeder = Readable.from(input, { objectMode: false });
  feeder.on('error', (err) => z.destroy(err));
  feeder.pipe(z);
  try {
    for await (const chunk of z) yield chunk as Buffer;
  } catch (err) {
    throw mapZlibError(err);
  } finally {
    feeder.destroy();
  }
}

async function* unzstd(input: AsyncGenerator<Buffer>): AsyncGenerator<Buffer> {
  let out: Buffer[] = [];
  const { Decompress } = requireCommonJs<typeof FzstdModule>('fzstd');
  const d = new Decompress((chunk: Uint8Array) => {
    out.push(Buffer.from(chunk)); // fzstd may reuse its window buffer: copy
  });
  let head: Buffer | null = Buffer.alloc(0);
  let any = false;
  const wrap = (err: unknown): Error => {
    if (isStrataError(err)) return err;
    return strataError('INVALID_ARCHIVE', `zstd layer is corrupt: ${(err as Error)?.message ?? err}`, {}, err);
  };
  for await (const chunk of input) {
    if (head !== null) {
      head = Buffer.concat([head, chunk]);
      const window = zstdWindowSize(head);
      if (window === null) continue;
      if (window > MAX_ZSTD_WINDOW) {
        throw strataError('UNSUPPORTED_ARCHIVE',
          `zstd frame window of ${window} bytes exceeds the ${MAX_ZSTD_WINDOW}-byte limit`);
      }
      const c = head;
      head = null;
      try { d.push(c); } catch (err) { throw wrap(err); }
    } else {
      try { d.push(chunk); } catch (err) { throw wrap(err); }
    }
    any = true;
    const ready = out;
    out = [];
    for (const o of ready) yield o;
  }
  if (head !== null && head.length > 0) {
    throw strataError('TRUNCATED_ARCHIVE', 'zstd layer is truncated (incomplete frame header)');
  }
  try {
    d.push(new Uint8Array(0), true);
  } catch (err) {
    const msg = String((err as Error)?.message ?? err);
    if ((err as { code?: number })?.code === 5 || /unexpected EOF/i.test(msg)) {
      throw strataError('TRUNCATED_ARCHIVE', `zstd layer is truncated: ${msg}`, {}, err);
    }
    throw wrap(err);
  }
  void any;
  for (const o of out) yield o;
}

/**
 * Open a layer blob: detects the compression from the first bytes and returns the
 * uncompressed tar as chunks that can be tapped (backpressure preserved). A plain tar read as
 * FileChunks is returned as it is, its chunks lent. bzip2 and xz: UNSUPPORTED_ARCHIVE.
 */
export async function openLayerStream(source: Readable): Promise<TappableChunks> {
  if (source instanceof FileChunks && source.compression === 'none') return source;
  const it = source[Symbol.asyncIterator]();
  const head: Buffer[] = [];
  let have = 0;
  while (have < 6) {
    const r = await it.next();
    if (r.done) break;
    const c = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value as Uint8Array);
    head.push(c);
    have += c.length;
  }
  const kind = detectCompression(Buffer.concat(head));
  const input = rest(head, it);
  switch (kind) {
    case 'none':
      return new TappedChunks(input);
    case 'gzip':
      return new TappedChunks(gunzip(input));
    case 'zstd':
      return new TappedChunks(unzstd(input));
    default:
      source.destroy();
      throw strataError('UNSUPPORTED_ARCHIVE',
        `${kind} layers are not supported (use an uncompressed, gzip or zstd layer tar)`, { compression: kind });
  }
}
