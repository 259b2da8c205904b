import type { Command } from 'commander';
import { pipeline } from 'node:stream/promises';
import { catPath, formatLong, listPath } from '../../union/index.js';
import { openStrata, print } from '../context.js';
import { isErrno, strataError } from '../../errors.js';

/** What cat(1) and ls(1) say for each error an image's view gives for a path. */
const REASONS: Record<string, string> = {
  ENOENT: 'no such file or directory',
  ENOTDIR: 'not a directory',
  EISDIR: 'is a directory',
  ELOOP: 'too many levels of symbolic links',
};

/** A path error of the image's view as one line naming the image and the path, with its exit status (3 not found, else 2). */
function pathError(err: unknown, ref: string, path: string): unknown {
  if (!isErrno(err, 'ENOENT', 'ENOTDIR', 'EISDIR', 'ELOOP')) return err;
  const code = err.code!;
  return strataError(code === 'ENOENT' ? 'PATH_NOT_FOUND' : 'INVALID_ARGUMENT', `${ref}: ${path}: ${REASONS[code]}`, { path }, err);
}

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
      } catch (err) {
        throw pathError(err, ref, path);
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
      } catch (err) {
        throw pathError(err, ref, path);
      } finally {
        await release();
      }
    });
}
