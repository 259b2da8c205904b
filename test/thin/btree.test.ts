import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryBlockDevice } from '../../src/thin/block-device.js';
import { TransactionManager } from '../../src/thin/transaction-manager.js';
import { SpaceMap } from '../../src/thin/space-map.js';
import { deleteTree, emptyTree, insert, insertRun, lookup, remove, walkNodes, walkRange, type ValueType } from '../../src/thin/btree.js';
import { isLeaf, keyAt, nrEntries, maxEntries, value64 } from '../../src/thin/format/node.js';
import { rng } from './helpers.js';

function memTm(blocks = 8192): TransactionManager {
  const tm = new TransactionManager(new MemoryBlockDevice(blocks * 4096), 64);
  tm.sm = new SpaceMap(blocks, 'METADATA_NO_SPACE');
  tm.sm.inc(0);
  return tm;
}

/** A value type whose values are references counted in `refs` (stands in for data blocks). */
function counted(refs: Map<number, number>): ValueType {
  const key = (v: Buffer): number => v.readUInt32LE(0);
  return {
    size: 8,
    inc: (v) => void refs.set(key(v), (refs.get(key(v)) ?? 0) + 1),
    dec: (v) => {
      const n = (refs.get(key(v)) ?? 0) - 1;
      assert.ok(n >= 0, `value ${key(v)} dropped below zero`);
      if (n === 0) refs.delete(key(v));
      else refs.set(key(v), n);
    },
  };
}

const val = (n: number): Buffer => {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(n, 0);
  return b;
};

async function shape(tm: TransactionManager, root: number): Promise<{ nodes: number; depth: number; minLeafFill: number; minFill: number }> {
  let nodes = 0;
  let depth = 0;
  let minLeafFill = Infinity;
  // every node but the root: thin_check refuses one less than a third full
  let minFill = Infinity;
  const levels = new Map<number, number>([[root, 1]]);
  await walkNodes(tm, root, (b, n) => {
    nodes++;
    const d = levels.get(b) ?? 1;
    depth = Math.max(depth, d);
    if (b !== root) minFill = Math.min(minFill, nrEntries(n) / maxEntries(n));
    if (isLeaf(n)) {
      if (b !== root) minLeafFill = Math.min(minLeafFill, nrEntries(n) / maxEntries(n));
    } else for (let i = 0; i < nrEntries(n); i++) levels.set(n.readUInt32LE(32 + 8 * maxEntries(n) + 8 * i), d + 1);
  });
  return { nodes, depth, minLeafFill, minFill };
}

test('btree: random inserts split nodes; lookups and ordered walks agree with a Map', async () => {
  const tm = memTm();
  const refs = new Map<number, number>();
  const vt = counted(refs);
  const model = new Map<number, number>();
  let root = await emptyTree(tm, vt);
  const r = rng(1);
  for (let i = 0; i < 6000; i++) {
    const k = Math.floor(r() * 1e9);
    const v = i + 1;
    refs.set(v, 1);
    const { inserted } = await insert(tm, root, k, val(v), vt).then((x) => ((root = x.root), x));
    assert.equal(inserted, !model.has(k));
    model.set(k, v);
  }
  assert.equal(refs.size, model.size, 'overwritten values were released');
  const s = await shape(tm, root);
  assert.ok(s.depth >= 2, 'the tree grew beyond a single leaf');
  for (const [k, v] of model) assert.equal((await lookup(tm, root, k))!.readUInt32LE(0), v);
  assert.equal(await lookup(tm, root, 1e9 + 5), undefined);
  const keys: number[] = [];
  await walkRange(tm, root, 0, Infinity, (k) => void keys.push(k));
  assert.deepEqual(keys, [...model.keys()].sort((a, b) => a - b));
  const some: number[] = [];
  await walkRange(tm, root, keys[100]!, keys[200]!, (k) => void some.push(k));
  assert.deepEqual(some, keys.slice(100, 200));
});

test('btree: every node but the root stays at least a third full, however keys arrive', async () => {
  // as the kernel's even splits keep them, and thin_check requires ("too few entries in
  // btree_node"): appends that stop anywhere, two interleaved sequential streams (two writers
  // filling different parts of a device), random order
  const orders: Array<[string, number[]]> = [];
  for (const n of [252 * 20 + 1, 252 * 20 + 27, 300]) orders.push([`appends stopping at ${n}`, Array.from({ length: n }, (_, k) => k)]);
  const streams: number[] = [];
  for (let i = 0; i < 3000; i++) streams.push(i, 100_000 + i);
  orders.push(['two interleaved streams', streams]);
  const r = rng(7);
  orders.push(['random', Array.from({ length: 6000 }, () => Math.floor(r() * 1e6))]);
  for (const [name, keys] of orders) {
    const tm = memTm();
    let root = await emptyTree(tm, { size: 8 });
    for (const k of keys) root = (await insert(tm, root, k, val(k), { size: 8 })).root;
    const s = await shape(tm, root);
    assert.ok(s.depth >= 2, `${name}: the tree grew beyond its root`);
    assert.ok(s.minFill >= 1 / 3, `${name}: a node is ${(s.minFill * 100).toFixed(0)}% full`);
  }
});

test('btree: removals rebalance and merge, values are released, nothing leaks', async () => {
  const tm = memTm();
  const refs = new Map<number, number>();
  const vt = counted(refs);
  let root = await emptyTree(tm, vt);
  const r = rng(2);
  const keys = Array.from({ length: 5000 }, (_, i) => i * 3);
  for (const k of keys) {
    refs.set(k, 1);
    root = (await insert(tm, root, k, val(k), vt)).root;
  }
  const before = await shape(tm, root);
  keys.sort(() => r() - 0.5);
  for (let i = 0; i < keys.length; i++) {
    const { root: nr, removed } = await remove(tm, root, keys[i]!, vt);
    root = nr;
    assert.equal(removed!.readUInt32LE(0), keys[i]);
    assert.equal((await remove(tm, root, keys[i]!, vt)).removed, undefined, 'removing twice is a no-op');
    if (i === 4500) {
      const mid = await shape(tm, root);
      assert.ok(mid.nodes < before.nodes / 4, `nodes merged (${before.nodes} -> ${mid.nodes})`);
      assert.ok(mid.depth < 2 || mid.minFill >= 1 / 3, `every node but the root a third full (${(mid.minFill * 100).toFixed(0)}%)`);
      for (const k of keys.slice(i + 1, i + 50)) assert.ok(await lookup(tm, root, k));
      for (const k of keys.slice(0, 50)) assert.equal(await lookup(tm, root, k), undefined);
    }
  }
  assert.equal(refs.size, 0, 'every value was released');
  const end = await shape(tm, root);
  assert.equal(end.nodes, 1);
  assert.equal(tm.sm.nrAllocated, 2, 'only the superblock and the empty root remain');
});

test('btree: a shared tree is copied on write; deleting both copies frees everything', async () => {
  const tm = memTm();
  const refs = new Map<number, number>();
  const vt = counted(refs);
  let a = await emptyTree(tm, vt);
  for (let k = 0; k < 2000; k++) {
    refs.set(k, 1);
    a = (await insert(tm, a, k, val(k), vt)).root;
  }
  // "snapshot": a second reference to the root, as create_snap does
  tm.inc(a);
  let b = a;
  for (let k = 0; k < 2000; k += 100) {
    refs.set(100000 + k, 1);
    b = (await insert(tm, b, k, val(100000 + k), vt)).root;
  }
  b = (await remove(tm, b, 1999, vt)).root;
  assert.notEqual(a, b);
  for (let k = 0; k < 2000; k += 100) {
    assert.equal((await lookup(tm, a, k))!.readUInt32LE(0), k, 'the original is untouched');
    assert.equal((await lookup(tm, b, k))!.readUInt32LE(0), 100000 + k);
  }
  assert.ok(await lookup(tm, a, 1999));
  assert.equal(refs.get(5), 2, 'a value in a copied leaf is referenced by both leaves');
  await deleteTree(tm, a, (v) => vt.dec!(v));
  await deleteTree(tm, b, (v) => vt.dec!(v));
  assert.equal(refs.size, 0);
  assert.equal(tm.sm.nrAllocated, 1);
});

/** Every key of every node in order and inside the range its parent's keys give it. */
async function assertKeysInBounds(tm: TransactionManager, root: number): Promise<void> {
  const visit = async (b: number, lo: number, hi: number): Promise<void> => {
    const n = await tm.read(b, 'node');
    const nr = nrEntries(n);
    for (let i = 0; i < nr; i++) {
      const k = keyAt(n, i);
      assert.ok(k >= lo && k < hi, `key ${k} of node ${b} outside [${lo}, ${hi})`);
      if (i > 0) assert.ok(k > keyAt(n, i - 1), `keys of node ${b} out of order`);
    }
    if (!isLeaf(n)) for (let i = 0; i < nr; i++) await visit(value64(n, i), keyAt(n, i), i + 1 < nr ? keyAt(n, i + 1) : hi);
  };
  await visit(root, -Infinity, Infinity);
}

test('btree: runs of keys go in one descent per leaf, in order; every key ends as last written, in bounds', async () => {
  const r = rng(11);
  const batches: Array<[string, number[]]> = [];
  batches.push(['appends', Array.from({ length: 3000 }, (_, k) => k)]);
  const streams: number[] = [];
  for (let i = 0; i < 1500; i++) streams.push(i * 4, i * 4 + 1, 200_000 + i * 4, 200_000 + i * 4 + 1);
  batches.push(['two interleaved streams of runs', streams]);
  batches.push(['descending (each new key below all others)', Array.from({ length: 1500 }, (_, k) => 5000 - k)]);
  batches.push(['random, with repeats', Array.from({ length: 4000 }, () => Math.floor(r() * 3000))]);
  for (const [name, keys] of batches) {
    for (const shared of [false, true]) {
      const tm = memTm();
      const refs = new Map<number, number>();
      const vt = counted(refs);
      let root = await emptyTree(tm, vt);
      // a tree holding some keys already, shared with a snapshot when `shared`
      const existing = Array.from({ length: 857 }, (_, j) => 1 + 7 * j);
      for (const k of existing) {
        refs.set(1e6 + k, 1);
        root = (await insert(tm, root, k, val(1e6 + k), vt)).root;
      }
      if (shared) tm.inc(root);
      const before = root;
      const model = new Map(existing.map((k) => [k, 1e6 + k]));
      let descents = 0;
      let newKeys = 0;
      for (let at = 0; at < keys.length;) {
        const run = await insertRun(tm, root, keys, (i) => {
          refs.set(i + 1, 1);
          return val(i + 1);
        }, at, vt);
        assert.ok(run.taken >= 1);
        root = run.root;
        at += run.taken;
        newKeys += run.inserted;
        descents++;
      }
      for (let i = 0; i < keys.length; i++) {
        if (!model.has(keys[i]!)) newKeys--;
        model.set(keys[i]!, i + 1);
      }
      assert.equal(newKeys, 0, `${name}: the new keys were counted`);
      await assertKeysInBounds(tm, root);
      for (const [k, v] of model) assert.equal((await lookup(tm, root, k))!.readUInt32LE(0), v, `${name}: key ${k}`);
      const walked: number[] = [];
      await walkRange(tm, root, 0, Infinity, (k) => void walked.push(k));
      assert.deepEqual(walked, [...model.keys()].sort((a, b) => a - b));
      const live = new Set([...model.values(), ...(shared ? existing.map((k) => 1e6 + k) : [])]);
      assert.equal(refs.size, live.size, `${name}: what was overwritten was released (unless the snapshot still holds it)`);
      if (name === 'appends') assert.ok(descents < keys.length / 50, `${name}: ${descents} descents for ${keys.length} keys`);
      if (shared) for (const k of existing) assert.equal((await lookup(tm, before, k))!.readUInt32LE(0), 1e6 + k);
      const s = await shape(tm, root);
      assert.ok(s.minFill >= 1 / 3, `${name}: a node is ${(s.minFill * 100).toFixed(0)}% full`);
    }
  }
});
