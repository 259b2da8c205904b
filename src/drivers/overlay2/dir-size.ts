import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { mapLimit } from '../../util/map-limit.js';

/**
 * Docker's layer size for overlay2 (moby daemon/graphdriver/directory.Size): the lstat size of
 * every non-directory with a size, each inode once, so repeated hardlinks count once and symlinks
 * count their target's length. This is what `layerdb/.../size` holds. A directory's entries are
 * stat'ed together: a 10,000-file layer then costs thread-pool batches, not 10,000 round trips.
 */
export async function directorySize(root: string): Promise<number> {
  const seen = new Set<bigint>();
  let total = 0;
  async function walk(dir: string): Promise<void> {
    const entries = await readdir(dir, { withFileTypes: true });
    const subdirs: string[] = [];
    const others: string[] = [];
    for (const e of entries) (e.isDirectory() ? subdirs : others).push(join(dir, e.name));
    for (const st of await mapLimit(others, 64, (p) => lstat(p, { bigint: true }))) {
      if (st.isDirectory() || st.size <= 0n) continue;
      if (st.nlink > 1n) {
        if (seen.has(st.ino)) continue;
        seen.add(st.ino);
      }
      total += Number(st.size);
    }
    for (const sub of subdirs) await walk(sub);
  }
  await walk(root);
  return total;
}
