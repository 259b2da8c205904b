import { access, mkdir, mkdtemp, readFile, rename, rm, statfs, writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { release } from 'node:os';
import { getXattr, setXattr } from '../../util/xattr.js';
import { isMountPoint, mountOverlay, unmount } from './kernel-mount.js';
import { fitsInOptions, type MountSpec } from './mount-options.js';
import { writeFileAtomic } from '../../util/atomic.js';
import { backingFsName } from '../backing-fs.js';

/**
 * What the host offers overlay2, found the way moby finds it: a real test mount (root, the
 * kernel's OverlayFS, a backing filesystem it accepts with two lowers), d_type support, and
 * whether the upper directory alone describes a layer's changes ("native diff": not so when the
 * kernel redirects renamed directories or copies up metadata only).
 */

const OVERLAY_MAGIC = 0x794c7630;

async function sysParam(name: string): Promise<string | null> {
  return (await readFile(`/sys/module/overlay/parameters/${name}`, 'utf8').catch(() => null))?.trim() ?? null;
}

export async function kernelHasOverlay(): Promise<boolean> {
  const text = await readFile('/proc/filesystems', 'utf8').catch(() => '');
  if (/\toverlay$/m.test(text)) return true;
  // Docker loads the module on demand the same way.
  await new Promise<void>((resolve) => execFile('modprobe', ['overlay'], () => resolve()));
  return /\toverlay$/m.test(await readFile('/proc/filesystems', 'utf8').catch(() => ''));
}

/** `index=off` is understood (the parameter exists), as moby's indexOff detection. */
export async function kernelKnowsIndex(): Promise<boolean> {
  return (await sysParam('index')) !== null;
}

/** Running inside a user namespace, where trusted.* xattrs are not ours (overlay needs userxattr). */
export async function inUserNamespace(): Promise<boolean> {
  const map = await readFile('/proc/self/uid_map', 'utf8').catch(() => '');
  const fields = map.trim().split(/\s+/);
  return !(fields.length === 3 && fields[0] === '0' && fields[1] === '0' && fields[2] === '4294967295');
}

/**
 * d_type: every filesystem Linux offers for containers has it except XFS made with ftype=0.
 * Node's readdir hides DT_UNKNOWN (it falls back to lstat), so ask xfs_info where it matters.
 */
export async function supportsDType(dir: string): Promise<boolean> {
  const fs = await statfs(dir);
  if (fs.type !== 0x58465342) return true;
  const out = await new Promise<string>((resolve) => execFile('xfs_info', [dir], (err, stdout) => resolve(err ? '' : String(stdout))));
  const m = /ftype=(\d)/.exec(out);
  return m ? m[1] === '1' : true;
}

export async function backingFilesystem(dir: string): Promise<string> {
  return backingFsName((await statfs(dir)).type);
}

/**
 * Why overlay2 cannot work with `home` (the driver directory, or its data root when it does not
 * exist yet), or null when it can. Mounts a two-lower overlay under `testRoot` and removes it.
 */
/** A test mount of directories under `td`: absolute paths where `td` fits in options, else relative to it. */
function testMount(td: string, lowers: string[], upper: string, work: string, target: string): MountSpec {
  const absolute = fitsInOptions(td);
  const path = (d: string): string => (absolute ? `${td}/${d}` : d);
  return { options: `lowerdir=${lowers.map(path).join(':')},upperdir=${path(upper)},workdir=${path(work)}`, target: path(target), cwd: absolute ? null : td };
}

export async function overlayUnsupportedReason(testRoot: string): Promise<string | null> {
  if (process.getuid?.() !== 0) return 'overlay2 mounts need root (running as an unprivileged user)';
  if (!(await kernelHasOverlay())) return 'the kernel has no OverlayFS (overlay is not in /proc/filesystems)';
  await mkdir(testRoot, { recursive: true });
  const fs = await statfs(testRoot);
  if (fs.type === OVERLAY_MAGIC) return `the backing filesystem of ${testRoot} is itself overlayfs, which cannot hold an upper directory`;
  if (!(await supportsDType(testRoot))) return `the backing filesystem (${backingFsName(fs.type)}) does not support d_type (xfs needs ftype=1)`;
  const td = await mkdtemp(join(testRoot, 'overlay2-check-'));
  try {
    for (const d of ['lower1', 'lower2', 'upper', 'work', 'merged']) await mkdir(join(td, d));
    await mountOverlay(testMount(td, ['lower2', 'lower1'], 'upper', 'work', 'merged'), 'overlay2-check');
    await unmount(`${td}/merged`);
    return null;
  } catch (err) {
    return `a test overlay mount on ${backingFsName(fs.type)} failed: ${(err as Error).message}`;
  } finally {
    if (await isMountPoint(`${td}/merged`)) await unmount(`${td}/merged`).catch(() => undefined);
    await rm(td, { recursive: true, force: true });
  }
}

/**
 * Null when diffs may be read from the upper directory alone, else why not (moby's
 * doesSupportNativeDiff): an opaque directory copied up must not stay opaque, and renaming a
 * lower directory must not leave a redirect (CONFIG_OVERLAY_FS_REDIRECT_DIR) or, with metacopy,
 * uppers hold only metadata. The answer is kept in `<home>/.native-diff` per kernel and
 * module parameters, so each CLI process does not pay a test mount.
 */
export async function nativeDiffProblem(home: string): Promise<string | null> {
  const key = `${release()} redirect_dir=${await sysParam('redirect_dir')} metacopy=${await sysParam('metacopy')}`;
  const cacheFile = join(home, '.native-diff');
  const cached = await readFile(cacheFile, 'utf8').catch(() => null);
  if (cached !== null) {
    const nl = cached.indexOf('\n');
    if (cached.slice(0, nl) === key) return cached.slice(nl + 1) || null;
  }
  const problem = await checkNativeDiff(home);
  await writeFileAtomic(cacheFile, `${key}\n${problem ?? ''}`).catch(() => undefined);
  return problem;
}

async function checkNativeDiff(home: string): Promise<string | null> {
  if ((await sysParam('metacopy')) === 'Y') return 'the kernel copies up metadata only (overlay metacopy=Y)';
  const td = await mkdtemp(join(home, 'opaque-bug-check-'));
  const merged = join(td, 'merged');
  try {
    for (const d of ['l1/d', 'l1/d1', 'l2/d', 'l3', 'work', 'merged']) await mkdir(join(td, d), { recursive: true });
    await setXattr(join(td, 'l2/d'), 'trusted.overlay.opaque', 'y');
    await mountOverlay(testMount(td, ['l2', 'l1'], 'l3', 'work', 'merged'), 'native-diff-check');
    try {
      await writeFile(join(merged, 'd', 'f'), '');
      if ((await getXattr(join(td, 'l3/d'), 'trusted.overlay.opaque'))?.toString() === 'y') {
        return 'the kernel copies the opaque flag up (kernel older than 4.8)';
      }
      try {
        await rename(join(merged, 'd1'), join(merged, 'd2'));
      } catch (err) {
        // EXDEV: no redirect_dir, renamed directories are copied up whole (native diff is safe)
        if ((err as NodeJS.ErrnoException).code === 'EXDEV') return null;
        throw err;
      }
      if ((await getXattr(join(td, 'l3/d2'), 'trusted.overlay.redirect')) !== null) {
        return 'the kernel redirects renamed directories (CONFIG_OVERLAY_FS_REDIRECT_DIR)';
      }
      return null;
    } finally {
      await unmount(merged);
    }
  } catch (err) {
    return `checking native diff support failed: ${(err as Error).message}`;
  } finally {
    if (await isMountPoint(merged)) await unmount(merged).catch(() => undefined);
    await rm(td, { recursive: true, force: true });
  }
}

export async function exists(path: string): Promise<boolean> {
  return access(path).then(() => true, () => false);
}

/**
 * The registry's probe: null when overlay2 can mount under `root`, else the reason. A root that
 * already has overlay2 layers (its `l/` directory) only needs root and the kernel module; a new
 * one gets a real test mount, since that is the only sure answer.
 */
export async function probeOverlay2(root: string): Promise<string | null> {
  if (process.getuid?.() !== 0) return 'overlay2 mounts need root (running as an unprivileged user)';
  // Layers keep opaque directories in trusted.* xattrs, which a user namespace cannot set
  // (Docker 20.10 refuses overlay2 there for the same reason).
  if (await inUserNamespace()) return 'overlay2 layers need trusted.* xattrs, unavailable inside a user namespace';
  const home = join(root, 'overlay2');
  if (await exists(join(home, 'l'))) {
    return (await kernelHasOverlay()) ? null : 'the kernel has no OverlayFS (overlay is not in /proc/filesystems)';
  }
  return overlayUnsupportedReason((await exists(home)) ? home : root);
}
