/**
 * The device set (moby's DeviceSet, minus mounting): which thin device each layer is, kept in
 * the per-device JSON files and in the pool, and changed only through the two-phase commit in
 * transactions.ts. Every method that changes anything runs under the device-set flock, so CLI
 * processes working on one root take turns.
 */
import { join } from 'node:path';
import { isStrataError, strataError } from '../../errors.js';
import { withFileLock } from '../../util/file-lock.js';
import { allocateDeviceId } from './device-ids.js';
import { BASE_HASH, type DeviceInfo, type DeviceSetMetadata, type DeviceStore } from './device-store.js';
import type { DmOptions } from './options.js';
import type { PoolClient } from './pool-client.js';
import { minFreeSpaceRefusal } from './status-figures.js';
import { decideRecovery, openTransaction } from './transactions.js';
import { crashPoint } from './crash-points.js';

export class DeviceSet {
  constructor(
    readonly store: DeviceStore,
    private readonly client: () => Promise<PoolClient>,
    private readonly options: DmOptions,
    private readonly lockPath: string,
  ) {}

  locked<T>(fn: () => Promise<T>): Promise<T> {
    return withFileLock(this.lockPath, fn, { timeoutMs: 300_000 });
  }

  async poolTransactionId(): Promise<number> {
    return (await (await this.client()).status()).pool.transactionId;
  }

  private async deviceSetMeta(): Promise<DeviceSetMetadata> {
    return (await this.store.getDeviceSet()) ?? { next_device_id: 0, BaseDeviceUUID: '', BaseDeviceFilesystem: '' };
  }

  /** A device that exists for callers: has JSON and is not awaiting a deferred delete. */
  async lookup(hash: string): Promise<DeviceInfo | null> {
    const info = await this.store.getDevice(hash);
    return info && !info.deleted ? info : null;
  }

  /**
   * On start (moby's processPendingTransaction): if the pool's transaction id is behind the
   * open one, a create or delete was cut short: delete its device id and JSON.
   */
  async recover(): Promise<string | null> {
    await this.store.sweepTemps();
    const open = await this.store.getTransaction();
    const poolId = await this.poolTransactionId();
    const r = decideRecovery(poolId, open);
    if (r.kind === 'none') return null;
    if (r.kind === 'mismatch') {
      throw strataError('STORE_CORRUPT', `devicemapper: the pool's transaction id ${r.poolTransactionId} is ahead of the recorded ${r.openTransactionId}: the metadata files do not belong to this pool`);
    }
    const client = await this.client();
    await client.message(`delete ${r.deviceId}`).catch((err: unknown) => {
      if (!isStrataError(err, 'DEVICE_NOT_FOUND')) throw err;
    });
    const info = await this.store.getDevice(r.deviceHash);
    if (info && info.device_id === r.deviceId) await this.store.removeDevice(r.deviceHash);
    await this.store.putTransaction(openTransaction(poolId - 1, '', 0));
    return `rolled back transaction ${open!.open_transaction_id} (device ${r.deviceId}${r.deviceHash ? `, ${r.deviceHash}` : ', base'})`;
  }

  /**
   * Create a device: `create_thin` (origin null) or `create_snap` of the origin's device.
   * `quiesce` wraps the pool message (the driver freezes a mounted origin there).
   */
  async create(hash: string, origin: DeviceInfo | null, size: number, quiesce: <T>(fn: () => Promise<T>) => Promise<T>): Promise<DeviceInfo> {
    if (await this.store.getDevice(hash)) throw strataError('LAYER_EXISTS', `layer ${hash} already exists`, { id: hash });
    const client = await this.client();
    const { pool } = await client.status();
    // dm.min_free_space, as moby checks before each snapshot
    const refusal = origin ? minFreeSpaceRefusal(pool, this.options.minFreeSpacePercent) : null;
    if (refusal) throw strataError('POOL_NO_SPACE', `devicemapper: ${refusal}`, { minFreeSpace: `${this.options.minFreeSpacePercent}%` });
    // ids in use are the pool's (a superset of the JSON's after recovery): no scan of every file
    const used = new Set(await client.devices());
    const meta = await this.deviceSetMeta();
    const poolId = pool.transactionId;
    for (;;) {
      const id = allocateDeviceId(used, meta.next_device_id);
      if (id === null) throw strataError('POOL_NO_SPACE', 'devicemapper: every thin device id is in use');
      const txn = openTransaction(poolId, hash, id);
      await this.store.putTransaction(txn);
      crashPoint('create:opened');
      try {
        await quiesce(() => client.message(origin ? `create_snap ${id} ${origin.device_id}` : `create_thin ${id}`));
      } catch (err) {
        // nothing reached the pool: close the transaction again
        await this.store.putTransaction(openTransaction(poolId - 1, '', 0));
        if (isStrataError(err, 'DEVICE_EXISTS')) {
          used.add(id);
          meta.next_device_id = id;
          continue;
        }
        throw err;
      }
      crashPoint('create:messaged');
      const info: DeviceInfo = { device_id: id, size, transaction_id: txn.open_transaction_id, initialized: false, deleted: false };
      await this.store.putDevice(hash, info);
      crashPoint('create:registered');
      await client.message(`set_transaction_id ${poolId} ${txn.open_transaction_id}`);
      crashPoint('create:committed');
      meta.next_device_id = id;
      await this.store.putDeviceSet(meta, false);
      return info;
    }
  }

  /**
   * Delete a device from the pool and its JSON. With deferred deletion a device the pool still
   * has open is marked `deleted` instead, and deleted by a later sweep.
   */
  async delete(hash: string, info: DeviceInfo): Promise<'deleted' | 'deferred'> {
    const client = await this.client();
    if (this.options.blkDiscard && !info.deleted) {
      await client.request({ op: 'discard', deviceId: info.device_id, size: info.size }).catch((err: unknown) => {
        if (!isStrataError(err, 'DEVICE_BUSY')) throw err;
      });
    }
    const poolId = await this.poolTransactionId();
    const txn = openTransaction(poolId, hash, info.device_id);
    await this.store.putTransaction(txn);
    crashPoint('delete:opened');
    try {
      await client.message(`delete ${info.device_id}`);
    } catch (err) {
      await this.store.putTransaction(openTransaction(poolId - 1, '', 0));
      if (isStrataError(err, 'DEVICE_NOT_FOUND')) {
        // the pool lost it already (never committed): only the JSON remains to go
        await this.store.removeDevice(hash);
        return 'deleted';
      }
      if (isStrataError(err, 'DEVICE_BUSY') && this.options.deferredDeletion) {
        if (!info.deleted) await this.store.putDevice(hash, { ...info, deleted: true });
        await this.store.markDeferred(hash);
        return 'deferred';
      }
      throw err;
    }
    crashPoint('delete:messaged');
    await this.store.removeDevice(hash);
    if (info.deleted) await this.store.unmarkDeferred(hash);
    crashPoint('delete:unregistered');
    await client.message(`set_transaction_id ${poolId} ${txn.open_transaction_id}`);
    crashPoint('delete:committed');
    return 'deleted';
  }

  /** Retry deferred deletions (moby runs this every 30 s; our processes are short, so on use). */
  async sweepDeferred(): Promise<number> {
    let left = 0;
    for (const hash of await this.store.deferred()) {
      const info = await this.store.getDevice(hash);
      if (!info || !info.deleted) await this.store.unmarkDeferred(hash);
      else if ((await this.delete(hash, info)) === 'deferred') left++;
    }
    return left;
  }

  async deferredCount(): Promise<number> {
    return (await this.store.deferred()).length;
  }

  base(): Promise<DeviceInfo | null> {
    return this.store.getDevice(BASE_HASH);
  }
}

export const lockFileName = (home: string): string => join(home, 'metadata', '.lock');
