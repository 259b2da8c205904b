import { execFile } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { strataError } from '../../errors.js';
import type { MountSpec } from './mount-options.js';

/**
 * The only places overlay2 talks to the kernel's mount table. Node has no mount(2), so these run
 * util-linux mount/umount (a few milliseconds each); relative option paths resolve against the
 * child's working directory, which is how long lower chains fit in a page.
 */

function run(cmd: string, args: string[], cwd?: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { cwd, encoding: 'utf8' }, (err, _stdout, stderr) => {
      if (err) reject(Object.assign(err, { stderr: String(stderr).trim() }));
      else resolve();
    });
  });
}

export async function mountOverlay(spec: MountSpec, id: string): Promise<void> {
  try {
    // -n: never write /etc/mtab; --no-canonicalize would reject the relative target, so it stays off.
    await run('mount', ['-n', '-t', 'overlay', 'overlay', '-o', spec.options, spec.target], spec.cwd ?? undefined);
  } catch (err) {
    const detail = (err as { stderr?: string }).stderr || (err as Error).message;
    throw strataError('MOUNT_FAILED', `mounting overlay for layer ${id} failed: ${detail}`, { id }, err);
  }
}

/** Unmount `target`; lazily when busy (moby uses MNT_DETACH), since a put must not fail. */
export async function unmount(target: string): Promise<void> {
  try {
    await run('umount', ['-n', target]);
  } catch (err) {
    if (!(await isMountPoint(target))) return;
    try {
      await run('umount', ['-n', '-l', target]);
    } catch (err2) {
      const detail = (err2 as { stderr?: string }).stderr || (err as Error).message;
      throw strataError('MOUNT_FAILED', `unmounting ${target} failed: ${detail}`, { path: target }, err2);
    }
  }
}

/** A mount point has a different device than its parent directory (overlay mounts get their own). */
export async function isMountPoint(path: string): Promise<boolean> {
  const [self, parent] = await Promise.all([stat(path).catch(() => null), stat(dirname(path)).catch(() => null)]);
  if (!self || !parent) return false;
  return self.dev !== parent.dev || self.ino === parent.ino;
}
