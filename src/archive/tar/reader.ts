/**
 * Streaming tar reader: one entry at a time, bounded memory, with raw byte accounting for
 * tar-split. It follows Go archive/tar (the reader Docker and tar-split use) wherever the two
 * could disagree on what an archive means: PAX/GNU long-name merging, the end-of-archive rules,
 * a clean end of input between entries. Errors are StrataErrors: INVALID_ARCHIVE (bad
 * checksum, malformed fields, oversized metadata), TRUNCATED_ARCHIVE (input ends inside a
 * header or data), UNSUPPORTED_ARCHIVE (GNU sparse files).
 */
import { Readable } from 'node:stream';
import { strataError } from '../../errors.js';
import {
  BLOCK, TYPE, blockPadding, decodeHeader, isHeaderOnlyType, isZeroBlock, type TarHeader,
} from './header.js';
import { MAX_SPECIAL_FILE_SIZE, parsePaxInteger, parsePaxRecords, parsePaxTime, type PaxRecords } from './pax.js';

export interface TarEntry {
  header: TarHeader;
  /**
   * With the `raw` option: the non-data bytes read for this entry, in order: the padding that
   * ended the previous entry's data, every metadata pseudo-entry (PAX `x`, GNU `L`/`K`) with its
   * data and padding, and this entry's header block. Exactly tar-split's segment before a file
   * entry. (Not kept by default: an applier has no use for them, and they cost copies.)
   */
  raw?: Buffer;
  /** Bytes of data that follow in the archive (0 for header-only types such as dirs, links). */
  dataSize: number;
  /** The data as a stream with backpressure. Read it, or leave it: the reader skips the rest. */
  readonly body: Readable;
  /**
   * The data as zero-copy chunks (faster than `body`; use one or the other). From a lending
   * source (FileChunks) a chunk is valid only until the next one is asked for: copy what you keep.
   */
  chunks(): AsyncGenerator<Buffer, void, undefined>;
  /** All the data in one buffer (for small entries: it is held in memory). */
  readAll(): Promise<Buffer>;
  /**
   * All the data, if it has been received and lies in one chunk: a view, valid until the next call
   * into the reader (as a chunk from `chunks()` is). Else null, and nothing is taken.
   */
  dataAtHand(): Buffer | null;
}

export interface ReadTarOptions {
  /** Keep each entry's non-data bytes as `raw` (implied by `onEnd`, which is given the last). */
  raw?: boolean;
  /** The end of archive: the last padding plus the zero blocks read (0, 1 or 2 blocks). */
  onEnd?: (raw: Buffer) => void | Promise<void>;
  /** Bytes after the end marker (GNU record padding, garbage), in pieces of at most 1 MiB. */
  onTrailing?: (chunk: Buffer) => void | Promise<void>;
  /** Metadata pseudo-entries allowed before one real entry (default 16). */
  maxMetaHeaders?: number;
}

export const TRAILING_CHUNK = 1 << 20;
export const DEFAULT_MAX_META_HEADERS = 16;

function truncated(what: string, context: Record<string, unknown> = {}): Error {
  return strataError('TRUNCATED_ARCHIVE', `tar archive is truncated: input ended inside ${what}`, context);
}

/**
 * A source that lends its chunks (FileChunks): each may be overwritten once given back. The
 * reader gives a chunk back when its bytes have been consumed and the caller has come back for
 * more, so a data piece stays valid until the next call into the reader; a header block is
 * parsed where it lies, and everything the reader keeps or hands out whole (`raw`, `readAll`)
 * is copied.
 */
export interface LendingSource {
  release(chunk: Uint8Array): void;
}

function isLending(source: unknown): source is LendingSource {
  return typeof (source as Partial<LendingSource>).release === 'function';
}

/** Buffers source chunks; hands out exact byte counts or zero-copy slices. */
class ByteSource {
  private readonly chunks: Buffer[] = [];
  private head = 0;
  length = 0;
  done = false;
  private readonly it: AsyncIterator<unknown>;
  private readonly lender: LendingSource | null;
  /** Chunks consumed whose last piece the caller may still be using: released at its next call. */
  private consumed: Buffer[] = [];

  constructor(source: AsyncIterable<unknown>) {
    this.it = source[Symbol.asyncIterator]();
    this.lender = isLending(source) ? source : null;
  }

  /** Pieces are lent: a caller that keeps one past its next call must copy it. */
  get lends(): boolean {
    return this.lender !== null;
  }

  private releaseConsumed(): void {
    if (this.consumed.length === 0) return;
    for (const chunk of this.consumed) this.lender!.release(chunk);
    this.consumed = [];
  }

  /** Whether `n` bytes are buffered already (`need` without waiting: no await when they are). */
  has(n: number): boolean {
    this.releaseConsumed();
    return this.length >= n;
  }

  /** Ensure `n` bytes are buffered; false if the input ends first. */
  async need(n: number): Promise<boolean> {
    this.releaseConsumed();
    while (this.length < n && !this.done) {
      const r = await this.it.next();
      if (r.done) {
        this.done = true;
        break;
      }
      const value = r.value;
      const chunk = Buffer.isBuffer(value) ? value : Buffer.from(value as Uint8Array);
      if (chunk.length === 0) continue;
      this.chunks.push(chunk);
      this.length += chunk.length;
    }
    return this.length >= n;
  }

  /** Exactly n buffered bytes (copied when they span chunks or the source lends them). */
  take(n: number): Buffer {
    const first = this.chunks[this.head]!;
    if (first.length >= n) {
      return this.lender ? Buffer.from(this.takeSome(n)) : this.takeSome(n);
    }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const piece = this.takeSome(n - off);
      piece.copy(out, off);
      off += piece.length;
    }
    return out;
  }

  /**
   * Exactly n buffered bytes, valid until the next call into the source: a view where they lie
   * in one chunk (even one that is lent), else a copy.
   */
  view(n: number): Buffer {
    return this.chunks[this.head]!.length >= n ? this.takeSome(n) : this.take(n);
  }

  /** Whether the first buffered chunk holds `n` bytes (so `takeSome(n)` gives them all). */
  firstChunkHolds(n: number): boolean {
    return this.length > 0 && this.chunks[this.head]!.length >= n;
  }

  /** Drop n buffered bytes. */
  skip(n: number): void {
    while (n > 0) n -= this.takeSome(n).length;
  }

  /** Up to `max` bytes from the first buffered chunk (zero copy). Requires length > 0. */
  takeSome(max: number): Buffer {
    this.releaseConsumed();
    const first = this.chunks[this.head]!;
    if (first.length <= max) {
      if (this.lender) this.consumed.push(first);
      this.chunks[this.head] = undefined as unknown as Buffer;
      this.head++;
      if (this.head > 64 && this.head * 2 > this.chunks.length) {
        this.chunks.splice(0, this.head);
        this.head = 0;
      }
      this.length -= first.length;
      return first;
    }
    const piece = first.subarray(0, max);
    this.chunks[this.head] = first.subarray(max);
    this.length -= max;
    return piece;
  }

  takeAll(): Buffer {
    return this.length === 0 ? Buffer.alloc(0) : this.take(this.length);
  }

  async return(): Promise<void> {
    this.releaseConsumed();
    await this.it.return?.();
  }
}

class Entry implements TarEntry {
  private remaining: number;
  private bodyStream: EntryBody | null = null;
  private reading = false;
  private pumping: Promise<void> | null = null;

  constructor(
    private readonly src: ByteSource,
    readonly header: TarHeader,
    readonly raw: Buffer | undefined,
    readonly dataSize: number,
  ) {
    this.remaining = dataSize;
  }

  /** The next piece of data, or null at its end. */
  async nextChunk(): Promise<Buffer | null> {
    if (this.remaining === 0) return null;
    if (this.src.length === 0 && !(await this.src.need(1))) {
      throw truncated('file data', { path: this.header.name, missing: this.remaining });
    }
    const piece = this.src.takeSome(this.remaining);
    this.remaining -= piece.length;
    return piece;
  }

  dataAtHand(): Buffer | null {
    if (this.reading) throw strataError('INTERNAL', 'tar entry data is already being read');
    const piece = this.remaining === 0 ? Buffer.alloc(0) : this.src.firstChunkHolds(this.remaining) ? this.src.takeSome(this.remaining) : null;
    if (piece) {
      this.reading = true;
      this.remaining = 0;
    }
    return piece;
  }

  /** Whether `finish` has anything left to do (skip data nobody read). */
  get unfinished(): boolean {
    return this.remaining > 0 || this.bodyStream !== null;
  }

  async *chunks(): AsyncGenerator<Buffer, void, undefined> {
    if (this.reading) throw strataError('INTERNAL', 'tar entry data is already being read');
    this.reading = true;
    for (;;) {
      const c = await this.nextChunk();
      if (c === null) return;
      yield c;
    }
  }

  async readAll(): Promise<Buffer> {
    if (this.reading) throw strataError('INTERNAL', 'tar entry data is already being read');
    this.reading = true;
    if (this.remaining === 0) return Buffer.alloc(0);
    if (this.src.length >= this.remaining) {
      const all = this.src.take(this.remaining);
      this.remaining = 0;
      return all;
    }
    const parts: Buffer[] = [];
    for (;;) {
      const c = await this.nextChunk();
      if (c === null) return parts.length === 1 ? parts[0]! : Buffer.concat(parts);
      parts.push(this.src.lends ? Buffer.from(c) : c);
    }
  }

  get body(): Readable {
    if (!this.bodyStream) {
      if (this.reading) throw strataError('INTERNAL', 'tar entry data is already being read');
      this.reading = true;
      this.bodyStream = new EntryBody(this);
    }
    return this.bodyStream;
  }

  /** Called by EntryBody._read: push until backpressure or the end. */
  pump(body: EntryBody): void {
    if (this.pumping) return;
    this.pumping = (async () => {
      try {
        for (;;) {
          if (body.destroyed) return;
          const c = await this.nextChunk();
          if (c === null) {
            body.push(null);
            return;
          }
          if (!body.push(this.src.lends ? Buffer.from(c) : c)) return;
        }
      } catch (err) {
        body.destroy(err as Error);
      } finally {
        this.pumping = null;
      }
    })();
  }

  /** Skip whatever data the consumer left unread. */
  async finish(): Promise<void> {
    if (this.bodyStream && !this.bodyStream.readableEnded) {
      while (this.pumping) await this.pumping;
      if (!this.bodyStream.destroyed && this.remaining > 0) this.bodyStream.destroy();
    }
    while (this.remaining > 0) await this.nextChunk();
  }
}

class EntryBody extends Readable {
  constructor(private readonly entry: Entry) {
    super({ highWaterMark: 1 << 20 });
  }

  override _read(): void {
    this.entry.pump(this);
  }
}

function applyPax(header: TarHeader, records: PaxRecords): void {
  header.pax = records;
  for (const [key, valueBytes] of records) {
    if (valueBytes.length === 0) continue; // keep the USTAR value, as Go does
    if (key.startsWith('GNU.sparse.')) {
      throw strataError('UNSUPPORTED_ARCHIVE', `GNU sparse files are not supported (PAX ${key}) in ${header.name}`,
        { path: header.name });
    }
    const value = valueBytes.toString('utf8');
    switch (key) {
      case 'path':
        header.nameRaw = valueBytes;
        header.name = value;
        break;
      case 'linkpath':
        header.linknameRaw = valueBytes;
        header.linkname = value;
        break;
      case 'uname': header.uname = value; break;
      case 'gname': header.gname = value; break;
      case 'uid':
      case 'gid': {
        const id = parsePaxInteger(key, value);
        if (id < 0 || id > 0xffffffff) throw strataError('INVALID_ARCHIVE', `PAX header: ${key} ${id} is out of range`);
        header[key] = id;
        break;
      }
      case 'size': {
        const size = parsePaxInteger('size', value);
        if (size < 0) throw strataError('INVALID_ARCHIVE', `PAX header: negative size ${size}`);
        header.size = size;
        break;
      }
      case 'mtime': header.mtime = parsePaxTime(value); break;
      case 'atime': header.atime = parsePaxTime(value); break;
      case 'ctime': header.ctime = parsePaxTime(value); break;
      default:
        if (key.startsWith('SCHILY.xattr.')) {
          header.xattrs ??= new Map();
          header.xattrs.set(key.slice('SCHILY.xattr.'.length), valueBytes);
        }
    }
  }
  if (header.format !== 'gnu') header.format = 'pax';
}

/**
 * Finish a real entry's header with the metadata headers that preceded it: PAX records, then
 * GNU long name/link (which win, as in Go), V7 trailing-slash directories. Refuses sparse files.
 */
export function completeHeader(header: TarHeader, pax: PaxRecords | null, longName: Buffer | null, longLink: Buffer | null): void {
  if (pax) applyPax(header, pax);
  if (longName) {
    header.nameRaw = longName;
    header.name = longName.toString('utf8');
  }
  if (longLink) {
    header.linknameRaw = longLink;
    header.linkname = longLink.toString('utf8');
  }
  if (header.typeflag === TYPE.fileOld) {
    header.typeflag = header.name.endsWith('/') ? TYPE.dir : TYPE.file;
  }
  if (header.typeflag === TYPE.gnuSparse) {
    throw strataError('UNSUPPORTED_ARCHIVE', `GNU sparse files are not supported (${header.name})`, { path: header.name });
  }
}

/** The bytes up to the first NUL (Go's parseString on a GNU long name). */
export function cString(data: Buffer): Buffer {
  const nul = data.indexOf(0);
  return nul === -1 ? data : data.subarray(0, nul);
}

/**
 * Read a tar stream entry by entry: `for await (const { header, body } of readTar(stream))`.
 * The next entry is parsed only when asked for, after the previous entry's data is read or
 * skipped, so memory stays bounded (metadata headers are capped at 1 MiB, as in Go).
 */
export async function* readTar(
  source: AsyncIterable<unknown>,
  opts: ReadTarOptions = {},
): AsyncGenerator<TarEntry, void, undefined> {
  const src = new ByteSource(source);
  const maxMeta = opts.maxMetaHeaders ?? DEFAULT_MAX_META_HEADERS;
  // without `raw`, padding is skipped and header blocks are parsed where they lie
  const keepRaw = opts.raw === true || opts.onEnd !== undefined;
  let raw: Buffer[] = [];
  const keep = (bytes: Buffer): void => {
    if (keepRaw) raw.push(bytes);
  };
  const block = (): Buffer => {
    if (!keepRaw) return src.view(BLOCK);
    const b = src.take(BLOCK);
    raw.push(b);
    return b;
  };
  let pad = 0;
  try {
    for (;;) {
      raw = [];
      if (pad > 0) {
        // Go treats missing padding at the very end as a clean end of input
        const ok = src.has(pad) || await src.need(pad);
        if (!ok) {
          raw.push(src.takeAll());
          await opts.onEnd?.(Buffer.concat(raw));
          return;
        }
        if (keepRaw) raw.push(src.take(pad));
        else src.skip(pad);
        pad = 0;
      }
      let paxRecords: PaxRecords | null = null;
      let longName: Buffer | null = null;
      let longLink: Buffer | null = null;
      let metaCount = 0;
      for (;;) {
        if (!src.has(BLOCK) && !(await src.need(BLOCK))) {
          const rest = src.takeAll();
          if (rest.length > 0) throw truncated('a header block', { bytes: rest.length });
          if (metaCount > 0) throw truncated('the metadata headers of an entry');
          await opts.onEnd?.(Buffer.concat(raw));
          return;
        }
        const first = block();
        if (isZeroBlock(first)) {
          if (!(await src.need(BLOCK))) {
            const rest = src.takeAll();
            if (rest.length > 0) throw truncated('the end-of-archive marker');
            await opts.onEnd?.(Buffer.concat(raw));
            return;
          }
          if (!isZeroBlock(block())) {
            throw strataError('INVALID_ARCHIVE', 'tar archive: a zero block followed by a non-zero block');
          }
          await opts.onEnd?.(Buffer.concat(raw));
          // trailing bytes, in pieces as they come (at most 1 MiB each)
          for (;;) {
            if (src.length === 0 && !(await src.need(1))) break;
            const piece = Buffer.from(src.takeSome(TRAILING_CHUNK));
            await opts.onTrailing?.(piece);
          }
          return;
        }
        const header = decodeHeader(first); // (copies what it keeps: `first` may be a lent view)
        const flag = header.typeflag;
        if (flag === TYPE.paxHeader || flag === TYPE.paxGlobal || flag === TYPE.gnuLongName || flag === TYPE.gnuLongLink) {
          if (++metaCount > maxMeta) {
            throw strataError('INVALID_ARCHIVE', `tar archive: more than ${maxMeta} metadata headers before one entry`);
          }
          if (header.size > MAX_SPECIAL_FILE_SIZE) {
            throw strataError('INVALID_ARCHIVE',
              `tar archive: ${flag === TYPE.paxHeader || flag === TYPE.paxGlobal ? 'PAX header' : 'GNU long name'} of ${header.size} bytes exceeds the 1 MiB limit`);
          }
          if (flag === TYPE.paxGlobal) {
            // returned as an entry of its own; its padding opens the next segment, as in Go
            if (!(await src.need(header.size))) throw truncated('a PAX global header');
            const data = Buffer.from(src.take(header.size));
            keep(data);
            const records = parsePaxRecords(data);
            const g: TarHeader = { ...header, size: 0, pax: records, format: 'pax' };
            pad = blockPadding(header.size);
            yield new Entry(src, g, keepRaw ? Buffer.concat(raw) : undefined, 0);
            break;
          }
          const total = header.size + blockPadding(header.size);
          if (!(await src.need(total))) throw truncated('a metadata header');
          const data = Buffer.from(src.take(header.size));
          keep(data);
          if (total > header.size) {
            if (keepRaw) raw.push(src.take(total - header.size));
            else src.skip(total - header.size);
          }
          if (flag === TYPE.paxHeader) paxRecords = parsePaxRecords(data);
          else if (flag === TYPE.gnuLongName) longName = Buffer.from(cString(data));
          else longLink = Buffer.from(cString(data));
          continue;
        }
        completeHeader(header, paxRecords, longName, longLink);
        const dataSize = isHeaderOnlyType(header.typeflag) ? 0 : header.size;
        const entry = new Entry(src, header, keepRaw ? Buffer.concat(raw) : undefined, dataSize);
        yield entry;
        if (entry.unfinished) await entry.finish();
        pad = blockPadding(dataSize);
        break;
      }
    }
  } finally {
    await src.return().catch(() => undefined);
  }
}
