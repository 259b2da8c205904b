/**
 * Strata's user-space dm-thin: a thin pool whose metadata is byte-compatible with Linux dm-thin
 * (thin_check / thin_dump / thin_restore read and write it). See pool.ts for the lifecycle.
 */
export { Pool, type PoolOptions, type PoolMode } from './pool.js';
export { ThinDevice, type Extent } from './thin-device.js';
export { type PoolFeatures, parseFeatures, featureWords } from './features.js';
export { parseMessage, formatMessage, type PoolMessage } from './message.js';
export { formatPoolStatus, parsePoolStatus, type PoolStatus, type PoolStatusFields, type ThinStatus } from './status.js';
export { parseTable, formatTable, type TableLine, type ThinPoolTable, type ThinTable } from './table.js';
export { type BlockDevice, FileBlockDevice, MemoryBlockDevice, CrashController, SimulatedCrash } from './block-device.js';
export { ThinMetadata, type DeviceDetails, type Mapping } from './metadata.js';
