/**
 * Pure encode/decode of 512-byte tar header blocks (V7, USTAR, GNU, STAR), numeric fields in
 * octal or base-256, and the Go `archive/tar` rules Docker's layer code relies on (checksum
 * accepted signed or unsigned, USTAR prefix joined with '/', V7 trailing slash = directory).
 * No I/O here: the streaming reader (reader.ts) and writer (writer.ts) drive these functions.
 */
import { strataError } from '../../errors.js';
import { encodePaxRecords, type PaxRecords } from './pax.js';

export const BLOCK = 512;

/** Type flags (one ASCII byte). The reader turns `\0` into `0` (or `5` for a V7 `name/`). */
export const TYPE = {
  file: '0',
  fileOld: '\0',
  link: '1',
  symlink: '2',
  char: '3',
  block: '4',
  dir: '5',
  fifo: '6',
  contiguous: '7',
  paxHeader: 'x',
  paxGlobal: 'g',
  gnuLongName: 'L',
  gnuLongLink: 'K',
  gnuSparse: 'S',
  gnuDumpDir: 'D',
  gnuMultiVolume: 'M',
  gnuVolumeHeader: 'V',
} as const;

export type TarFormat = 'v7' | 'ustar' | 'gnu' | 'star' | 'pax';

/** A decoded header, after PAX/GNU long-name merging (see reader.ts). */
export interface TarHeader {
  /** Path as in the archive (PAX `path`, GNU `L`, or prefix + '/' + name), UTF-8 decoded. */
  name: string;
  /** The same path's raw bytes (tar-split's `name_raw` when not valid UTF-8). */
  nameRaw: Buffer;
  /** The whole mode field, as stored (Docker writes the file type bits too: 0100644). */
  mode: number;
  uid: number;
  gid: number;
  /** Data size in bytes (header-only types have no data, whatever this says). */
  size: number;
  /** Modification time in seconds since the epoch; fractional when given by PAX. */
  mtime: number;
  atime?: number;
  ctime?: number;
  /** One ASCII character, `0` for regular files. */
  typeflag: string;
  linkname: string;
  linknameRaw: Buffer;
  uname: string;
  gname: string;
  devmajor: number;
  devminor: number;
  format: TarFormat;
  /** The PAX records that applied to this entry (`x` header), if any. */
  pax?: PaxRecords;
  /** Extended attributes from PAX `SCHILY.xattr.<name>` records. */
  xattrs?: Map<string, Buffer>;
}

/** Types that never have data in the archive (Go's isHeaderOnlyType). */
export function isHeaderOnlyType(typeflag: string): boolean {
  return typeflag === TYPE.link || typeflag === TYPE.symlink || typeflag === TYPE.char ||
    typeflag === TYPE.block || typeflag === TYPE.dir || typeflag === TYPE.fifo;
}

export function isZeroBlock(block: Uint8Array): boolean {
  for (let i = 0; i < BLOCK; i++) if (block[i] !== 0) return false;
  return true;
}

/** Bytes of zero padding after `size` bytes of data. */
export function blockPadding(size: number): number {
  return (BLOCK - (size % BLOCK)) % BLOCK;
}

// ---------------------------------------------------------------------------------------------
// numeric fields

/** The bytes of a string field up to the first NUL. */
export function fieldBytes(block: Uint8Array, start: number, length: number): Buffer {
  const end = fieldEnd(block, start, length);
  // (every header decodes several of these: one small pooled allocation each, no views)
  const out = Buffer.allocUnsafe(end - start);
  for (let i = start; i < end; i++) out[i - start] = block[i]!;
  return out;
}

/** A string field up to the first NUL, UTF-8 decoded. */
function fieldString(block: Buffer, start: number, length: number): string {
  const end = fieldEnd(block, start, length);
  return end === start ? '' : block.toString('utf8', start, end);
}

function fieldEnd(block: Uint8Array, start: number, length: number): number {
  let end = start;
  while (end < start + length && block[end] !== 0) end++;
  return end;
}

function invalid(message: string, context: Record<string, unknown> = {}): Error {
  return strataError('INVALID_ARCHIVE', message, context);
}

/**
 * A numeric field: base-256 when the high bit of the first byte is set (GNU/star extension,
 * two's complement), octal otherwise with leading/trailing spaces and NULs ignored. Throws
 * INVALID_ARCHIVE for invalid digits and for values JavaScript cannot represent exactly.
 */
export function parseNumeric(block: Uint8Array, start: number, length: number, field: string): number {
  const first = block[start]!;
  if (first & 0x80) {
    const negative = (first & 0x40) !== 0;
    const inv = negative ? 0xff : 0;
    let x = 0n;
    for (let i = 0; i < length; i++) {
      let c = block[start + i]! ^ inv;
      if (i === 0) c &= 0x7f;
      x = (x << 8n) | BigInt(c);
      if (x > BigInt(Number.MAX_SAFE_INTEGER)) {
        throw invalid(`tar header: base-256 ${field} is out of range`, { field });
      }
    }
    return negative ? -Number(x) - 1 : Number(x);
  }
  return parseOctal(block, start, length, field);
}

export function parseOctal(block: Uint8Array, start: number, length: number, field: string): number {
  let s = start;
  let e = start + length;
  while (s < e && (block[s] === 0x20 || block[s] === 0)) s++;
  while (e > s && (block[e - 1] === 0x20 || block[e - 1] === 0)) e--;
  if (s === e) return 0;
  // Go parses the string up to the first NUL
  for (let i = s; i < e; i++) if (block[i] === 0) { e = i; break; }
  let x = 0;
  for (let i = s; i < e; i++) {
    const c = block[i]!;
    if (c < 0x30 || c > 0x37) {
      throw invalid(`tar header: invalid octal digit in ${field}`, { field });
    }
    x = x * 8 + (c - 0x30);
  }
  if (x > Number.MAX_SAFE_INTEGER) throw invalid(`tar header: ${field} is out of range`, { field });
  return x;
}

/** Octal digits, zero-padded to length-1, then NUL (Go's formatOctal). */
export function formatOctal(target: Buffer, start: number, length: number, value: number): void {
  let s = value.toString(8);
  if (s.length < length - 1) s = '0'.repeat(length - 1 - s.length) + s;
  target.write(s, start, Math.min(s.length, length), 'latin1');
  if (s.length < length) target[start + s.length] = 0;
}

export function fitsInOctal(length: number, value: number): boolean {
  return value >= 0 && Number.isInteger(value) && value < 8 ** (length - 1);
}

/** Base-256 (GNU) encoding, for values that do not fit in octal. */
export function formatBase256(target: Buffer, start: number, length: number, value: number): void {
  let x = BigInt(value);
  const negative = x < 0n;
  for (let i = length - 1; i >= 0; i--) {
    target[start + i] = Number(BigInt.asUintN(8, x));
    x >>= 8n;
  }
  target[start] = (target[start]! & 0x7f) | 0x80 | (negative ? 0x40 : 0);
}

// ---------------------------------------------------------------------------------------------
// checksum and format

/** [unsigned, signed] sums of the block with the checksum field read as spaces. */
export function computeChecksum(block: Uint8Array): [number, number] {
  let unsigned = 0;
  let high = 0; // bytes >= 0x80, which count 256 less when signed
  if (block.byteOffset % 4 === 0) {
    // four bytes a step, summed in lanes that cannot overflow within a block: every header of
    // a layer is checked twice (the recorder and the applier), and the byte loop took 2.5-3x as long
    const words = new Uint32Array(block.buffer, block.byteOffset, BLOCK / 4);
    let even = 0; // bytes 0 and 2 of each word, in two 16-bit lanes (at most 128 × 255 each)
    let odd = 0; // bytes 1 and 3
    let highs = 0; // the top bit of each byte, in four 8-bit lanes (at most 128 each)
    for (let i = 0; i < BLOCK / 4; i++) {
      const w = words[i]!;
      even += w & 0x00ff00ff;
      odd += (w >>> 8) & 0x00ff00ff;
      highs += (w >>> 7) & 0x01010101;
    }
    unsigned = (even & 0xffff) + (even >>> 16) + (odd & 0xffff) + (odd >>> 16);
    high = (highs & 0xff) + ((highs >>> 8) & 0xff) + ((highs >>> 16) & 0xff) + (highs >>> 24);
  } else {
    for (let i = 0; i < BLOCK; i++) {
      const c = block[i]!;
      unsigned += c;
      high += c >> 7;
    }
  }
  for (let i = 148; i < 156; i++) {
    const c = block[i]!;
    unsigned += 0x20 - c;
    high -= c >> 7;
  }
  return [unsigned, unsigned - 256 * high];
}

const MAGIC_USTAR = Buffer.from('ustar\0', 'latin1');
const MAGIC_GNU = Buffer.from('ustar ', 'latin1');
const VERSION_GNU = Buffer.from(' \0', 'latin1');
const TRAILER_STAR = Buffer.from('tar\0', 'latin1');

function bytesEqual(block: Uint8Array, start: number, expected: Buffer): boolean {
  for (let i = 0; i < expected.length; i++) if (block[start + i] !== expected[i]) return false;
  return true;
}

export function detectFormat(block: Uint8Array): Exclude<TarFormat, 'pax'> {
  if (bytesEqual(block, 257, MAGIC_USTAR)) {
    return bytesEqual(block, 508, TRAILER_STAR) ? 'star' : 'ustar';
  }
  if (bytesEqual(block, 257, MAGIC_GNU) && bytesEqual(block, 263, VERSION_GNU)) return 'gnu';
  return 'v7';
}

/**
 * Decode one header block (not a zero block: the reader handles the end marker). Throws
 * INVALID_ARCHIVE on a checksum mismatch or a malformed numeric field.
 */
export function decodeHeader(bytes: Uint8Array): TarHeader {
  const block = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length);
  if (block.length < BLOCK) throw strataError('TRUNCATED_ARCHIVE', 'tar header: short block');
  let stored: number;
  try {
    stored = parseOctal(block, 148, 8, 'chksum');
  } catch {
    throw invalid('tar header: checksum field is not a number');
  }
  const [unsigned, signed] = computeChecksum(block);
  if (stored !== unsigned && stored !== signed) {
    throw invalid(`tar header: checksum mismatch (stored ${stored}, computed ${unsigned})`);
  }
  const format = detectFormat(block);
  const typeflag = String.fromCharCode(block[156]!);
  let nameRaw = fieldBytes(block, 0, 100);
  const linknameRaw = fieldBytes(block, 157, 100);
  const header: TarHeader = {
    name: '',
    nameRaw,
    mode: parseNumeric(block, 100, 8, 'mode'),
    uid: parseNumeric(block, 108, 8, 'uid'),
    gid: parseNumeric(block, 116, 8, 'gid'),
    size: parseNumeric(block, 124, 12, 'size'),
    mtime: parseNumeric(block, 136, 12, 'mtime'),
    typeflag,
    linkname: linknameRaw.length === 0 ? '' : linknameRaw.toString('utf8'),
    linknameRaw,
    uname: '',
    gname: '',
    devmajor: 0,
    devminor: 0,
    format,
  };
  if (format !== 'v7') {
    header.uname = fieldString(block, 265, 32);
    header.gname = fieldString(block, 297, 32);
    header.devmajor = parseNumeric(block, 329, 8, 'devmajor');
    header.devminor = parseNumeric(block, 337, 8, 'devminor');
    let prefix: Buffer | null = null;
    if (format === 'ustar') {
      prefix = fieldBytes(block, 345, 155);
    } else if (format === 'star') {
      prefix = fieldBytes(block, 345, 131);
      header.atime = parseNumeric(block, 476, 12, 'atime');
      header.ctime = parseNumeric(block, 488, 12, 'ctime');
    } else if (format === 'gnu') {
      if (block[345] !== 0) header.atime = parseNumeric(block, 345, 12, 'atime');
      if (block[357] !== 0) header.ctime = parseNumeric(block, 357, 12, 'ctime');
    }
    if (prefix && prefix.length > 0) {
      nameRaw = Buffer.concat([prefix, Buffer.from('/'), nameRaw]);
      header.nameRaw = nameRaw;
    }
  }
  header.name = nameRaw.toString('utf8');
  if (header.size < 0) throw invalid('tar header: negative size', { path: header.name });
  if (header.uid < 0 || header.gid < 0) throw invalid('tar header: negative uid or gid', { path: header.name });
  if (header.mode < 0) throw invalid('tar header: negative mode', { path: header.name });
  return header;
}

// ---------------------------------------------------------------------------------------------
// encoding

export interface HeaderInput {
  name: string;
  typeflag?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  size?: number;
  /** Seconds since the epoch; a fractional part forces a PAX `mtime` record. */
  mtime?: number;
  linkname?: string;
  uname?: string;
  gname?: string;
  devmajor?: number;
  devminor?: number;
  xattrs?: Map<string, Buffer> | Record<string, string | Buffer>;
  /** Extra PAX records to emit (tests, hostile archives). */
  pax?: PaxRecords;
}

function isAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) >= 0x80) return false;
  return true;
}

function toAscii(s: string): string {
  return isAscii(s) ? s : s.replace(/[^\x00-\x7f]/g, '');
}

/** Go's splitUSTARPath: a name over 100 bytes split into prefix (≤155) and name (≤100). */
export function splitUstarPath(name: string): [string, string] | null {
  let length = Buffer.byteLength(name);
  if (length <= 100 || !isAscii(name)) return null;
  if (length > 156) length = 156;
  else if (name[length - 1] === '/') length--;
  const i = name.lastIndexOf('/', length - 1);
  const nlen = name.length - i - 1;
  const plen = i;
  if (i <= 0 || nlen > 100 || nlen === 0 || plen > 155) return null;
  return [name.slice(0, i), name.slice(i + 1)];
}

function writeString(block: Buffer, start: number, length: number, s: string): void {
  const bytes = Buffer.from(s, 'utf8');
  bytes.copy(block, start, 0, Math.min(bytes.length, length));
  if (bytes.length < length) block[start + bytes.length] = 0;
}

function finishBlock(block: Buffer): Buffer {
  block.write('ustar\0', 257, 'latin1');
  block.write('00', 263, 'latin1');
  block.fill(0x20, 148, 156);
  const [sum] = computeChecksum(block);
  formatOctal(block, 148, 7, sum);
  block[155] = 0x20;
  return block;
}

function xattrEntries(x: HeaderInput['xattrs']): Array<[string, Buffer]> {
  if (!x) return [];
  const entries = x instanceof Map ? [...x.entries()] : Object.entries(x);
  return entries.map(([k, v]) => [k, typeof v === 'string' ? Buffer.from(v, 'utf8') : v]);
}

/**
 * The header blocks for one entry, deterministic and PAX only when needed, as Go's
 * archive/tar writes them for Docker: USTAR (with prefix split) when every field fits; else a
 * PAX `x` header named `<dir>/PaxHeaders.0/<base>` with sorted records, then the USTAR block
 * holding ASCII-truncated values. Returns the bytes (a multiple of 512).
 */
export function encodeHeader(h: HeaderInput): Buffer {
  const typeflag = h.typeflag ?? TYPE.file;
  const size = h.size ?? 0;
  const mode = h.mode ?? 0o644;
  const uid = h.uid ?? 0;
  const gid = h.gid ?? 0;
  const mtime = h.mtime ?? 0;
  const linkname = h.linkname ?? '';
  const uname = h.uname ?? '';
  const gname = h.gname ?? '';
  const records: PaxRecords = new Map();

  const needsPath = !isAscii(h.name) || Buffer.byteLength(h.name) > 100;
  const split = needsPath ? splitUstarPath(h.name) : null;
  if (!isAscii(linkname) || Buffer.byteLength(linkname) > 100) records.set('linkpath', Buffer.from(linkname, 'utf8'));
  if (!isAscii(uname) || Buffer.byteLength(uname) > 32) records.set('uname', Buffer.from(uname, 'utf8'));
  if (!isAscii(gname) || Buffer.byteLength(gname) > 32) records.set('gname', Buffer.from(gname, 'utf8'));
  const numeric: Array<[string, number, number]> = [['uid', uid, 8], ['gid', gid, 8], ['size', size, 12]];
  for (const [key, value, len] of numeric) {
    if (!fitsInOctal(len, value)) records.set(key, Buffer.from(String(value)));
  }
  const wholeMtime = Math.floor(mtime);
  if (!fitsInOctal(12, wholeMtime) || wholeMtime !== mtime) records.set('mtime', Buffer.from(formatPaxTime(mtime)));
  for (const [k, v] of xattrEntries(h.xattrs)) records.set(`SCHILY.xattr.${k}`, v);
  if (h.pax) for (const [k, v] of h.pax) records.set(k, v);
  // USTAR (with a prefix split) when everything fits; otherwise PAX carries the full path.
  let name = h.name;
  let prefix = '';
  if (needsPath && (split === null || records.size > 0)) {
    if (!records.has('path')) records.set('path', Buffer.from(h.name, 'utf8'));
  } else if (split && records.size === 0) {
    [prefix, name] = split;
  }

  const main = Buffer.alloc(BLOCK);
  writeString(main, 0, 100, toAscii(name));
  formatOctal(main, 100, 8, fitsInOctal(8, mode) ? mode : 0);
  formatOctal(main, 108, 8, fitsInOctal(8, uid) ? uid : 0);
  formatOctal(main, 116, 8, fitsInOctal(8, gid) ? gid : 0);
  formatOctal(main, 124, 12, fitsInOctal(12, size) ? size : 0);
  formatOctal(main, 136, 12, fitsInOctal(12, wholeMtime) ? wholeMtime : 0);
  main.write(typeflag, 156, 1, 'latin1');
  writeString(main, 157, 100, toAscii(linkname));
  writeString(main, 265, 32, toAscii(uname));
  writeString(main, 297, 32, toAscii(gname));
  formatOctal(main, 329, 8, fitsInOctal(8, h.devmajor ?? 0) ? (h.devmajor ?? 0) : 0);
  formatOctal(main, 337, 8, fitsInOctal(8, h.devminor ?? 0) ? (h.devminor ?? 0) : 0);
  writeString(main, 345, 155, prefix);
  finishBlock(main);
  if (records.size === 0) return main;

  const data = encodePaxRecords(records);
  const slash = h.name.replace(/\/+$/, '').lastIndexOf('/');
  const base = h.name.replace(/\/+$/, '').slice(slash + 1);
  const dir = slash >= 0 ? h.name.slice(0, slash + 1) : '';
  const paxName = `${dir}PaxHeaders.0/${base}`;
  return Buffer.concat([rawFileBlocks(paxName, TYPE.paxHeader, data), main]);
}

/** A metadata pseudo-file (PAX `x`/`g`, GNU `L`/`K`): header block, data, padding. */
export function rawFileBlocks(name: string, typeflag: string, data: Buffer): Buffer {
  const block = Buffer.alloc(BLOCK);
  let ascii = toAscii(name);
  if (ascii.length > 100) ascii = ascii.slice(0, 100);
  ascii = ascii.replace(/\/+$/, '');
  writeString(block, 0, 100, ascii);
  formatOctal(block, 100, 8, 0);
  formatOctal(block, 108, 8, 0);
  formatOctal(block, 116, 8, 0);
  formatOctal(block, 124, 12, data.length);
  formatOctal(block, 136, 12, 0);
  block.write(typeflag, 156, 1, 'latin1');
  finishBlock(block);
  return Buffer.concat([block, data, Buffer.alloc(blockPadding(data.length))]);
}

/** PAX time: seconds with up to 9 fractional digits, trailing zeros dropped. */
export function formatPaxTime(seconds: number): string {
  const whole = Math.floor(seconds);
  let frac = Math.round((seconds - whole) * 1e9);
  let w = whole;
  if (frac >= 1e9) { w += 1; frac -= 1e9; }
  if (frac === 0) return String(w);
  return `${w}.${String(frac).padStart(9, '0').replace(/0+$/, '')}`;
}

/** Store a header block with an arbitrary checksum (tests of corrupt input). */
export function withChecksum(block: Buffer, checksum: number): Buffer {
  const out = Buffer.from(block);
  formatOctal(out, 148, 7, checksum);
  out[155] = 0x20;
  return out;
}

/** Recompute the checksum of a block edited in place (hostile archives). */
export function resealHeader(block: Buffer): Buffer {
  block.fill(0x20, 148, 156);
  const [sum] = computeChecksum(block);
  formatOctal(block, 148, 7, sum);
  block[155] = 0x20;
  return block;
}
