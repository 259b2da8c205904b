import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { access, mkdir, readFile, rm, writeFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { strataError } from '../../errors.js';
import { writeFileAtomic } from '../../util/atomic.js';
import { which } from '../../util/which.js';

const run = promisify(execFile);

/**
 * How the merged view gets mounted. Kernel aufs where the host has it (never in mainline Linux);
 * otherwise fuse-overlayfs, which reads aufs' `.wh.<name>` whiteouts and `.wh..wh..opq` markers in
 * every branch (checked by `probeFuseOverlayfs`, not assumed).
 */
export type MountProgram = { kind: 'aufs' } | { kind: 'fuse-overlayfs'; binary: string; version: string };

export interface BranchSpec {
  /** Directory of the mount program's working files (cwd; the branch paths are relative to it). */
  home: string;
  /** Writable branch, relative to home (`diff/<id>`). */
  upper: string;
  /** Read-only branches, nearest first, relative to home. */
  lowers: string[];
  /** fuse-overlayfs' work directory, relative to home. */
  work: string;
  /** Absolute mount point. */
  target: string;
}

/** Pick the mount program, or say exactly what is missing. */
export async function detectMountProgram(scratch: string, searchPath = process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'): Promise<MountProgram | string> {
  const filesystems = await readFile('/proc/filesystems', 'utf8').catch(() => '');
  if (/\taufs$/m.test(filesystems)) return { kind: 'aufs' };
  const binary = await which('fuse-overlayfs', searchPath);
  const why = 'the kernel has no aufs module and';
  if (binary === null) return `${why} fuse-overlayfs is not installed (Debian package fuse-overlayfs)`;
  if (!(await access('/dev/fuse').then(() => true, () => false))) return `${why} /dev/fuse is missing (fuse kernel module)`;
  const version = await run(binary, ['--version']).then((r) => /fuse-overlayfs: version (\S+)/.exec(r.stdout)?.[1] ?? 'unknown', () => 'unknown');
  const program: MountProgram = { kind: 'fuse-overlayfs', binary, version };
  const problem = await probeFuseOverlayfs(program, scratch);
  return problem ?? program;
}

interface ProbeRecord {
  binary: string;
  mtimeMs: number;
  size: number;
  version: string;
}

/**
 * detectMountProgram, remembered in `cacheFile` while the fuse-overlayfs binary is unchanged:
 * each CLI call is a new process, and the probe mounts a test stack (tens of milliseconds).
 * Only a successful probe is remembered; a failure is re-checked every time.
 */
export async function cachedMountProgram(scratch: string, cacheFile: string): Promise<MountProgram | string> {
  const filesystems = await readFile('/proc/filesystems', 'utf8').catch(() => '');
  if (!/\taufs$/m.test(filesystems)) {
    try {
      const rec = JSON.parse(await readFile(cacheFile, 'utf8')) as ProbeRecord;
      const st = await stat(rec.binary);
      if (st.mtimeMs === rec.mtimeMs && st.size === rec.size && (await access('/dev/fuse').then(() => true, () => false))) {
        return { kind: 'fuse-overlayfs', binary: rec.binary, version: rec.version };
      }
    } catch {
      // no usable record: probe
    }
  }
  const program = await detectMountProgram(scratch);
  if (typeof program !== 'string' && program.kind === 'fuse-overlayfs') {
    const st = await stat(program.binary);
    const rec: ProbeRecord = { binary: program.binary, mtimeMs: st.mtimeMs, size: st.size, version: program.version };
    await writeFileAtomic(cacheFile, JSON.stringify(rec) + '\n');
  }
  return program;
}

/** aufs mount data (moby aufs.go mount): `br:<rw>=rw:<ro>=ro+wh:…`. */
export function aufsMountData(spec: BranchSpec): string {
  return ['br:' + join(spec.home, spec.upper) + '=rw', ...spec.lowers.map((l) => join(spec.home, l) + '=ro+wh')].join(':') + ',dio,xino=/dev/shm/aufs.xino';
}

/** fuse-overlayfs options; branch paths are relative to `home` (ids hold no ':' or ','). */
export function fuseOverlayOptions(spec: BranchSpec): string {
  return `lowerdir=${spec.lowers.join(':')},upperdir=${spec.upper},workdir=${spec.work}`;
}

export async function mountBranches(program: MountProgram, spec: BranchSpec): Promise<void> {
  try {
    if (program.kind === 'aufs') {
      await run('mount', ['-t', 'aufs', '-o', aufsMountData(spec), 'none', spec.target]);
    } else {
      await mkdir(join(spec.home, spec.work), { recursive: true, mode: 0o700 });
      await run(program.binary, ['-o', fuseOverlayOptions(spec), spec.target], { cwd: spec.home });
    }
  } catch (err) {
    const detail = (err as { stderr?: string }).stderr?.trim() || (err as Error).message;
    throw strataError('MOUNT_FAILED', `mounting ${spec.target} with ${program.kind} failed: ${detail}`, { path: spec.target }, err);
  }
}

export async function unmount(target: string): Promise<void> {
  try {
    await run('umount', [target]);
  } catch (err) {
    // unprivileged FUSE mounts are undone by fusermount3
    try {
      await run('fusermount3', ['-u', target]);
    } catch {
      const detail = (err as { stderr?: string }).stderr?.trim() || (err as Error).message;
      throw strataError('MOUNT_FAILED', `unmounting ${target} failed: ${detail}`, { path: target }, err);
    }
  }
}

/** Whether `target` is a mount point, from /proc/self/mountinfo (field 5, octal-escaped). */
export async function isMounted(target: string): Promise<boolean> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  for (const line of info.split('\n')) {
    const field = line.split(' ')[4];
    if (field !== undefined && field.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))) === target) return true;
  }
  return false;
}

/**
 * Mount a three-branch stack in aufs format and check fuse-overlayfs hides what aufs hides:
 * a `.wh.` whiteout (in a lower branch and in the upper), an opaque directory's lower content,
 * and the `.wh..wh.*` housekeeping. Returns a reason if it does not.
 */
export async function probeFuseOverlayfs(program: MountProgram, scratch: string): Promise<string | null> {
  const base = join(scratch, `.probe-${process.pid}-${randomBytes(4).toString('hex')}`);
  const mnt = join(base, 'mnt');
  let mounted = false;
  try {
    for (const d of ['low/opq', 'mid/opq', 'up/.wh..wh.plnk', 'work', 'mnt']) await mkdir(join(base, d), { recursive: true });
    await writeFile(join(base, 'low/gone'), '');
    await writeFile(join(base, 'low/kept'), '');
    await writeFile(join(base, 'low/up-gone'), '');
    await writeFile(join(base, 'low/opq/hidden'), '');
    await writeFile(join(base, 'mid/.wh.gone'), '');
    await writeFile(join(base, 'mid/opq/.wh..wh..opq'), '');
    await writeFile(join(base, 'mid/opq/shown'), '');
    await writeFile(join(base, 'up/.wh.up-gone'), '');
    await writeFile(join(base, 'up/.wh..wh.aufs'), '');
    await mountBranches(program, { home: base, upper: 'up', lowers: ['mid', 'low'], work: 'work', target: mnt });
    mounted = true;
    const top = (await readdir(mnt)).sort().join(',');
    const opq = (await readdir(join(mnt, 'opq'))).sort().join(',');
    if (top !== 'kept,opq' || opq !== 'shown') {
      return `${program.kind === 'fuse-overlayfs' ? `fuse-overlayfs ${program.version}` : 'aufs'} does not honour aufs whiteouts (saw "${top}" and "opq/${opq}")`;
    }
    return null;
  } catch (err) {
    return `could not mount a test stack: ${(err as Error).message}`;
  } finally {
    if (mounted) await unmount(mnt).catch(() => undefined);
    await rm(base, { recursive: true, force: true });
  }
}
