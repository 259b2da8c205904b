import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chainId, chainIds, goJson, goTime, sha256, parseDigest } from '../../src/store/digest.js';
import { isStrataError } from '../../src/errors.js';

// Vectors from real Docker samples (shared/reference/image-formats.md §5, §6).
const D0 = 'sha256:871b4548939ae00ce9e2cb5a1a64295a55c200f08f6339f48ce3dbb0d402a1dc' as const;
const D1 = 'sha256:e03676cdc199431a7b9c61569d8d256fa1a1ac7ead6ee69b0f0005062c98af85' as const;

test('chain ID of one layer is its diff ID', () => {
  assert.equal(chainId([D0]), D0);
});

test("chain ID of two layers matches Docker's img:3", () => {
  assert.deepEqual(chainIds([D0, D1]), [D0, 'sha256:1944a11ded7acad3ee84530c1cbc61576de726fd2e36fd287b1e8481a0ec3a07']);
  assert.equal(chainId([]), null);
});

test('the empty layer tar has the well-known diff ID', () => {
  assert.equal(sha256(Buffer.alloc(1024)), 'sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef');
});

test('goJson escapes as Go does', () => {
  assert.equal(goJson({ a: 'x<y>&z\u2028' }), '{"a":"x\\u003cy\\u003e\\u0026z\\u2028"}');
});

test('goTime drops trailing fractional zeros', () => {
  assert.equal(goTime(new Date('2026-11-22T12:40:01.760Z')), '2026-11-22T12:40:01.76Z');
  assert.equal(goTime(new Date('2026-11-22T12:40:01.000Z')), '2026-11-22T12:40:01Z');
  assert.equal(goTime(new Date('2026-11-22T12:40:10.000Z')), '2026-11-22T12:40:10Z');
});

test('parseDigest trims and rejects junk with a store error', () => {
  assert.equal(parseDigest(` ${D0}\n`), D0);
  assert.throws(() => parseDigest('sha256:xyz'), (e) => isStrataError(e, 'STORE_CORRUPT'));
});
