import { which } from './which.js';

let setpriv: Promise<string | null> | undefined;

/**
 * The command line that runs `command args` as a child that dies with this process: through
 * util-linux's `setpriv --pdeathsig KILL` where the host has it (as is, where not). For tools
 * that write into the store (cp of a layer, mkfs of a device): a strata killed with SIGKILL must
 * not leave one writing on while the next command repairs or reuses what it was writing to.
 * (The signal comes when the thread that started the child ends: start them from the main thread.)
 */
export async function tiedToThisProcess(command: string, args: readonly string[]): Promise<[string, string[]]> {
  setpriv ??= which('setpriv');
  const guard = await setpriv;
  return guard === null ? [command, [...args]] : [guard, ['--pdeathsig', 'KILL', '--', command, ...args]];
}
