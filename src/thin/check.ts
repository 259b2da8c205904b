import type { ThinMetadata } from './metadata.js';
import { unpackBlockTime } from './metadata.js';
import { isLeaf, keyAt, nrEntries, value64, valueAt, valueSize, maxEntriesFor, maxEntries } from './format/node.js';
import { nrBitmapsFor, unpackIndexEntry, unpackMetadataIndex } from './format/space-map-codec.js';
import { unpackSuperblock } from './format/superblock.js';
import { readU64 } from './format/int.js';
import { isStrataError } from '../errors.js';

/**
 * Strata's own metadata checker (what thin_check does): walks every tree from the superblock
 * (and a held metadata snapshot), recomputes the reference count of every metadata and data
 * block, and compares with both space maps. Collects every problem instead of stopping at one.
 */
export interface CheckIssue {
  kind: 'corrupt' | 'count-mismatch' | 'leak' | 'mapped-blocks' | 'out-of-range' | 'orphan-device';
  message: string;
  block?: number;
  /** False for hints that thin_check also tolerates (nr_allocated off, as thin_restore 0.9.0 writes). */
  fatal: boolean;
}

export interface CheckReport {
  ok: boolean;
  issues: CheckIssue[];
  devices: number;
  mappings: number;
  metadataBlocksUsed: number;
  dataBlocksUsed: number;
}

type TreeKind = 'details' | 'top' | 'mapping' | 'index' | 'refcount';
const VALUE_SIZE: Record<TreeKind, number> = { details: 24, top: 8, mapping: 8, index: 16, refcount: 4 };

export async function checkMetadata(md: ThinMetadata, opts: { maxIssues?: number } = {}): Promise<CheckReport> {
  const tm = md.tm;
  const msm = md.metadataSm;
  const dsm = md.dataSm;
  const expMeta = new Uint32Array(msm.nrBlocks);
  const expData = new Uint32Array(dsm.nrBlocks);
  const issues: CheckIssue[] = [];
  const maxIssues = opts.maxIssues ?? 100;
  const issue = (i: Omit<CheckIssue, 'fatal'> & { fatal?: boolean }): void => {
    if (issues.length < maxIssues) issues.push({ ...i, fatal: i.fatal ?? true });
  };
  const entriesBelow = new Map<number, number>();
  let mappings = 0;

  const refMeta = (b: number, what: string): boolean => {
    if (!Number.isSafeInteger(b) || b < 0 || b >= msm.nrBlocks) {
      issue({ kind: 'out-of-range', block: b, message: `${what} points at metadata block ${b}, beyond ${msm.nrBlocks}` });
      return false;
    }
    return ++expMeta[b]! === 1;
  };

  /** Count one reference to node `b`; on the first, walk it. Returns the leaf entries below. */
  const walk = async (b: number, kind: TreeKind, lo: number, hi: number, onLeaf?: (n: Buffer) => Promise<void> | void, child = false): Promise<number> => {
    if (!refMeta(b, `${kind} tree`)) return entriesBelow.get(b) ?? 0;
    let n: Buffer;
    try {
      n = await tm.read(b, 'node');
    } catch (err) {
      issue({ kind: 'corrupt', block: b, message: isStrataError(err) ? err.message : String(err) });
      return 0;
    }
    const nr = nrEntries(n);
    const leaf = isLeaf(n);
    const vs = leaf ? VALUE_SIZE[kind] : 8;
    if (valueSize(n) !== vs || maxEntries(n) !== maxEntriesFor(vs)) {
      issue({ kind: 'corrupt', block: b, message: `${kind} ${leaf ? 'leaf' : 'internal node'} has value size ${valueSize(n)}, max entries ${maxEntries(n)}` });
      return 0;
    }
    // the kernel keeps every node but the root at least a third full, and thin_check holds it to that
    if (child && nr < Math.floor(maxEntries(n) / 3)) {
      issue({ kind: 'corrupt', block: b, message: `${kind} node holds ${nr} entries, fewer than a third of ${maxEntries(n)}` });
    }
    for (let i = 0; i < nr; i++) {
      const k = keyAt(n, i);
      if (k < lo || k >= hi || (i > 0 && k <= keyAt(n, i - 1))) {
        issue({ kind: 'corrupt', block: b, message: `${kind} node key ${k} out of order or outside [${lo}, ${hi})` });
        return 0;
      }
    }
    let total = 0;
    if (leaf) {
      total = nr;
      await onLeaf?.(n);
    } else {
      for (let i = 0; i < nr; i++) {
        total += await walk(value64(n, i), kind, keyAt(n, i), i + 1 < nr ? keyAt(n, i + 1) : hi, onLeaf, true);
      }
    }
    entriesBelow.set(b, total);
    return total;
  };

  const mappingLeaf = (n: Buffer): void => {
    const nr = nrEntries(n);
    mappings += nr;
    for (let i = 0; i < nr; i++) {
      const { block } = unpackBlockTime(valueAt(n, i));
      if (block >= dsm.nrBlocks) issue({ kind: 'out-of-range', block, message: `mapping to data block ${block}, beyond ${dsm.nrBlocks}` });
      else expData[block]!++;
    }
  };

  const walkMappingTree = async (root: number, details: Map<number, number> | null): Promise<void> => {
    const subs: Array<[number, number]> = [];
    await walk(root, 'top', 0, Infinity, (n) => {
      for (let i = 0; i < nrEntries(n); i++) subs.push([keyAt(n, i), value64(n, i)]);
    });
    const seen = new Set<number>();
    for (const [dev, sub] of subs) {
      const count = await walk(sub, 'mapping', 0, Infinity, mappingLeaf);
      seen.add(dev);
      if (details) {
        const want = details.get(dev);
        if (want === undefined) issue({ kind: 'orphan-device', message: `device ${dev} has mappings but no details` });
        else if (want !== count) issue({ kind: 'mapped-blocks', message: `device ${dev}: details say ${want} mapped blocks, tree holds ${count}` });
      }
    }
    if (details) for (const dev of details.keys()) if (!seen.has(dev)) issue({ kind: 'orphan-device', message: `device ${dev} has details but no mapping tree` });
  };

  const walkDetails = async (root: number): Promise<Map<number, number>> => {
    const out = new Map<number, number>();
    await walk(root, 'details', 0, Infinity, (n) => {
      for (let i = 0; i < nrEntries(n); i++) out.set(keyAt(n, i), readU64(valueAt(n, i), 0));
    });
    return out;
  };

  const sb = md.superblock;
  refMeta(0, 'superblock');
  const details = await walkDetails(sb.deviceDetailsRoot);
  await walkMappingTree(sb.dataMappingRoot, details);

  if (sb.heldRoot) {
    if (refMeta(sb.heldRoot, 'held root')) {
      try {
        const held = unpackSuperblock(await tm.read(sb.heldRoot, 'superblock'), sb.heldRoot);
        const heldDetails = await walkDetails(held.deviceDetailsRoot);
        await walkMappingTree(held.dataMappingRoot, heldDetails);
      } catch (err) {
        issue({ kind: 'corrupt', block: sb.heldRoot, message: `metadata snapshot: ${err instanceof Error ? err.message : String(err)}` });
      }
    }
  }

  // data space map: index b-tree, its bitmaps, ref-count tree
  const bitmapRefs: number[] = [];
  await walk(sb.dataSmRoot.bitmapRoot, 'index', 0, Infinity, (n) => {
    for (let i = 0; i < nrEntries(n); i++) bitmapRefs.push(unpackIndexEntry(valueAt(n, i)).blocknr);
  });
  await walk(sb.dataSmRoot.refCountRoot, 'refcount', 0, Infinity);
  // metadata space map: index block, its bitmaps, ref-count tree
  if (refMeta(sb.metadataSmRoot.bitmapRoot, 'metadata space map index')) {
    const idx = await tm.read(sb.metadataSmRoot.bitmapRoot, 'index');
    for (const e of unpackMetadataIndex(idx, nrBitmapsFor(sb.metadataSmRoot.nrBlocks))) bitmapRefs.push(e.blocknr);
  }
  await walk(sb.metadataSmRoot.refCountRoot, 'refcount', 0, Infinity);
  for (const b of bitmapRefs) {
    if (refMeta(b, 'space map index')) {
      try {
        await tm.read(b, 'bitmap');
      } catch (err) {
        issue({ kind: 'corrupt', block: b, message: isStrataError(err) ? err.message : String(err) });
      }
    }
  }

  const compare = (exp: Uint32Array, get: (b: number) => number, what: string): number => {
    let used = 0;
    for (let b = 0; b < exp.length; b++) {
      const actual = get(b);
      if (actual !== 0) used++;
      if (actual === exp[b]) continue;
      issue({
        kind: exp[b] === 0 ? 'leak' : 'count-mismatch',
        block: b,
        message: `${what} block ${b}: space map count ${actual}, referenced ${exp[b]} time(s)`,
      });
    }
    return used;
  };
  const metadataBlocksUsed = compare(expMeta, (b) => msm.get(b), 'metadata');
  const dataBlocksUsed = compare(expData, (b) => dsm.get(b), 'data');
  for (const [root, used, what] of [[sb.metadataSmRoot, metadataBlocksUsed, 'metadata'], [sb.dataSmRoot, dataBlocksUsed, 'data']] as const) {
    if (root.nrAllocated !== used) {
      issue({ kind: 'count-mismatch', fatal: false, message: `${what} space map root says ${root.nrAllocated} allocated, bitmaps hold ${used}` });
    }
  }
  return { ok: !issues.some((i) => i.fatal), issues, devices: details.size, mappings, metadataBlocksUsed, dataBlocksUsed };
}
