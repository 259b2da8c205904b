import type { Readable } from 'node:stream';
import type { MountOptions, MountUsage } from './mount-refs.js';

/**
 * A storage driver lays layers on disk, as Docker's graphdriver does. It knows nothing of images
 * or tags: the layer store (src/store) ties content identity to the driver's ids.
 *
 * Vocabulary
 * - `id` is the driver's own name for a layer (Docker's cache id, or mount id for a container's
 *   writable layer): 64 hex chars, or `<id>-init` for a container's init layer.
 * - a *layer* is read-only once its diff is applied; a *read-write layer* (createReadWrite) is a
 *   container's writable top. Both can have a `parent`; a layer with children cannot be removed
 *   by the store (the driver itself only refuses while mounted).
 *
 * Lifecycle of an image layer: `create(id, parent)` → `applyDiff(id, parent, tar)` → (children
 * created on it) → `remove(id)`. A container: `createReadWrite(id, imageTop)` → `get(id)` returns
 * a directory the caller changes → `put(id)` → `diff(id, parent)` to commit → `remove(id)`.
 *
 * `get`/`put` are reference-counted across processes: the count is kept on disk, since every CLI
 * call is a new process. The directory returned by `get` is valid until the matching `put`.
 *
 * Diffs: drivers that cannot produce their changes natively are wrapped by NaiveDiff
 * (naive-diff.ts), which compares the mounted layer with its mounted parent.
 */
export interface Driver {
  /** `vfs`, `overlay2`, `aufs`, `devicemapper`, `btrfs`. */
  readonly name: string;
  readonly home: string;
  readonly capabilities: DriverCapabilities;

  create(id: string, parent: string | null, opts?: CreateOptions): Promise<void>;
  createReadWrite(id: string, parent: string | null, opts?: CreateOptions): Promise<void>;
  /** Delete a layer. Refuses (LAYER_MOUNTED) while it is mounted. */
  remove(id: string): Promise<void>;
  /**
   * Mount (first reference) and return the layer's root directory. The reference is this
   * process's, let go if it dies, unless `opts.keep` (MountRefs).
   */
  get(id: string, opts?: MountOptions): Promise<string>;
  /** Release one reference (of the same kind as its get); unmount at zero. */
  put(id: string, opts?: MountOptions): Promise<void>;
  /** The layer's mount references, every process's (rm of a container checks them). */
  mountRefs(id: string): Promise<MountUsage>;
  exists(id: string): Promise<boolean>;
  /** Key/value lines for `strata info`, in display order. */
  status(): Promise<Array<[string, string]>>;
  metadata(id: string): Promise<Record<string, string>>;
  /** Unmount everything this driver mounted, then sweep(): Docker's shutdown. */
  cleanup(): Promise<void>;
  /**
   * Remove what interrupted creates and removes left behind (staging and doomed directories,
   * deferred deletions); never touches a live mount. `strata fsck` calls it holding the root's
   * write lock, under which every create and remove runs. Returns one line per thing removed.
   */
  sweep(): Promise<string[]>;
  /** Every layer id the driver holds (for fsck to find layers no record refers to). */
  layerIds?(): Promise<string[]>;

  /** The layer's changes against `parent` as an OCI layer tar (uncompressed). */
  diff(id: string, parent: string | null): Promise<Readable>;
  /** `docker diff`: what changed against `parent`. */
  changes(id: string, parent: string | null): Promise<Change[]>;
  /** Apply an uncompressed OCI layer tar on top of `parent` into layer `id`; returns its size in bytes. */
  applyDiff(id: string, parent: string | null, tar: Readable): Promise<number>;
  /** Bytes of content changed against `parent`. */
  diffSize(id: string, parent: string | null): Promise<number>;

  /**
   * Optional: a directory that holds exactly the files this layer added or modified, so a layer
   * tar can be reassembled from tar-split without mounting (overlay2 and aufs `diff/<id>`).
   * Without it the store reassembles from `get(id)`.
   */
  diffDirectory?(id: string): Promise<string>;
}

export interface DriverCapabilities {
  /** diff() reproduces the applied tar's file set natively (no tree comparison). */
  nativeDiff: boolean;
  /** Needs root / a kernel feature; the conformance suite skips with `reason` where absent. */
  requiresRoot: boolean;
  /** Layers are plain directories readable without mounting (vfs, overlay2 diff, aufs diff). */
  directoryLayers: boolean;
  /**
   * How deletions are recorded in diffDirectory(): `.wh.` files (aufs) or 0/0 character devices
   * and `trusted.overlay.opaque` (overlay). Lets readers stack diff directories in user space.
   */
  whiteoutFormat?: 'aufs' | 'overlay';
}

export interface CreateOptions {
  /** Docker's `--storage-opt size=…` (bytes), where the driver supports quotas. */
  size?: number;
  /** Driver-specific key=value options for this layer. */
  storageOpt?: Record<string, string>;
}

export type ChangeKind = 'A' | 'C' | 'D';

export interface Change {
  /** Absolute path inside the layer, `/etc/passwd`. */
  path: string;
  kind: ChangeKind;
}

/** Options a driver is opened with: its home directory and `--storage-opt` pairs. */
export interface DriverOptions {
  /** The data root; the driver keeps its files in `<root>/<driver name>`. */
  root: string;
  options: Record<string, string>;
}

export type DriverFactory = (opts: DriverOptions) => Promise<Driver>;
