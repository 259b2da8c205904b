import { lstat, mkdir, writeFile, symlink } from 'node:fs/promises';
import { join, dirname } from 'node:path';
import { isErrno } from '../errors.js';

/**
 * What Docker's initlayer.Setup puts in a container's `<mount-id>-init` layer: mount points and
 * files the runtime bind-mounts over. Entries the image already has are left alone. Keeping the
 * init layer lets dockerd adopt Strata's containers, and keeps these files out of `diff`.
 */
const INIT_ENTRIES: Array<[path: string, kind: 'dir' | 'file' | 'symlink', target?: string]> = [
  ['/dev/pts', 'dir'],
  ['/dev/shm', 'dir'],
  ['/proc', 'dir'],
  ['/sys', 'dir'],
  ['/.dockerenv', 'file'],
  ['/etc/resolv.conf', 'file'],
  ['/etc/hosts', 'file'],
  ['/etc/hostname', 'file'],
  ['/dev/console', 'file'],
  ['/etc/mtab', 'symlink', '/proc/mounts'],
];

export async function setupInitLayer(root: string): Promise<void> {
  for (const [path, kind, target] of INIT_ENTRIES) {
    const full = join(root, path);
    try {
      await lstat(full);
      continue;
    } catch (err) {
      if (!isErrno(err, 'ENOENT')) throw err;
    }
    await mkdir(dirname(full), { recursive: true, mode: 0o755 });
    if (kind === 'dir') await mkdir(full, { mode: 0o755 });
    else if (kind === 'file') await writeFile(full, '', { mode: 0o755 });
    else await symlink(target!, full);
  }
}
