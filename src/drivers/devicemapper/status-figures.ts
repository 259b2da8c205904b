import type { DmOptions } from './options.js';

/**
 * The lines `docker info` prints for devicemapper, from figures gathered elsewhere. Pure.
 * Sizes are formatted as Docker's `units.HumanSize` does: decimal units, four significant digits.
 */
export interface StatusInput {
  poolName: string;
  options: DmOptions;
  /** The base device's size from its JSON (or the configured one before it exists). */
  baseDeviceSize: number;
  backingFilesystem: string;
  dataFile: string;
  metadataFile: string;
  /** Whether the pool runs on the loopback files (rather than dm.datadev/dm.metadatadev). */
  loopback: boolean;
  blockBytes: number;
  usedDataBlocks: number;
  totalDataBlocks: number;
  usedMetadataBlocks: number;
  totalMetadataBlocks: number;
  /** Free bytes on the filesystems holding the sparse files (a loopback pool cannot outgrow them). */
  hostFreeForData: number;
  hostFreeForMetadata: number;
  deferredDeletedCount: number;
  libraryVersion: string;
}

const METADATA_BLOCK_BYTES = 4096;

export function humanSize(bytes: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB', 'PB', 'EB'];
  let v = bytes;
  let i = 0;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  // Go's %.4g: four significant digits, trailing zeros dropped
  return `${Number(v.toPrecision(4))}${units[i]}`;
}

export function minFreeDataBytes(totalDataBlocks: number, blockBytes: number, percent: number): number {
  return Math.floor((totalDataBlocks * percent) / 100) * blockBytes;
}

export function statusLines(s: StatusInput): Array<[string, string]> {
  const dataUsed = s.usedDataBlocks * s.blockBytes;
  const dataTotal = s.totalDataBlocks * s.blockBytes;
  const metaUsed = s.usedMetadataBlocks * METADATA_BLOCK_BYTES;
  const metaTotal = s.totalMetadataBlocks * METADATA_BLOCK_BYTES;
  const dataAvail = s.loopback ? Math.min(dataTotal - dataUsed, s.hostFreeForData) : dataTotal - dataUsed;
  const metaAvail = s.loopback ? Math.min(metaTotal - metaUsed, s.hostFreeForMetadata) : metaTotal - metaUsed;
  const lines: Array<[string, string]> = [
    ['Pool Name', s.poolName],
    ['Pool Blocksize', humanSize(s.blockBytes)],
    ['Base Device Size', humanSize(s.baseDeviceSize)],
    ['Backing Filesystem', s.backingFilesystem],
    ['Data file', s.dataFile],
    ['Metadata file', s.metadataFile],
  ];
  if (s.loopback) lines.push(['Data loop file', s.dataFile], ['Metadata loop file', s.metadataFile]);
  lines.push(
    ['Data Space Used', humanSize(dataUsed)],
    ['Data Space Total', humanSize(dataTotal)],
    ['Data Space Available', humanSize(Math.max(0, dataAvail))],
    ['Metadata Space Used', humanSize(metaUsed)],
    ['Metadata Space Total', humanSize(metaTotal)],
    ['Metadata Space Available', humanSize(Math.max(0, metaAvail))],
    ['Thin Pool Minimum Free Space', humanSize(minFreeDataBytes(s.totalDataBlocks, s.blockBytes, s.options.minFreeSpacePercent))],
    ['Deferred Removal Enabled', String(s.options.deferredRemoval)],
    ['Deferred Deletion Enabled', String(s.options.deferredDeletion)],
    ['Deferred Deleted Device Count', String(s.deferredDeletedCount)],
    ['Library Version', s.libraryVersion],
  );
  return lines;
}

/**
 * moby's checkThinPool: a new device is refused while free data or metadata is below
 * dm.min_free_space. Returns the refusal message, or null when there is room.
 */
export function minFreeSpaceRefusal(p: { usedDataBlocks: number; totalDataBlocks: number; usedMetadataBlocks: number; totalMetadataBlocks: number }, percent: number): string | null {
  if (percent === 0) return null;
  const freeData = p.totalDataBlocks - p.usedDataBlocks;
  const minData = Math.floor((p.totalDataBlocks * percent) / 100);
  if (freeData < minData) {
    return `Thin Pool has ${freeData} free data blocks which is less than minimum required ${minData} free data blocks. ` +
      'Create more free space in thin pool or use dm.min_free_space option to change behavior';
  }
  const freeMeta = p.totalMetadataBlocks - p.usedMetadataBlocks;
  const minMeta = Math.floor((p.totalMetadataBlocks * percent) / 100);
  if (freeMeta < minMeta) {
    return `Thin Pool has ${freeMeta} free metadata blocks which is less than minimum required ${minMeta} free metadata blocks. ` +
      'Create more free metadata space in thin pool or use dm.min_free_space option to change behavior';
  }
  return null;
}
