import type { Command } from 'commander';
import { registerImageCommands } from './images.js';
import { registerContainerCommands } from './containers.js';
import { registerSystemCommands } from './system.js';
import { registerReadCommands } from './read.js';
import { registerDmsetupCommands } from './dmsetup.js';
import { registerThinCommands } from './thin.js';

/** Each group adds its subcommands to the program. One line per group. */
export const commandGroups: Array<(program: Command) => void> = [
  registerImageCommands,
  registerContainerCommands,
  registerSystemCommands,
  registerReadCommands,
  registerDmsetupCommands,
  registerThinCommands,
];
