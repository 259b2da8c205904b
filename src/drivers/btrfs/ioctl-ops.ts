import { open } from 'node:fs/promises';
import { constants as fsConstants } from 'node:fs';
import { LP64_LITTLE_ENDIAN, errnoError, libcBinding } from '../../util/libc.js';
import {
  BTRFS_IOC, BTRFS_QUOTA_CTL_ENABLE, qgroupDestroyArgs, qgroupLimitArgs, quotaCtlArgs, subvolIdLookupArgs, subvolIdOf, volArgs,
} from './ioctl-args.js';
import type { SubvolumeOps } from './subvolume.js';

/**
 * Subvolume operations as ioctls on directory file descriptors, called through libc with koffi
 * (the FFI overlay2 mounts with). A `btrfs` child process costs 10–15 ms per call from Node
 * (fork, exec, the tool's own set-up); the ioctl costs what the kernel does: ~3 ms for a snapshot
 * (it commits a transaction), well under 1 ms for a create or delete. Calls run on koffi's worker
 * threads, so a snapshot waiting on a commit does not stall the event loop.
 */

type IoctlFn = ((fd: number, request: number, arg: Buffer) => number) & {
  async(fd: number, request: number, arg: Buffer, cb: (err: unknown, result: number) => void): void;
};

interface Binding {
  ioctl: IoctlFn;
  errno(): number;
}

// The argument layouts are little-endian 64-bit (ioctl-args.ts). ioctl(2) is variadic in libc;
// with one pointer argument the fixed-argument call is the same on those ABIs (integer
// registers, no vector count needed).
const load = libcBinding<Binding>((lib) => ({
  ioctl: lib.func('int ioctl(int fd, unsigned long request, void *arg)') as IoctlFn,
  errno: () => lib.errno(),
}), LP64_LITTLE_ENDIAN);

async function withDirFd<T>(path: string, fn: (fd: number) => Promise<T>): Promise<T> {
  const handle = await open(path, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY | fsConstants.O_NOFOLLOW);
  try {
    return await fn(handle.fd);
  } finally {
    await handle.close();
  }
}

function ioctlOn(b: Binding, fd: number, request: number, arg: Buffer, name: string, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    b.ioctl.async(fd, request, arg, (err, result) => {
      // koffi hands the worker thread's errno to the callback's thread
      if (err) reject(err);
      else if (result !== 0) reject(errnoError(b.errno(), `ioctl ${name}`, path));
      else resolve();
    });
  });
}

/** The ioctl-backed operations, or null where koffi or the platform cannot provide them. */
export function ioctlSubvolumeOps(): SubvolumeOps | null {
  const b = load();
  if (!b) return null;
  const call = (path: string, request: number, arg: Buffer, name: string) => withDirFd(path, (fd) => ioctlOn(b, fd, request, arg, name, path));
  return {
    via: 'ioctl',
    create: (dir, name) => call(dir, BTRFS_IOC.SUBVOL_CREATE, volArgs(name), 'BTRFS_IOC_SUBVOL_CREATE'),
    snapshot: (source, dir, name) =>
      withDirFd(source, (srcFd) => call(dir, BTRFS_IOC.SNAP_CREATE, volArgs(name, srcFd), 'BTRFS_IOC_SNAP_CREATE')),
    destroy: (dir, name) => call(dir, BTRFS_IOC.SNAP_DESTROY, volArgs(name), 'BTRFS_IOC_SNAP_DESTROY'),
    async subvolumeId(path) {
      const arg = subvolIdLookupArgs();
      await call(path, BTRFS_IOC.INO_LOOKUP, arg, 'BTRFS_IOC_INO_LOOKUP');
      return subvolIdOf(arg);
    },
    enableQuota: (path) => call(path, BTRFS_IOC.QUOTA_CTL, quotaCtlArgs(BTRFS_QUOTA_CTL_ENABLE), 'BTRFS_IOC_QUOTA_CTL'),
    limitReferenced: (subvolume, bytes) => call(subvolume, BTRFS_IOC.QGROUP_LIMIT, qgroupLimitArgs(bytes), 'BTRFS_IOC_QGROUP_LIMIT'),
    destroyQgroup: (path, subvolId) => call(path, BTRFS_IOC.QGROUP_CREATE, qgroupDestroyArgs(subvolId), 'BTRFS_IOC_QGROUP_CREATE'),
  };
}
