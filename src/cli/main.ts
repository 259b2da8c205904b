import type * as CommanderModule from 'commander';
import { StrataError, exitStatusFor, isErrno } from '../errors.js';
import { groupsFor } from './commands/index.js';
import { requireCommonJs } from '../util/require-cjs.js';

const { Command, CommanderError } = requireCommonJs<typeof CommanderModule>('commander');
type Command = CommanderModule.Command;

/** Global flags every command sees (`--root`, `--storage-driver`, `--storage-opt`, `--debug`). */
export interface GlobalOptions {
  root?: string;
  storageDriver?: string;
  storageOpt: string[];
  debug: boolean;
}

/** The program with the commands `argv` needs (all of them by default, for help). */
export async function buildProgram(argv: readonly string[] = []): Promise<Command> {
  const program = new Command('strata')
    .description('container image storage engine (Docker storage drivers, no daemon)')
    .version(packageVersion(), '-v, --version', 'print the version')
    .option('--root <dir>', 'data root (default /var/lib/strata as root, else $XDG_DATA_HOME/strata)')
    .option('-s, --storage-driver <name>', 'storage driver (default: overlay2 where it can mount, else vfs)')
    .option('--storage-opt <key=value>', 'driver option (repeatable)', (value: string, acc: string[]) => [...acc, value], [] as string[])
    .option('-D, --debug', 'print stack traces on errors', false)
    .showHelpAfterError(false)
    .exitOverride();
  for (const group of groupsFor(argv)) (await group.load())(program);
  return program;
}

function packageVersion(): string {
  return requireCommonJs<{ version: string }>('../../package.json').version;
}

/** The status of a process killed by SIGPIPE (128 + 13), which is how Docker's CLI ends. */
const EXIT_BROKEN_PIPE = 141;
let pipeWatched = false;
let pipeBroken = false;

/**
 * A reader that goes away (`strata images | head -1`) ends the output. Node ignores SIGPIPE, so
 * the write fails with EPIPE instead, which would surface as an unhandled 'error' with a stack
 * trace. It is noted here and the command goes on to its end (a `save` stops at its next write,
 * giving back the layers it holds), which then exits quietly, as a process killed by SIGPIPE.
 */
function watchForBrokenPipe(): void {
  if (pipeWatched) return;
  pipeWatched = true;
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
    pipeBroken = true;
  });
}

/**
 * A system call's error as coreutils print one, `PATH: reason` (Node words it
 * `ENOENT: no such file or directory, open 'PATH'`); any other error's message as it is.
 */
function messageOf(err: Error): string {
  if (err instanceof StrataError || !isErrno(err) || typeof err.path !== 'string' || !err.message.startsWith(`${err.code}: `)) return err.message;
  const reason = err.message.slice(err.code!.length + 2).split(', ')[0]!;
  return `${err.path}: ${reason}`;
}

/** Run the CLI; returns the exit status. Errors print one line on stderr (a stack with --debug). */
export async function main(argv: string[]): Promise<number> {
  watchForBrokenPipe();
  const program = await buildProgram(argv);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return pipeBroken ? EXIT_BROKEN_PIPE : 0;
  } catch (err) {
    if (pipeBroken || isErrno(err, 'EPIPE')) return EXIT_BROKEN_PIPE;
    if (err instanceof CommanderError) {
      // commander has already printed help/version/usage errors
      return err.exitCode === 0 ? 0 : 2;
    }
    const debug = argv.includes('--debug') || argv.includes('-D');
    if (debug && err instanceof Error) process.stderr.write(`${err.stack}\n`);
    else process.stderr.write(`strata: ${err instanceof Error ? messageOf(err) : String(err)}\n`);
    if (err instanceof StrataError) return exitStatusFor(err.category);
    return isErrno(err, 'ENOENT') ? exitStatusFor('NotFound') : 1;
  }
}

/** The global options of the program a subcommand belongs to. */
export function globalsOf(command: Command): GlobalOptions {
  let top = command;
  while (top.parent) top = top.parent;
  return top.opts() as GlobalOptions;
}
