import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { BTRFS_FIRST_FREE_OBJECTID } from './ioctl-args.js';
import { ioctlSubvolumeOps } from './ioctl-ops.js';
import { btrfsToolVersion, cliSubvolumeOps } from './cli-ops.js';

/**
 * What the btrfs driver asks of the kernel, one port with two implementations: ioctls through
 * koffi (ioctl-ops.ts) and the `btrfs` tool (cli-ops.ts). Names are entries of `dir`, the
 * directory the kernel call is made on, as the ioctls take them.
 */
export interface SubvolumeOps {
  /** `ioctl` or `btrfs-progs`, for `strata info`. */
  readonly via: string;
  /** A new, empty subvolume `dir/name`. */
  create(dir: string, name: string): Promise<void>;
  /** `dir/name` becomes a writable snapshot of the subvolume `source`. */
  snapshot(source: string, dir: string, name: string): Promise<void>;
  /** Delete the subvolume `dir/name` and its contents; fails while it holds other subvolumes. */
  destroy(dir: string, name: string): Promise<void>;
  /** The id of the subvolume that holds `path` (its level-0 qgroup id). */
  subvolumeId(path: string): Promise<bigint>;
  /** Turn on quota groups for the whole filesystem holding `path` (a no-op when on). */
  enableQuota(path: string): Promise<void>;
  /** Cap the bytes the subvolume `subvolume` may reference. */
  limitReferenced(subvolume: string, bytes: number): Promise<void>;
  /** Remove the level-0 qgroup of a subvolume; `path` is anywhere on the filesystem. */
  destroyQgroup(path: string, subvolId: bigint): Promise<void>;
}

/** ioctls where koffi loads, else the `btrfs` tool where installed, else null. */
export async function defaultSubvolumeOps(): Promise<SubvolumeOps | null> {
  return ioctlSubvolumeOps() ?? ((await btrfsToolVersion()) !== null ? cliSubvolumeOps() : null);
}

/** A subvolume's root directory is always inode 256 on btrfs; a plain directory never is. */
export async function isSubvolume(path: string): Promise<boolean> {
  const st = await lstat(path).catch(() => null);
  return st !== null && st.isDirectory() && st.ino === BTRFS_FIRST_FREE_OBJECTID;
}

/**
 * The subvolumes directly inside the tree at `root` (not below one another: each is deleted with
 * its own nested ones). Mount points (another device that is not a subvolume root) are not
 * entered.
 */
async function nestedSubvolumes(root: string): Promise<string[]> {
  const found: string[] = [];
  const rootDev = (await lstat(root)).dev;
  const walk = async (dir: string): Promise<void> => {
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
    for (const e of entries) {
      if (!e.isDirectory()) continue;
      const path = join(dir, e.name);
      const st = await lstat(path).catch(() => null);
      if (!st) continue;
      if (st.ino === BTRFS_FIRST_FREE_OBJECTID) found.push(path);
      else if (st.dev === rootDev) await walk(path);
    }
  };
  await walk(root);
  return found;
}

/**
 * Delete `dir/name` and any subvolumes made inside it (a container that ran `btrfs subvolume
 * create`), as moby's subvolDelete does. The kernel refuses to delete a subvolume that holds
 * others, so the tree is only walked when the plain delete fails — for a layer without nested
 * subvolumes the delete costs one call whatever the layer's size.
 */
export async function deleteSubvolume(ops: SubvolumeOps, dir: string, name: string): Promise<void> {
  try {
    await ops.destroy(dir, name);
    return;
  } catch (err) {
    const nested = await nestedSubvolumes(join(dir, name)).catch(() => []);
    if (nested.length === 0) throw err;
    for (const path of nested) {
      const cut = path.lastIndexOf('/');
      await deleteSubvolume(ops, path.slice(0, cut), path.slice(cut + 1));
    }
  }
  await ops.destroy(dir, name);
}
