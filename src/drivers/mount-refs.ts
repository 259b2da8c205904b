import { readFile, readdir, mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { withFileLock } from '../util/file-lock.js';
import { replaceFile } from '../util/atomic.js';
import { isErrno } from '../errors.js';

/**
 * Mount reference counts kept on disk, because every strata CLI call is a separate process
 * (containers/storage keeps mountpoints.json for the same reason). One file per id under
 * `<home>/mountrefs/`, changed under a flock so concurrent processes count correctly. Counts are
 * replaced atomically but never fsynced: they describe mounts, which do not outlive a boot
 * either (get() mounts again when a count has no mount behind it).
 */
export class MountRefs {
  private readonly dir: string;

  constructor(home: string) {
    this.dir = join(home, 'mountrefs');
  }

  async count(id: string): Promise<number> {
    try {
      return Number.parseInt(await readFile(join(this.dir, id), 'utf8'), 10) || 0;
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return 0;
      throw err;
    }
  }

  /**
   * Change the count by `delta` and run `onEdge` when it crosses zero (mount on 0→1, unmount on
   * 1→0) inside the same lock, so no other process sees a count that disagrees with the mount.
   * Returns the new count; a put below zero is ignored (returns 0, no edge).
   */
  async change(id: string, delta: 1 | -1, onEdge?: () => Promise<void>): Promise<number> {
    await mkdir(this.dir, { recursive: true });
    return withFileLock(join(this.dir, '.lock'), async () => {
      const before = await this.count(id);
      const after = Math.max(0, before + delta);
      if (after === before) return after;
      if ((before === 0 && after === 1) || (before === 1 && after === 0)) await onEdge?.();
      if (after === 0) await rm(join(this.dir, id), { force: true });
      else await replaceFile(join(this.dir, id), String(after));
      return after;
    });
  }

  async forget(id: string): Promise<void> {
    await rm(join(this.dir, id), { force: true });
  }

  /** Ids with a positive count (for cleanup). */
  async mounted(): Promise<string[]> {
    try {
      return (await readdir(this.dir)).filter((n) => !n.startsWith('.'));
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return [];
      throw err;
    }
  }
}
