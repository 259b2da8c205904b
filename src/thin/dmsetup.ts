import { MapperRegistry, normalisePoolTable, openPoolFromTable, poolNameOf, withPool, type MapperEntry } from './mapper.js';
import { formatTable, parseTable, type TableLine } from './table.js';
import { parseMessage } from './message.js';
import { strataError } from '../errors.js';

/**
 * dmsetup's verbs over the mapper registry, as library calls (the CLI prints their results; a
 * long-running server can call them too). Rules follow the kernel: a pool cannot be removed
 * while thin devices use it, an active thin device cannot be deleted by message, thin devices
 * cannot be activated on a suspended pool, and the pool commits after every message.
 */
export async function dmCreate(reg: MapperRegistry, name: string, tableText: string): Promise<MapperEntry> {
  let table = parseTable(tableText);
  return reg.locked(async () => {
    if (await reg.find(name)) throw strataError('DEVICE_EXISTS', `device ${name} already exists`, { id: name });
    if (table.target === 'thin-pool') {
      table = await normalisePoolTable(table);
      // formats blank metadata, checks the block size, grows the data space map to the table
      await withPool(table, async () => undefined, { readOnly: table.features.readOnly });
    } else {
      const pool = await reg.poolTable(poolNameOf(table.poolDev)).catch(() => {
        throw strataError('DEVICE_NOT_FOUND', `pool ${table.target === 'thin' ? table.poolDev : ''} does not exist`);
      });
      if (pool.entry.suspended) throw strataError('DEVICE_SUSPENDED', `pool ${pool.entry.name} is suspended`, { id: pool.entry.name });
      if (table.externalOrigin) throw strataError('NOT_IMPLEMENTED', 'external origins are not supported');
      const devId = table.devId;
      await withPool(pool.table, async (p) => void p.md.deviceDetails(devId), { readOnly: true });
    }
    const entry: MapperEntry = { name, table: formatTable(table), suspended: false };
    await reg.put(entry);
    return entry;
  });
}

export async function dmMessage(reg: MapperRegistry, poolName: string, sector: string, text: string): Promise<void> {
  if (sector !== '0') throw strataError('INVALID_MESSAGE', `messages go to sector 0, not ${sector}`);
  const msg = parseMessage(text);
  await reg.locked(async () => {
    const { table } = await reg.poolTable(poolName);
    if (msg.kind === 'delete') {
      const users = (await reg.thinsOf(poolName)).filter((t) => t.table.devId === msg.id);
      if (users.length > 0) {
        throw strataError('DEVICE_BUSY', `thin device ${msg.id} is active as ${users.map((u) => u.entry.name).join(', ')}`, { id: String(msg.id) });
      }
    }
    await withPool(table, (p) => p.apply(msg));
  });
}

/** `<start> <len> <target> <status>` for one device. */
export async function dmStatus(reg: MapperRegistry, name: string): Promise<string> {
  const entry = await reg.get(name);
  const t = parseTable(entry.table);
  if (t.target === 'thin-pool') {
    const status = await withPool(t, (p) => p.status(), { readOnly: t.features.readOnly || entry.suspended });
    return `${t.start} ${t.length} thin-pool ${status.toString()}`;
  }
  const { table: pt } = await reg.poolTable(poolNameOf(t.poolDev));
  const status = await withPool(pt, async (p) => {
    const dev = await p.openThin(t.devId, t.length * 512);
    return (await dev.status()).toString();
  }, { readOnly: true });
  return `${t.start} ${t.length} thin ${status}`;
}

export async function dmTable(reg: MapperRegistry, name: string): Promise<TableLine> {
  return parseTable((await reg.get(name)).table);
}

export async function dmSuspend(reg: MapperRegistry, name: string): Promise<void> {
  await reg.locked(async () => {
    const e = await reg.get(name);
    if (!e.suspended) await reg.put({ ...e, suspended: true });
  });
}

/** Resume; a table loaded by `reload` takes effect here (a pool picks up a grown data file). */
export async function dmResume(reg: MapperRegistry, name: string): Promise<void> {
  await reg.locked(async () => {
    const e = await reg.get(name);
    let table = e.table;
    if (e.inactiveTable) {
      const t = parseTable(e.inactiveTable);
      if (t.target === 'thin-pool') await withPool(t, async () => undefined);
      table = e.inactiveTable;
    }
    const next: MapperEntry = { name: e.name, table, suspended: false };
    await reg.put(next);
  });
}

/** Load a new table to be swapped in by the next resume (`dmsetup reload`). */
export async function dmReload(reg: MapperRegistry, name: string, tableText: string): Promise<void> {
  let t = parseTable(tableText);
  await reg.locked(async () => {
    const e = await reg.get(name);
    const old = parseTable(e.table);
    if (old.target !== t.target) throw strataError('INVALID_TABLE', `cannot change ${name} from ${old.target} to ${t.target}`);
    if (t.target === 'thin-pool' && old.target === 'thin-pool') {
      t = await normalisePoolTable(t);
      if (t.dataBlockSectors !== old.dataBlockSectors) throw strataError('INVALID_TABLE', 'the data block size cannot change');
      if (t.length < old.length) throw strataError('INVALID_TABLE', 'a pool cannot shrink');
    }
    await reg.put({ ...e, inactiveTable: formatTable(t) });
  });
}

export async function dmRemove(reg: MapperRegistry, name: string): Promise<void> {
  await reg.locked(async () => {
    const e = await reg.get(name);
    const t = parseTable(e.table);
    if (t.target === 'thin-pool') {
      const users = await reg.thinsOf(name);
      if (users.length > 0) throw strataError('DEVICE_BUSY', `pool ${name} is in use by ${users.map((u) => u.entry.name).join(', ')}`, { id: name });
    }
    await reg.delete(name);
  });
}

/** Open a named thin device for I/O: its pool opened exclusively, the device sized by its table. */
export async function openNamedThin(reg: MapperRegistry, name: string) {
  const { entry, table } = await reg.thinTable(name);
  const pool = await reg.poolTable(poolNameOf(table.poolDev));
  for (const e of [entry, pool.entry]) if (e.suspended) throw strataError('DEVICE_SUSPENDED', `${e.name} is suspended`, { id: e.name });
  const p = await openPoolFromTable(pool.table);
  try {
    return { pool: p, dev: await p.openThin(table.devId, table.length * 512) };
  } catch (err) {
    await p.close();
    throw err;
  }
}
