// The container scenario the store tests of several drivers share, on an image of
// interop/fixtures' BASE_OPS: a container changes a file and replaces a directory, its diff says
// so, its commit reassembles byte for byte, and a container of the commit sees the changes. Each
// driver's test checks its own layout between these steps.
import assert from 'node:assert/strict';
import { lstat, mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { Strata } from '../../src/strata.js';

export async function digestOf(stream: Readable): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of stream) hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}`;
}

/** Mount `container`, check it shows the image and the init layer, change it, unmount. Where it was mounted. */
export async function changeContainer(strata: Strata, container: string): Promise<string> {
  const merged = await strata.mount(container);
  try {
    assert.equal(await readFile(join(merged, 'etc/os-release'), 'utf8'), 'ID=strata\n');
    await lstat(join(merged, '.dockerenv'));
    await writeFile(join(merged, 'etc/os-release'), 'ID=changed\n');
    await rm(join(merged, 'var/cache'), { recursive: true });
    await mkdir(join(merged, 'var/cache'));
    await writeFile(join(merged, 'var/cache/z'), 'z');
  } finally {
    await strata.unmount(container);
  }
  return merged;
}

/** The changed container's diff, then its commit as `ref`: the image's layers, the new one last. */
export async function commitChanged(strata: Strata, container: string, ref: string): ReturnType<Strata['imageLayers']> {
  const changes = (await strata.diff(container)).map((c) => `${c.kind} ${c.path}`);
  assert.deepEqual(changes, ['C /etc', 'C /etc/os-release', 'C /var', 'C /var/cache', 'D /var/cache/a', 'D /var/cache/b', 'A /var/cache/z']);
  const layers = await strata.imageLayers(await strata.commit(container, { ref }));
  assert.equal(layers.length, 2);
  assert.equal(await digestOf(await layers[1]!.open()), layers[1]!.diffId, 'the committed layer reassembles byte for byte');
  return layers;
}

/** A container of the committed `ref` sees the changes, and no whiteout of them. Its id. */
export async function checkCommitted(strata: Strata, ref: string): Promise<string> {
  const container = await strata.createContainer(ref);
  const view = await strata.mount(container);
  try {
    assert.deepEqual((await readdir(join(view, 'var/cache'))).sort(), ['z']);
    assert.equal(await readFile(join(view, 'etc/os-release'), 'utf8'), 'ID=changed\n');
    await assert.rejects(lstat(join(view, '.wh..wh..opq')));
  } finally {
    await strata.unmount(container);
  }
  return container;
}
