/**
 * aufs: Docker's first layering driver, laid out exactly as moby's (daemon/graphdriver/aufs).
 *
 *   <root>/aufs/
 *     diff/<id>/            the layer's own files (an aufs branch): `.wh.<name>` whiteouts,
 *                           `.wh..wh..opq` opaque markers, and aufs' housekeeping in its root:
 *                           `.wh..wh.aufs` (file), `.wh..wh.plnk/`, `.wh..wh.orph/`
 *     layers/<id>           ancestor ids, nearest parent first, one per line (empty: base layer)
 *     mnt/<id>/             the merged view while get() holds it
 *     work/<id>/            fuse-overlayfs' work directory (not in moby's layout: kernel aufs
 *                           needs none)
 *     mountrefs/<id>        get/put reference counts, kept on disk for short-lived CLI processes
 *     dirty/<id>            mounted since last normalised (see normalize)
 *
 * Mounting: kernel aufs where present, else fuse-overlayfs, which honours aufs' whiteouts in every
 * branch (probed, not assumed). As root fuse-overlayfs records deletions as 0/0 char devices and
 * opaque directories as xattrs; the last put (and any diff) turns those back into aufs' files, so
 * a diff directory is always an OCI layer in aufs form and `diff` streams it without comparing
 * trees.
 */
import { mkdir, readFile, readdir, rename, rm, rmdir, lstat, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import type { Readable } from 'node:stream';
import type { Change, CreateOptions, Driver, DriverCapabilities, DriverOptions } from '../driver.js';
import { isErrno, strataError } from '../../errors.js';
import { writeFileAtomic, fsyncDir } from '../../util/atomic.js';
import { withFileLock } from '../../util/file-lock.js';
import { MountRefs, holderOf, type MountOptions, type MountUsage } from '../mount-refs.js';
import { checkLayerId } from '../layer-id.js';
import { layerIdsIn, sweepLeftovers } from '../leftovers.js';
import { naiveChanges, naiveDiff, naiveDiffSize } from '../naive-diff.js';
import { applyLayerTar, changesFromUpper, tarUpperDir } from '../../archive/index.js';
import { UnionFs, createHousekeeping, isHousekeeping } from '../../union/index.js';
import { childLayers, formatLayers, parseLayers } from './layers-file.js';
import { cachedMountProgram, detectMountProgram, isMounted, mountBranches, unmount, type BranchSpec, type MountProgram } from './mount-program.js';
import { normalizeUpper } from './upper-normalize.js';
import { backingFsName } from '../backing-fs.js';
import { pathExists } from '../../util/path-exists.js';

export class AufsDriver implements Driver {
  readonly name = 'aufs';
  readonly home: string;
  readonly capabilities: DriverCapabilities = { nativeDiff: true, requiresRoot: true, directoryLayers: true, whiteoutFormat: 'aufs' };
  private readonly refs: MountRefs;
  private program: Promise<MountProgram | string> | null = null;

  constructor(opts: DriverOptions) {
    // moby's aufs driver takes no storage options either
    const unknown = Object.keys(opts.options)[0];
    if (unknown !== undefined) throw strataError('INVALID_OPTION', `aufs: unknown option ${unknown}`);
    this.home = join(opts.root, 'aufs');
    this.refs = new MountRefs(this.home);
  }

  private diffDir(id: string): string {
    checkLayerId(id);
    return join(this.home, 'diff', id);
  }

  private mntDir(id: string): string {
    checkLayerId(id);
    return join(this.home, 'mnt', id);
  }

  private layersFile(id: string): string {
    checkLayerId(id);
    return join(this.home, 'layers', id);
  }

  /** The mount program, detected once per process (null reason = usable). */
  async mountProgram(): Promise<MountProgram | string> {
    this.program ??= (async () => {
      await mkdir(this.home, { recursive: true, mode: 0o700 });
      return cachedMountProgram(this.home, join(this.home, 'mount-program.json'));
    })();
    return this.program;
  }

  /** Ancestors of `id`, nearest first (LAYER_NOT_FOUND if `id` does not exist). */
  async ancestors(id: string): Promise<string[]> {
    try {
      return parseLayers(await readFile(this.layersFile(id), 'utf8'));
    } catch (err) {
      if (isErrno(err, 'ENOENT')) throw strataError('LAYER_NOT_FOUND', `layer ${id} not found`, { id });
      throw err;
    }
  }

  exists(id: string): Promise<boolean> {
    return pathExists(this.layersFile(id));
  }

  async create(id: string, parent: string | null, _opts?: CreateOptions): Promise<void> {
    const diff = this.diffDir(id);
    if (await this.exists(id)) throw strataError('LAYER_EXISTS', `layer ${id} already exists`, { id });
    if (parent !== null && !(await this.exists(parent))) throw strataError('LAYER_NOT_FOUND', `parent layer ${parent} not found`, { id: parent });
    const parentAncestors = parent === null ? [] : await this.ancestors(parent);
    for (const d of ['diff', 'mnt', 'layers']) await mkdir(join(this.home, d), { recursive: true, mode: 0o700 });
    // directories first, the layers file last: it is what makes the layer exist
    await rm(diff, { recursive: true, force: true });
    await mkdir(diff, { mode: 0o755 });
    await createHousekeeping(diff);
    await mkdir(this.mntDir(id), { recursive: true, mode: 0o755 });
    await writeFileAtomic(this.layersFile(id), formatLayers(childLayers(parent, parentAncestors)));
  }

  createReadWrite(id: string, parent: string | null, opts?: CreateOptions): Promise<void> {
    return this.create(id, parent, opts);
  }

  async remove(id: string): Promise<void> {
    if (!(await this.exists(id))) throw strataError('LAYER_NOT_FOUND', `layer ${id} not found`, { id });
    if ((await this.refs.count(id)) > 0 || (await isMounted(this.mntDir(id)))) {
      throw strataError('LAYER_MOUNTED', `layer ${id} is mounted`, { id });
    }
    // the layers file goes first (the layer stops existing), then the data, renamed aside so a
    // crash leaves a `.rm-*` directory for cleanup rather than a torn diff under a live id
    await rm(this.layersFile(id), { force: true });
    await fsyncDir(join(this.home, 'layers'));
    const doomed = join(this.home, 'diff', `.rm-${id}-${randomBytes(4).toString('hex')}`);
    await rename(this.diffDir(id), doomed).catch((err: unknown) => {
      if (!isErrno(err, 'ENOENT')) throw err;
    });
    await rm(doomed, { recursive: true, force: true });
    await rmdir(this.mntDir(id)).catch(() => undefined);
    await rm(join(this.home, 'work', id), { recursive: true, force: true });
    await rm(join(this.home, 'dirty', id), { force: true });
    await this.refs.forget(id);
  }

  async get(id: string, opts?: MountOptions): Promise<string> {
    const ancestors = await this.ancestors(id);
    await mkdir(join(this.home, 'locks'), { recursive: true, mode: 0o700 });
    const target = this.mntDir(id);
    const program = await this.mountProgram();
    if (typeof program === 'string') throw strataError('DRIVER_NOT_SUPPORTED', `aufs cannot mount here: ${program}`, { id });
    const spec = async (): Promise<BranchSpec> => ({
      home: this.home,
      upper: join('diff', id),
      // a base layer still needs one lower branch for fuse-overlayfs: an empty directory
      lowers: ancestors.length > 0 ? ancestors.map((a) => join('diff', a)) : [await this.emptyLower()],
      work: join('work', id),
      target,
    });
    await this.refs.change(id, 1, holderOf(opts), async () => {
      await mkdir(target, { recursive: true, mode: 0o755 });
      if (await isMounted(target)) return; // a mount that outlived its count (crash): reuse it
      await this.normalize(id, ancestors);
      await this.markDirty(id);
      await mountBranches(program, await spec());
    });
    // a count that outlived its mount (reboot, or the FUSE daemon died): mount again
    if (!(await this.healthy(target))) {
      await withFileLock(join(this.home, 'locks', `mount-${id}`), async () => {
        if (await this.healthy(target)) return;
        // a dead FUSE mount still occupies the mount point (ENOTCONN) until it is unmounted
        if (await isMounted(target)) await unmount(target).catch(() => undefined);
        await this.markDirty(id);
        await mountBranches(program, await spec());
      });
    }
    return target;
  }

  private async healthy(target: string): Promise<boolean> {
    // statfs reaches the FUSE daemon; a stat of the root may be answered from the kernel cache
    return (await isMounted(target)) && (await statfs(target).then(() => true, () => false));
  }

  async put(id: string, opts?: MountOptions): Promise<void> {
    checkLayerId(id);
    await this.refs.change(id, -1, holderOf(opts), async () => {
      const target = this.mntDir(id);
      if (await isMounted(target)) await unmount(target);
      await this.normalize(id);
    });
  }

  mountRefs(id: string): Promise<MountUsage> {
    return this.refs.usage(id);
  }

  private async emptyLower(): Promise<string> {
    await mkdir(join(this.home, 'empty'), { recursive: true, mode: 0o755 });
    return 'empty';
  }

  /**
   * `dirty/<id>` says the mount program may have written to diff/<id> since it was last
   * normalised: set before every mount, cleared by a normalisation after the unmount. Layers that
   * were only ever filled by applyDiff are never walked.
   */
  private async markDirty(id: string): Promise<void> {
    await mkdir(join(this.home, 'dirty'), { recursive: true, mode: 0o700 });
    await writeFileAtomic(join(this.home, 'dirty', id), '');
  }

  /**
   * Rewrite what fuse-overlayfs left in diff/<id> into aufs' convention (see upper-normalize.ts).
   * Serialised per layer with a flock; a no-op on a layer that was never mounted.
   */
  async normalize(id: string, known?: string[]): Promise<void> {
    const marker = join(this.home, 'dirty', id);
    if (!(await lstat(marker).then(() => true, () => false))) return;
    const ancestors = known ?? (await this.ancestors(id));
    await mkdir(join(this.home, 'locks'), { recursive: true, mode: 0o700 });
    await withFileLock(join(this.home, 'locks', id), async () => {
      const lowers = ancestors.length === 0 ? null : await UnionFs.open({ lowers: ancestors.map((a) => this.diffDir(a)).reverse() });
      await normalizeUpper(this.diffDir(id), async (rel) => (await lowers?.lstat(rel).catch(() => null))?.isDirectory() ?? false);
      // still mounted: the mount program may write again, so the marker stays
      if (!(await isMounted(this.mntDir(id)))) await rm(marker, { force: true });
    });
  }


  async status(): Promise<Array<[string, string]>> {
    await mkdir(this.home, { recursive: true });
    const program = await this.mountProgram();
    const fs = await statfs(this.home);
    const layers = await readdir(join(this.home, 'layers')).catch(() => [] as string[]);
    return [
      ['Root Dir', this.home],
      ['Backing Filesystem', backingFsName(fs.type)],
      ['Dirs', String(layers.filter((n) => !n.startsWith('.')).length)],
      ['Dirperm1 Supported', 'false'],
      ['Mount Program', typeof program === 'string' ? `none (${program})` : program.kind === 'aufs' ? 'kernel aufs' : `fuse-overlayfs ${program.version}`],
    ];
  }

  async metadata(id: string): Promise<Record<string, string>> {
    const ancestors = await this.ancestors(id);
    return { DiffDir: this.diffDir(id), MountPoint: this.mntDir(id), Layers: ancestors.join(':') };
  }

  /** Unmount every layer this driver mounted and bring its branch back to aufs form. */
  async cleanup(): Promise<void> {
    const names = await readdir(join(this.home, 'mnt')).catch(() => [] as string[]);
    for (const id of names) {
      const target = join(this.home, 'mnt', id);
      if (await isMounted(target)) await unmount(target);
      if (await this.exists(id)) await this.normalize(id);
      await this.refs.forget(id);
    }
    await this.sweep();
  }

  layerIds(): Promise<string[]> {
    return layerIdsIn(join(this.home, 'diff'));
  }

  sweep(): Promise<string[]> {
    return sweepLeftovers(join(this.home, 'diff'), ['.rm-']);
  }

  /** True when `parent` is the layer's direct parent: then diff/<id> is exactly the change set. */
  private async isDirectParent(id: string, parent: string | null): Promise<boolean> {
    const ancestors = await this.ancestors(id);
    return (ancestors[0] ?? null) === parent;
  }

  async diff(id: string, parent: string | null): Promise<Readable> {
    if (!(await this.isDirectParent(id, parent))) return naiveDiff(this, id, parent);
    await this.normalize(id);
    return tarUpperDir(this.diffDir(id), 'aufs');
  }

  async changes(id: string, parent: string | null): Promise<Change[]> {
    if (!(await this.isDirectParent(id, parent))) return naiveChanges(this, id, parent);
    await this.normalize(id);
    const ancestors = await this.ancestors(id);
    return changesFromUpper(this.diffDir(id), 'aufs', { lowerDirs: ancestors.map((a) => this.diffDir(a)) });
  }

  async applyDiff(id: string, _parent: string | null, tar: Readable): Promise<number> {
    const ancestors = await this.ancestors(id);
    const { size } = await applyLayerTar(this.diffDir(id), tar, { whiteouts: 'aufs', lowerDirs: ancestors.map((a) => this.diffDir(a)) });
    return size;
  }

  /** As moby's aufs DiffSize: the bytes of diff/<id> (housekeeping excluded, each inode once). */
  async diffSize(id: string, parent: string | null): Promise<number> {
    if (!(await this.isDirectParent(id, parent))) return naiveDiffSize(this, id, parent);
    await this.normalize(id);
    const seen = new Set<number>();
    let total = 0;
    const walk = async (dir: string, root: boolean): Promise<void> => {
      for (const e of await readdir(dir, { withFileTypes: true })) {
        if (root && isHousekeeping(e.name)) continue;
        const p = join(dir, e.name);
        if (e.isDirectory()) await walk(p, false);
        else if (e.isFile()) {
          const st = await lstat(p);
          if (!seen.has(st.ino)) total += st.size;
          seen.add(st.ino);
        }
      }
    };
    await walk(this.diffDir(id), true);
    return total;
  }

  async diffDirectory(id: string): Promise<string> {
    await this.normalize(id);
    return this.diffDir(id);
  }
}

export async function createAufsDriver(opts: DriverOptions): Promise<Driver> {
  return new AufsDriver(opts);
}

/** Registry probe: why aufs cannot mount here, or null. Tries a throw-away stack in the temp dir. */
export async function probeAufs(_root: string): Promise<string | null> {
  const program = await detectMountProgram(tmpdir());
  return typeof program === 'string' ? program : null;
}
