/**
 * Layer compression by magic number: gzip (zlib), zstd (the host's zstd, else fzstd), plain tar.
 * bzip2 and xz are recognised and refused with UNSUPPORTED_ARCHIVE, as Docker 20.10 refuses
 * what it cannot decompress. Decompression errors become INVALID_ARCHIVE or TRUNCATED_ARCHIVE.
 */
import { spawn } from 'node:child_process';
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import type * as FzstdModule from 'fzstd';
import { isStrataError, strataError } from '../errors.js';
import { FileChunks } from './file-chunks.js';
import { detectCompression } from './magic.js';
import { TappedChunks, type TappableChunks } from './tapped-chunks.js';
import { drainedOrClosed } from '../util/drained.js';
import { requireCommonJs } from '../util/require-cjs.js';
import { which } from '../util/which.js';

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

/** The input as it comes, once the first frame's header has shown a window within the limit. */
async function* windowChecked(input: AsyncGenerator<Buffer>): AsyncGenerator<Buffer> {
  let head: Buffer | null = Buffer.alloc(0);
  for await (const chunk of input) {
    if (head === null) {
      yield chunk;
      continue;
    }
    head = Buffer.concat([head, chunk]);
    const window = zstdWindowSize(head);
    if (window === null) continue;
    if (window > MAX_ZSTD_WINDOW) {
      throw strataError('UNSUPPORTED_ARCHIVE', `zstd frame window of ${window} bytes exceeds the ${MAX_ZSTD_WINDOW}-byte limit`);
    }
    yield head;
    head = null;
  }
  if (head !== null) throw strataError('TRUNCATED_ARCHIVE', 'zstd layer is truncated (incomplete frame header)');
}

/**
 * Compressed bytes given to fzstd at a time. It decodes all it can of what it is given before
 * returning, and a zstd block of 4 bytes (RLE) stands for 128 KiB, so its output is bounded
 * only through its input: 512 bytes give at most 16 MiB. (Pushes of 1 MiB let a 1 GiB layer
 * of zeros, 33 KB compressed, take 1.1 GB of memory.)
 */
const FZSTD_SLICE = 512;

/** zstd in JavaScript (fzstd), on this thread: where the host has no zstd. */
async function* fzstdDecode(input: AsyncGenerator<Buffer>): AsyncGenerator<Buffer> {
  let out: Buffer[] = [];
  const { Decompress } = requireCommonJs<typeof FzstdModule>('fzstd');
  const d = new Decompress((chunk: Uint8Array) => {
    out.push(Buffer.from(chunk)); // fzstd may hand out views of its input or window: copy
  });
  const corrupt = (err: unknown): Error => isStrataError(err) ? err
    : strataError('INVALID_ARCHIVE', `zstd layer is corrupt: ${(err as Error)?.message ?? err}`, {}, err);
  for await (const chunk of input) {
    for (let off = 0; off < chunk.length; off += FZSTD_SLICE) {
      try { d.push(chunk.subarray(off, off + FZSTD_SLICE)); } catch (err) { throw corrupt(err); }
      const ready = out;
      out = [];
      for (const o of ready) yield o;
    }
  }
  try {
    d.push(new Uint8Array(0), true);
  } catch (err) {
    const msg = String((err as Error)?.message ?? err);
    if ((err as { code?: number })?.code === 5 || /unexpected EOF/i.test(msg)) {
      throw strataError('TRUNCATED_ARCHIVE', `zstd layer is truncated: ${msg}`, {}, err);
    }
    throw corrupt(err);
  }
  for (const o of out) yield o;
}

/** The error zstd's exit status and last words describe. */
function zstdProcessError(code: number | null, stderr: string): Error {
  const said = stderr.trim().split('\n').pop()?.replace(/^.*?:\s*/, '') || `exit status ${code}`;
  if (/premature end|truncat/i.test(stderr)) return strataError('TRUNCATED_ARCHIVE', `zstd layer is truncated: ${said}`);
  if (/too much memory|window size larger/i.test(stderr)) {
    return strataError('UNSUPPORTED_ARCHIVE', `zstd frame window exceeds the ${MAX_ZSTD_WINDOW}-byte limit`);
  }
  return strataError('INVALID_ARCHIVE', `zstd layer is corrupt: ${said}`);
}

/**
 * The host's zstd, run as a filter: about five times fzstd's speed, on another core, with the
 * window's memory in its own process (and capped at the same limit). containerd prefers the
 * host's unpigz to Go's gzip for the same reasons.
 */
async function* zstdProcessDecode(binary: string, input: AsyncGenerator<Buffer>): AsyncGenerator<Buffer> {
  const child = spawn(binary, ['-d', '-c', '-q', `--memory=${MAX_ZSTD_WINDOW >> 20}MB`], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (text: string) => { if (stderr.length < 4096) stderr += text; });
  const exited = new Promise<number | null>((resolve) => child.once('close', resolve));
  const spawnFailed = new Promise<never>((_, reject) => child.once('error', reject));
  spawnFailed.catch(() => undefined);
  // (EPIPE once zstd has given up on the input: its exit status says why)
  child.stdin.on('error', () => undefined);
  let inputError: unknown = null;
  const feeding = (async () => {
    try {
      for await (const chunk of input) {
        if (child.stdin.destroyed) return;
        if (!child.stdin.write(chunk)) await drainedOrClosed(child.stdin);
      }
      child.stdin.end();
    } catch (err) {
      inputError = err;
      child.kill();
    }
  })();
  try {
    for await (const chunk of child.stdout) yield chunk as Buffer;
    const code = await Promise.race([exited, spawnFailed]);
    await feeding;
    if (inputError) throw inputError;
    if (code !== 0) throw zstdProcessError(code, stderr);
  } finally {
    if (child.exitCode === null) child.kill();
    child.stdout.destroy();
    void input.return(undefined);
  }
}

/** Where the host's zstd is (looked up once per process), or null. */
let hostZstd: Promise<string | null> | undefined;

export interface LayerStreamOptions {
  /** Which zstd decoder: the host's `zstd` where there is one (the default), or fzstd always. */
  zstd?: 'host' | 'builtin';
}

async function* unzstd(input: AsyncGenerator<Buffer>, opts: LayerStreamOptions): AsyncGenerator<Buffer> {
  const host = opts.zstd === 'builtin' ? null : await (hostZstd ??= which('zstd'));
  const checked = windowChecked(input);
  yield* host ? zstdProcessDecode(host, checked) : fzstdDecode(checked);
}

/**
 * Open a layer blob: detects the compression from the first bytes and returns the
 * uncompressed tar as chunks that can be tapped (backpressure preserved). A plain tar read as
 * FileChunks is returned as it is, its chunks lent. bzip2 and xz: UNSUPPORTED_ARCHIVE.
 */
export async function openLayerStream(source: Readable, opts: LayerStreamOptions = {}): Promise<TappableChunks> {
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
      return new TappedChunks(unzstd(input, opts));
    default:
      source.destroy();
      throw strataError('UNSUPPORTED_ARCHIVE',
        `${kind} layers are not supported (use an uncompressed, gzip or zstd layer tar)`, { compression: kind });
  }
}
