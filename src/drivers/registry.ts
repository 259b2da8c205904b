import type { Driver, DriverOptions } from './driver.js';
import { strataError } from '../errors.js';

/**
 * Every driver by name, loaded lazily so a CLI call pays only for the driver it uses.
 * `probe` says whether the driver can work on this host (and why not), without side effects
 * beyond a throw-away test under the root.
 */
interface DriverEntry {
  open(opts: DriverOptions): Promise<Driver>;
  probe?(root: string): Promise<string | null>;
}

// One entry per driver; a new driver adds its line here.
const drivers: Record<string, DriverEntry> = {
  vfs: {
    open: async (opts) => (await import('./vfs/vfs-driver.js')).createVfsDriver(opts),
  },
  overlay2: {
    open: async (opts) => (await import('./overlay2/overlay2-driver.js')).createOverlay2Driver(opts),
    probe: async (root) => (await import('./overlay2/overlay-support.js')).probeOverlay2(root),
  },
  aufs: {
    open: async (opts) => (await import('./aufs/aufs-driver.js')).createAufsDriver(opts),
    probe: async (root) => (await import('./aufs/aufs-driver.js')).probeAufs(root),
  },
  devicemapper: {
    open: async (opts) => (await import('./devicemapper/devicemapper-driver.js')).createDevicemapperDriver(opts),
    probe: async () => (await import('./devicemapper/devicemapper-driver.js')).probeDevicemapper(),
  },
  btrfs: {
    open: async (opts) => (await import('./btrfs/btrfs-driver.js')).createBtrfsDriver(opts),
    probe: async (root) => (await import('./btrfs/btrfs-driver.js')).probeBtrfs(root),
  },
};

/** Drivers in the order Docker prefers them when none is named. */
const PRIORITY = ['overlay2', 'vfs'];

export function driverNames(): string[] {
  return Object.keys(drivers).sort();
}

export async function openDriver(name: string, opts: DriverOptions): Promise<Driver> {
  const entry = drivers[name];
  if (!entry) {
    throw strataError('DRIVER_NOT_SUPPORTED', `unknown storage driver ${JSON.stringify(name)} (known: ${driverNames().join(', ')})`);
  }
  const reason = await entry.probe?.(opts.root);
  if (reason) throw strataError('DRIVER_NOT_SUPPORTED', `storage driver ${name} is not supported here: ${reason}`);
  return entry.open(opts);
}

/** The default driver for a root and why the better ones were passed over (for `strata info`). */
export async function chooseDefaultDriver(root: string): Promise<{ name: string; passedOver: Array<[string, string]> }> {
  const passedOver: Array<[string, string]> = [];
  for (const name of PRIORITY) {
    const entry = drivers[name];
    if (!entry) continue;
    const reason = await entry.probe?.(root);
    if (!reason) return { name, passedOver };
    passedOver.push([name, reason]);
  }
  return { name: 'vfs', passedOver };
}
