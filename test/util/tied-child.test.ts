// Tools strata starts to write into the store die with it: a strata killed with SIGKILL leaves
// none writing on (tiedToThisProcess, through setpriv --pdeathsig).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { processAlive } from '../../src/util/process-alive.js';
import { which } from '../../src/util/which.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const source = (path: string): string => JSON.stringify(fileURLToPath(new URL(`../../src/${path}`, import.meta.url)));

/**
 * Run `script` (an ES module body) in a node process whose PATH starts with a `tool` that notes
 * its pid and waits a minute; SIGKILL that process once the tool runs; true if the tool died too.
 */
async function toolDiesWithItsParent(tool: string, script: string): Promise<boolean> {
  const dir = await mkdtemp(join(tmpdir(), 'strata-tied-'));
  let pid: number | null = null;
  try {
    await mkdir(join(dir, 'bin'));
    await writeFile(join(dir, 'bin', tool), `#!/bin/sh\necho $$ > ${join(dir, 'tool.pid')}\nexec sleep 60\n`, { mode: 0o755 });
    await mkdir(join(dir, 'src'));
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script.replaceAll('$DIR', dir)], {
      env: { ...process.env, PATH: `${join(dir, 'bin')}:${process.env.PATH ?? ''}` }, stdio: 'ignore',
    });
    const exited = new Promise((resolve) => child.once('exit', resolve));
    for (let i = 0; i < 200 && pid === null; i++) {
      await sleep(50);
      pid = await readFile(join(dir, 'tool.pid'), 'utf8').then((s) => Number(s.trim()), () => null);
    }
    assert.notEqual(pid, null, `${tool} started`);
    child.kill('SIGKILL');
    await exited;
    for (let i = 0; i < 40 && processAlive(pid!); i++) await sleep(50);
    return !processAlive(pid!);
  } finally {
    if (pid !== null && processAlive(pid)) process.kill(pid, 'SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
}

test('the cp of a vfs layer copy, and a devicemapper tool, die with a strata killed mid-way', async (t) => {
  if ((await which('setpriv')) === null) return t.skip('no setpriv (util-linux) on this host: children cannot be tied to their parent');
  assert.equal(await toolDiesWithItsParent('cp',
    `const { copyTree } = await import(${source('util/copy-tree.ts')}); await copyTree('$DIR/src', '$DIR/dst');`), true, 'cp');
  assert.equal(await toolDiesWithItsParent('mkfs.ext4',
    `const { run } = await import(${source('drivers/devicemapper/exec.ts')}); await run('mkfs.ext4', ['-q', '$DIR/img']);`), true, 'mkfs.ext4');
});
