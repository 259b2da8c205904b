/**
 * dmsetup verbs that stay correct while the active-devices service runs. The service holds the
 * pools of active thin devices open (with their exclusive flock), so a CLI process must not open
 * them itself: these functions go through the service when it runs, and straight to the mapper
 * registry when it does not. `create` of a thin device starts the service and serves the device
 * at `<root>/mapper/<name>.sock`, as a kernel dmsetup create makes /dev/mapper/<name> appear.
 *
 * Intended for src/cli/commands/dmsetup.ts: call these instead of the dm* functions for create,
 * remove, message, suspend, resume and status.
 */
import { MapperRegistry } from '../thin/mapper.js';
import { dmCreate, dmMessage, dmRemove, dmResume, dmStatus, dmSuspend } from '../thin/dmsetup.js';
import { parseTable } from '../thin/table.js';
import { isStrataError } from '../errors.js';
import { ensureService, servicePid, service } from './service-client.js';

async function running(root: string): Promise<boolean> {
  return (await servicePid(root)) !== null;
}

/** A thin device is created through the service (started if need be) and served at once. */
export async function routedCreate(root: string, name: string, table: string): Promise<void> {
  if (parseTable(table).target === 'thin') {
    await ensureService(root);
    await service.create(root, name, table);
    return;
  }
  if (await running(root)) await service.create(root, name, table);
  else await dmCreate(new MapperRegistry(root), name, table);
}

/** Refused (DEVICE_BUSY) while NBD clients have the device open, as the kernel refuses an open device. */
export async function routedRemove(root: string, name: string): Promise<void> {
  if (await running(root)) await service.remove(root, name);
  else await dmRemove(new MapperRegistry(root), name);
}

export async function routedMessage(root: string, pool: string, sector: string, text: string): Promise<void> {
  if (sector !== '0' || !(await running(root))) {
    await dmMessage(new MapperRegistry(root), pool, sector, text);
    return;
  }
  await service.message(root, pool, text);
}

export async function routedSuspend(root: string, name: string): Promise<void> {
  if (await running(root)) {
    try {
      await service.suspend(root, name);
      return;
    } catch (err) {
      if (!isStrataError(err, 'DEVICE_NOT_FOUND')) throw err; // not active: only the flag to set
    }
  }
  await dmSuspend(new MapperRegistry(root), name);
}

export async function routedResume(root: string, name: string): Promise<void> {
  if (await running(root)) {
    try {
      await service.resume(root, name);
      return;
    } catch (err) {
      if (!isStrataError(err, 'DEVICE_NOT_FOUND')) throw err;
    }
  }
  await dmResume(new MapperRegistry(root), name);
}

export async function routedStatus(root: string, name: string): Promise<string> {
  if (await running(root)) return service.status(root, name);
  return dmStatus(new MapperRegistry(root), name);
}
