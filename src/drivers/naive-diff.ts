import type { Readable } from 'node:stream';
import { lstat } from 'node:fs/promises';
import { applyLayerTar, changes as compareTrees, diffTar } from '../archive/index.js';
import type { Change } from './driver.js';
import { releaseAfter } from '../util/release-after.js';

/**
 * Diffing for drivers without a native differ (moby's NaiveDiffDriver): mount the layer and its
 * parent, compare the trees. Each function takes the driver's own get/put, so a driver composes
 * these instead of inheriting them.
 */
export interface Mounter {
  get(id: string): Promise<string>;
  put(id: string): Promise<void>;
}

async function withMounts<T>(m: Mounter, id: string, parent: string | null, fn: (dir: string, parentDir: string | null) => Promise<T>): Promise<T> {
  const dir = await m.get(id);
  try {
    const parentDir = parent ? await m.get(parent) : null;
    try {
      return await fn(dir, parentDir);
    } finally {
      if (parent) await m.put(parent);
    }
  } finally {
    await m.put(id);
  }
}

export async function naiveChanges(m: Mounter, id: string, parent: string | null): Promise<Change[]> {
  return withMounts(m, id, parent, (dir, parentDir) => compareTrees(dir, parentDir));
}

/** The diff tar; the mounts are held until the stream ends (it ends once they are released), fails or is destroyed. */
export async function naiveDiff(m: Mounter, id: string, parent: string | null): Promise<Readable> {
  const dir = await m.get(id);
  let parentDir: string | null = null;
  try {
    parentDir = parent ? await m.get(parent) : null;
  } catch (err) {
    await m.put(id);
    throw err;
  }
  return releaseAfter(diffTar(dir, parentDir), async () => {
    try {
      if (parent) await m.put(parent);
    } finally {
      await m.put(id);
    }
  });
}

/** Apply onto the mounted layer, which must already hold a full view of `parent` (vfs, devicemapper). */
export async function naiveApplyDiff(m: Mounter, id: string, tar: Readable): Promise<number> {
  const dir = await m.get(id);
  try {
    const { size } = await applyLayerTar(dir, tar, { whiteouts: 'apply' });
    return size;
  } finally {
    await m.put(id);
  }
}

/** Bytes of regular-file content added or changed, as moby's naive DiffSize. */
export async function naiveDiffSize(m: Mounter, id: string, parent: string | null): Promise<number> {
  return withMounts(m, id, parent, async (dir, parentDir) => sizeOfChanges(dir, await compareTrees(dir, parentDir)));
}

export async function sizeOfChanges(dir: string, list: Change[]): Promise<number> {
  let total = 0;
  for (const c of list) {
    if (c.kind === 'D') continue;
    const st = await lstat(dir + c.path).catch(() => null);
    if (st?.isFile()) total += st.size;
  }
  return total;
}
