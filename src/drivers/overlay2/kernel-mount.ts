import { execFile } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { strataError } from '../../errors.js';
import { errnoName, libcBinding } from '../../util/libc.js';
import type { MountSpec } from './mount-options.js';

/**
 * The only places overlay2 talks to the kernel's mount table. Node has no mount(2): it is called
 * through libc with koffi (an FFI whose prebuilt binary ships in its npm package), because
 * forking util-linux mount from a large Node process costs tens of milliseconds per mount, most
 * of a container create. Options with paths relative to the driver home (deep chains) need the
 * mount to run in that directory, which a process-wide chdir would make racy: those, and hosts
 * where koffi cannot load, run mount(8) in the home as a child process instead.
 */

interface Syscalls {
  mount(source: string, target: string, fstype: string, flags: number, data: string): number;
  umount2(target: string, flags: number): number;
  errno(): number;
}

const libc = libcBinding<Syscalls>((lib) => ({
  mount: lib.func('int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)') as Syscalls['mount'],
  umount2: lib.func('int umount2(const char *target, int flags)') as Syscalls['umount2'],
  errno: () => lib.errno(),
}));

const MNT_DETACH = 2;

function run(cmd: string, args: string[], cwd?: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { cwd, encoding: 'utf8' }, (err, _stdout, stderr) => {
      if (err) reject(Object.assign(err, { stderr: String(stderr).trim() }));
      else resolve();
    });
  });
}

export async function mountOverlay(spec: MountSpec, id: string): Promise<void> {
  const sys = spec.cwd === null ? libc() : null;
  if (sys) {
    if (sys.mount('overlay', spec.target, 'overlay', 0, spec.options) !== 0) {
      const code = errnoName(sys.errno());
      throw strataError('MOUNT_FAILED', `mounting overlay for layer ${id} failed: ${code} (options ${spec.options})`, { id, errno: code });
    }
    return;
  }
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
  const sys = libc();
  if (sys) {
    // Detached at once, as moby's Put: gone from the mount table now, released when unused.
    if (sys.umount2(target, MNT_DETACH) === 0) return;
    const code = errnoName(sys.errno());
    if (code === 'EINVAL' || code === 'ENOENT') return; // not mounted (any more)
    throw strataError('MOUNT_FAILED', `unmounting ${target} failed: ${code}`, { path: target, errno: code });
  }
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
