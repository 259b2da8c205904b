import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  classifyEntries, classifyOverlayEntries, mergeListings, lookupName, whitedOutName, isHousekeeping,
  type DirListing, type EntryType, type Probe,
} from '../../src/union/index.js';

const listing = (...names: Array<[string, EntryType] | string>): DirListing =>
  classifyEntries(names.map((n) => (typeof n === 'string' ? ([n, 'file'] as const) : n)));

test('names: whiteouts, housekeeping and the opaque marker', () => {
  assert.equal(whitedOutName('.wh.foo'), 'foo');
  assert.equal(whitedOutName('.wh..wh..opq'), null);
  assert.equal(whitedOutName('.wh..wh.plnk'), null);
  assert.equal(whitedOutName('foo'), null);
  assert.equal(whitedOutName('.wh.'), null);
  assert.equal(isHousekeeping('.wh..wh.aufs'), true);
  assert.equal(isHousekeeping('.wh..wh.orph'), true);
  assert.equal(isHousekeeping('.wh..wh..opq'), false);
  assert.equal(isHousekeeping('.wh.x'), false);
});

test('classifyEntries hides every .wh. name and records whiteouts and opacity', () => {
  const l = listing('a', '.wh.b', '.wh..wh..opq', '.wh..wh.plnk', ['d', 'dir']);
  assert.deepEqual([...l.entries], [['a', 'file'], ['d', 'dir']]);
  assert.deepEqual([...l.whiteouts], ['b']);
  assert.equal(l.opaque, true);
});

test('mergeListings: upper wins, whiteouts hide only lower branches', () => {
  const top = listing(['a', 'dir'], '.wh.b', 'c', '.wh.c');
  const mid = listing('a', 'b', 'm', '.wh.low');
  const low = listing('b', 'c', 'low', 'z');
  const merged = mergeListings([top, mid, low]);
  assert.deepEqual([...merged.keys()].sort(), ['a', 'c', 'm', 'z']);
  assert.equal(merged.get('a'), 'dir');
});

/** An in-memory stack: per branch, what a name is and whether it is whited out / opaque. */
function probes(spec: Array<{ type?: EntryType; wh?: boolean; opq?: boolean }>) {
  const calls: number[] = [];
  return {
    calls,
    probe: async (b: number): Promise<Probe> => {
      calls.push(b);
      const s = spec[b] ?? {};
      return { type: s.type ?? null, whiteout: s.wh ?? false };
    },
    opaque: async (b: number) => spec[b]?.opq ?? false,
  };
}

test('lookupName: first non-directory wins and ends the search', async () => {
  const p = probes([{}, { type: 'file' }, { type: 'dir' }]);
  assert.deepEqual(await lookupName([0, 1, 2], p.probe, p.opaque), { type: 'file', branches: [1] });
  assert.deepEqual(p.calls, [0, 1]);
});

test('lookupName: directories merge down to a whiteout, a non-directory or an opaque one', async () => {
  let p = probes([{ type: 'dir' }, {}, { type: 'dir' }, { type: 'dir' }]);
  assert.deepEqual(await lookupName([0, 1, 2, 3], p.probe, p.opaque), { type: 'dir', branches: [0, 2, 3] });
  p = probes([{ type: 'dir' }, { wh: true }, { type: 'dir' }]);
  assert.deepEqual(await lookupName([0, 1, 2], p.probe, p.opaque), { type: 'dir', branches: [0] });
  p = probes([{ type: 'dir' }, { type: 'dir', opq: true }, { type: 'dir' }]);
  assert.deepEqual(await lookupName([0, 1, 2], p.probe, p.opaque), { type: 'dir', branches: [0, 1] });
  p = probes([{ type: 'dir' }, { type: 'symlink' }, { type: 'dir' }]);
  assert.deepEqual(await lookupName([0, 1, 2], p.probe, p.opaque), { type: 'dir', branches: [0] });
});

test('lookupName: a whiteout above hides, an entry beside its own whiteout stays visible', async () => {
  let p = probes([{ wh: true }, { type: 'file' }]);
  assert.equal(await lookupName([0, 1], p.probe, p.opaque), null);
  p = probes([{ type: 'dir', wh: true }, { type: 'dir' }]);
  assert.deepEqual(await lookupName([0, 1], p.probe, p.opaque), { type: 'dir', branches: [0] });
  p = probes([{}, {}]);
  assert.equal(await lookupName([0, 1], p.probe, p.opaque), null);
});

test('lookupName only visits the branches where the parent exists', async () => {
  const p = probes([{ type: 'file' }, { type: 'file' }, { type: 'file' }]);
  assert.deepEqual(await lookupName([2], p.probe, p.opaque), { type: 'file', branches: [2] });
  assert.deepEqual(p.calls, [2]);
});

test('classifyOverlayEntries: 0/0 devices are whiteouts, opacity comes from the caller (xattr)', () => {
  const l = classifyOverlayEntries([['a', 'file', false], ['gone', 'other', true], ['null', 'other', false], ['.wh.x', 'file', false]], true);
  assert.deepEqual([...l.entries], [['a', 'file'], ['null', 'other']]);
  assert.deepEqual([...l.whiteouts], ['gone']);
  assert.equal(l.opaque, true);
});
