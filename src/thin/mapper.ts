import { readFile, readdir, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { mkdirDurable, writeFileAtomic, fsyncDir } from '../util/atomic.js';
import { withFileLock } from '../util/file-lock.js';
import { isErrno, strataError } from '../errors.js';
import { formatTable, parseTable, type TableLine, type ThinPoolTable, type ThinTable } from './table.js';
import { Pool } from './pool.js';

/**
 * Named devices, the way /dev/mapper names kernel dm devices, persisted so that separate
 * processes (each CLI call, a long-running NBD server) see the same set:
 *
 *     <root>/mapper/
 *       .lock            flock serialising changes to the set
 *       <name>.json      { name, table, suspended, inactiveTable? } written atomically
 *
 * A `thin-pool` table names its metadata and data files by absolute path; a `thin` table names
 * its pool by mapper name (`/dev/mapper/<name>` is accepted too).
 */
export interface MapperEntry {
  name: string;
  /** The live table line. */
  table: string;
  suspended: boolean;
  /** A table loaded by `reload`, swapped in by the next resume (dm's inactive table). */
  inactiveTable?: string;
}

const NAME = /^[A-Za-z0-9_.+-][A-Za-z0-9_.+:-]{0,126}$/;

export function poolNameOf(dev: string): string {
  return dev.startsWith('/dev/mapper/') ? dev.slice('/dev/mapper/'.length) : dev;
}

export class MapperRegistry {
  readonly dir: string;
  constructor(root: string) {
    this.dir = join(root, 'mapper');
  }

  private path(name: string): string {
    if (!NAME.test(name) || name === '.' || name === '..') throw strataError('INVALID_ID', `invalid device name ${JSON.stringify(name)}`);
    return join(this.dir, `${name}.json`);
  }

  /** Run `fn` holding the registry lock (changes to names are serialised across processes). */
  async locked<T>(fn: () => Promise<T>): Promise<T> {
    await mkdirDurable(this.dir);
    return withFileLock(join(this.dir, '.lock'), fn);
  }

  async find(name: string): Promise<MapperEntry | null> {
    try {
      return JSON.parse(await readFile(this.path(name), 'utf8')) as MapperEntry;
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return null;
      throw err;
    }
  }

  async get(name: string): Promise<MapperEntry> {
    const e = await this.find(name);
    if (!e) throw strataError('DEVICE_NOT_FOUND', `device ${name} does not exist`, { id: name });
    return e;
  }

  async list(): Promise<MapperEntry[]> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return [];
      throw err;
    }
    const out: MapperEntry[] = [];
    for (const f of names.sort()) {
      if (!f.endsWith('.json') || f.startsWith('.')) continue;
      const e = await this.find(f.slice(0, -5));
      if (e) out.push(e);
    }
    return out;
  }

  async put(entry: MapperEntry): Promise<void> {
    await mkdirDurable(this.dir);
    await writeFileAtomic(this.path(entry.name), `${JSON.stringify(entry, null, 2)}\n`);
  }

  async delete(name: string): Promise<void> {
    await rm(this.path(name));
    await fsyncDir(this.dir);
  }

  /** Live thin entries whose table names `poolName`. */
  async thinsOf(poolName: string): Promise<Array<{ entry: MapperEntry; table: ThinTable }>> {
    const out: Array<{ entry: MapperEntry; table: ThinTable }> = [];
    for (const e of await this.list()) {
      const t = parseTable(e.table);
      if (t.target === 'thin' && poolNameOf(t.poolDev) === poolName) out.push({ entry: e, table: t });
    }
    return out;
  }

  async poolTable(name: string): Promise<{ entry: MapperEntry; table: ThinPoolTable }> {
    const entry = await this.get(name);
    const table = parseTable(entry.table);
    if (table.target !== 'thin-pool') throw strataError('INVALID_ARGUMENT', `${name} is not a thin-pool device`, { id: name });
    return { entry, table };
  }

  async thinTable(name: string): Promise<{ entry: MapperEntry; table: ThinTable }> {
    const entry = await this.get(name);
    const table = parseTable(entry.table);
    if (table.target !== 'thin') throw strataError('INVALID_ARGUMENT', `${name} is not a thin device`, { id: name });
    return { entry, table };
  }
}

/** Open the pool a thin-pool table describes (data blocks = table length / block size). */
export function openPoolFromTable(t: ThinPoolTable, opts: { readOnly?: boolean; lockTimeoutMs?: number } = {}): Promise<Pool> {
  const features = { ...t.features, ...(opts.readOnly ? { readOnly: true } : {}) };
  return Pool.open({
    metadataPath: t.metadataDev,
    dataPath: t.dataDev,
    dataBlockSectors: t.dataBlockSectors,
    nrDataBlocks: Math.floor(t.length / t.dataBlockSectors),
    lowWaterMark: t.lowWaterMark,
    features,
    ...(opts.lockTimeoutMs !== undefined ? { lockTimeoutMs: opts.lockTimeoutMs } : {}),
  });
}

/** Run `fn` on a pool opened from its table, closing (and so committing) it afterwards. */
export async function withPool<T>(t: ThinPoolTable, fn: (pool: Pool) => Promise<T>, opts?: { readOnly?: boolean }): Promise<T> {
  const pool = await openPoolFromTable(t, opts);
  try {
    return await fn(pool);
  } finally {
    await pool.close();
  }
}

/** Resolve a pool table's file names to absolute paths and check they exist. */
export async function normalisePoolTable(t: ThinPoolTable, cwd = process.cwd()): Promise<ThinPoolTable> {
  const out = { ...t, metadataDev: resolve(cwd, t.metadataDev), dataDev: resolve(cwd, t.dataDev) };
  for (const p of [out.metadataDev, out.dataDev]) {
    try {
      await stat(p);
    } catch (err) {
      if (isErrno(err, 'ENOENT')) throw strataError('INVALID_TABLE', `${p} does not exist`, { path: p });
      throw err;
    }
  }
  return out;
}

export { formatTable, parseTable, type TableLine };
