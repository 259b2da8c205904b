import { lstatSync, mkdirSync, symlinkSync, writeFileSync, type Stats } from 'node:fs';
import { join } from 'node:path';
import { isErrno } from '../errors.js';
import { copyMetadata } from '../union/copy-up.js';
import { UnionFs, type WhiteoutFormat } from '../union/index.js';

/**
 * What Docker's initlayer.Setup puts in a container's `<mount-id>-init` layer: mount points and
 * files the runtime bind-mounts over. Entries the image already has are left alone. Keeping the
 * init layer lets dockerd adopt Strata's containers, and keeps these files out of `diff`.
 */
const INIT_ENTRIES: Array<[path: string, kind: 'dir' | 'file' | 'symlink', target?: string]> = [
  ['dev/pts', 'dir'],
  ['dev/shm', 'dir'],
  ['proc', 'dir'],
  ['sys', 'dir'],
  ['.dockerenv', 'file'],
  ['etc/resolv.conf', 'file'],
  ['etc/hosts', 'file'],
  ['etc/hostname', 'file'],
  ['dev/console', 'file'],
  ['etc/mtab', 'symlink', '/proc/mounts'],
];

/** Where the init layer's entries are written, and how the image looks beneath them. */
export interface InitLayerTarget {
  /** The directory that receives the entries. */
  readonly dir: string;
  /** The entry at `rel` as the container will see it (lstat: links not followed), or null. */
  lookup(rel: string): Promise<Stats | null>;
  /**
   * Make sure directory `rel` exists in `dir` (its parent does), given how the view has it (a
   * directory or nothing); one the image has keeps its metadata.
   */
  ensureDir(rel: string, inView: Stats | null): Promise<void>;
}

/**
 * Fill the init layer. Unlike Docker, which stats through symlinks, an entry whose parent in the
 * image is not a directory (an `/etc` symlink, say) is skipped: following a link the image planted
 * could create files outside the container's filesystem.
 */
export async function setupInitLayer(target: InitLayerTarget): Promise<void> {
  // entries under different top-level names touch disjoint paths: fill those groups in parallel
  const groups = new Map<string, typeof INIT_ENTRIES>();
  for (const entry of INIT_ENTRIES) {
    const top = entry[0].split('/')[0]!;
    groups.set(top, [...(groups.get(top) ?? []), entry]);
  }
  await Promise.all([...groups.values()].map(async (entries) => {
    for (const entry of entries) await addEntry(target, ...entry);
  }));
}

async function addEntry(target: InitLayerTarget, path: string, kind: 'dir' | 'file' | 'symlink', linkTarget?: string): Promise<void> {
  const parts = path.split('/');
  for (let i = 1; i < parts.length; i++) {
    const ancestor = parts.slice(0, i).join('/');
    const st = await target.lookup(ancestor);
    if (st !== null && !st.isDirectory()) return;
    await target.ensureDir(ancestor, st);
  }
  if ((await target.lookup(path)) !== null) return;
  const full = join(target.dir, path);
  if (kind === 'dir') mkdirSync(full, { mode: 0o755 });
  else if (kind === 'file') writeFileSync(full, '', { mode: 0o755 });
  else symlinkSync(linkTarget!, full);
}

// The init layer's calls are synchronous: tiny metadata calls on every create (util/atomic.ts says why).
function lstatOrNull(path: string): Stats | null {
  try {
    return lstatSync(path, { throwIfNoEntry: false }) ?? null;
  } catch (err) {
    if (isErrno(err, 'ENOTDIR')) return null;
    throw err;
  }
}

/** The init layer's root as mounted: the kernel (or FUSE) copies directories up as needed. */
export function mountedInitTarget(root: string): InitLayerTarget {
  return {
    dir: root,
    lookup: async (rel) => lstatOrNull(join(root, rel)),
    ensureDir: async (rel, inView) => {
      if (inView === null) mkdirSync(join(root, rel), { mode: 0o755 });
    },
  };
}

/**
 * The init layer's own diff directory, unmounted, over the image's diff directories (base
 * first) in the driver's whiteout format. Directories are made as a copy-up would make them,
 * with the image's owner, mode, xattrs and times, so the merged view is the same as if the
 * entries had been written through a mount, without the cost of mounting.
 */
export async function diffDirInitTarget(diffDir: string, imageLayers: string[], format: WhiteoutFormat): Promise<InitLayerTarget> {
  const image = imageLayers.length > 0 ? await UnionFs.open({ lowers: imageLayers, format }) : null;
  const inImage = async (rel: string): Promise<Stats | null> => {
    if (image === null) return null;
    try {
      return await image.lstat(rel);
    } catch (err) {
      if (isErrno(err, 'ENOENT', 'ENOTDIR')) return null;
      throw err;
    }
  };
  return {
    dir: diffDir,
    // only ever adds entries where the image has none, or directories where it has directories
    lookup: async (rel) => lstatOrNull(join(diffDir, rel)) ?? inImage(rel),
    ensureDir: async (rel, inView) => {
      const dst = join(diffDir, rel);
      if (lstatOrNull(dst) !== null) return;
      // not in the diff dir yet, so what the view found is the image's own directory (or nothing)
      mkdirSync(dst, { mode: 0o755 });
      if (inView?.isDirectory() === true) await copyMetadata(await image!.backingPath(rel), inView, dst);
    },
  };
}
