// Mount references across processes: kept ones (strata mount) outlive their process; a process's
// own ones are counted while it lives and not once it has died, so a save or export killed
// mid-way leaves no layer counted as mounted for good.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MountRefs } from '../../src/drivers/mount-refs.js';

/** A process that takes one reference of each kind on `id`, says so, and waits to be killed. */
function holder(home: string, id: string): Promise<{ kill: () => Promise<void> }> {
  const code = `
    const { MountRefs } = await import(${JSON.stringify(new URL('../../src/drivers/mount-refs.ts', import.meta.url).href)});
    const refs = new MountRefs(${JSON.stringify(home)});
    await refs.change(${JSON.stringify(id)}, 1, 'process');
    await refs.change(${JSON.stringify(id)}, 1, 'kept');
    console.log('held');
    setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    child.stdout.once('data', () => resolve({
      kill: () => new Promise((done) => { child.once('close', () => done()); child.kill('SIGKILL'); }),
    }));
    child.once('error', reject);
  });
}

describe('MountRefs', () => {
  let home: string;
  before(async () => { home = await mkdtemp(join(tmpdir(), 'strata-refs-')); });
  after(() => rm(home, { recursive: true, force: true }));

  it("counts another process's references while it lives, and only its kept ones once it died", async () => {
    const refs = new MountRefs(home);
    const other = await holder(home, 'a');
    assert.equal(await refs.count('a'), 2);
    assert.equal((await refs.usage('a')).kept, 1);
    await other.kill();
    assert.equal(await refs.count('a'), 1);
    // our own come and go with their edges: 1 (kept) -> 2 -> 1, no mount or unmount
    const edges: string[] = [];
    assert.equal(await refs.change('a', 1, 'process', async () => { edges.push('up'); }), 2);
    assert.equal(await refs.change('a', -1, 'process', async () => { edges.push('down'); }), 1);
    assert.equal(edges.join(), '');
    // the dead process's line is gone from the file once it was rewritten
    assert.equal((await readFile(join(home, 'mountrefs', 'a'), 'utf8')).trim(), '1');
    assert.equal(await refs.change('a', -1, 'kept', async () => { edges.push('down'); }), 0);
    assert.equal(edges.join(), 'down');
    // a put this process holds nothing for changes nothing
    assert.equal(await refs.change('a', -1, 'process'), 0);
  });

  it('reads what earlier versions wrote (one number) as kept references', async () => {
    await mkdir(join(home, 'mountrefs'), { recursive: true });
    await writeFile(join(home, 'mountrefs', 'old'), '2');
    const refs = new MountRefs(home);
    assert.equal(await refs.count('old'), 2);
    assert.equal((await refs.usage('old')).kept, 2);
  });

  it('does not count a dead pid reused by another process (told apart by its start time)', async () => {
    await writeFile(join(home, 'mountrefs', 'reused'), `0\n${process.pid} 1 3\n`);
    assert.equal(await new MountRefs(home).count('reused'), 0);
  });
});
