/**
 * dmsetup verbs that stay correct while the active-devices service runs. The service holds the
 * pools of active thin devices open (with their exclusive flock), so a CLI process must not open
 * them itself: these functions go through the service when it runs, and straight to the mapper
 * registry when it does not. `create` of a thin device starts the service and serves the device
 * at `<root>/mapper/<name>.sock`, as a kernel dmsetup create makes /dev/mapper/<name> appear.
 *
 * Intended for src/cli/commands/dmsetup.ts: call these instead of the dm* functions for create,
 * remove, message, suspend, resume and status. `routed` is the rule itself, for any other command
 * that takes the service's way while it runs (`thin read|write`).
 */
import { MapperRegistry } from '../thin/mapper.js';
import { dmCreate, dmMessage, dmRemove, dmResume, dmStatus, dmSuspend } from '../thin/dmsetup.js';
import { parseTable } from '../thin/table.js';
import { isStrataError } from '../errors.js';
import { ensureService, neverReached, servicePid, service } from './service-client.js';

/**
 * Through the service while it runs, else `direct`; also when the service stopped (idle) between
 * the look and the call, which then never reached it. `notServed` lets an error of the service
 * (an inactive device) fall through to `direct` as well.
 */
export async function routed<T>(root: string, viaService: () => Promise<T>, direct: () => Promise<T>, notServed = (_err: unknown) => false): Promise<T> {
  if ((await servicePid(root)) !== null) {
    try {
      return await viaService();
    } catch (err) {
      if (!neverReached(err) && !notServed(err)) throw err;
    }
  }
  return direct();
}

/** A thin device is created through the service (started if need be) and served at once. */
export async function routedCreate(root: string, name: string, table: string): Promise<void> {
  if (parseTable(table).target !== 'thin') {
    await routed<unknown>(root, () => service.create(root, name, table), () => dmCreate(new MapperRegistry(root), name, table));
    return;
  }
  for (let attempt = 1; ; attempt++) {
    await ensureService(root);
    try {
      await service.create(root, name, table);
      return;
    } catch (err) {
      if (attempt === 2 || !neverReached(err)) throw err; // (a service that had just stopped: start one)
    }
  }
}

/** Refused (DEVICE_BUSY) while NBD clients have the device open, as the kernel refuses an open device. */
export function routedRemove(root: string, name: string): Promise<void> {
  return routed(root, () => service.remove(root, name), () => dmRemove(new MapperRegistry(root), name));
}

export function routedMessage(root: string, pool: string, sector: string, text: string): Promise<void> {
  const direct = () => dmMessage(new MapperRegistry(root), pool, sector, text);
  return sector === '0' ? routed(root, () => service.message(root, pool, text), direct) : direct();
}

/** (A device the service does not serve: only the registry's flag to set.) */
const inactive = (err: unknown): boolean => isStrataError(err, 'DEVICE_NOT_FOUND');

export function routedSuspend(root: string, name: string): Promise<void> {
  return routed(root, () => service.suspend(root, name), () => dmSuspend(new MapperRegistry(root), name), inactive);
}

export function routedResume(root: string, name: string): Promise<void> {
  return routed(root, () => service.resume(root, name), () => dmResume(new MapperRegistry(root), name), inactive);
}

export function routedStatus(root: string, name: string): Promise<string> {
  return routed(root, () => service.status(root, name), () => dmStatus(new MapperRegistry(root), name));
}
