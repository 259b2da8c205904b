/**
 * Activation and mounting of thin devices (moby's activateDeviceIfNeeded / MountDevice /
 * UnmountDevice / deactivateDevice), on the path this kernel allows:
 *
 *   pool service ──NBD export <device name>──► nbdfuse file run/dev/<hash> ──► /dev/loopN ──► mount
 *
 * Every piece outlives the calling process, as dm devices do; another process undoes them from
 * names alone (the loop device is found from its backing file).
 */
import { access, mkdir, rm, rmdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { strataError } from '../../errors.js';
import type { DmOptions } from './options.js';
import type { DeviceInfo } from './device-store.js';
import { deviceFileName } from './device-store.js';
import type { PoolClient } from './pool-client.js';
import { nbdSocketPath } from './pool-service.js';
import { attachBlockDevice, attachedLoop, detachBlockDevice, loopsOf } from './block-attach.js';
import { run } from './exec.js';

export class Activation {
  constructor(
    private readonly runDir: string,
    private readonly client: () => Promise<PoolClient>,
    private readonly options: DmOptions,
    /** `strata-<major>:<minor>-<inode>` of the driver home, as moby's device prefix. */
    readonly prefix: string,
  ) {}

  deviceName(hash: string): string {
    return `${this.prefix}-${hash === '' ? 'base' : hash}`;
  }

  fuseFile(hash: string): string {
    return join(this.runDir, 'dev', deviceFileName(hash));
  }

  /** Serve the device and attach a loop device to it; returns the loop device. */
  async activate(hash: string, info: DeviceInfo): Promise<string> {
    const existing = await attachedLoop(this.fuseFile(hash));
    if (existing) return existing;
    const client = await this.client();
    const name = this.deviceName(hash);
    await client.request({ op: 'activate', name, deviceId: info.device_id, size: info.size });
    await mkdir(join(this.runDir, 'dev'), { recursive: true, mode: 0o700 });
    try {
      return await attachBlockDevice(this.fuseFile(hash), nbdSocketPath(this.runDir), name, info.size, join(this.runDir, 'nbdfuse.log'));
    } catch (err) {
      await client.request({ op: 'deactivate', name }).catch(() => undefined);
      throw err;
    }
  }

  async deactivate(hash: string): Promise<void> {
    await detachBlockDevice(this.fuseFile(hash));
    await (await this.client()).request({ op: 'deactivate', name: this.deviceName(hash) });
  }

  mountOptions(): string[] {
    const opts = [...this.options.mountOptions];
    // every snapshot carries its origin's UUID; xfs refuses duplicates unless told
    if (this.options.fs === 'xfs' && !opts.includes('nouuid')) opts.push('nouuid');
    return opts;
  }

  async mount(hash: string, info: DeviceInfo, mountpoint: string): Promise<void> {
    const loop = await this.activate(hash, info);
    await mkdir(mountpoint, { recursive: true, mode: 0o755 });
    const opts = this.mountOptions();
    try {
      await run('mount', ['-t', this.options.fs, ...(opts.length ? ['-o', opts.join(',')] : []), loop, mountpoint]);
    } catch (err) {
      await this.deactivate(hash).catch(() => undefined);
      throw err;
    }
    if (this.options.fs === 'xfs' && this.options.xfsNospaceMaxRetries !== null) {
      const dm = loop.replace('/dev/', '');
      await run('sh', ['-c', `echo ${this.options.xfsNospaceMaxRetries} > /sys/fs/xfs/${dm}/error/metadata/ENOSPC/max_retries`]).catch(() => undefined);
    }
  }

  /**
   * Unmount and deactivate. A busy filesystem is refused (DEVICE_BUSY) unless deferred removal
   * is on: then it is detached lazily and the service stops serving it once its last user goes.
   */
  async unmount(hash: string, mountpoint: string): Promise<void> {
    try {
      await run('umount', [mountpoint]);
    } catch (err) {
      if (!(await isMountpoint(mountpoint))) {
        // already gone (a crash, or someone else): still release the device
      } else if (/busy/i.test(String((err as Error).message)) && this.options.deferredRemoval) {
        await run('umount', ['-l', mountpoint]);
        await this.deferredDeactivate(hash);
        await rmdir(mountpoint).catch(() => undefined);
        return;
      } else if (/busy/i.test(String((err as Error).message))) {
        throw strataError('DEVICE_BUSY', `devicemapper: ${mountpoint} is busy`, { id: hash, path: mountpoint }, err);
      } else throw err;
    }
    await this.deactivate(hash);
    await rmdir(mountpoint).catch(() => undefined);
  }

  /** Loop device set to autoclear, FUSE unmounted lazily, export dropped when unused. */
  private async deferredDeactivate(hash: string): Promise<void> {
    for (const loop of await loopsOf(this.fuseFile(hash))) await run('losetup', ['--detach', loop]).catch(() => undefined);
    const file = this.fuseFile(hash);
    await run('fusermount3', ['-u', '-z', '-q', file]).catch(() => undefined);
    await (await this.client()).request({ op: 'deactivate', name: this.deviceName(hash), deferred: true });
    // from here the service lets go by itself; nothing left for releaseLeftover to find
    for (const f of [file, `${file}.loop`, `${file}.pid`]) await rm(f, { force: true });
  }

  /** Freeze a mounted origin around a snapshot of it (dm suspends with lockfs). */
  async withFrozen<T>(mountpoint: string | null, fn: () => Promise<T>): Promise<T> {
    if (mountpoint === null || !(await isMountpoint(mountpoint))) return fn();
    await run('fsfreeze', ['--freeze', mountpoint]);
    try {
      return await fn();
    } finally {
      await run('fsfreeze', ['--unfreeze', mountpoint]);
    }
  }

  /** An unmounted device still attached (a put cut short): detach and stop serving it. */
  async releaseLeftover(hash: string): Promise<void> {
    const file = this.fuseFile(hash);
    if (await access(file).then(() => true, () => false)) await this.deactivate(hash);
  }

  /** Deactivate a device if it happens to be active (before delete); ignores "not active". */
  async ensureInactive(hash: string): Promise<void> {
    const file = this.fuseFile(hash);
    if ((await attachedLoop(file)) || (await loopsOf(file)).length > 0) await this.deactivate(hash);
  }
}

export async function isMountpoint(path: string): Promise<boolean> {
  const mounts = await readFile('/proc/self/mountinfo', 'utf8');
  return mounts.split('\n').some((line) => line.split(' ')[4] === path);
}

