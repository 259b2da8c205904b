/**
 * The base device (moby's setupBaseImage / createBaseImage / growFS): a thin device of
 * dm.basesize formatted once with dm.fs; every layer without a parent is a snapshot of it.
 * Created inside a transaction like any device, and marked `initialized` only once the
 * filesystem is made, so a crash mid-mkfs leaves a base that the next start deletes and redoes.
 */
import { rm } from 'node:fs/promises';
import { strataError } from '../../errors.js';
import { BASE_HASH, type DeviceInfo } from './device-store.js';
import type { DeviceSet } from './device-set.js';
import type { Activation } from './activation.js';
import type { DmOptions } from './options.js';
import { run } from './exec.js';
import { crashPoint } from './crash-points.js';

export function mkfsArgs(options: DmOptions, dev: string): { cmd: string; args: string[] } {
  if (options.fs === 'xfs') return { cmd: 'mkfs.xfs', args: ['-q', '-f', ...options.mkfsArgs, dev] };
  // no discard (the device is fresh), and no lazy init: it would write behind our back later
  return { cmd: 'mkfs.ext4', args: ['-q', '-F', '-E', 'nodiscard,lazy_itable_init=0,lazy_journal_init=0', ...options.mkfsArgs, dev] };
}

export async function setupBaseDevice(set: DeviceSet, act: Activation, options: DmOptions, scratchMount: string): Promise<DeviceInfo> {
  let base = await set.base();
  if (base && !base.initialized) {
    // cut short before its filesystem was complete: start again
    await act.ensureInactive(BASE_HASH);
    await set.delete(BASE_HASH, base);
    base = null;
  }
  const meta = await set.store.getDeviceSet();
  if (base) {
    if (meta && meta.BaseDeviceFilesystem && meta.BaseDeviceFilesystem !== options.fs) {
      throw strataError('INVALID_OPTION', `devicemapper: the base device holds ${meta.BaseDeviceFilesystem}, but dm.fs=${options.fs}`, { key: 'dm.fs' });
    }
    if (options.baseSizeExplicit && options.baseSize < base.size) {
      throw strataError('INVALID_OPTION', `devicemapper: Base device size cannot be smaller than ${base.size} bytes`, { key: 'dm.basesize' });
    }
    if (options.baseSizeExplicit && options.baseSize > base.size) base = await growBase(set, act, options, base, scratchMount);
    return base;
  }
  const info = await set.create(BASE_HASH, null, options.baseSize, (fn) => fn());
  const dev = await act.activate(BASE_HASH, info);
  try {
    crashPoint('base:activated');
    const { cmd, args } = mkfsArgs(options, dev);
    await run(cmd, args);
    if (options.fs === 'ext4') await run('tune2fs', ['-c', '-1', '-i', '0', dev]);
    const uuid = (await run('blkid', ['-s', 'UUID', '-o', 'value', dev])).trim();
    await act.deactivate(BASE_HASH);
    const done = { ...info, initialized: true };
    await set.store.putDevice(BASE_HASH, done);
    const m = (await set.store.getDeviceSet()) ?? { next_device_id: info.device_id, BaseDeviceUUID: '', BaseDeviceFilesystem: '' };
    await set.store.putDeviceSet({ ...m, BaseDeviceUUID: uuid, BaseDeviceFilesystem: options.fs });
    return done;
  } catch (err) {
    await act.deactivate(BASE_HASH).catch(() => undefined);
    throw err;
  }
}

/** dm.basesize raised: a bigger device, and the filesystem grown to fill it. */
async function growBase(set: DeviceSet, act: Activation, options: DmOptions, base: DeviceInfo, scratchMount: string): Promise<DeviceInfo> {
  const grown = { ...base, size: options.baseSize };
  await growFilesystem(act, BASE_HASH, grown, options, scratchMount);
  await set.store.putDevice(BASE_HASH, grown);
  return grown;
}

/**
 * Grow the filesystem on device `hash` to `info.size`: ext4 offline (e2fsck -f, then resize2fs,
 * which is what resize2fs asks for), xfs online with xfs_growfs, which only works mounted.
 */
export async function growFilesystem(act: Activation, hash: string, info: DeviceInfo, options: DmOptions, scratchMount: string): Promise<void> {
  if (options.fs === 'xfs') {
    await act.mount(hash, info, scratchMount);
    try {
      await run('xfs_growfs', [scratchMount]);
    } finally {
      await act.unmount(hash, scratchMount);
      await rm(scratchMount, { recursive: true, force: true }).catch(() => undefined);
    }
    return;
  }
  const dev = await act.activate(hash, info);
  try {
    await run('e2fsck', ['-f', '-y', dev]).catch((err: unknown) => {
      // exit 1: errors corrected, which is fine; anything else stops us
      if ((err as { cause?: { code?: number } }).cause?.code !== 1) throw err;
    });
    await run('resize2fs', [dev]);
  } finally {
    await act.deactivate(hash);
  }
}
