import { lstat, lutimes, readdir } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Docker's layer size for overlay2 (moby daemon/graphdriver/directory.Size): the lstat size of
 * every non-directory with a size, each inode once, so repeated hardlinks count once and symlinks
 * count their target's length. This is what `layerdb/.../size` holds. A directory's entries are
 * stat'ed together: a 10,000-file layer then costs thread-pool batches, not 10,000 round trips.
 *
 * `settleWhiteouts`: give each 0/0 whiteout device the Unix epoch as its times. Applying a layer
 * makes them with mknod at the current time (as moby), so a native diff re-applied and diffed
 * again would differ in the `.wh.` entry's mtime once a second passes; a fixed time makes the
 * diff a function of the layer's content (the directory's own time is no anchor: the layer root
 * is not in a native diff). Layer bytes are unaffected: tar-split keeps the original headers.
 */
export async function directorySize(root: string, opts: { settleWhiteouts?: boolean } = {}): Promise<number> {
  const seen = new Set<bigint>();
  let total = 0;
  async function walk(dir: string): Promise<void> {
    const entries = await readdir(dir, { withFileTypes: true });
    const subdirs: string[] = [];
    const others: string[] = [];
    for (const e of entries) (e.isDirectory() ? subdirs : others).push(join(dir, e.name));
    const stats = await Promise.all(others.map((p) => lstat(p, { bigint: true })));
    for (const [i, st] of stats.entries()) {
      if (opts.settleWhiteouts && st.isCharacterDevice() && st.rdev === 0n) await lutimes(others[i]!, 0, 0);
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
