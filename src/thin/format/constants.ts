/**
 * Constants of the Linux dm-thin on-disk metadata format, each with where it comes from
 * (drivers/md/dm-thin-metadata.c and drivers/md/persistent-data/ in the kernel).
 */

/** Metadata block size in bytes (DM_SM_METADATA_BLOCK_SIZE = 8 sectors). */
export const BLOCK_SIZE = 4096;
export const SECTOR_SIZE = 512;
export const SECTORS_PER_METADATA_BLOCK = BLOCK_SIZE / SECTOR_SIZE;

/** Superblock magic (THIN_SUPERBLOCK_MAGIC) and the format version the kernel writes. */
export const THIN_MAGIC = 27022010;
export const THIN_VERSION = 2;
export const NEEDS_CHECK_FLAG = 1;

/** Checksum salts, one per block type (the XOR applied after the raw crc32c). */
export const SALT = {
  superblock: 160774,
  node: 121107,
  bitmap: 240779,
  index: 160478,
} as const;
export type BlockKind = keyof typeof SALT;

/** Space-map bitmaps: 16-byte header then 2 bits per entry (ENTRIES_PER_BLOCK). */
export const BITMAP_HEADER_SIZE = 16;
export const ENTRIES_PER_BITMAP = (BLOCK_SIZE - BITMAP_HEADER_SIZE) * 4; // 16320
/** The metadata space map's single index block holds 255 entries (MAX_METADATA_BITMAPS). */
export const MAX_METADATA_BITMAPS = 255;
/** DM_SM_METADATA_MAX_BLOCKS: 255 * (2^14 - 64); a bigger metadata device is used only up to this. */
export const MAX_METADATA_BLOCKS = MAX_METADATA_BITMAPS * ENTRIES_PER_BITMAP;

/** Pool limits from dm-thin.c: 24-bit device ids, 40-bit data block numbers, 24-bit mapping time. */
export const MAX_DEV_ID = 2 ** 24 - 1;
export const MAX_DATA_BLOCKS = 2 ** 40;
export const TIME_MASK = 0xffffff;
/** DATA_DEV_BLOCK_SIZE_MIN/MAX_SECTORS: 64 KiB .. 1 GiB in multiples of 64 KiB. */
export const DATA_BLOCK_SIZE_MIN_SECTORS = 128;
export const DATA_BLOCK_SIZE_MAX_SECTORS = 2097152;

/** Superblock field offsets (struct thin_disk_superblock, packed). */
export const SB = {
  csum: 0,
  flags: 4,
  blocknr: 8,
  uuid: 16,
  magic: 32,
  version: 40,
  time: 44,
  transId: 48,
  heldRoot: 56,
  dataSmRoot: 64,
  metadataSmRoot: 192,
  dataMappingRoot: 320,
  deviceDetailsRoot: 328,
  dataBlockSize: 336,
  metadataBlockSize: 340,
  metadataNrBlocks: 344,
  compatFlags: 352,
  compatRoFlags: 356,
  incompatFlags: 360,
} as const;
/** Size of each space-map root slot in the superblock (SPACE_MAP_ROOT_SIZE). */
export const SM_ROOT_SLOT = 128;
