import { spawn } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { which } from './which.js';

/** util-linux's setpriv, to start `cp` with a parent-death signal (null where there is none). */
let setpriv: Promise<string | null> | undefined;

/**
 * Copy a directory tree with everything a layer must keep: modes, owners, times, xattrs,
 * hardlinks, devices, fifos, sparse files. GNU cp does all of it in C and clones extents with
 * FICLONE where the filesystem can (`--reflink=auto`), which no Node API matches.
 *
 * cp is started through `setpriv --pdeathsig KILL` where the host has it, so that it dies with
 * this process: a strata killed mid-create must not leave a cp writing on into the staging
 * directory that `fsck` then sweeps (it failed with ENOTEMPTY, or debris reappeared after it).
 */
export async function copyTree(source: string, target: string): Promise<void> {
  await mkdir(target, { recursive: true });
  setpriv ??= which('setpriv');
  const guard = await setpriv;
  const cp = ['cp', '-a', '--reflink=auto', '--sparse=auto', '--', `${source}/.`, `${target}/`];
  const [command, ...args] = guard === null ? cp : [guard, '--pdeathsig', 'KILL', '--', ...cp];
  await new Promise<void>((resolve, reject) => {
    const child = spawn(command!, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`copying ${source} failed: ${stderr.trim()}`))));
  });
}
