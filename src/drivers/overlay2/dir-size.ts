import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Docker's layer size for overlay2 (moby daemon/graphdriver/directory.Size): the lstat size of
 * every non-directory with a size, each inode once, so repeated hardlinks count once and symlinks
 * count their target's length. This is what `layerdb/.../size` holds.
 */
export async function directorySize(root: string): Promise<number> {
  const seen = new Set<bigint>();
  let total = 0;
  async function walk(dir: string): Promise<void> {
    const entries = await readdir(dir, { withFileTypes: true });
    for (const e of entries) {
      const path = join(dir, e.name);
      const st = await lstat(path, { bigint: true });
      if (st.isDirectory()) {
        await walk(path);
        continue;
      }
      if (st.size <= 0n) continue;
      if (st.nlink > 1n) {
        if (seen.has(st.ino)) continue;
        seen.add(st.ino);
      }
      total += Number(st.size);
    }
  }
  await walk(root);
  return total;
}
