// Declarative filesystem fixtures and field-by-field tree comparison (in the manner of
// continuity's fstest), shared by driver, store and archive tests.
import { mkdir, writeFile, symlink, link, chmod, lchown, lutimes, rm, readdir, lstat, readlink, readFile, mkdtemp } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join, dirname } from 'node:path';
import { tmpdir } from 'node:os';
import { spawn } from 'node:child_process';
import { readXattrs, setXattr } from '../../src/util/xattr.js';

export type FsOp =
  | { op: 'file'; path: string; content?: string | Buffer; mode?: number; uid?: number; gid?: number; mtime?: number }
  | { op: 'dir'; path: string; mode?: number; uid?: number; gid?: number }
  | { op: 'symlink'; path: string; target: string }
  | { op: 'hardlink'; path: string; target: string }
  | { op: 'fifo'; path: string }
  | { op: 'chardev'; path: string; major: number; minor: number }
  | { op: 'xattr'; path: string; name: string; value: string }
  | { op: 'remove'; path: string }
  | { op: 'chmod'; path: string; mode: number };

export const file = (path: string, content: string | Buffer = '', mode = 0o644): FsOp => ({ op: 'file', path, content, mode });
export const dir = (path: string, mode = 0o755): FsOp => ({ op: 'dir', path, mode });
export const sym = (path: string, target: string): FsOp => ({ op: 'symlink', path, target });
export const hardlink = (path: string, target: string): FsOp => ({ op: 'hardlink', path, target });
export const xattr = (path: string, name: string, value: string): FsOp => ({ op: 'xattr', path, name, value });
export const remove = (path: string): FsOp => ({ op: 'remove', path });
/** An OCI whiteout for `path` (an empty `.wh.<name>` file beside it). */
export const whiteout = (path: string): FsOp => {
  const slash = path.lastIndexOf('/');
  return file(`${path.slice(0, slash + 1)}.wh.${path.slice(slash + 1)}`, '', 0o600);
};
/** An OCI opaque marker inside directory `path`. */
export const opaque = (path: string): FsOp => file(`${path}/.wh..wh..opq`, '', 0o600);

const FIXED_MTIME = 1_700_000_000;

export async function applyOps(root: string, ops: FsOp[]): Promise<void> {
  for (const o of ops) {
    const p = join(root, o.path);
    if (o.op !== 'remove' && o.op !== 'xattr' && o.op !== 'chmod') await mkdir(dirname(p), { recursive: true });
    switch (o.op) {
      case 'file':
        await writeFile(p, o.content ?? '');
        await chmod(p, o.mode ?? 0o644);
        if (o.uid !== undefined) await lchown(p, o.uid, o.gid ?? o.uid);
        await lutimes(p, o.mtime ?? FIXED_MTIME, o.mtime ?? FIXED_MTIME);
        break;
      case 'dir':
        await mkdir(p, { recursive: true });
        await chmod(p, o.mode ?? 0o755);
        if (o.uid !== undefined) await lchown(p, o.uid, o.gid ?? o.uid);
        break;
      case 'symlink':
        await symlink(o.target, p);
        await lutimes(p, FIXED_MTIME, FIXED_MTIME);
        break;
      case 'hardlink':
        await link(join(root, o.target), p);
        break;
      case 'fifo':
        await run('mkfifo', [p]);
        break;
      case 'chardev':
        await run('mknod', [p, 'c', String(o.major), String(o.minor)]);
        break;
      case 'xattr':
        await setXattr(p, o.name, o.value);
        break;
      case 'remove':
        await rm(p, { recursive: true, force: true });
        break;
      case 'chmod':
        await chmod(p, o.mode);
        break;
    }
  }
  await settleDirTimes(root);
}

/** Give every directory a fixed mtime so trees built at different moments compare equal. */
async function settleDirTimes(root: string): Promise<void> {
  const entries = await readdir(root, { withFileTypes: true });
  for (const e of entries) if (e.isDirectory()) await settleDirTimes(join(root, e.name));
  await lutimes(root, FIXED_MTIME, FIXED_MTIME);
}

export interface EntryInfo {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size?: number;
  sha256?: string;
  target?: string;
  rdev?: number;
  xattrs: Record<string, string>;
  mtime?: number;
  /** Index of the hardlink group (paths sharing an inode), for regular files with nlink > 1. */
  linkGroup?: string;
}

export interface SnapshotOptions {
  /** Include mtimes of non-directories (default true). */
  mtimes?: boolean;
  /** Names to leave out anywhere (e.g. overlay work dirs). */
  ignore?: (relPath: string) => boolean;
}

/** A map from relative path to everything a layer must preserve about it. */
export async function snapshotTree(root: string, options: SnapshotOptions = {}): Promise<Record<string, EntryInfo>> {
  const out: Record<string, EntryInfo> = {};
  const inodes = new Map<string, string>();
  async function walk(rel: string): Promise<void> {
    const names = (await readdir(join(root, rel))).sort();
    for (const name of names) {
      const r = rel ? `${rel}/${name}` : name;
      if (options.ignore?.(r)) continue;
      const p = join(root, r);
      const st = await lstat(p);
      const xattrs: Record<string, string> = {};
      for (const [k, v] of await readXattrs(p)) if (!k.startsWith('security.')) xattrs[k] = v.toString('base64');
      const info: EntryInfo = { type: typeOf(st.mode), mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, xattrs };
      if (st.isFile()) {
        info.size = st.size;
        info.sha256 = createHash('sha256').update(await readFile(p)).digest('hex');
        if (st.nlink > 1) {
          const key = `${st.dev}:${st.ino}`;
          if (!inodes.has(key)) inodes.set(key, r);
          info.linkGroup = inodes.get(key);
        }
      }
      if (st.isSymbolicLink()) info.target = await readlink(p);
      if (st.isCharacterDevice() || st.isBlockDevice()) info.rdev = st.rdev;
      if (options.mtimes !== false && !st.isDirectory()) info.mtime = Math.floor(st.mtimeMs / 1000);
      out[r] = info;
      if (st.isDirectory()) await walk(r);
    }
  }
  await walk('');
  return out;
}

function typeOf(mode: number): string {
  switch (mode & 0o170000) {
    case 0o100000: return 'file';
    case 0o040000: return 'dir';
    case 0o120000: return 'symlink';
    case 0o020000: return 'chardev';
    case 0o060000: return 'blockdev';
    case 0o010000: return 'fifo';
    case 0o140000: return 'socket';
    default: return 'unknown';
  }
}

export async function tempDir(prefix = 'strata-test-'): Promise<string> {
  return mkdtemp(join(process.env.STRATA_TEST_TMP ?? tmpdir(), prefix));
}

export function run(cmd: string, args: string[], input?: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve(Buffer.concat(out));
      else reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${Buffer.concat(err).toString().trim()}`));
    });
    child.stdin.end(input);
  });
}

/** A layer tar of a fixture directory, made by GNU tar (a real producer, not our own writer). */
export async function tarOf(dirPath: string): Promise<Buffer> {
  return run('tar', ['--format=posix', '--xattrs', '--xattrs-include=*', '--numeric-owner', '--sort=name',
    '--pax-option=delete=atime,delete=ctime', '-C', dirPath, '-cf', '-', '.']);
}

/** Build a fixture tree from ops in a temp dir and return its tar. */
export async function layerTar(ops: FsOp[]): Promise<Buffer> {
  const d = await tempDir('strata-fixture-');
  try {
    await applyOps(d, ops);
    return await tarOf(d);
  } finally {
    await rm(d, { recursive: true, force: true });
  }
}

export const isRoot = process.getuid?.() === 0;
