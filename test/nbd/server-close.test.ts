// NbdServer.close() with clients still connected: it hangs up on them (a listener's close
// callback waits for its connections, so waiting for it first never returned).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RawClient, attach, serveSparseFile } from './helpers.js';

const MiB = 1024 * 1024;

test('close() with clients still connected hangs up on them instead of waiting for them', async () => {
  const { server, sock, close } = await serveSparseFile(MiB);
  try {
    const idle = await attach(sock, 'disk');
    const haggling = await RawClient.connect(sock);
    await haggling.greet();
    const t0 = Date.now();
    await server.close();
    assert.ok(Date.now() - t0 < 4000, `close took ${Date.now() - t0} ms`);
    assert.ok(await idle.closedWithin(2000));
    assert.ok(await haggling.closedWithin(2000));
  } finally {
    await close();
  }
});
