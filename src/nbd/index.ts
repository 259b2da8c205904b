/**
 * Strata's NBD server: block exports over the NBD protocol (fixed newstyle, structured replies,
 * base:allocation), a file export, a thin-device export, and the active-devices service that
 * serves a data root's thin devices at `<root>/mapper/<name>.sock`.
 */
export { NbdServer, type NbdServerOptions } from './server.js';
export type { NbdExport, NbdExtent, WriteOptions, ZeroOptions } from './nbd-export.js';
export { FileExport, type FileExportOptions } from './file-export.js';
export { ThinExport, type ThinExportOptions } from './thin-export.js';
export { NbdService, type ServiceOptions } from './service.js';
export { ensureService, stopService, servicePid, callService, service } from './service-client.js';
export { servicePaths, type ServicePaths } from './service-paths.js';
export type { ActiveDevice, SyncResult, ServiceRequest } from './service-protocol.js';
