/**
 * The tar-split disassembler as a synchronous push parser: feed it the uncompressed tar chunk by
 * chunk, it calls back with tar-split records (image-formats.md §1.4) and keeps no file data.
 * Same header semantics as readTar (completeHeader, the same limits and error codes), but no
 * promises per entry, so recording costs little more than the CRC-64 of the data.
 *
 * It sees every byte of a layer, so it allocates as little as it can: a header block wholly in
 * the chunk is parsed where it lies, and the bytes of a segment gather in one reused buffer.
 */
import { isUtf8 } from 'node:buffer';
import { strataError } from '../errors.js';
import { Crc64 } from './crc64.js';
import { PathSet } from './path-set.js';
import { goClean } from './paths.js';
import { BLOCK, TYPE, blockPadding, decodeHeader, isHeaderOnlyType, isZeroBlock, type TarHeader } from './tar/header.js';
import { MAX_SPECIAL_FILE_SIZE, parsePaxRecords, type PaxRecords } from './tar/pax.js';
import { DEFAULT_MAX_META_HEADERS, TRAILING_CHUNK, cString, completeHeader } from './tar/reader.js';
import type { TarSplitEntry } from './tar-split.js';

/** Room for a segment's bytes kept between segments (one grown past it for huge metadata is let go). */
const SEGMENT_ROOM = 64 * 1024;

type State = 'header' | 'meta' | 'data' | 'pad' | 'zero2' | 'trailing';

function truncated(what: string): Error {
  return strataError('TRUNCATED_ARCHIVE', `tar archive is truncated: input ended inside ${what}`);
}

export class TarDisassembler {
  private state: State = 'header';
  private need = BLOCK;
  private acc: Buffer[] = [];
  private accLen = 0;
  /** The segment being gathered: padding, metadata headers, the header. */
  private raw = Buffer.allocUnsafe(SEGMENT_ROOM);
  private rawLength = 0;
  /** Records emitted so far: the next one's position. */
  records = 0;
  private meta: TarHeader | null = null;
  private pax: PaxRecords | null = null;
  private longName: Buffer | null = null;
  private longLink: Buffer | null = null;
  private metaCount = 0;
  private file: TarHeader | null = null;
  private dataSize = 0;
  private crc: Crc64 | null = null;
  private readonly seen = new PathSet();
  private readonly maxMeta: number;

  /**
   * `emit` gets each record as it is made; a segment's payload is only valid during the call
   * (its bytes are in a buffer used again for the next).
   */
  constructor(private readonly emit: (r: TarSplitEntry) => void, opts: { maxMetaHeaders?: number } = {}) {
    this.maxMeta = opts.maxMetaHeaders ?? DEFAULT_MAX_META_HEADERS;
  }

  push(chunk: Buffer): void {
    let off = 0;
    const len = chunk.length;
    while (off < len) {
      switch (this.state) {
        case 'trailing': {
          const n = Math.min(TRAILING_CHUNK, len - off);
          this.emit({ type: 2, payload: chunk.subarray(off, off + n), position: this.records++ });
          off += n;
          break;
        }
        case 'data': {
          const n = Math.min(this.need, len - off);
          this.crc!.update(chunk.subarray(off, off + n));
          this.need -= n;
          off += n;
          if (this.need === 0) this.endFile();
          break;
        }
        case 'pad': {
          const n = Math.min(this.need, len - off);
          this.gather(chunk, off, off + n);
          this.need -= n;
          off += n;
          if (this.need === 0) this.expectHeader();
          break;
        }
        default: {
          if (this.accLen === 0 && len - off >= this.need) {
            // the whole block (or metadata) is here: no copy to parse it
            const block = chunk.subarray(off, off + this.need);
            off += this.need;
            this.complete(block);
            break;
          }
          const n = Math.min(this.need - this.accLen, len - off);
          this.acc.push(Buffer.from(chunk.subarray(off, off + n)));
          this.accLen += n;
          off += n;
          if (this.accLen === this.need) {
            const block = this.acc.length === 1 ? this.acc[0]! : Buffer.concat(this.acc);
            this.acc = [];
            this.accLen = 0;
            this.complete(block);
          }
        }
      }
    }
  }

  /** The input ended: flush the end-of-archive segment or fail if it ended mid-entry. */
  end(): void {
    switch (this.state) {
      case 'header':
        if (this.accLen > 0) throw truncated('a header block');
        if (this.metaCount > 0) throw truncated('the metadata headers of an entry');
        this.flushRaw();
        return;
      case 'zero2':
        if (this.accLen > 0) throw truncated('the end-of-archive marker');
        this.flushRaw();
        return;
      case 'pad':
        // Go treats missing padding at the very end as a clean end of input
        this.flushRaw();
        return;
      case 'data':
        throw truncated('file data');
      case 'meta':
        throw truncated('a metadata header');
      case 'trailing':
        return;
    }
  }

  /** Add bytes to the segment being gathered. */
  private gather(src: Uint8Array, start = 0, end = src.length): void {
    const n = end - start;
    if (this.rawLength + n > this.raw.length) {
      const grown = Buffer.allocUnsafe(Math.max(2 * this.raw.length, this.rawLength + n));
      this.raw.copy(grown, 0, 0, this.rawLength);
      this.raw = grown;
    }
    this.raw.set(src.subarray(start, end), this.rawLength);
    this.rawLength += n;
  }

  private flushRaw(): void {
    if (this.rawLength === 0) return;
    const payload = this.raw.subarray(0, this.rawLength);
    this.rawLength = 0;
    this.emit({ type: 2, payload, position: this.records++ });
    if (this.raw.length > SEGMENT_ROOM) this.raw = Buffer.allocUnsafe(SEGMENT_ROOM);
  }

  private expectHeader(): void {
    this.state = 'header';
    this.need = BLOCK;
  }

  private fileRecord(h: TarHeader, payload: Buffer | null): void {
    const key = goClean(h.nameRaw.toString('latin1'));
    if (this.seen.has(key)) {
      throw strataError('DUPLICATE_PATH', `duplicates of file paths not supported: ${h.name}`, { path: h.name });
    }
    this.seen.add(key);
    const position = this.records++;
    if (isUtf8(h.nameRaw)) this.emit({ type: 1, name: h.name, size: h.size, payload, position });
    else this.emit({ type: 1, nameRaw: h.nameRaw, size: h.size, payload, position });
  }

  private complete(block: Buffer): void {
    if (this.state === 'zero2') {
      if (!isZeroBlock(block)) throw strataError('INVALID_ARCHIVE', 'tar archive: a zero block followed by a non-zero block');
      this.gather(block);
      this.flushRaw();
      this.state = 'trailing';
      return;
    }
    if (this.state === 'meta') {
      const h = this.meta!;
      const data = block.subarray(0, h.size);
      this.gather(block);
      this.meta = null;
      if (h.typeflag === TYPE.paxGlobal) {
        const records = parsePaxRecords(Buffer.from(data));
        this.flushRaw();
        this.fileRecord({ ...h, size: 0, pax: records }, null);
        this.metaCount = 0;
        this.pax = null;
        this.longName = null;
        this.longLink = null;
        this.state = 'pad';
        this.need = blockPadding(h.size);
        if (this.need === 0) this.expectHeader();
        return;
      }
      if (h.typeflag === TYPE.paxHeader) this.pax = parsePaxRecords(Buffer.from(data));
      else if (h.typeflag === TYPE.gnuLongName) this.longName = Buffer.from(cString(data));
      else this.longLink = Buffer.from(cString(data));
      this.expectHeader();
      return;
    }
    // a header block
    if (isZeroBlock(block)) {
      this.gather(block);
      this.state = 'zero2';
      this.need = BLOCK;
      return;
    }
    const header = decodeHeader(block);
    this.gather(block);
    const flag = header.typeflag;
    if (flag === TYPE.paxHeader || flag === TYPE.paxGlobal || flag === TYPE.gnuLongName || flag === TYPE.gnuLongLink) {
      if (++this.metaCount > this.maxMeta) {
        throw strataError('INVALID_ARCHIVE', `tar archive: more than ${this.maxMeta} metadata headers before one entry`);
      }
      if (header.size > MAX_SPECIAL_FILE_SIZE) {
        throw strataError('INVALID_ARCHIVE', `tar archive: metadata header of ${header.size} bytes exceeds the 1 MiB limit`);
      }
      this.meta = header;
      this.state = 'meta';
      this.need = flag === TYPE.paxGlobal ? header.size : header.size + blockPadding(header.size);
      if (this.need === 0) this.complete(Buffer.alloc(0));
      return;
    }
    completeHeader(header, this.pax, this.longName, this.longLink);
    this.pax = null;
    this.longName = null;
    this.longLink = null;
    this.metaCount = 0;
    this.flushRaw();
    this.file = header;
    this.dataSize = isHeaderOnlyType(header.typeflag) ? 0 : header.size;
    this.crc = header.size > 0 ? new Crc64() : null;
    if (this.dataSize > 0) {
      this.state = 'data';
      this.need = this.dataSize;
    } else {
      this.endFile();
    }
  }

  private endFile(): void {
    const h = this.file!;
    this.file = null;
    this.fileRecord(h, this.crc ? this.crc.digest() : null);
    this.crc = null;
    this.state = 'pad';
    this.need = blockPadding(this.dataSize);
    if (this.need === 0) this.expectHeader();
  }
}
