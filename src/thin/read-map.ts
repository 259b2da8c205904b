/**
 * Where a run of a thin device's blocks were when they were looked up, for a reader on another
 * thread to plan its READs itself (an NBD connection's thread: planned-connection.ts) instead of
 * asking the pool's thread for each batch.
 *
 * A map is only as good as the moment it was made: the pool counts every change to its metadata
 * in a shared epoch (Pool.mapEpoch), and writers outside the pool count theirs there too, so a
 * reader uses a map only while the epoch is the one it read before asking for the map, and checks
 * it again once its data is read (a block freed and handed out again meanwhile is read the
 * ordinary way instead).
 */
import type { DataRun } from './thin-device.js';

/** A block no data block backs: it reads as zeros. */
export const UNMAPPED = -1;
/** A block the map does not vouch for (a write is still landing on its data block): ask. */
export const UNKNOWN = -2;

export interface ReadMap {
  /** The first virtual block the map covers. */
  firstBlock: number;
  /** For each block from `firstBlock`: its data block, UNMAPPED or UNKNOWN. */
  blocks: Float64Array;
}

/**
 * The runs a read of [offset, offset+length) finds its data in (the rest reads as zeros), as
 * ThinDevice.planBatch would plan it; null when the map does not cover every block it touches.
 */
export function runsFromMap(map: ReadMap, blockBytes: number, offset: number, length: number): DataRun[] | null {
  const end = offset + length;
  const first = Math.floor(offset / blockBytes);
  const last = Math.floor((end - 1) / blockBytes);
  if (length <= 0 || first < map.firstBlock || last >= map.firstBlock + map.blocks.length) return null;
  const runs: DataRun[] = [];
  for (let vb = first; vb <= last; vb++) {
    const block = map.blocks[vb - map.firstBlock]!;
    if (block === UNKNOWN) return null;
    if (block === UNMAPPED) continue;
    const from = Math.max(offset, vb * blockBytes);
    const to = Math.min(end, (vb + 1) * blockBytes);
    const dataOffset = block * blockBytes + (from - vb * blockBytes);
    // a block that follows the last one on the data device too: one read
    const prev = runs[runs.length - 1];
    if (prev && prev.at + prev.length === from - offset && prev.dataOffset + prev.length === dataOffset) prev.length += to - from;
    else runs.push({ at: from - offset, dataOffset, length: to - from });
  }
  return runs;
}
