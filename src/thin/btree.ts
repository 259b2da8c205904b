import type { TransactionManager } from './transaction-manager.js';
import {
  copyEntries, dropHead, findKey, initNode, insertAt, isLeaf, keyAt, lowerBound, maxEntries, nrEntries,
  removeAt, setKey, setNrEntries, setValue, setValue64, truncateEntries, value64, valueAt, valueSize,
} from './format/node.js';
import { strataError } from '../errors.js';

/**
 * Copy-on-write b-trees in the kernel's format (persistent-data/dm-btree.c, dm-btree-remove.c).
 * Every function takes a root and returns the new root: the caller stores it (in a parent tree or
 * the superblock). Values are opaque byte strings of `vt.size` bytes; `inc`/`dec` keep the space
 * maps right when a value holds a reference (a data block, a subtree root).
 */
export interface ValueType {
  size: number;
  /** A copy of a shared leaf now also references this value. */
  inc?(value: Buffer): void;
  /** A reference held by this value was dropped (overwrite or removal). */
  dec?(value: Buffer): void;
  /** Whether two values reference the same thing (an overwrite with an equal value is not a dec). */
  equal?(a: Buffer, b: Buffer): boolean;
}

export async function emptyTree(tm: TransactionManager, vt: ValueType): Promise<number> {
  const { block, buf } = tm.newBlock('node');
  initNode(buf, true, vt.size);
  return block;
}

function incChildren(tm: TransactionManager, n: Buffer, vt: ValueType): void {
  const nr = nrEntries(n);
  if (!isLeaf(n)) for (let i = 0; i < nr; i++) tm.inc(value64(n, i));
  else if (vt.inc) for (let i = 0; i < nr; i++) vt.inc(valueAt(n, i));
}

async function shadowNode(tm: TransactionManager, b: number, vt: ValueType): Promise<{ block: number; buf: Buffer }> {
  const { block, buf, incChildren: shared } = await tm.shadow(b, 'node');
  if (shared) incChildren(tm, buf, vt);
  return { block, buf };
}

function newNodeLike(tm: TransactionManager, like: Buffer): { block: number; buf: Buffer } {
  const { block, buf } = tm.newBlock('node');
  initNode(buf, isLeaf(like), valueSize(like));
  return { block, buf };
}

export async function lookup(tm: TransactionManager, root: number, key: number): Promise<Buffer | undefined> {
  let b = root;
  for (;;) {
    const n = await tm.read(b, 'node');
    const i = lowerBound(n, key);
    if (isLeaf(n)) return i >= 0 && keyAt(n, i) === key ? Buffer.from(valueAt(n, i)) : undefined;
    if (i < 0) return undefined;
    b = value64(n, i);
  }
}

/**
 * Where a full node splits: evenly, as the kernel's btree_split_beneath / split_one_into_two do.
 * Every node but the root must stay at least a third full (thin_check refuses "too few entries in
 * btree_node" otherwise); leaving the left node full on appends would make denser trees, but
 * leaves a nearly empty right node wherever the appending stops.
 */
function splitPoint(n: Buffer): number {
  return nrEntries(n) >> 1;
}

/** btree_split_beneath: the root keeps its block and becomes an internal node over two halves. */
function splitBeneath(tm: TransactionManager, root: Buffer): void {
  const nr = nrEntries(root);
  const at = splitPoint(root);
  const left = newNodeLike(tm, root);
  const right = newNodeLike(tm, root);
  copyEntries(left.buf, 0, root, 0, at);
  setNrEntries(left.buf, at);
  copyEntries(right.buf, 0, root, at, nr - at);
  setNrEntries(right.buf, nr - at);
  initNode(root, false, 8);
  const v = Buffer.alloc(8);
  v.writeBigUInt64LE(BigInt(left.block));
  insertAt(root, 0, keyAt(left.buf, 0), v);
  v.writeBigUInt64LE(BigInt(right.block));
  insertAt(root, 1, keyAt(right.buf, 0), v);
}

/** Split child `n` (at parent slot `pi`) into two siblings; returns the half that takes `key`. */
function splitSibling(tm: TransactionManager, parent: Buffer, pi: number, n: Buffer, key: number): Buffer {
  const nr = nrEntries(n);
  const at = splitPoint(n);
  const right = newNodeLike(tm, n);
  copyEntries(right.buf, 0, n, at, nr - at);
  setNrEntries(right.buf, nr - at);
  truncateEntries(n, at);
  const v = Buffer.alloc(8);
  v.writeBigUInt64LE(BigInt(right.block));
  insertAt(parent, pi + 1, keyAt(right.buf, 0), v);
  return key >= keyAt(right.buf, 0) ? right.buf : n;
}

/**
 * Insert or overwrite `key`. Full nodes are split on the way down, so the parent of a split
 * always has room. Returns the new root and whether the key was new.
 */
export async function insert(
  tm: TransactionManager, root: number, key: number, value: Buffer, vt: ValueType,
): Promise<{ root: number; inserted: boolean }> {
  const run = await insertRun(tm, root, [key], () => value, 0, vt);
  return { root: run.root, inserted: run.inserted === 1 };
}

/**
 * Insert or overwrite the entries `keys[from]`, `keys[from + 1]`, … in order, for as long as
 * they belong in the leaf the first one reaches and it has room: one descent (shadowing and
 * splitting as `insert` does) for a run of neighbouring keys, not one each. `valueFor(i)` is
 * called once for each entry taken, just before it goes in. Returns the new root, how many
 * entries were taken (at least one) and how many of them were new keys.
 */
export async function insertRun(
  tm: TransactionManager, root: number, keys: readonly number[], valueFor: (i: number) => Buffer, from: number, vt: ValueType,
): Promise<{ root: number; taken: number; inserted: number }> {
  const key = keys[from]!;
  const top = await shadowNode(tm, root, vt);
  let node = top.buf;
  let parent: Buffer | null = null;
  let pi = -1;
  // the keys the leaf reached may hold: those the internal nodes on the way lead to it
  let low = -Infinity;
  let high = Infinity;
  for (;;) {
    if (nrEntries(node) === maxEntries(node)) {
      if (!parent) splitBeneath(tm, node);
      else {
        node = splitSibling(tm, parent, pi, node, key);
        const separator = keyAt(parent, pi + 1);
        if (key >= separator) low = separator;
        else high = Math.min(high, separator);
      }
    }
    let i = lowerBound(node, key);
    if (isLeaf(node)) return { root: top.block, ...fillLeaf(node, keys, valueFor, from, low, high, vt) };
    if (i < 0) {
      setKey(node, 0, key);
      i = 0;
    }
    low = keyAt(node, i);
    if (i + 1 < nrEntries(node)) high = Math.min(high, keyAt(node, i + 1));
    const child = await shadowNode(tm, value64(node, i), vt);
    setValue64(node, i, child.block);
    parent = node;
    pi = i;
    node = child.buf;
  }
}

/** insertRun in the leaf reached: entries from `from` while their keys are in [low, high) and fit. */
function fillLeaf(
  leaf: Buffer, keys: readonly number[], valueFor: (i: number) => Buffer, from: number, low: number, high: number, vt: ValueType,
): { taken: number; inserted: number } {
  let k = from;
  let inserted = 0;
  for (; k < keys.length; k++) {
    const key = keys[k]!;
    // (the first key led here, and the descent made room for it)
    if (k > from && (key < low || key >= high)) break;
    const i = lowerBound(leaf, key);
    if (i >= 0 && keyAt(leaf, i) === key) {
      const value = valueFor(k);
      const old = valueAt(leaf, i);
      if (vt.dec && !(vt.equal ? vt.equal(old, value) : old.equals(value))) vt.dec(Buffer.from(old));
      setValue(leaf, i, value);
    } else {
      if (nrEntries(leaf) === maxEntries(leaf)) break;
      insertAt(leaf, i + 1, key, valueFor(k));
      inserted++;
    }
  }
  return { taken: k - from, inserted };
}

/**
 * Shadow the path to existing `key` and replace its value with `fn(old)`, without inc/dec: the
 * caller owns the reference (used for the top level of the mapping tree, whose values are
 * subtree roots the callback itself shadows). Returns the new root, or null if `key` is absent.
 */
export async function updateValue(
  tm: TransactionManager, root: number, key: number, vt: ValueType, fn: (old: Buffer) => Promise<Buffer>,
): Promise<number | null> {
  if (!(await lookup(tm, root, key))) return null;
  const top = await shadowNode(tm, root, vt);
  let node = top.buf;
  for (;;) {
    const i = lowerBound(node, key);
    if (isLeaf(node)) {
      setValue(node, i, await fn(Buffer.from(valueAt(node, i))));
      return top.block;
    }
    const child = await shadowNode(tm, value64(node, i), vt);
    setValue64(node, i, child.block);
    node = child.buf;
  }
}

/** Move entries so `left` has `target` of the pair's entries (parent key of right fixed up). */
function redistribute2(parent: Buffer, li: number, left: Buffer, right: Buffer): void {
  const nrL = nrEntries(left);
  const nrR = nrEntries(right);
  const target = (nrL + nrR) >> 1;
  if (nrL > target) {
    const move = nrL - target;
    // make room at the front of right
    const tmp = Buffer.from(right);
    setNrEntries(right, 0);
    copyEntries(right, 0, left, target, move);
    copyEntries(right, move, tmp, 0, nrR);
    setNrEntries(right, nrR + move);
    truncateEntries(left, target);
  } else if (nrL < target) {
    const move = target - nrL;
    copyEntries(left, nrL, right, 0, move);
    setNrEntries(left, nrL + move);
    dropHead(right, move);
  }
  setKey(parent, li + 1, keyAt(right, 0));
}

/**
 * Before descending into the child for `key`, make sure it can lose an entry: merge it with a
 * sibling when the pair is small, else even them out (__rebalance2 in dm-btree-remove.c).
 * A node left with a single child absorbs that child (the tree gets shorter).
 */
async function rebalanceChild(tm: TransactionManager, node: Buffer, key: number, vt: ValueType): Promise<boolean> {
  const nr = nrEntries(node);
  if (nr === 1) {
    const childB = value64(node, 0);
    const child = await tm.read(childB, 'node');
    child.copy(node);
    if (tm.refCount(childB) > 1) incChildren(tm, node, vt);
    tm.dec(childB);
    return true;
  }
  const i = lowerBound(node, key);
  if (i < 0) return false;
  const child = await tm.read(value64(node, i), 'node');
  const threshold = Math.floor(maxEntries(child) / 3);
  if (nrEntries(child) > threshold) return false;
  const li = i > 0 ? i - 1 : i;
  const left = await shadowNode(tm, value64(node, li), vt);
  setValue64(node, li, left.block);
  const right = await shadowNode(tm, value64(node, li + 1), vt);
  setValue64(node, li + 1, right.block);
  const nrL = nrEntries(left.buf);
  const nrR = nrEntries(right.buf);
  if (nrL + nrR < 2 * threshold + 1) {
    copyEntries(left.buf, nrL, right.buf, 0, nrR);
    setNrEntries(left.buf, nrL + nrR);
    removeAt(node, li + 1);
    // the merged node's entries (and their references) now live in `left`
    tm.dec(right.block);
  } else {
    redistribute2(node, li, left.buf, right.buf);
  }
  return false;
}

/** Remove `key`; `vt.dec` is applied to its value. Returns the new root and the removed value. */
export async function remove(
  tm: TransactionManager, root: number, key: number, vt: ValueType,
): Promise<{ root: number; removed: Buffer | undefined }> {
  if (!(await lookup(tm, root, key))) return { root, removed: undefined };
  const top = await shadowNode(tm, root, vt);
  let node = top.buf;
  for (;;) {
    if (!isLeaf(node) && (await rebalanceChild(tm, node, key, vt))) continue;
    if (isLeaf(node)) {
      const i = findKey(node, key);
      if (i < 0) throw strataError('INTERNAL', `key ${key} vanished during removal`);
      const removed = Buffer.from(valueAt(node, i));
      vt.dec?.(removed);
      removeAt(node, i);
      return { root: top.block, removed };
    }
    const i = lowerBound(node, key);
    const child = await shadowNode(tm, value64(node, i), vt);
    setValue64(node, i, child.block);
    node = child.buf;
  }
}

/**
 * Drop one reference to a whole tree (dm_btree_del): nodes still shared elsewhere are only
 * decremented; nodes owned by this tree are freed and their values released via `onValue`.
 */
export async function deleteTree(tm: TransactionManager, root: number, onValue?: (value: Buffer) => void): Promise<void> {
  const stack = [root];
  while (stack.length > 0) {
    const b = stack.pop()!;
    if (tm.refCount(b) > 1) {
      tm.dec(b);
      continue;
    }
    const n = await tm.read(b, 'node');
    const nr = nrEntries(n);
    if (!isLeaf(n)) for (let i = 0; i < nr; i++) stack.push(value64(n, i));
    else if (onValue) for (let i = 0; i < nr; i++) onValue(valueAt(n, i));
    tm.dec(b);
  }
}

/**
 * Visit entries with lo <= key < hi in key order. `fn` sees a view of the value that is only valid
 * during the call; return false to stop.
 */
export async function walkRange(
  tm: TransactionManager, root: number, lo: number, hi: number, fn: (key: number, value: Buffer) => boolean | void,
): Promise<boolean> {
  const n = await tm.read(root, 'node');
  const nr = nrEntries(n);
  if (isLeaf(n)) {
    for (let i = Math.max(0, lowerBound(n, lo)); i < nr; i++) {
      const k = keyAt(n, i);
      if (k < lo) continue;
      if (k >= hi) return false;
      if (fn(k, valueAt(n, i)) === false) return false;
    }
    return true;
  }
  for (let i = Math.max(0, lowerBound(n, lo)); i < nr; i++) {
    if (keyAt(n, i) >= hi) return false;
    if (!(await walkRange(tm, value64(n, i), lo, hi, fn))) return false;
  }
  return true;
}

/** Every node block of a tree, with its depth (for checkers and counting). */
export async function walkNodes(
  tm: TransactionManager, root: number, fn: (block: number, node: Buffer) => boolean | void,
): Promise<void> {
  const stack = [root];
  while (stack.length > 0) {
    const b = stack.pop()!;
    const n = await tm.read(b, 'node');
    if (fn(b, n) === false) continue;
    if (!isLeaf(n)) for (let i = nrEntries(n) - 1; i >= 0; i--) stack.push(value64(n, i));
  }
}

/** The largest key in the tree, or undefined when it is empty. */
export async function lastKey(tm: TransactionManager, root: number): Promise<number | undefined> {
  let b = root;
  for (;;) {
    const n = await tm.read(b, 'node');
    const nr = nrEntries(n);
    if (nr === 0) return undefined;
    if (isLeaf(n)) return keyAt(n, nr - 1);
    b = value64(n, nr - 1);
  }
}
