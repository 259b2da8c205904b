import { readFile, readdir, rm, mkdir, writeFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic, fsyncDir, isAtomicTemp } from '../../util/atomic.js';
import { isErrno, strataError } from '../../errors.js';
import type { OpenTransaction } from './transactions.js';

/**
 * The driver's JSON files under `<home>/metadata/`, in moby's formats (see the driver's layout
 * comment). Every write is atomic (temp + fsync + rename + fsync dir).
 */
export interface DeviceInfo {
  device_id: number;
  size: number;
  transaction_id: number;
  initialized: boolean;
  deleted: boolean;
}

export interface DeviceSetMetadata {
  next_device_id: number;
  BaseDeviceUUID: string;
  BaseDeviceFilesystem: string;
}

/** The base device's hash is "" in moby; its file is `base`. */
export const BASE_HASH = '';
const DEVICESET = 'deviceset-metadata';
const TRANSACTION = 'transaction-metadata';
const RESERVED = new Set(['base', DEVICESET, TRANSACTION]);

/**
 * File name for a hash. Docker's hashes are 64 hex and never meet the driver's own names; short
 * ids that do (a layer called `base`) get a `_` prefix, which no valid layer id starts with.
 */
export function deviceFileName(hash: string): string {
  if (hash === BASE_HASH) return 'base';
  return RESERVED.has(hash) ? `_${hash}` : hash;
}

function hashOfFile(name: string): string | null {
  if (name === 'base') return BASE_HASH;
  if (name === DEVICESET || name === TRANSACTION || isAtomicTemp(name) || name.startsWith('.')) return null;
  return name.startsWith('_') ? name.slice(1) : name;
}

async function readJson<T>(path: string): Promise<T | null> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return null;
    throw err;
  }
  try {
    return JSON.parse(text) as T;
  } catch (err) {
    throw strataError('STORE_CORRUPT', `devicemapper: ${path} is not valid JSON`, { path }, err);
  }
}

export class DeviceStore {
  constructor(readonly dir: string) {}

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
  }

  private path(hash: string): string {
    return join(this.dir, deviceFileName(hash));
  }

  getDevice(hash: string): Promise<DeviceInfo | null> {
    return readJson<DeviceInfo>(this.path(hash));
  }

  async putDevice(hash: string, info: DeviceInfo): Promise<void> {
    await writeFileAtomic(this.path(hash), JSON.stringify(info), 0o600);
  }

  async removeDevice(hash: string): Promise<void> {
    await rm(this.path(hash), { force: true });
    await fsyncDir(this.dir);
  }

  /** Every device's JSON, by hash (the base device under ""). */
  async allDevices(): Promise<Map<string, DeviceInfo>> {
    const out = new Map<string, DeviceInfo>();
    for (const name of await readdir(this.dir).catch(() => [] as string[])) {
      const hash = hashOfFile(name);
      if (hash === null) continue;
      const info = await readJson<DeviceInfo>(join(this.dir, name));
      if (info) out.set(hash, info);
    }
    return out;
  }

  getDeviceSet(): Promise<DeviceSetMetadata | null> {
    return readJson<DeviceSetMetadata>(join(this.dir, DEVICESET));
  }

  /**
   * `durable: false` for next_device_id updates: it is only where the round-robin resumes (ids
   * in use come from the pool), so losing one to a crash costs nothing and saves two fsyncs.
   */
  async putDeviceSet(meta: DeviceSetMetadata, durable = true): Promise<void> {
    const path = join(this.dir, DEVICESET);
    if (durable) return writeFileAtomic(path, JSON.stringify(meta), 0o600);
    const tmp = join(this.dir, `.tmp-${DEVICESET}-${process.pid}`);
    await writeFile(tmp, JSON.stringify(meta), { mode: 0o600 });
    await rename(tmp, path);
  }

  // Deferred deletions are indexed in `.deferred/`, so finding them never scans every device.
  private deferredDir(): string {
    return join(this.dir, '.deferred');
  }

  async markDeferred(hash: string): Promise<void> {
    await mkdir(this.deferredDir(), { recursive: true, mode: 0o700 });
    await writeFile(join(this.deferredDir(), deviceFileName(hash)), '');
  }

  async unmarkDeferred(hash: string): Promise<void> {
    await rm(join(this.deferredDir(), deviceFileName(hash)), { force: true });
  }

  async deferred(): Promise<string[]> {
    const names = await readdir(this.deferredDir()).catch(() => [] as string[]);
    return names.map((n) => hashOfFile(n)).filter((h): h is string => h !== null);
  }

  getTransaction(): Promise<OpenTransaction | null> {
    return readJson<OpenTransaction>(join(this.dir, TRANSACTION));
  }

  async putTransaction(t: OpenTransaction): Promise<void> {
    await writeFileAtomic(join(this.dir, TRANSACTION), JSON.stringify(t), 0o600);
  }

  /** Temp files a crash left between write and rename. */
  async sweepTemps(): Promise<void> {
    for (const name of await readdir(this.dir).catch(() => [] as string[])) {
      if (isAtomicTemp(name)) await rm(join(this.dir, name), { force: true });
    }
  }
}
