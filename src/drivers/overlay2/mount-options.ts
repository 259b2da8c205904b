import { strataError } from '../../errors.js';

/**
 * Pure rules for overlay2's `lower` files and mount options (no I/O), as moby's overlay2:
 * - a layer's `lower` lists `l/<link>` of its parent, then the parent's own lowers: nearest first;
 * - at most 128 lowers, so that 128 × `l/<26 chars>:` plus the upper and work dirs fit in the
 *   one page the mount(2) syscall copies;
 * - options use absolute paths when they fit (in a page, and the home's path in option syntax),
 *   otherwise paths relative to the driver home, and the mount runs with the home as its working
 *   directory.
 */

export const LINK_DIR = 'l';
export const MAX_LOWERS = 128;

/** The `lower` file for a child of `parent`: the parent's link, then the parent's lowers. */
export function childLower(parentLink: string, parentLower: string | null): string {
  const lowers = [`${LINK_DIR}/${parentLink}`, ...splitLower(parentLower)];
  if (lowers.length > MAX_LOWERS) {
    throw strataError('INVALID_ARGUMENT', `max depth exceeded: an overlay2 layer may have at most ${MAX_LOWERS} lower layers`);
  }
  return lowers.join(':');
}

export function splitLower(text: string | null): string[] {
  if (text === null) return [];
  return text.split(':').filter((s) => s.length > 0);
}

export interface MountRequest {
  /** Driver home (absolute). */
  home: string;
  id: string;
  /** Content of the layer's `lower` file (`l/A:l/B`), never empty: layers without lowers are not mounted. */
  lower: string;
  /**
   * A layer with children (`committed` marker) is mounted read-only, its own diff as the top
   * lower, so a mount cannot change what its children are built on.
   */
  readonly: boolean;
  /** Kernel knows `index=`: turn it off as Docker does (inode index would pin layers together). */
  indexOff: boolean;
  /** Inside a user namespace: trusted.* xattrs are unavailable, overlay needs `userxattr`. */
  userxattr: boolean;
  pageSize: number;
}

export interface MountSpec {
  /** The `-o` string. */
  options: string;
  /** Mount point: absolute, or relative to `cwd`. */
  target: string;
  /** Working directory for the mount when the paths are relative, else null. */
  cwd: string | null;
}

/**
 * Whether `path` can stand in overlay mount options as it is: the kernel splits the options at
 * ',' and lowerdir at ':', and takes a backslash as an escape. A root such as `/srv/a:b` gets the
 * relative form instead (its `l/` links and layer ids hold none of these).
 */
export function fitsInOptions(path: string): boolean {
  return !/[,:\\]/.test(path);
}

export function buildMountSpec(req: MountRequest): MountSpec {
  const prefix = `${req.indexOff ? 'index=off,' : ''}${req.userxattr ? 'userxattr,' : ''}`;
  const lowers = splitLower(req.lower);
  if (lowers.length === 0) throw strataError('INTERNAL', `layer ${req.id} has no lowers to mount`);
  const layerDir = `${req.home}/${req.id}`;
  const format = (base: string, lowerList: string[]): string => {
    const diff = `${base}${req.id}/diff`;
    return req.readonly
      ? `${prefix}lowerdir=${[diff, ...lowerList].join(':')}`
      : `${prefix}lowerdir=${lowerList.join(':')},upperdir=${diff},workdir=${base}${req.id}/work`;
  };
  const absolute = format(`${req.home}/`, lowers.map((l) => `${req.home}/${l}`));
  // The kernel copies at most one page including the terminating NUL.
  if (absolute.length <= req.pageSize - 1 && fitsInOptions(req.home)) return { options: absolute, target: `${layerDir}/merged`, cwd: null };
  const relative = format('', lowers);
  if (relative.length > req.pageSize - 1) {
    throw strataError('MOUNT_FAILED', `cannot mount layer ${req.id}: mount options of ${relative.length} bytes exceed a page`, { id: req.id });
  }
  return { options: relative, target: `${req.id}/merged`, cwd: req.home };
}
