import type { Command } from 'commander';
import { resolve } from 'node:path';
import { globalsOf } from '../main.js';
import { defaultRoot } from '../../store/paths.js';
import { MapperRegistry, normalisePoolTable } from '../../thin/mapper.js';
import { dmReload, dmResume, dmTable } from '../../thin/dmsetup.js';
import { formatTable, parseTable } from '../../thin/table.js';
import { routedCreate, routedMessage, routedRemove, routedResume, routedStatus, routedSuspend } from '../../nbd/dmsetup-routing.js';
import { ensureService, service, servedDevices, servicePid, stopService } from '../../nbd/service-client.js';
import { strataError } from '../../errors.js';

/** The data root (`--root`, else the default). */
export function rootOf(cmd: Command): string {
  return globalsOf(cmd).root ?? defaultRoot();
}

/** The mapper registry under the data root (`<root>/mapper/`). */
export function registryOf(cmd: Command): MapperRegistry {
  return new MapperRegistry(rootOf(cmd));
}

/**
 * DEVICE_BUSY when the running service holds open the pool whose metadata is `metadataPath`: a
 * command opening it would only wait out the flock timeout (60 s), and the metadata is live.
 */
export async function refuseIfServiceHolds(root: string, metadataPath: string): Promise<void> {
  const pid = await servicePid(root);
  if (pid === null) return;
  const reg = new MapperRegistry(root);
  const served = await servedDevices(root);
  for (const pool of new Set(served.map((d) => d.pool))) {
    if ((await reg.poolTable(pool)).table.metadataDev !== resolve(metadataPath)) continue;
    const users = served.filter((d) => d.pool === pool).map((d) => d.name).sort().join(', ');
    throw strataError('DEVICE_BUSY',
      `${metadataPath} is the metadata of pool ${pool}, held open by the strata NBD service (pid ${pid}) serving ${users}: ` +
      'stop it first (strata dmsetup service stop) or remove those devices', { path: metadataPath });
  }
}

const out = (line: string): void => void process.stdout.write(`${line}\n`);

/**
 * Resume; a table loaded by `reload` takes effect. The service cannot swap a table under a device
 * it serves (it holds the pool open, flock and all), so the devices the new table concerns (a
 * pool's thin devices, or the thin device itself) are deactivated for the swap and activated
 * again: their sockets go away meanwhile, and NBD clients on them make it DEVICE_BUSY.
 */
async function resume(root: string, name: string): Promise<void> {
  const entry = await new MapperRegistry(root).get(name);
  const t = parseTable(entry.table);
  const running = entry.inactiveTable !== undefined && (await servicePid(root)) !== null;
  const served = running ? (await servedDevices(root)).filter((d) => (t.target === 'thin-pool' ? d.pool === name : d.name === name)) : [];
  if (served.length === 0) return routedResume(root, name);
  const reactivate = async (names: string[]): Promise<void> => {
    for (const n of names) await service.activate(root, n);
  };
  const deactivated: string[] = [];
  try {
    for (const d of served) {
      await service.deactivate(root, d.name);
      deactivated.push(d.name);
    }
    await dmResume(new MapperRegistry(root), name);
  } catch (err) {
    await reactivate(deactivated).catch(() => undefined);
    throw err;
  }
  await reactivate(deactivated);
}

export function registerDmsetupCommands(program: Command): void {
  const dm = program.command('dmsetup').description('thin-pool and thin devices, the shape of dmsetup (files where the kernel has devices); ' +
    'active thin devices are served over NBD at <root>/mapper/<name>.sock by a background service (see `dmsetup service`)');

  dm.command('create')
    .description('create a device from a table line (thin-pool formats blank metadata; a thin device is served at <root>/mapper/NAME.sock, starting the service if need be)')
    .argument('<name>')
    .requiredOption('--table <line>', '"0 SECTORS thin-pool META DATA BLOCKSECTORS LOWWATER N [FEATURES]" or "0 SECTORS thin POOL DEVID"')
    .action(async (name: string, opts: { table: string }, cmd: Command) => {
      const root = rootOf(cmd);
      let table = parseTable(opts.table);
      if (table.target === 'thin-pool') {
        // file names are resolved here: the service, if it runs, has its own working directory
        table = await normalisePoolTable(table);
        await refuseIfServiceHolds(root, table.metadataDev);
      }
      await routedCreate(root, name, formatTable(table));
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
      await routedMessage(rootOf(cmd), pool, sector, words.join(' '));
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
      const root = rootOf(cmd);
      if (name) return out(await routedStatus(root, name));
      for (const e of await registryOf(cmd).list()) out(`${e.name}: ${await routedStatus(root, e.name)}`);
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

  dm.command('suspend').description('suspend a device (I/O to it waits, or is refused, until resume)').argument('<name>')
    .action(async (name: string, _opts: unknown, cmd: Command) => routedSuspend(rootOf(cmd), name));
  dm.command('resume').description('resume a device (a reloaded table takes effect; served devices it concerns are reopened)').argument('<name>')
    .action(async (name: string, _opts: unknown, cmd: Command) => resume(rootOf(cmd), name));
  dm.command('remove')
    .description('remove a device name (a pool only when no thin device uses it); a served device stops being served (refused while NBD clients use it)')
    .argument('<name>')
    .action(async (name: string, _opts: unknown, cmd: Command) => routedRemove(rootOf(cmd), name));

  const svc = dm.command('service')
    .description('the background service that holds pools open and serves active thin devices at <root>/mapper/<name>.sock ' +
      '(started by `dmsetup create` of a thin device; stopping it leaves the devices defined, and starting it serves them again)');
  svc.command('start').description('start the service unless it runs; print its pid')
    .action(async (_opts: unknown, cmd: Command) => out(String(await ensureService(rootOf(cmd)))));
  svc.command('stop').description('stop the service: in-flight I/O finishes, pools are flushed, committed and closed (as on SIGTERM)')
    .action(async (_opts: unknown, cmd: Command) => void (await stopService(rootOf(cmd))));
  svc.command('status').description('print whether it runs (pid) and the devices it serves: name, socket, NBD clients')
    .option('--format <format>', 'text or json', 'text')
    .action(async (opts: { format: string }, cmd: Command) => {
      if (opts.format !== 'text' && opts.format !== 'json') throw strataError('INVALID_ARGUMENT', `--format must be text or json, not ${opts.format}`);
      const root = rootOf(cmd);
      const pid = await servicePid(root);
      const devices = pid === null ? [] : (await servedDevices(root)).sort((a, b) => a.name.localeCompare(b.name));
      if (opts.format === 'json') return out(JSON.stringify({ running: pid !== null, pid, devices }, null, 2));
      out(pid === null ? 'not running' : `running (pid ${pid})`);
      for (const d of devices) out(`${d.name}\t${d.socket}\t(${d.clients} client${d.clients === 1 ? '' : 's'}${d.suspended ? ', suspended' : ''})`);
    });
}
