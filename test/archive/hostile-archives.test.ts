// Hostile layer archives (corpus in hostile-corpus.ts). Each is applied into <base>/target next to
// <base>/sentinel; the test checks the StrataError code and that nothing outside the target
// (the sentinel's listing, contents, modes and times, and the base directory) changed.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { isStrataError } from '../../src/errors.js';
import { FileChunks, applyLayerTar, openLayerStream } from '../../src/archive/index.js';
import { bufferStream, snapshot, tempDir, IS_ROOT } from './helpers.js';
import { fillSentinel, hostileCases, type Env } from './hostile-corpus.js';

const indexUrl = new URL('../../src/archive/index.ts', import.meta.url).href;

/** How the blob reaches the applier: a stream of 8 KiB pieces, or lent FileChunks read from a file. */
type Source = 'stream' | 'file';

async function applyHere(env: Env, blob: Buffer, whiteouts: 'apply' | 'overlay' | 'aufs', source: Source): Promise<{ code: string; message: string }> {
  const spool = source === 'file' ? tempDir('strata-hostile-blob-') : null;
  try {
    let input: Readable = bufferStream(blob, 8192);
    if (spool) {
      writeFileSync(`${spool.dir}/layer`, blob);
      input = await FileChunks.open(`${spool.dir}/layer`, { chunkSize: 3000 });
    }
    const tar = await openLayerStream(input);
    await applyLayerTar(env.target, tar, { whiteouts });
    return { code: 'ok', message: '' };
  } catch (err) {
    return { code: isStrataError(err) ? err.code : `non-strata ${(err as Error).message}`, message: (err as Error).message };
  } finally {
    spool?.cleanup();
  }
}

function applyAs(uid: number, env: Env, blob: Buffer, whiteouts: string): { code: string; message: string } {
  const script = `
    import { applyLayerTar, openLayerStream } from ${JSON.stringify(indexUrl)};
    import { Readable } from 'node:stream';
    const chunks = []; for await (const c of process.stdin) chunks.push(c);
    try {
      await applyLayerTar(${JSON.stringify(env.target)}, await openLayerStream(Readable.from([Buffer.concat(chunks)])), { whiteouts: ${JSON.stringify(whiteouts)} });
      console.log(JSON.stringify({ code: 'ok', message: '' }));
    } catch (err) { console.log(JSON.stringify({ code: err.code ?? 'non-strata', message: err.message })); }`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    input: blob, uid, gid: uid, cwd: fileURLToPath(new URL('../..', import.meta.url)), env: { ...process.env, HOME: '/tmp' },
  });
  const line = r.stdout.toString().trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(line) as { code: string; message: string };
  } catch {
    return { code: `child failed: ${r.stderr.toString().slice(0, 300)}`, message: '' };
  }
}

describe('hostile archives', () => {
  it('the corpus has at least 25 cases that must fail with a code', () => {
    assert.ok(hostileCases.filter((c) => c.expect !== 'contained').length >= 25);
  });
  hostileSuite('stream');
});

// `strata import FILE` reads FileChunks: recycled buffers the reader gives back as it goes
describe('hostile archives read from a file as FileChunks', () => hostileSuite('file'));

function hostileSuite(source: Source): void {
  // (cases run as another user apply in a child process, which reads a stream either way)
  for (const c of hostileCases.filter((h) => source === 'stream' || h.asUid === undefined)) {
    it(c.name, async (ctx) => {
      if (c.asUid !== undefined && !IS_ROOT) return ctx.skip('needs root to switch to an unprivileged uid');
      const t = tempDir('strata-hostile-');
      try {
        const env: Env = { base: t.dir, target: `${t.dir}/target`, sentinel: `${t.dir}/sentinel` };
        mkdirSync(env.target);
        fillSentinel(env.sentinel);
        c.setup?.(env);
        if (c.asUid !== undefined) {
          chmodSync(t.dir, 0o755);
          chownSync(env.target, c.asUid, c.asUid);
        }
        const outside = () => snapshot(t.dir, { exclude: (rel) => rel === 'target' || rel.startsWith('target/') });
        const before = outside();
        const baseMtime = statSync(t.dir).mtimeMs;
        const blob = await c.build(env);
        const result = c.asUid !== undefined ? applyAs(c.asUid, env, blob, c.whiteouts ?? 'apply') : await applyHere(env, blob, c.whiteouts ?? 'apply', source);
        if (c.expect === 'contained') {
          assert.equal(result.code, 'ok', result.message);
          if (c.landsAt) {
            const landed = `${env.target}/${c.landsAt.replace('SENTINEL', env.sentinel.slice(1))}`;
            assert.equal(readFileSync(landed, 'utf8'), 'pwned\n', 'the write landed inside the target');
          }
        } else {
          assert.equal(result.code, c.expect, result.message);
          assert.ok(result.message.length > 15, `a clear message: ${result.message}`);
        }
        assert.deepEqual(outside(), before, 'nothing outside the target changed');
        assert.equal(statSync(t.dir).mtimeMs, baseMtime, 'no entry created or removed beside the target');
        assert.ok(!existsSync(`${env.sentinel}/pwned`));
        assert.equal(readFileSync(`${env.sentinel}/secret`, 'utf8'), 'do not touch\n');
      } finally {
        t.cleanup();
      }
    });
  }
}
