// PathSet: the compact set of paths the applier and the tar-split recorder remember, checked
// against a Set of strings.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { PathSet } from '../../src/archive/path-set.js';
import { rng } from '../helpers/rng.js';

describe('PathSet', () => {
  it('agrees with a Set of strings through 200,000 random adds and lookups, growing all the way', () => {
    const random = rng(11);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
    const parts = ['usr', 'lib', 'node_modules', 'a', 'b', '.wh.x', 'ünï', '日本', 'x'.repeat(300), '', '..'];
    const prefix = '/var/lib/strata/overlay2/abc/diff/';
    const path = (): string => {
      const name = Array.from({ length: 1 + Math.floor(random() * 4) }, () => `${pick(parts)}${Math.floor(random() * 500)}`).join('/');
      return random() < 0.5 ? `${prefix}${name}` : name;
    };
    const set = new PathSet(prefix);
    const oracle = new Set<string>();
    // a path under the prefix is asked about either whole or by its rest (addUnder, hasUnder)
    const under = (p: string): string | null => (p.startsWith(prefix) && random() < 0.5 ? p.slice(prefix.length) : null);
    for (let i = 0; i < 200_000; i++) {
      const p = path();
      const rel = under(p);
      if (random() < 0.5) {
        if (rel === null) set.add(p);
        else set.addUnder(rel);
        oracle.add(p);
      } else {
        assert.equal(rel === null ? set.has(p) : set.hasUnder(rel), oracle.has(p), p);
      }
    }
    assert.equal(set.size, oracle.size);
    for (const p of oracle) assert.ok(set.has(p), p);
  });

  it('tells a path under the prefix from the same name without it, and strings UTF-8 would confuse', () => {
    const set = new PathSet('/root/');
    set.add('/root/a');
    assert.ok(set.has('/root/a'));
    assert.ok(!set.has('a'));
    assert.ok(!set.has('/root/'));
    set.add('');
    assert.ok(set.has(''));
    assert.ok(!set.has('/root/'));
    // two lone surrogates: UTF-8 writes both as U+FFFD; they stay apart
    set.add('x\ud800');
    assert.ok(set.has('x\ud800'));
    assert.ok(!set.has('x\udc00'));
    assert.ok(!set.has('x\ufffd'));
    assert.equal(set.size, 3);
    set.add('/root/a');
    assert.equal(set.size, 3, 'adding again changes nothing');
    const bare = new PathSet();
    bare.addUnder('a/b');
    assert.ok(bare.has('a/b') && bare.hasUnder('a/b'), 'with no prefix, under it is the whole path');
  });

  it('keeps flags per path: has() asks for any of them, add() adds to them', () => {
    const set = new PathSet('/r/');
    set.add('/r/a', 1);
    assert.ok(set.has('/r/a', 1));
    assert.ok(!set.has('/r/a', 2 | 4));
    assert.ok(set.has('/r/a'));
    set.add('/r/a', 4);
    assert.ok(set.has('/r/a', 4) && set.has('/r/a', 1) && !set.has('/r/a', 2));
    assert.equal(set.size, 1);
    assert.ok(!set.has('/r/b', 1));
  });
});
