import type { Command } from 'commander';

/** Each group adds its subcommands to the program. One line per group. */
export const commandGroups: Array<(program: Command) => void> = [
];
