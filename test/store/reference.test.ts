import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatReference, parseReference, withDefaultTag } from '../../src/store/reference.js';
import { isStrataError } from '../../src/errors.js';

test('Docker Hub names are shortened to their familiar form', () => {
  assert.deepEqual(parseReference('docker.io/library/ubuntu:22.04'), { name: 'ubuntu', tag: '22.04' });
  assert.deepEqual(parseReference('docker.io/foo/bar'), { name: 'foo/bar' });
  assert.deepEqual(parseReference('library/busybox'), { name: 'busybox' });
});

test('registries with ports and digests parse', () => {
  const digest = `sha256:${'a'.repeat(64)}`;
  assert.deepEqual(parseReference(`localhost:5000/x/y:1@${digest}`), { name: 'localhost:5000/x/y', tag: '1', digest });
});

test('default tag is latest', () => {
  assert.equal(formatReference(withDefaultTag(parseReference('busybox'))), 'busybox:latest');
});

test('invalid references are refused with a stable code', () => {
  for (const bad of ['UPPER', 'a//b', 'name:', 'sha256', 'x:bad tag', '']) {
    assert.throws(() => parseReference(bad), (e) => isStrataError(e, 'INVALID_REFERENCE'), bad);
  }
});
