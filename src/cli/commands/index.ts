import type { Command } from 'commander';

/**
 * The command groups, each loaded only when its command is run: a CLI call should not pay for
 * the module graphs of every other command (the thin pool, NBD, image archives…). `names` are
 * the group's top-level commands and aliases; test/cli/commands.test.ts checks them against what
 * each group registers. One entry per group.
 */
export interface CommandGroup {
  names: readonly string[];
  load(): Promise<(program: Command) => void>;
}

export const commandGroups: readonly CommandGroup[] = [
  { names: ['import', 'load', 'save', 'images', 'tag', 'rmi', 'history', 'inspect'], load: async () => (await import('./images.js')).registerImageCommands },
  { names: ['create', 'ps', 'rm', 'mount', 'unmount', 'umount', 'diff', 'commit', 'export'], load: async () => (await import('./containers.js')).registerContainerCommands },
  { names: ['info', 'system', 'fsck'], load: async () => (await import('./system.js')).registerSystemCommands },
  { names: ['cat', 'ls'], load: async () => (await import('./read.js')).registerReadCommands },
  { names: ['dmsetup'], load: async () => (await import('./dmsetup.js')).registerDmsetupCommands },
  { names: ['thin'], load: async () => (await import('./thin.js')).registerThinCommands },
];

/** Global options that take a value, so the command name is not mistaken for one. */
const GLOBAL_WITH_VALUE = new Set(['--root', '-s', '--storage-driver', '--storage-opt']);

/** The groups a command line needs: its command's, none for --version, else all (help, errors). */
export function groupsFor(argv: readonly string[]): readonly CommandGroup[] {
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (GLOBAL_WITH_VALUE.has(arg)) {
      i++;
      continue;
    }
    if (arg.startsWith('-')) continue;
    const group = commandGroups.find((g) => g.names.includes(arg));
    return group ? [group] : commandGroups;
  }
  return argv.includes('--version') || argv.includes('-v') ? [] : commandGroups;
}
