import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ContainerStore } from '../../src/store/container-store.js';
import { Readable } from 'node:stream';
import { Strata } from '../../src/strata.js';
import { isStrataError } from '../../src/errors.js';
import { file, layerTar, tempDir } from '../helpers/fstest.js';

const IMAGE = `sha256:${'a'.repeat(64)}` as const;

test('list() sees records another process rewrote or removed, and its results are copies', async (t) => {
  const root = await tempDir('strata-containers-');
  t.after(() => rm(root, { recursive: true, force: true }));
  const store = new ContainerStore(root);
  const txn = { root };
  const one = ContainerStore.newRecord('1'.repeat(64), 'aaaa', IMAGE, 'img', 'vfs');
  const two = ContainerStore.newRecord('2'.repeat(64), 'other', IMAGE, 'img', 'vfs');
  await store.put(txn, one);
  await store.put(txn, two);
  assert.deepEqual((await store.list()).map((c) => c.Name), ['/aaaa', '/other']);

  // same size, rewritten in place (as a `docker rename` by another process would)
  const path = join(store.dir, one.ID, 'config.v2.json');
  await writeFile(path, (await readFile(path, 'utf8')).replace('"/aaaa"', '"/bbbb"'));
  const listed = await store.list();
  assert.deepEqual(listed.map((c) => c.Name), ['/bbbb', '/other']);

  listed[0]!.Name = '/changed-by-caller';
  assert.equal((await store.list())[0]!.Name, '/bbbb');

  await rm(join(store.dir, two.ID), { recursive: true });
  assert.deepEqual((await store.list()).map((c) => c.ID), [one.ID]);
});

test('create refuses a name in use, also one given by another process or by a rename since; a freed name is free again', async (t) => {
  const root = await tempDir('strata-names-');
  t.after(() => rm(root, { recursive: true, force: true }));
  const one = await Strata.open({ root, driver: 'vfs' });
  await one.importImage(Readable.from(await layerTar([file('a', 'a')])), { ref: 'img:1' });
  const exists = (e: unknown) => isStrataError(e, 'CONTAINER_EXISTS');
  const web = await one.createContainer('img:1', { name: 'web' });
  await assert.rejects(one.createContainer('img:1', { name: 'web' }), exists);
  await assert.rejects(one.createContainer('img:1', { name: '/web' }), exists);

  // another Strata (another process, as far as caches go) names one "db"; `one` has seen the store before
  const two = await Strata.open({ root, driver: 'vfs' });
  await two.createContainer('img:1', { name: 'db' });
  await assert.rejects(one.createContainer('img:1', { name: 'db' }), exists);

  // renamed behind its back (as `docker rename` rewrites the record): the old name frees, the new is taken
  const path = join(root, 'containers', web, 'config.v2.json');
  await writeFile(path, (await readFile(path, 'utf8')).replace('"/web"', '"/api"'));
  await assert.rejects(one.createContainer('img:1', { name: 'api' }), exists);
  const again = await one.createContainer('img:1', { name: 'web' });
  await two.removeContainer(again);
  await one.createContainer('img:1', { name: 'web' });
  assert.deepEqual((await one.listContainers()).map((c) => c.name).sort(), ['api', 'db', 'web']);
});
