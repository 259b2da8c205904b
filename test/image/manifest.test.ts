import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkDescriptor, dockerRepositories, parseDockerManifest, pickPlatform, MEDIA, v1LayerId } from '../../src/image/manifest.js';
import { isStrataError } from '../../src/errors.js';

test('docker manifest.json items are validated', () => {
  const items = parseDockerManifest('[{"Config":"a.json","RepoTags":null,"Layers":["x/layer.tar"]}]');
  assert.equal(items[0]!.Config, 'a.json');
  assert.equal(items[0]!.RepoTags, null);
  for (const bad of ['{}', '[{"Config":1,"Layers":[]}]', '[{"Config":"a","Layers":[1]}]', 'nope']) {
    assert.throws(() => parseDockerManifest(bad), (e) => isStrataError(e, 'INVALID_ARCHIVE'), bad);
  }
});

test('repositories file groups tags by repository, sorted, newline-terminated', () => {
  const text = dockerRepositories([{ ref: 'img:3', topV1: 'b' }, { ref: 'img:2', topV1: 'a' }, { ref: 'base:1', topV1: 'c' }]);
  assert.equal(text, '{"base":{"1":"c"},"img":{"2":"a","3":"b"}}\n');
  assert.equal(dockerRepositories([]), null);
});

test('v1 ids chain through their parents', () => {
  const c = `sha256:${'1'.repeat(64)}` as const;
  const a = v1LayerId(c, null);
  assert.match(a, /^[a-f0-9]{64}$/);
  assert.notEqual(v1LayerId(c, a), a);
});

test('descriptors need sha256 digests', () => {
  assert.throws(() => checkDescriptor({ mediaType: 'x', digest: 'sha512:' + 'a'.repeat(128), size: 1 }, 'layer'), (e) => isStrataError(e, 'UNSUPPORTED_ARCHIVE'));
  assert.throws(() => checkDescriptor({ mediaType: 'x', digest: '../../etc/passwd', size: 1 }, 'layer'), (e) => isStrataError(e, 'INVALID_ARCHIVE'));
});

test('platform choice prefers linux on this architecture', () => {
  const m = (arch: string) => ({ mediaType: MEDIA.ociManifest, digest: `sha256:${arch.padEnd(64, '0')}`, size: 1, platform: { os: 'linux', architecture: arch } });
  assert.equal(pickPlatform([m('arm64'), m('amd64')], 'amd64')?.platform?.architecture, 'amd64');
});
