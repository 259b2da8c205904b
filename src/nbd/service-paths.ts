/**
 * Where the active-devices service keeps its files, beside the thin engineer's mapper registry
 * (`<name>.json`). Ours start with a dot or end in `.sock`, so they never collide with a device
 * name's `.json`:
 *
 *     <root>/mapper/
 *       <name>.sock            NBD socket of active thin device <name> (mode 0600)
 *       .strata-nbd.lock       flock held by the running service (one per root)
 *       .strata-nbd.pid        its pid
 *       .strata-nbd.ctl        control socket (JSON lines, mode 0600)
 *       .strata-nbd.log        its stderr
 */
import { join } from 'node:path';

export interface ServicePaths {
  dir: string;
  lock: string;
  pid: string;
  control: string;
  log: string;
  device(name: string): string;
}

export function servicePaths(root: string): ServicePaths {
  const dir = join(root, 'mapper');
  return {
    dir,
    lock: join(dir, '.strata-nbd.lock'),
    pid: join(dir, '.strata-nbd.pid'),
    control: join(dir, '.strata-nbd.ctl'),
    log: join(dir, '.strata-nbd.log'),
    device: (name) => join(dir, `${name}.sock`),
  };
}
