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
    // cp says something per file it could not copy: out of space, that is every file left. The
    // error keeps its first line (one line, and bounded memory) and counts the rest.
    let first = '';
    let firstEnded = false;
    let more = 0;
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d: string) => {
      let rest = d;
      if (!firstEnded) {
        const nl = d.indexOf('\n');
        first = (first + (nl === -1 ? d : d.slice(0, nl))).slice(0, 1000);
        if (nl === -1) return;
        firstEnded = true;
        rest = d.slice(nl + 1);
      }
      for (let i = rest.indexOf('\n'); i !== -1; i = rest.indexOf('\n', i + 1)) more++;
    });
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) return resolve();
      const also = more > 0 ? ` (and ${more} more line${more === 1 ? '' : 's'})` : '';
      reject(new Error(`copying ${source} failed: ${first || `cp exited with status ${code}`}${also}`));
    });
  });
}
