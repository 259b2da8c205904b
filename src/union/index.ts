export { UnionFs, type UnionOptions } from './union-fs.js';
export { UnionDirent } from './dirent.js';
export { createHousekeeping } from './housekeeping.js';
export {
  WHITEOUT_PREFIX, WHITEOUT_META_PREFIX, OPAQUE_MARKER, PLINK_DIR, AUFS_MARKER, ORPH_DIR,
  whiteoutName, whitedOutName, isReservedName, isMetaName, isHousekeeping,
  classifyEntries, classifyOverlayEntries, mergeListings, lookupName,
  type EntryType, type DirListing, type Probe, type LookupResult, type WhiteoutFormat,
} from './whiteout.js';
export { errnoError, type UnionErrnoCode } from './errno.js';
export { formatMode, formatLong, listPath, catPath, type ListEntry } from './image-view.js';
