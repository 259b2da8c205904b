import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { releaseAfter } from '../../src/util/release-after.js';

const collect = async (r: Readable): Promise<string> => {
  let s = '';
  for await (const c of r) s += String(c);
  return s;
};

test('releaseAfter: the stream ends only once the release has finished', async () => {
  let released = false;
  const out = releaseAfter(Readable.from(['a', 'b', 'c']), async () => {
    await sleep(30);
    released = true;
  });
  assert.equal(await collect(out), 'abc');
  assert.equal(released, true, 'the reader saw the end only after the release');
});

test('releaseAfter: a failed release fails the stream; a failed source fails it and still releases', async () => {
  const failing = releaseAfter(Readable.from(['x']), async () => {
    throw new Error('unmount failed');
  });
  await assert.rejects(collect(failing), /unmount failed/);

  let released = 0;
  const broken = new Readable({ read() { this.destroy(new Error('source broke')); } });
  await assert.rejects(collect(releaseAfter(broken, async () => { released++; })), /source broke/);
  await sleep(10);
  assert.equal(released, 1);
});

test('releaseAfter: a reader that stops early destroys the source, and the release runs', async () => {
  let released = 0;
  let i = 0;
  const endless = new Readable({ read() { this.push(Buffer.alloc(64 * 1024, i++ % 256)); } });
  const out = releaseAfter(endless, async () => { released++; });
  for await (const _ of out) break;
  await sleep(20);
  assert.equal(endless.destroyed, true);
  assert.equal(released, 1);
});
