import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { isRoot } from './fstest.js';

export function sh(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { encoding: 'utf8' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${(stderr || err.message).trim()}`));
      else resolve(stdout);
    });
  });
}

/**
 * A 1 GiB sparse file with a fresh btrfs, loop-mounted; `dispose` unmounts and deletes it.
 * Returns why not instead where that cannot be done here.
 */
export async function scratchBtrfs(prefix = 'strata-btrfs-fs-'): Promise<{ mount: string; dispose: () => Promise<void> } | string> {
  if (!isRoot) return 'needs root to loop-mount a scratch btrfs';
  if (!/\tbtrfs$/m.test(await readFile('/proc/filesystems', 'utf8'))) await sh('modprobe', ['btrfs']).catch(() => undefined);
  if (!/\tbtrfs$/m.test(await readFile('/proc/filesystems', 'utf8'))) return 'the kernel has no btrfs';
  if (!(await sh('mkfs.btrfs', ['--version']).then(() => true, () => false))) return 'mkfs.btrfs (btrfs-progs) is not installed';
  const work = await mkdtemp(join(tmpdir(), prefix));
  const image = join(work, 'btrfs.img');
  const mount = join(work, 'mnt');
  let mounted = false;
  const dispose = async () => {
    if (mounted) {
      // mount -o loop set the loop device to clear itself on unmount
      await sh('umount', [mount]).catch(() => sh('umount', ['-l', mount]));
      mounted = false;
    }
    await rm(work, { recursive: true, force: true });
  };
  try {
    await writeFile(image, '');
    await truncate(image, 1 << 30);
    await sh('mkfs.btrfs', ['-q', image]);
    await mkdir(mount);
    await sh('mount', ['-o', 'loop', image, mount]);
    mounted = true;
    return { mount, dispose };
  } catch (err) {
    await dispose();
    throw err;
  }
}
