import { BLOCK_SIZE, SB, SM_ROOT_SLOT, THIN_MAGIC, THIN_VERSION, SECTORS_PER_METADATA_BLOCK } from './constants.js';
import { readU64, writeU64 } from './int.js';
import { sealBlock, validateBlock } from './checksum.js';
import { strataError } from '../../errors.js';

/** struct disk_sm_root: where a space map lives (the first 32 bytes of a 128-byte slot). */
export interface SmRoot {
  nrBlocks: number;
  nrAllocated: number;
  /** Metadata SM: the index block. Data SM: root of the b-tree of index entries. */
  bitmapRoot: number;
  /** b-tree (value le32) of counts above 2. */
  refCountRoot: number;
}

/** struct thin_disk_superblock (block 0, and the held copy made by reserve_metadata_snap). */
export interface Superblock {
  flags: number;
  version: number;
  time: number;
  transId: number;
  heldRoot: number;
  dataSmRoot: SmRoot;
  metadataSmRoot: SmRoot;
  dataMappingRoot: number;
  deviceDetailsRoot: number;
  /** Data block size in sectors. */
  dataBlockSize: number;
  metadataNrBlocks: number;
  compatFlags: number;
  compatRoFlags: number;
  incompatFlags: number;
}

export function unpackSmRoot(buf: Buffer, offset = 0): SmRoot {
  return {
    nrBlocks: readU64(buf, offset),
    nrAllocated: readU64(buf, offset + 8),
    bitmapRoot: readU64(buf, offset + 16),
    refCountRoot: readU64(buf, offset + 24),
  };
}

export function packSmRoot(buf: Buffer, offset: number, root: SmRoot): void {
  writeU64(buf, offset, root.nrBlocks);
  writeU64(buf, offset + 8, root.nrAllocated);
  writeU64(buf, offset + 16, root.bitmapRoot);
  writeU64(buf, offset + 24, root.refCountRoot);
}

export function isZeroBlock(buf: Buffer): boolean {
  for (let i = 0; i < buf.length; i += 8) if (buf.readBigUInt64LE(i) !== 0n) return false;
  return true;
}

/** Decode and validate a superblock found at `location` (0 for the live one). */
export function unpackSuperblock(buf: Buffer, location = 0): Superblock {
  const bad = validateBlock(buf, location, 'superblock');
  if (bad) throw strataError('METADATA_CORRUPT', `superblock at block ${location}: ${bad}`, { block: location });
  const magic = readU64(buf, SB.magic);
  if (magic !== THIN_MAGIC) {
    throw strataError('METADATA_CORRUPT', `superblock magic ${magic} is not ${THIN_MAGIC}`, { block: location });
  }
  const sb: Superblock = {
    flags: buf.readUInt32LE(SB.flags),
    version: buf.readUInt32LE(SB.version),
    time: buf.readUInt32LE(SB.time),
    transId: readU64(buf, SB.transId),
    heldRoot: readU64(buf, SB.heldRoot),
    dataSmRoot: unpackSmRoot(buf, SB.dataSmRoot),
    metadataSmRoot: unpackSmRoot(buf, SB.metadataSmRoot),
    dataMappingRoot: readU64(buf, SB.dataMappingRoot),
    deviceDetailsRoot: readU64(buf, SB.deviceDetailsRoot),
    dataBlockSize: buf.readUInt32LE(SB.dataBlockSize),
    metadataNrBlocks: readU64(buf, SB.metadataNrBlocks),
    compatFlags: buf.readUInt32LE(SB.compatFlags),
    compatRoFlags: buf.readUInt32LE(SB.compatRoFlags),
    incompatFlags: buf.readUInt32LE(SB.incompatFlags),
  };
  if (sb.version < 1 || sb.version > THIN_VERSION) {
    throw strataError('METADATA_CORRUPT', `unsupported metadata version ${sb.version}`, { block: location });
  }
  if (sb.incompatFlags !== 0) {
    throw strataError('METADATA_CORRUPT', `unknown incompat flags ${sb.incompatFlags}`, { block: location });
  }
  return sb;
}

/** Encode a superblock into a fresh, sealed 4 KiB block. */
export function packSuperblock(sb: Superblock, location = 0): Buffer {
  const buf = Buffer.alloc(BLOCK_SIZE);
  buf.writeUInt32LE(sb.flags, SB.flags);
  writeU64(buf, SB.magic, THIN_MAGIC);
  buf.writeUInt32LE(sb.version, SB.version);
  buf.writeUInt32LE(sb.time >>> 0, SB.time);
  writeU64(buf, SB.transId, sb.transId);
  writeU64(buf, SB.heldRoot, sb.heldRoot);
  packSmRoot(buf, SB.dataSmRoot, sb.dataSmRoot);
  packSmRoot(buf, SB.metadataSmRoot, sb.metadataSmRoot);
  writeU64(buf, SB.dataMappingRoot, sb.dataMappingRoot);
  writeU64(buf, SB.deviceDetailsRoot, sb.deviceDetailsRoot);
  buf.writeUInt32LE(sb.dataBlockSize, SB.dataBlockSize);
  buf.writeUInt32LE(SECTORS_PER_METADATA_BLOCK, SB.metadataBlockSize);
  writeU64(buf, SB.metadataNrBlocks, sb.metadataNrBlocks);
  buf.writeUInt32LE(sb.compatFlags, SB.compatFlags);
  buf.writeUInt32LE(sb.compatRoFlags, SB.compatRoFlags);
  buf.writeUInt32LE(sb.incompatFlags, SB.incompatFlags);
  sealBlock(buf, location, 'superblock');
  return buf;
}

export const EMPTY_SM_ROOT: SmRoot = { nrBlocks: 0, nrAllocated: 0, bitmapRoot: 0, refCountRoot: 0 };
export { SM_ROOT_SLOT };
