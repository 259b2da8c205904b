import type { Command } from 'commander';
import { pipeline } from 'node:stream/promises';
import { catPath, formatLong, listPath } from '../../union/index.js';
import { openStrata, print } from '../context.js';

/** `strata cat` and `strata ls`: read an image without extracting it or creating a container. */
export function registerReadCommands(program: Command): void {
  program
    .command('cat')
    .description("print a file of an image (symlinks followed inside the image)")
    .argument('<image>')
    .argument('<path>')
    .action(async (ref: string, path: string, _opts: unknown, cmd: Command) => {
      const { fs, release } = await (await openStrata(cmd)).imageFs(ref);
      try {
        await pipeline(await catPath(fs, path), process.stdout, { end: false });
      } finally {
        await release();
      }
    });

  program
    .command('ls')
    .description('list a directory of an image')
    .argument('<image>')
    .argument('[path]', 'directory or file inside the image', '/')
    .option('-l, --long', 'long listing: mode, links, owner, size, time')
    .action(async (ref: string, path: string, opts: { long?: boolean }, cmd: Command) => {
      const { fs, release } = await (await openStrata(cmd)).imageFs(ref);
      try {
        for (const entry of await listPath(fs, path)) print(opts.long ? formatLong(entry) : entry.name);
      } finally {
        await release();
      }
    });
}
