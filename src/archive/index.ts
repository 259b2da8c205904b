/**
 * Layer archives: tar codec, compression, tar-split, apply with whiteouts, diffs. Knows tar and
 * the OCI whiteout rules, nothing of drivers (shared/DESIGN.md).
 */
export { crc64, Crc64 } from './crc64.js';
export {
  BLOCK, TYPE, decodeHeader, encodeHeader, rawFileBlocks, isHeaderOnlyType, blockPadding, resealHeader, withChecksum,
  type TarHeader, type HeaderInput, type TarFormat,
} from './tar/header.js';
export { parsePaxRecords, encodePaxRecords, formatPaxRecord, type PaxRecords } from './tar/pax.js';
export { readTar, type TarEntry, type ReadTarOptions } from './tar/reader.js';
export { TarWriter, buildTar } from './tar/writer.js';
export { openLayerStream, type LayerStreamOptions } from './compression.js';
export { detectCompression, type Compression } from './magic.js';
export { FileChunks, openFileInput } from './file-chunks.js';
export { TappedChunks, isTappable, type ChunkTap, type TappableChunks } from './tapped-chunks.js';
export { recordTarSplit } from './tar-split-tap.js';
export {
  TarSplitRecorder, assembleTar, assembledTarSize, encodeTarSplitEntry, decodeTarSplitEntry,
  type TarSplitEntry, type TarSplitResult, type TarSplitRecorderOptions, type OpenFile,
} from './tar-split.js';
export { applyLayerTar, type ApplyOptions, type ApplyResult, type WhiteoutMode } from './apply.js';
export { changes, changesFromUpper, sortChanges, type Change, type ChangeKind, type UnionFormat } from './changes.js';
export { diffTar, tarUpperDir, tarDirectory } from './diff.js';
export { goClean, entryPath, RootResolver } from './paths.js';
export {
  classifyWhiteout, whiteoutName, opaqueName,
  WHITEOUT_PREFIX, WHITEOUT_META_PREFIX, WHITEOUT_OPAQUE, WHITEOUT_LINK_DIR, type WhiteoutKind,
} from './whiteouts.js';
