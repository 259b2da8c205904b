import { BITMAP_HEADER_SIZE, BLOCK_SIZE, ENTRIES_PER_BITMAP, MAX_METADATA_BITMAPS } from './constants.js';
import { readU64, writeU64 } from './int.js';

/**
 * Space-map codecs (persistent-data/dm-space-map-common.h): index entries, the metadata index
 * block, and bitmap blocks of 2-bit reference counts.
 */

/** struct disk_index_entry (16 bytes). */
export interface IndexEntry {
  blocknr: number;
  nrFree: number;
  noneFreeBefore: number;
}
export const INDEX_ENTRY_SIZE = 16;

export function packIndexEntry(e: IndexEntry, buf = Buffer.alloc(INDEX_ENTRY_SIZE), offset = 0): Buffer {
  writeU64(buf, offset, e.blocknr);
  buf.writeUInt32LE(e.nrFree, offset + 8);
  buf.writeUInt32LE(e.noneFreeBefore, offset + 12);
  return buf;
}

export function unpackIndexEntry(buf: Buffer, offset = 0): IndexEntry {
  return { blocknr: readU64(buf, offset), nrFree: buf.readUInt32LE(offset + 8), noneFreeBefore: buf.readUInt32LE(offset + 12) };
}

/** struct disk_metadata_index: csum, padding, blocknr, then 255 index entries. */
export function packMetadataIndex(entries: IndexEntry[]): Buffer {
  const buf = Buffer.alloc(BLOCK_SIZE);
  entries.forEach((e, i) => packIndexEntry(e, buf, 16 + INDEX_ENTRY_SIZE * i));
  return buf;
}

export function unpackMetadataIndex(buf: Buffer, nrBitmaps: number): IndexEntry[] {
  const out: IndexEntry[] = [];
  for (let i = 0; i < Math.min(nrBitmaps, MAX_METADATA_BITMAPS); i++) out.push(unpackIndexEntry(buf, 16 + INDEX_ENTRY_SIZE * i));
  return out;
}

export const nrBitmapsFor = (nrBlocks: number): number => Math.ceil(nrBlocks / ENTRIES_PER_BITMAP);

/**
 * Decode the 2-bit entries of a bitmap block into `out[0..count)`. Within each 64-bit word,
 * entry e uses bits p=2(e%32) and p+1, and the lower-numbered bit is the high bit of the value
 * (sm_lookup_bitmap).
 */
export function decodeBitmap(buf: Buffer, out: Uint8Array, count: number): void {
  for (let e = 0; e < count; e++) {
    const byte = buf[BITMAP_HEADER_SIZE + (e >> 2)]!;
    const shift = (e & 3) * 2;
    out[e] = (((byte >> shift) & 1) << 1) | ((byte >> (shift + 1)) & 1);
  }
}

/** Encode 2-bit values (counts already clamped to 0..3) into a bitmap block body. */
export function encodeBitmap(values: ArrayLike<number>, count: number): Buffer {
  const buf = Buffer.alloc(BLOCK_SIZE);
  for (let e = 0; e < count; e++) {
    const v = values[e]!;
    if (v === 0) continue;
    const shift = (e & 3) * 2;
    const bits = ((v >> 1) & 1) | ((v & 1) << 1);
    const at = BITMAP_HEADER_SIZE + (e >> 2);
    buf[at] = buf[at]! | (bits << shift);
  }
  return buf;
}
