import type { Command } from 'commander';
import { openStrata, print, printJson, printTable, shortId, since, writeOutput } from '../context.js';

export function registerContainerCommands(program: Command): void {
  program
    .command('create')
    .description('create a container (its writable layer) from an image')
    .argument('<image>')
    .option('--name <name>', 'container name')
    .action(async (image: string, opts: { name?: string }, cmd: Command) => {
      print(await (await openStrata(cmd)).createContainer(image, opts.name ? { name: opts.name } : {}));
    });

  program
    .command('ps')
    .description('list containers')
    .option('-a, --all', 'all containers (all are listed: Strata never runs them)')
    .option('-q, --quiet', 'only container IDs')
    .option('--no-trunc', 'do not truncate IDs')
    .option('--format <format>', 'json for machine-readable output')
    .action(async (opts: { quiet?: boolean; trunc: boolean; format?: string }, cmd: Command) => {
      const list = await (await openStrata(cmd)).listContainers();
      if (opts.format === 'json') return printJson(list);
      const id = (s: string) => (opts.trunc ? shortId(s) : s);
      if (opts.quiet) return list.forEach((c) => print(id(c.id)));
      printTable(['CONTAINER ID', 'IMAGE', 'CREATED', 'STATUS', 'NAMES'], list.map((c) => [id(c.id), c.image, since(c.created), 'Created', c.name]));
    });

  program
    .command('rm')
    .description('remove containers and their layers')
    .argument('<containers...>')
    .option('-f, --force', 'unmount first if mounted')
    .action(async (names: string[], opts: { force?: boolean }, cmd: Command) => {
      const strata = await openStrata(cmd);
      for (const name of names) {
        await strata.removeContainer(name, { force: opts.force ?? false });
        print(name);
      }
    });

  program
    .command('mount')
    .description("mount a container's filesystem and print its path")
    .argument('<container>')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      print(await (await openStrata(cmd)).mount(name));
    });

  program
    .command('unmount')
    .alias('umount')
    .description("release a container's filesystem (unmounted when the last user releases it)")
    .argument('<container>')
    .action(async (name: string, _opts: unknown, cmd: Command) => {
      await (await openStrata(cmd)).unmount(name);
    });

  program
    .command('diff')
    .description("inspect changes to a container's filesystem (A added, C changed, D deleted)")
    .argument('<container>')
    .option('--format <format>', 'json for machine-readable output')
    .action(async (name: string, opts: { format?: string }, cmd: Command) => {
      const changes = await (await openStrata(cmd)).diff(name);
      if (opts.format === 'json') return printJson(changes);
      for (const c of changes) print(`${c.kind} ${c.path}`);
    });

  program
    .command('commit')
    .description("create a new image from a container's changes")
    .argument('<container>')
    .argument('[reference]')
    .option('-m, --message <text>', 'commit message')
    .option('-a, --author <name>', 'author')
    .action(async (name: string, reference: string | undefined, opts: { message?: string; author?: string }, cmd: Command) => {
      const id = await (await openStrata(cmd)).commit(name, {
        ...(reference ? { ref: reference } : {}),
        ...(opts.message ? { message: opts.message } : {}),
        ...(opts.author ? { author: opts.author } : {}),
      });
      print(id);
    });

  program
    .command('export')
    .description("export a container's filesystem as a tar archive")
    .argument('<container>')
    .option('-o, --output <file>', 'write to a file instead of stdout')
    .action(async (name: string, opts: { output?: string }, cmd: Command) => {
      await writeOutput(await (await openStrata(cmd)).exportContainer(name), opts.output);
    });
}
