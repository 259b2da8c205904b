import { spawn } from 'node:child_process';
import { mkdir } from 'node:fs/promises';

/**
 * Copy a directory tree with everything a layer must keep: modes, owners, times, xattrs,
 * hardlinks, devices, fifos, sparse files. GNU cp does all of it in C and clones extents with
 * FICLONE where the filesystem can (`--reflink=auto`), which no Node API matches.
 */
export async function copyTree(source: string, target: string): Promise<void> {
  await mkdir(target, { recursive: true });
  await new Promise<void>((resolve, reject) => {
    const child = spawn('cp', ['-a', '--reflink=auto', '--sparse=auto', '--', `${source}/.`, `${target}/`], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`copying ${source} failed: ${stderr.trim()}`))));
  });
}
