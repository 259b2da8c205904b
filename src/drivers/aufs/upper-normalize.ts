import { lstat, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isErrno } from '../../errors.js';
import { getXattr, readXattrs, removeXattr } from '../../util/xattr.js';
import { OPAQUE_MARKER, isHousekeeping, whiteoutName } from '../../union/index.js';

/** Opaque-directory xattrs fuse-overlayfs may set (as root, and rootless). */
const OPAQUE_XATTRS = ['trusted.overlay.opaque', 'user.fuseoverlayfs.opaque'];

/** The mount program's private xattrs (copy-up origins, impure markers): never part of a layer. */
export function isPrivateXattr(name: string): boolean {
  return name.startsWith('user.fuseoverlayfs.') || name.startsWith('trusted.overlay.');
}

async function dropPrivateXattrs(path: string): Promise<number> {
  let n = 0;
  for (const name of (await readXattrs(path)).keys()) {
    if (!isPrivateXattr(name)) continue;
    await removeXattr(path, name);
    n++;
  }
  return n;
}

/** aufs' whiteouts are r--r--r--, like its whiteout base `.wh..wh.aufs`. */
const WHITEOUT_MODE = 0o444;

/**
 * What one entry of a writable branch becomes in aufs' convention. fuse-overlayfs (as root)
 * records a deletion as a 0/0 character device named after the victim, and leaves stray 0/0
 * devices named `.wh.*` beside the opaque markers it creates; aufs has neither.
 */
export function fixupFor(name: string, isWhiteoutDevice: boolean): 'keep' | 'to-whiteout' | 'drop' {
  if (!isWhiteoutDevice) return 'keep';
  return name.startsWith('.wh.') ? 'drop' : 'to-whiteout';
}

export interface NormalizeStats {
  whiteouts: number;
  opaque: number;
  droppedOpaque: number;
  /** Private xattrs of the mount program removed (e.g. fuse-overlayfs' copy-up origin). */
  xattrs: number;
}

/**
 * Bring a writable branch back to aufs' on-disk convention after fuse-overlayfs wrote to it:
 * 0/0 char devices become `.wh.<name>` files, opaque xattrs become `.wh..wh..opq` markers, and
 * the opaque markers fuse-overlayfs puts on every new directory are dropped where no read-only
 * branch has a directory to hide (aufs only marks a directory opaque when it replaces one);
 * the mount program's private xattrs (`user.fuseoverlayfs.*`, `trusted.overlay.*`) are removed.
 * `lowerHasDir(rel)` answers from the read-only branches (only asked when every ancestor is a
 * lower directory too). Idempotent; must run while the branch is not mounted.
 */
export async function normalizeUpper(upper: string, lowerHasDir: (rel: string) => Promise<boolean>): Promise<NormalizeStats> {
  const stats: NormalizeStats = { whiteouts: 0, opaque: 0, droppedOpaque: 0, xattrs: 0 };
  async function walk(rel: string, lowerVisible: boolean): Promise<void> {
    const dir = rel === '' ? upper : join(upper, rel);
    let marker = false;
    for (const name of OPAQUE_XATTRS) {
      if ((await getXattr(dir, name))?.toString() === 'y') {
        await removeXattr(dir, name);
        marker = true;
      }
    }
    if (rel !== '') stats.xattrs += await dropPrivateXattrs(dir);
    const entries = await readdir(dir, { withFileTypes: true });
    if (entries.some((e) => e.name === OPAQUE_MARKER)) marker = true;
    if (marker && rel !== '' && !lowerVisible) {
      // nothing below to hide: an opaque marker here only adds noise to the layer
      await rm(join(dir, OPAQUE_MARKER), { force: true });
      stats.droppedOpaque++;
      marker = false;
    } else if (marker && !entries.some((e) => e.name === OPAQUE_MARKER)) {
      await writeFile(join(dir, OPAQUE_MARKER), '', { mode: WHITEOUT_MODE });
      stats.opaque++;
    }
    const childrenVisible = lowerVisible && !marker;
    for (const e of entries) {
      if (rel === '' && isHousekeeping(e.name)) continue;
      const path = join(dir, e.name);
      const childRel = rel === '' ? e.name : `${rel}/${e.name}`;
      if (e.isCharacterDevice()) {
        const st = await lstat(path);
        const fix = fixupFor(e.name, st.rdev === 0);
        if (fix === 'keep') continue;
        await rm(path, { force: true });
        if (fix === 'to-whiteout') {
          try {
            await writeFile(join(dir, whiteoutName(e.name)), '', { mode: WHITEOUT_MODE, flag: 'wx' });
          } catch (err) {
            if (!isErrno(err, 'EEXIST')) throw err;
          }
          stats.whiteouts++;
        }
      } else if (e.isDirectory() && !e.name.startsWith('.wh.')) {
        await walk(childRel, childrenVisible && (await lowerHasDir(childRel)));
      } else if (!e.name.startsWith('.wh.')) {
        stats.xattrs += await dropPrivateXattrs(path);
      }
    }
  }
  await walk('', true);
  return stats;
}
