// Scratch filesystems for tests and benches: a sparse file with a fresh btrfs or ext4, loop-mounted.
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
 * A sparse file of `bytes` with a fresh filesystem of `type`, loop-mounted; `dispose` unmounts and
 * deletes it. Returns why not instead where that cannot be done here.
 */
export async function scratchFilesystem(type: 'btrfs' | 'ext4', bytes: number, prefix = `strata-${type}-fs-`): Promise<{ mount: string; dispose: () => Promise<void> } | string> {
  if (!isRoot) return `needs root to loop-mount a scratch ${type}`;
  const fsRow = new RegExp(`\\t${type}$`, 'm');
  if (!fsRow.test(await readFile('/proc/filesystems', 'utf8'))) await sh('modprobe', [type]).catch(() => undefined);
  if (!fsRow.test(await readFile('/proc/filesystems', 'utf8'))) return `the kernel has no ${type}`;
  const mkfs = type === 'btrfs' ? ['mkfs.btrfs', '-q'] : ['mkfs.ext4', '-q', '-F'];
  if (!(await sh(mkfs[0]!, ['-V']).then(() => true, () => false))) return `${mkfs[0]} is not installed`;
  const work = await mkdtemp(join(tmpdir(), prefix));
  const image = join(work, `${type}.img`);
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
    await truncate(image, bytes);
    await sh(mkfs[0]!, [...mkfs.slice(1), image]);
    await mkdir(mount);
    await sh('mount', ['-o', 'loop', image, mount]);
    mounted = true;
    return { mount, dispose };
  } catch (err) {
    await dispose();
    throw err;
  }
}

/** A 1 GiB scratch btrfs (scratchFilesystem). */
export function scratchBtrfs(prefix?: string): ReturnType<typeof scratchFilesystem> {
  return scratchFilesystem('btrfs', 1 << 30, prefix);
}
