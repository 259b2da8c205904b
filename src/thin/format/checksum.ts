import type * as Crc32Module from '@node-rs/crc32';
import { requireCommonJs } from '../../util/require-cjs.js';
import { BLOCK_SIZE, SALT, type BlockKind } from './constants.js';
import { readU64, writeU64 } from './int.js';

const { crc32c } = requireCommonJs<typeof Crc32Module>('@node-rs/crc32');

/**
 * dm_bm_checksum: the reflected Castagnoli CRC seeded with ~0 and *not* inverted at the end,
 * over bytes 4..4095, XORed with the block type's salt. A standard crc32c is the inverted form,
 * so the raw value is `crc32c(bytes) ^ 0xffffffff`.
 */
export function blockChecksum(block: Uint8Array, kind: BlockKind): number {
  return ((crc32c(block.subarray(4, BLOCK_SIZE)) ^ 0xffffffff ^ SALT[kind]) >>> 0);
}

/** Fill in `blocknr` (offset 8, every block type) and the checksum (offset 0) before a write. */
export function sealBlock(block: Buffer, location: number, kind: BlockKind): void {
  writeU64(block, 8, location);
  block.writeUInt32LE(blockChecksum(block, kind), 0);
}

/** Why a block failed validation, or null when it is sound. */
export function validateBlock(block: Buffer, location: number, kind: BlockKind): string | null {
  const stored = block.readUInt32LE(0);
  if (stored !== blockChecksum(block, kind)) return `bad ${kind} checksum`;
  const nr = readU64(block, 8);
  if (nr !== location) return `${kind} block claims to be block ${nr}`;
  return null;
}
