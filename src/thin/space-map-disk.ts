import type { TransactionManager } from './transaction-manager.js';
import { SpaceMap } from './space-map.js';
import { ENTRIES_PER_BITMAP, MAX_METADATA_BITMAPS } from './format/constants.js';
import {
  decodeBitmap, encodeBitmap, nrBitmapsFor, packIndexEntry, packMetadataIndex, unpackIndexEntry, unpackMetadataIndex,
  type IndexEntry,
} from './format/space-map-codec.js';
import type { SmRoot } from './format/superblock.js';
import { emptyTree, insert, remove, walkRange, type ValueType } from './btree.js';
import { strataError } from '../errors.js';

/**
 * Loading and storing space maps in the kernel's on-disk layout (dm-space-map-common.c,
 * dm-space-map-disk.c, dm-space-map-metadata.c).
 *
 * Both maps store 2-bit counts in bitmap blocks and counts above 2 in a ref-count b-tree (value
 * le32). The data map indexes its bitmaps with a b-tree (value = index entry); the metadata map
 * uses a single index block. Every store writes changed bitmaps (and the index) to new blocks,
 * never over what the last commit can reach.
 */
export const indexVt: ValueType = { size: 16 };
export const refCountVt: ValueType = { size: 4 };

/** Where a space map currently lives on disk. */
export interface SmLocation {
  bitmapLocs: number[];
  /** Index entry per bitmap (the metadata map rewrites all of them in its index block). */
  entries: IndexEntry[];
  /** Data map: root of the index b-tree. Metadata map: the index block (0 before the first store). */
  indexRoot: number;
  refCountRoot: number;
}

async function loadBitmaps(tm: TransactionManager, sm: SpaceMap, entries: IndexEntry[]): Promise<void> {
  const values = new Uint8Array(ENTRIES_PER_BITMAP);
  for (let i = 0; i < entries.length; i++) {
    const start = i * ENTRIES_PER_BITMAP;
    const count = Math.min(ENTRIES_PER_BITMAP, sm.nrBlocks - start);
    const buf = await tm.read(entries[i]!.blocknr, 'bitmap');
    decodeBitmap(buf, values, count);
    for (let e = 0; e < count; e++) if (values[e] !== 0) sm.setLoaded(start + e, values[e]!);
  }
}

async function loadRefCounts(tm: TransactionManager, sm: SpaceMap, root: number): Promise<void> {
  const pending: Array<[number, number]> = [];
  await walkRange(tm, root, 0, Infinity, (key, value) => void pending.push([key, value.readUInt32LE(0)]));
  for (const [b, c] of pending) {
    if (b >= sm.nrBlocks) throw strataError('METADATA_CORRUPT', `ref-count tree names block ${b} beyond the space map`, { block: b });
    sm.setLoaded(b, c);
  }
}

export async function loadDataSpaceMap(tm: TransactionManager, root: SmRoot): Promise<{ sm: SpaceMap; loc: SmLocation }> {
  const sm = new SpaceMap(root.nrBlocks, 'POOL_NO_SPACE');
  const entries: IndexEntry[] = [];
  await walkRange(tm, root.bitmapRoot, 0, Infinity, (key, value) => {
    entries[key] = unpackIndexEntry(value);
  });
  const nr = nrBitmapsFor(root.nrBlocks);
  if (entries.length !== nr || entries.some((e) => e === undefined)) {
    throw strataError('METADATA_CORRUPT', `data space map index has ${entries.length} bitmaps, expected ${nr}`);
  }
  await loadBitmaps(tm, sm, entries);
  await loadRefCounts(tm, sm, root.refCountRoot);
  sm.dirtyBitmaps.clear();
  sm.dirtyOverflow.clear();
  return { sm, loc: { bitmapLocs: entries.map((e) => e.blocknr), entries, indexRoot: root.bitmapRoot, refCountRoot: root.refCountRoot } };
}

/** The metadata map is loaded into `tm.sm` itself (its own blocks are read through `tm`). */
export async function loadMetadataSpaceMap(tm: TransactionManager, root: SmRoot): Promise<SmLocation> {
  const nr = nrBitmapsFor(root.nrBlocks);
  if (nr > MAX_METADATA_BITMAPS) throw strataError('METADATA_CORRUPT', `metadata space map of ${root.nrBlocks} blocks is too large`);
  const sm = new SpaceMap(root.nrBlocks, 'METADATA_NO_SPACE');
  tm.sm = sm;
  const entries = unpackMetadataIndex(await tm.read(root.bitmapRoot, 'index'), nr);
  await loadBitmaps(tm, sm, entries);
  await loadRefCounts(tm, sm, root.refCountRoot);
  sm.dirtyBitmaps.clear();
  sm.dirtyOverflow.clear();
  return { bitmapLocs: entries.map((e) => e.blocknr), entries, indexRoot: root.bitmapRoot, refCountRoot: root.refCountRoot };
}

/** A fresh location record: every bitmap unwritten, empty ref-count tree (and index tree). */
export async function newSmLocation(tm: TransactionManager, sm: SpaceMap, withIndexTree: boolean): Promise<SmLocation> {
  for (let i = 0; i < nrBitmapsFor(sm.nrBlocks); i++) sm.dirtyBitmaps.add(i);
  return {
    bitmapLocs: [],
    entries: [],
    indexRoot: withIndexTree ? await emptyTree(tm, indexVt) : 0,
    refCountRoot: await emptyTree(tm, refCountVt),
  };
}

async function syncRefCounts(tm: TransactionManager, sm: SpaceMap, loc: SmLocation): Promise<void> {
  const blocks = [...sm.dirtyOverflow].sort((a, b) => a - b);
  sm.dirtyOverflow.clear();
  const v = Buffer.alloc(4);
  for (const b of blocks) {
    const c = sm.get(b);
    if (c > 2) {
      v.writeUInt32LE(c, 0);
      loc.refCountRoot = (await insert(tm, loc.refCountRoot, b, v, refCountVt)).root;
    } else {
      loc.refCountRoot = (await remove(tm, loc.refCountRoot, b, refCountVt)).root;
    }
  }
}

function bitmapBlock(sm: SpaceMap, i: number, location: number, loc: SmLocation): Buffer {
  const { values, count, nrFree, firstFree } = sm.bitmapValues(i);
  loc.entries[i] = { blocknr: location, nrFree, noneFreeBefore: firstFree };
  return encodeBitmap(values, count);
}

/** Write the data space map's changes; returns its new root. */
export async function storeDataSpaceMap(tm: TransactionManager, sm: SpaceMap, loc: SmLocation): Promise<SmRoot> {
  for (const i of [...sm.dirtyBitmaps].sort((a, b) => a - b)) {
    const old = loc.bitmapLocs[i];
    const { block } = tm.newBlock('bitmap');
    if (old) tm.dec(old);
    loc.bitmapLocs[i] = block;
    tm.install(block, bitmapBlock(sm, i, block, loc), 'bitmap');
    loc.indexRoot = (await insert(tm, loc.indexRoot, i, packIndexEntry(loc.entries[i]!), indexVt)).root;
  }
  sm.dirtyBitmaps.clear();
  await syncRefCounts(tm, sm, loc);
  return { nrBlocks: sm.nrBlocks, nrAllocated: sm.nrAllocated, bitmapRoot: loc.indexRoot, refCountRoot: loc.refCountRoot };
}

/**
 * Write the metadata space map, which counts its own blocks: moving a bitmap or the index to a
 * new block changes counts in (possibly other) bitmaps, so relocate until nothing new is dirty,
 * then encode the final counts. Each bitmap moves at most once per commit, so this terminates.
 */
export async function storeMetadataSpaceMap(tm: TransactionManager, loc: SmLocation): Promise<SmRoot> {
  const sm = tm.sm;
  const relocated = new Set<number>();
  let indexMoved = false;
  for (;;) {
    let progress = false;
    if (sm.dirtyOverflow.size > 0) {
      await syncRefCounts(tm, sm, loc);
      progress = true;
    }
    for (const i of [...sm.dirtyBitmaps].sort((a, b) => a - b)) {
      if (relocated.has(i)) continue;
      const old = loc.bitmapLocs[i];
      loc.bitmapLocs[i] = tm.newBlock('bitmap').block;
      if (old) tm.dec(old);
      relocated.add(i);
      progress = true;
    }
    if (!indexMoved) {
      const old = loc.indexRoot;
      loc.indexRoot = tm.newBlock('index').block;
      if (old) tm.dec(old);
      indexMoved = true;
      progress = true;
    }
    if (!progress) break;
  }
  sm.dirtyBitmaps.clear();
  for (const i of relocated) tm.install(loc.bitmapLocs[i]!, bitmapBlock(sm, i, loc.bitmapLocs[i]!, loc), 'bitmap');
  tm.install(loc.indexRoot, packMetadataIndex(loc.entries), 'index');
  return { nrBlocks: sm.nrBlocks, nrAllocated: sm.nrAllocated, bitmapRoot: loc.indexRoot, refCountRoot: loc.refCountRoot };
}
