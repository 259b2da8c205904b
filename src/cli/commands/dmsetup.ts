import type { Command } from 'commander';
import { globalsOf } from '../main.js';
import { defaultRoot } from '../../store/paths.js';
import { MapperRegistry } from '../../thin/mapper.js';
import { dmCreate, dmMessage, dmReload, dmRemove, dmResume, dmStatus, dmSuspend, dmTable } from '../../thin/dmsetup.js';
import { formatTable, parseTable } from '../../thin/table.js';
import { strataError } from '../../errors.js';

/** The mapper registry under the data root (`<root>/mapper/`). */
export function registryOf(cmd: Command): MapperRegistry {
  return new MapperRegistry(globalsOf(cmd).root ?? defaultRoot());
}

const out = (line: string): void => void process.stdout.write(`${line}\n`);

export function registerDmsetupCommands(program: Command): void {
  const dm = program.command('dmsetup').description('thin-pool and thin devices, the shape of dmsetup (files where the kernel has devices)');

  dm.command('create')
    .description('create a device from a table line (thin-pool formats blank metadata)')
    .argument('<name>')
    .requiredOption('--table <line>', '"0 SECTORS thin-pool META DATA BLOCKSECTORS LOWWATER N [FEATURES]" or "0 SECTORS thin POOL DEVID"')
    .action(async (name: string, opts: { table: string }, cmd: Command) => {
      await dmCreate(registryOf(cmd), name, opts.table);
    });

  dm.command('reload')
    .description('load a new table, swapped in by the next resume (grow a pool)')
    .argument('<name>')
    .requiredOption('--table <line>', 'table line')
    .action(async (name: string, opts: { table: string }, cmd: Command) => {
      await dmReload(registryOf(cmd), name, opts.table);
    });

  dm.command('message')
    .description('send a message to a pool: create_thin, create_snap, delete, set_transaction_id, reserve/release_metadata_snap')
    .argument('<pool>')
    .argument('<sector>', 'always 0')
    .argument('<message...>')
    .action(async (pool: string, sector: string, words: string[], _opts: unknown, cmd: Command) => {
      await dmMessage(registryOf(cmd), pool, sector, words.join(' '));
    });

  dm.command('table')
    .description('print table lines')
    .argument('[name]')
    .action(async (name: string | undefined, _opts: unknown, cmd: Command) => {
      const reg = registryOf(cmd);
      if (name) return out(formatTable(await dmTable(reg, name)));
      for (const e of await reg.list()) out(`${e.name}: ${formatTable(parseTable(e.table))}`);
    });

  dm.command('status')
    .description('print status lines (pool: transaction id, metadata and data usage, held root, mode, ...)')
    .argument('[name]')
    .action(async (name: string | undefined, _opts: unknown, cmd: Command) => {
      const reg = registryOf(cmd);
      if (name) return out(await dmStatus(reg, name));
      for (const e of await reg.list()) out(`${e.name}: ${await dmStatus(reg, e.name)}`);
    });

  dm.command('ls')
    .description('list devices')
    .option('--format <format>', 'text or json', 'text')
    .action(async (opts: { format: string }, cmd: Command) => {
      const entries = await registryOf(cmd).list();
      if (opts.format === 'json') {
        out(JSON.stringify(entries.map((e) => ({ name: e.name, target: parseTable(e.table).target, suspended: e.suspended, table: e.table })), null, 2));
        return;
      }
      if (opts.format !== 'text') throw strataError('INVALID_ARGUMENT', `--format must be text or json, not ${opts.format}`);
      if (entries.length === 0) return out('No devices found');
      for (const e of entries) out(`${e.name}\t(${parseTable(e.table).target}${e.suspended ? ', suspended' : ''})`);
    });

  dm.command('suspend').description('suspend a device (I/O to it is refused until resume)').argument('<name>')
    .action(async (name: string, _opts: unknown, cmd: Command) => dmSuspend(registryOf(cmd), name));
  dm.command('resume').description('resume a device (a reloaded table takes effect)').argument('<name>')
    .action(async (name: string, _opts: unknown, cmd: Command) => dmResume(registryOf(cmd), name));
  dm.command('remove').description('remove a device name (a pool only when no thin device uses it)').argument('<name>')
    .action(async (name: string, _opts: unknown, cmd: Command) => dmRemove(registryOf(cmd), name));
}
