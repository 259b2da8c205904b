/**
 * tar-split (vbatts/tar-split v0.11.2, as moby 20.10 stores `tar-split.json.gz`): while a layer
 * tar is applied, record every byte that is not file data, plus a CRC-64 and size of each file's
 * data, so the identical tar can be rebuilt later from the layer's files.
 *
 * Records are newline-delimited JSON, gzipped: `{"type":2,"payload":<base64>,"position":N}` for
 * a raw segment, `{"type":1,"name":…,"size":…,"payload":<crc64 base64 or null>,"position":N}`
 * for a file. Split rules (shared/reference/image-formats.md §1.4): one segment before each entry
 * (previous padding + metadata headers + header), one file entry per header, one segment for the
 * end-of-archive blocks, one per chunk of trailing bytes, and a final empty segment.
 */
import { createHash } from 'node:crypto';
import { closeSync, read, readSync } from 'node:fs';
import { promisify } from 'node:util';
import { Transform, type Readable, type TransformCallback, type Writable } from 'node:stream';
import { createGunzip, createGzip, type Gunzip, type Gzip, type ZlibOptions } from 'node:zlib';
import { isStrataError, strataError } from '../errors.js';
import { Crc64 } from './crc64.js';
import { goJsonString } from './go-json.js';
import { PathSet } from './path-set.js';
import { goClean } from './paths.js';
import { TarDisassembler } from './tar-disassembler.js';

export const SEGMENT_TYPE = 2;
export const FILE_TYPE = 1;

export interface TarSplitEntry {
  type: 1 | 2;
  name?: string;
  nameRaw?: Buffer;
  size?: number;
  /** Segment bytes, or a file's 8-byte CRC-64 (null for a file of size 0). */
  payload: Buffer | null;
  position: number;
}

/** One NDJSON line (with its newline), byte-identical to Go's json.Encoder output. */
export function encodeTarSplitEntry(e: TarSplitEntry): string {
  let s = `{"type":${e.type}`;
  if (e.name) s += `,"name":${goJsonString(e.name)}`;
  if (e.nameRaw && e.nameRaw.length > 0) s += `,"name_raw":"${e.nameRaw.toString('base64')}"`;
  if (e.size) s += `,"size":${e.size}`;
  s += `,"payload":${e.payload === null ? 'null' : `"${e.payload.toString('base64')}"`}`;
  s += `,"position":${e.position}}\n`;
  return s;
}

/** Keys as tar-split writes them; others (Go's JSON decoding ignores case) are lower-cased first. */
const RECORD_KEYS = new Set(['type', 'name', 'name_raw', 'size', 'payload', 'position']);

/** A record's fields by lower-case key, its type checked. */
function recordFields(line: string): Record<string, unknown> & { type: 1 | 2 } {
  let obj: Record<string, unknown>;
  try {
    obj = JSON.parse(line) as Record<string, unknown>;
  } catch (err) {
    throw strataError('INVALID_ARCHIVE', `tar-split: invalid JSON record: ${(err as Error).message}`);
  }
  let fields = obj;
  for (const k in obj) {
    if (RECORD_KEYS.has(k)) continue;
    fields = {};
    for (const [key, v] of Object.entries(obj)) fields[key.toLowerCase()] = v;
    break;
  }
  const type = fields.type;
  if (type !== 1 && type !== 2) throw strataError('INVALID_ARCHIVE', `tar-split: unknown entry type ${String(type)}`);
  return fields as Record<string, unknown> & { type: 1 | 2 };
}

/** Parse one record (accepts both `name` and `name_raw`, keys in any order and any case). */
export function decodeTarSplitEntry(line: string): TarSplitEntry {
  const fields = recordFields(line);
  const payload = typeof fields.payload === 'string' ? Buffer.from(fields.payload, 'base64') : null;
  const e: TarSplitEntry = { type: fields.type, payload, position: typeof fields.position === 'number' ? fields.position : 0 };
  if (typeof fields.name === 'string' && fields.name !== '') e.name = fields.name;
  if (typeof fields.name_raw === 'string' && fields.name_raw !== '') e.nameRaw = Buffer.from(fields.name_raw, 'base64');
  if (typeof fields.size === 'number') e.size = fields.size;
  return e;
}

function nameKey(e: { name?: string; nameRaw?: Buffer }): string {
  // Go compares the raw bytes; latin1 keeps one char per byte ('/' and '.' are ASCII)
  const bytes = e.nameRaw ?? Buffer.from(e.name ?? '', 'utf8');
  return goClean(bytes.toString('latin1'));
}

function duplicate(name: string): Error {
  return strataError('DUPLICATE_PATH', `duplicates of file paths not supported: ${name}`, { path: name });
}

export interface TarSplitResult {
  /** "sha256:<hex>" of every uncompressed byte that passed through. */
  diffId: string;
  /** Bytes that passed through. */
  size: number;
}

export interface TarSplitRecorderOptions {
  /** Append the empty trailing segment moby 20.10 (tar-split v0.11.2) writes (default true). */
  trailingEmptySegment?: boolean;
  /** gzip level (default: zlib's default, as Go's compress/gzip). */
  level?: number;
}

/**
 * A pass-through for the uncompressed layer tar: bytes come out unchanged while the tar-split
 * records go, gzipped, into `sink` (a file stream, say). Memory stays bounded: records are
 * streamed, file data is only checksummed, and parsing is a synchronous push parser
 * (tar-disassembler.ts). Rejects duplicate cleaned paths (DUPLICATE_PATH) and malformed tars
 * as the reader does. `await recorder.finished()` after the input ends: it resolves once the
 * sink has everything, with the DiffID and byte count.
 */
export class TarSplitRecorder extends Transform {
  private readonly hash = createHash('sha256');
  private readonly gzip: Gzip;
  private readonly splitter: TarDisassembler;
  private readonly done: Promise<TarSplitResult>;
  private resolveDone!: (r: TarSplitResult) => void;
  private rejectDone!: (err: Error) => void;
  private pending: string[] = [];
  private pendingLength = 0;
  private bytes = 0;
  private digest: string | null = null;

  constructor(private readonly sink: Writable, private readonly opts: TarSplitRecorderOptions = {}) {
    super({ writableHighWaterMark: 1 << 20, readableObjectMode: true, readableHighWaterMark: 2 });
    this.done = new Promise((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    this.done.catch(() => undefined);
    // Records wait for gzip only once it is a few MiB behind (zlib passes stream options on):
    // it compresses on the thread pool, and at its default 16 KiB every flush waited for it.
    const gzipOptions: ZlibOptions & { writableHighWaterMark: number } = { writableHighWaterMark: 4 << 20 };
    if (opts.level !== undefined) gzipOptions.level = opts.level;
    this.gzip = createGzip(gzipOptions);
    this.gzip.on('error', (err) => this.destroy(err));
    sink.on('error', (err) => this.destroy(err));
    this.gzip.pipe(sink);
    this.splitter = new TarDisassembler((r) => {
      const line = encodeTarSplitEntry(r);
      this.pending.push(line);
      this.pendingLength += line.length;
    });
  }

  /** "sha256:<hex>" (available once the input has ended). */
  get diffId(): string {
    if (this.digest === null) throw strataError('INTERNAL', 'TarSplitRecorder: diffId read before the input ended');
    return this.digest;
  }

  /** Bytes seen so far. */
  get size(): number {
    return this.bytes;
  }

  finished(): Promise<TarSplitResult> {
    return this.done;
  }

  /** Hand the queued records to gzip; call `cb` once it has room again. */
  private flushPending(cb: () => void, force = false): void {
    if (this.pendingLength === 0 || (!force && this.pendingLength < 64 * 1024)) {
      cb();
      return;
    }
    const text = this.pending.join('');
    this.pending = [];
    this.pendingLength = 0;
    if (this.gzip.write(text)) cb();
    else this.gzip.once('drain', cb);
  }

  /**
   * Record a chunk without passing it on: for a source that shows each chunk to the recorder
   * itself (a tap on TappableChunks: recordTarSplit). Throws what the tar's parsing throws. Resolves once gzip has room
   * again; end the recorder with `end()` when the input has ended.
   */
  record(chunk: Buffer): Promise<void> | undefined {
    this.consume(chunk);
    if (this.pendingLength < 64 * 1024) return undefined;
    return new Promise((resolve) => this.flushPending(resolve));
  }

  private consume(chunk: Buffer): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    this.splitter.push(chunk);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    try {
      this.consume(chunk);
    } catch (err) {
      cb(err as Error);
      return;
    }
    this.push(chunk);
    this.flushPending(() => cb());
  }

  override _flush(cb: TransformCallback): void {
    try {
      this.splitter.end();
      if (this.opts.trailingEmptySegment !== false) {
        this.pending.push(encodeTarSplitEntry({ type: 2, payload: Buffer.alloc(0), position: this.splitter.records++ }));
        this.pendingLength += 1;
      }
    } catch (err) {
      cb(err as Error);
      return;
    }
    this.digest = `sha256:${this.hash.digest('hex')}`;
    this.flushPending(() => {
      const closed = new Promise<void>((resolve, reject) => {
        this.sink.once('finish', resolve);
        this.sink.once('close', resolve);
        this.sink.once('error', reject);
      });
      this.gzip.end();
      closed.then(
        () => {
          cb();
          this.resolveDone({ diffId: this.digest!, size: this.bytes });
        },
        (err: Error) => cb(err),
      );
    }, true);
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    this.rejectDone(err ?? strataError('INTERNAL', 'TarSplitRecorder destroyed before the layer ended'));
    this.gzip.destroy();
    // the records are useless now: close the sink (a temp file's descriptor, say)
    if (this.digest === null && !this.sink.destroyed) this.sink.destroy();
    cb(err);
  }
}

/** Longest record line taken (a header's segment is at most 16 metadata blocks of 1 MiB, in base64). */
const MAX_LINE = 64 << 20;

/**
 * The lines of NDJSON as bytes, a chunk's worth at a time, each valid until the next batch is
 * asked for: a yield per line cost a promise per record (a layer of 300,000 files has 600,000),
 * and decoding each line to a string cost as much again (segments need no string: decodeLine).
 */
async function* lineBatches(source: Readable): AsyncGenerator<Buffer[]> {
  // the start of a line the chunks so far have not ended: copies, joined once it ends
  let carry: Buffer[] = [];
  let carried = 0;
  for await (const c of source) {
    const chunk = c as Buffer;
    const batch: Buffer[] = [];
    let start = 0;
    if (carried > 0) {
      const nl = chunk.indexOf(0x0a);
      const end = nl === -1 ? chunk.length : nl;
      carry.push(Buffer.from(chunk.subarray(0, end)));
      carried += end;
      if (carried > MAX_LINE) throw strataError('INVALID_ARCHIVE', `tar-split: a record line longer than ${MAX_LINE} bytes`);
      if (nl === -1) continue;
      batch.push(Buffer.concat(carry, carried));
      carry = [];
      carried = 0;
      start = nl + 1;
    }
    for (let nl = chunk.indexOf(0x0a, start); nl !== -1; nl = chunk.indexOf(0x0a, start)) {
      if (nl > start) batch.push(chunk.subarray(start, nl));
      start = nl + 1;
    }
    if (start < chunk.length) {
      carry.push(Buffer.from(chunk.subarray(start)));
      carried = chunk.length - start;
    }
    if (batch.length > 0) yield batch;
  }
  if (carried > 0) yield [Buffer.concat(carry, carried)];
}

/** What every segment line of tar-split begins with, as Go's encoder writes it. */
const SEGMENT_HEAD = Buffer.from('{"type":2,"payload":"');
const SEGMENT_TAIL = Buffer.from('","position":');

/**
 * Where a segment line as tar-split writes it holds its base64 payload, and its position; null
 * for any other line (file entries, other spellings), which goes through JSON.parse.
 */
function segmentLine(line: Buffer): { from: number; to: number; position: number } | null {
  if (line.length < SEGMENT_HEAD.length + SEGMENT_TAIL.length + 2 || line.compare(SEGMENT_HEAD, 0, SEGMENT_HEAD.length, 0, SEGMENT_HEAD.length) !== 0) return null;
  const from = SEGMENT_HEAD.length;
  const to = line.indexOf(0x22, from);
  if (to === -1 || line.compare(SEGMENT_TAIL, 0, SEGMENT_TAIL.length, to, to + SEGMENT_TAIL.length) !== 0) return null;
  let position = 0;
  let i = to + SEGMENT_TAIL.length;
  const digits = i;
  for (; i < line.length && line[i]! >= 0x30 && line[i]! <= 0x39; i++) position = position * 10 + line[i]! - 0x30;
  if (i === digits || i - digits > 15 || line[i] !== 0x7d) return null;
  for (i++; i < line.length; i++) if (line[i] !== 0x20 && line[i] !== 0x0d && line[i] !== 0x09) return null;
  // (a backslash would be a JSON escape: JSON.parse decodes those)
  if (line.subarray(from, to).includes(0x5c)) return null;
  return { from, to, position };
}

/** Bytes that base64 text (padded, as Go writes it) decodes to. */
function base64Length(b: Buffer, from: number, to: number): number {
  let pad = 0;
  while (to - pad > from && b[to - pad - 1] === 0x3d) pad++;
  return Math.floor(((to - from) * 3) / 4) - pad;
}

/** One record from its line's bytes; null for a blank line. */
function decodeLine(line: Buffer): TarSplitEntry | null {
  const seg = segmentLine(line);
  if (seg) return { type: SEGMENT_TYPE, payload: Buffer.from(line.toString('latin1', seg.from, seg.to), 'base64'), position: seg.position };
  const text = line.toString('utf8').trim();
  return text === '' ? null : decodeTarSplitEntry(text);
}

async function writeOut(out: Writable, data: Buffer): Promise<void> {
  if (data.length === 0) return;
  if (out.destroyed) throw strataError('INTERNAL', 'output closed while assembling the layer tar');
  if (!out.write(data)) {
    await new Promise<void>((resolve, reject) => {
      const cleanup = () => {
        out.off('drain', onDrain);
        out.off('close', onClose);
        out.off('error', onError);
      };
      const onDrain = () => { cleanup(); resolve(); };
      const onClose = () => { cleanup(); reject(strataError('INTERNAL', 'output closed while assembling the layer tar')); };
      const onError = (err: Error) => { cleanup(); reject(err); };
      out.on('drain', onDrain).on('close', onClose).on('error', onError);
    });
  }
}

/**
 * Opens the file a tar-split entry names: a stream of its bytes, or a descriptor, which the
 * assembler reads and closes itself (no stream per file: for a layer of small files, ~10x faster).
 */
export type OpenFile = (name: string, nameRaw?: Buffer) => Promise<Readable | number> | number;

/** The rebuilt tar is written in blocks of this size, not a write per segment and per file. */
const OUTPUT_BLOCK = 1 << 20;
/**
 * A file up to this size is read by blocking reads: from the page cache they take microseconds,
 * and a read on the thread pool costs a round trip of tens. (With the output in blocks, `save` of
 * the bench's 10,000-file image went from 5.0 s to 0.9 s.)
 */
const READ_BLOCKING_MAX = 256 * 1024;
const readAsync = promisify(read);

/** Bytes gathered into blocks for `out`, with backpressure; a file's data is read straight into them. */
class BlockOutput {
  private block = Buffer.allocUnsafeSlow(OUTPUT_BLOCK);
  private used = 0;

  constructor(private readonly out: Writable) {}

  /** Room at the end of the current block, a new block begun first if it is full. */
  async room(): Promise<Buffer> {
    if (this.used === this.block.length) await this.flush();
    return this.block.subarray(this.used);
  }

  /** `n` bytes of the room were filled. */
  filled(n: number): void {
    this.used += n;
  }

  async append(data: Buffer): Promise<void> {
    for (let off = 0; off < data.length;) {
      const n = data.copy(await this.room(), 0, off);
      this.filled(n);
      off += n;
    }
  }

  async flush(): Promise<void> {
    if (this.used === 0) return;
    const full = this.block.subarray(0, this.used);
    // (the stream may hold the block: each is new)
    this.block = Buffer.allocUnsafeSlow(OUTPUT_BLOCK);
    this.used = 0;
    await writeOut(this.out, full);
  }
}

/** Copy `size` bytes of file data to `output`; the bytes found (size + 1 when the file is longer). */
async function copyData(source: Readable | number, size: number, output: BlockOutput, crc: Crc64): Promise<number> {
  let n = 0;
  if (typeof source !== 'number') {
    for await (const c of source) {
      const chunk = c as Buffer;
      crc.update(chunk);
      n += chunk.length;
      if (n > size) break;
      await output.append(chunk);
    }
    return n;
  }
  const blocking = size <= READ_BLOCKING_MAX;
  while (n <= size) {
    const room = await output.room();
    // one byte more than is left, where there is room, says whether the file grew
    const want = Math.min(room.length, size - n + 1);
    const got = blocking ? readSync(source, room, 0, want, null) : (await readAsync(source, room, 0, want, null)).bytesRead;
    if (got === 0) return n;
    const data = Math.min(got, size - n);
    crc.update(room.subarray(0, data));
    output.filled(data);
    n += got;
    if (got > data) return n;
  }
  return n;
}

/**
 * Rebuild the exact layer tar from its tar-split records and the layer's files, writing to
 * `out` (left open unless `opts.end`). Each file's size and CRC-64 are checked: DIGEST_MISMATCH
 * when the content on disk differs from what was recorded.
 */
export async function assembleTar(
  tarSplitGz: Readable,
  openFile: OpenFile,
  out: Writable,
  opts: { end?: boolean } = {},
): Promise<void> {
  const gunzip = tarSplitRecords(tarSplitGz);
  const seen = new PathSet();
  const output = new BlockOutput(out);
  try {
    for await (const batch of lineBatches(gunzip)) for (const line of batch) {
      const e = decodeLine(line);
      if (e === null) continue;
      if (e.type === SEGMENT_TYPE) {
        if (e.payload) await output.append(e.payload);
        continue;
      }
      const key = nameKey(e);
      const display = e.name ?? (e.nameRaw ?? Buffer.alloc(0)).toString('utf8');
      if (seen.has(key)) throw duplicate(display);
      seen.add(key);
      const size = e.size ?? 0;
      if (size <= 0) continue;
      const file = await openFile(display, e.nameRaw);
      const crc = new Crc64();
      let n: number;
      try {
        n = await copyData(file, size, output, crc);
      } finally {
        if (typeof file === 'number') closeSync(file);
        else file.destroy();
      }
      if (n !== size) {
        throw strataError('DIGEST_MISMATCH', `file size mismatch for ${display}: tar-split says ${size} bytes, found ${n > size ? 'more' : n}`, { path: display });
      }
      if (e.payload && !crc.digest().equals(e.payload)) {
        throw strataError('DIGEST_MISMATCH', `file integrity checksum failed for ${display}`, { path: display });
      }
    }
    await output.flush();
  } catch (err) {
    if (isStrataError(err)) throw err;
    const code = (err as NodeJS.ErrnoException)?.code;
    if (typeof code === 'string' && code.startsWith('Z_')) {
      throw strataError('INVALID_ARCHIVE', `tar-split data is corrupt: ${(err as Error).message}`, {}, err);
    }
    throw err;
  } finally {
    tarSplitGz.unpipe(gunzip);
  }
  if (opts.end) out.end();
}

/** The uncompressed records of a tar-split.json.gz, inflated in large pieces (each is a trip to the thread pool). */
function tarSplitRecords(tarSplitGz: Readable): Gunzip {
  const gunzip = createGunzip({ chunkSize: 256 * 1024 });
  tarSplitGz.on('error', (err) => gunzip.destroy(err));
  tarSplitGz.pipe(gunzip);
  return gunzip;
}

/**
 * The length of the tar that `assembleTar` rebuilds from these records, without decoding them:
 * segments' base64 lengths and files' sizes.
 */
export async function assembledTarSize(tarSplitGz: Readable): Promise<number> {
  const gunzip = tarSplitRecords(tarSplitGz);
  let total = 0;
  try {
    for await (const batch of lineBatches(gunzip)) for (const line of batch) {
      const seg = segmentLine(line);
      if (seg) {
        total += base64Length(line, seg.from, seg.to);
        continue;
      }
      const text = line.toString('utf8').trim();
      if (text === '') continue;
      const { type, payload, size } = recordFields(text);
      if (type === SEGMENT_TYPE) total += typeof payload === 'string' ? Buffer.byteLength(payload, 'base64') : 0;
      else total += typeof size === 'number' ? size : 0;
    }
  } finally {
    tarSplitGz.unpipe(gunzip);
  }
  return total;
}
