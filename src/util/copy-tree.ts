import { spawn } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { tiedToThisProcess } from './tied-child.js';

/**
 * Copy a directory tree with everything a layer must keep: modes, owners, times, xattrs,
 * hardlinks, devices, fifos, sparse files. GNU cp does all of it in C and clones extents with
 * FICLONE where the filesystem can (`--reflink=auto`), which no Node API matches. cp dies with
 * this process: killed mid-create, strata must not leave it writing on into the staging directory
 * that `fsck` then sweeps (it failed with ENOTEMPTY, or debris reappeared after it).
 */
export async function copyTree(source: string, target: string): Promise<void> {
  await mkdir(target, { recursive: true });
  const [command, args] = await tiedToThisProcess('cp', ['-a', '--reflink=auto', '--sparse=auto', '--', `${source}/.`, `${target}/`]);
  await new Promise<void>((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`copying ${source} failed: ${stderr.trim()}`))));
  });
}
