import { BLOCK_SIZE } from './constants.js';
import { readU64, writeU64 } from './int.js';

/**
 * B-tree node codec (persistent-data/dm-btree-internal.h, struct btree_node). A node is a
 * 32-byte header, `max_entries` le64 keys, then `max_entries` values of `value_size` bytes.
 * These helpers work in place on a node's 4 KiB buffer; they know nothing of I/O.
 */
export const INTERNAL_NODE = 1;
export const LEAF_NODE = 2;
export const NODE_HEADER_SIZE = 32;
const H_FLAGS = 4;
const H_NR = 16;
const H_MAX = 20;
const H_VSIZE = 24;

/** max_entries rounded down to a multiple of 3, so 2->3 splits stay even (calc_max_entries). */
export function maxEntriesFor(valueSize: number): number {
  const n = Math.floor((BLOCK_SIZE - NODE_HEADER_SIZE) / (8 + valueSize));
  return 3 * Math.floor(n / 3);
}

export function initNode(buf: Buffer, leaf: boolean, valueSize: number): void {
  buf.fill(0);
  buf.writeUInt32LE(leaf ? LEAF_NODE : INTERNAL_NODE, H_FLAGS);
  buf.writeUInt32LE(0, H_NR);
  buf.writeUInt32LE(maxEntriesFor(valueSize), H_MAX);
  buf.writeUInt32LE(valueSize, H_VSIZE);
}

export const nodeFlags = (n: Buffer): number => n.readUInt32LE(H_FLAGS);
export const isLeaf = (n: Buffer): boolean => (n.readUInt32LE(H_FLAGS) & LEAF_NODE) !== 0;
export const nrEntries = (n: Buffer): number => n.readUInt32LE(H_NR);
export const setNrEntries = (n: Buffer, v: number): void => void n.writeUInt32LE(v, H_NR);
export const maxEntries = (n: Buffer): number => n.readUInt32LE(H_MAX);
export const valueSize = (n: Buffer): number => n.readUInt32LE(H_VSIZE);

export const keyAt = (n: Buffer, i: number): number => readU64(n, NODE_HEADER_SIZE + 8 * i);
export const setKey = (n: Buffer, i: number, key: number): void => writeU64(n, NODE_HEADER_SIZE + 8 * i, key);

export function valueOffset(n: Buffer, i: number): number {
  return NODE_HEADER_SIZE + 8 * maxEntries(n) + valueSize(n) * i;
}
/** A view (not a copy) of value `i`. */
export function valueAt(n: Buffer, i: number): Buffer {
  const off = valueOffset(n, i);
  return n.subarray(off, off + valueSize(n));
}
export function value64(n: Buffer, i: number): number {
  return readU64(n, valueOffset(n, i));
}
export function setValue(n: Buffer, i: number, value: Uint8Array): void {
  n.set(value, valueOffset(n, i));
}
export function setValue64(n: Buffer, i: number, v: number): void {
  writeU64(n, valueOffset(n, i), v);
}

/** Index of the largest key <= `key`, or -1 (lower_bound in dm-btree.c). */
export function lowerBound(n: Buffer, key: number): number {
  let lo = -1;
  let hi = nrEntries(n);
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (keyAt(n, mid) <= key) lo = mid;
    else hi = mid;
  }
  return lo;
}

/** Index of `key` or -1. */
export function findKey(n: Buffer, key: number): number {
  const i = lowerBound(n, key);
  return i >= 0 && keyAt(n, i) === key ? i : -1;
}

/** Move entries [from, nr) of `n` by `delta` slots (keys and values). */
function shiftEntries(n: Buffer, from: number, delta: number): void {
  const nr = nrEntries(n);
  if (from >= nr) return;
  const vs = valueSize(n);
  const keyBase = NODE_HEADER_SIZE;
  n.copy(n, keyBase + 8 * (from + delta), keyBase + 8 * from, keyBase + 8 * nr);
  const vBase = valueOffset(n, 0);
  n.copy(n, vBase + vs * (from + delta), vBase + vs * from, vBase + vs * nr);
}

export function insertAt(n: Buffer, i: number, key: number, value: Uint8Array): void {
  shiftEntries(n, i, 1);
  setKey(n, i, key);
  setValue(n, i, value);
  setNrEntries(n, nrEntries(n) + 1);
}

export function removeAt(n: Buffer, i: number): void {
  const nr = nrEntries(n);
  shiftEntries(n, i + 1, -1);
  // keep unused slots zero so blocks compare (and compress) cleanly
  n.fill(0, NODE_HEADER_SIZE + 8 * (nr - 1), NODE_HEADER_SIZE + 8 * nr);
  const vs = valueSize(n);
  const vBase = valueOffset(n, 0);
  n.fill(0, vBase + vs * (nr - 1), vBase + vs * nr);
  setNrEntries(n, nr - 1);
}

/** Copy `count` entries from `src[srcIdx..]` into `dst[dstIdx..]` (slots must be free in dst). */
export function copyEntries(dst: Buffer, dstIdx: number, src: Buffer, srcIdx: number, count: number): void {
  if (count <= 0) return;
  const vs = valueSize(src);
  src.copy(dst, NODE_HEADER_SIZE + 8 * dstIdx, NODE_HEADER_SIZE + 8 * srcIdx, NODE_HEADER_SIZE + 8 * (srcIdx + count));
  const sv = valueOffset(src, 0);
  const dv = valueOffset(dst, 0);
  src.copy(dst, dv + vs * dstIdx, sv + vs * srcIdx, sv + vs * (srcIdx + count));
}

/** Drop entries [keep, nr) from the tail, zeroing their slots. */
export function truncateEntries(n: Buffer, keep: number): void {
  const nr = nrEntries(n);
  if (keep >= nr) return;
  const vs = valueSize(n);
  n.fill(0, NODE_HEADER_SIZE + 8 * keep, NODE_HEADER_SIZE + 8 * nr);
  const vBase = valueOffset(n, 0);
  n.fill(0, vBase + vs * keep, vBase + vs * nr);
  setNrEntries(n, keep);
}

/** Drop the first `count` entries, moving the rest to the front. */
export function dropHead(n: Buffer, count: number): void {
  if (count <= 0) return;
  const nr = nrEntries(n);
  shiftEntries(n, count, -count);
  truncateEntries(n, nr - count);
}

/** Why a node is malformed, or null (header sanity as in btree_node_validator). */
export function nodeHeaderProblem(n: Buffer): string | null {
  const flags = nodeFlags(n);
  if (flags !== INTERNAL_NODE && flags !== LEAF_NODE) return `bad node flags ${flags}`;
  const max = maxEntries(n);
  const vs = valueSize(n);
  if (NODE_HEADER_SIZE + (8 + vs) * max > BLOCK_SIZE) return `max_entries ${max} too large for value size ${vs}`;
  if (nrEntries(n) > max) return `nr_entries ${nrEntries(n)} > max_entries ${max}`;
  return null;
}
