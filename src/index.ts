/**
 * Strata's library API. The `strata` CLI is a thin shell over these.
 *
 * - `Strata`: images, containers, diff/commit/export, info, fsck on a data root (src/strata.ts)
 * - `loadImages` / `saveImages`: docker-archive and OCI archives (src/image/)
 * - drivers: `openDriver` and the `Driver` interface, for direct use of a storage driver
 * - archives: layer tar apply/diff with whiteouts, tar-split (src/archive/)
 * - `UnionFs`: a user-space union filesystem over layer directories (src/union/)
 * - thin pools: `Pool`, `ThinDevice` (src/thin/)
 * - errors: `StrataError` with stable `code`s
 */
export { Strata, EMPTY_LAYER_DIFF_ID, type OpenOptions, type ImageSummary, type ContainerSummary, type FsckReport } from './strata.js';
export { loadImages, type LoadedImage } from './image/load.js';
export { saveImages, type SaveFormat } from './image/save.js';
export type { Driver, DriverCapabilities, DriverOptions, CreateOptions, Change, ChangeKind } from './drivers/driver.js';
export { openDriver, driverNames, chooseDefaultDriver } from './drivers/registry.js';
export { type Digest, chainId, chainIds, sha256 } from './store/digest.js';
export { parseReference, formatReference, type Reference } from './store/reference.js';
export type { LayerInfo, MountInfo } from './store/layer-store.js';
export type { ImageConfig, HistoryEntry } from './store/image-store.js';
export { applyLayerTar, diffTar, tarDirectory, changes, openLayerStream, readTar, TarWriter, TarSplitRecorder, assembleTar } from './archive/index.js';
export { UnionFs, type UnionOptions } from './union/index.js';
export { Pool, ThinDevice, type PoolOptions } from './thin/index.js';
export { StrataError, isStrataError, ERROR_CODES, type ErrorCode, type ErrorCategory } from './errors.js';
