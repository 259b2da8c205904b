import { strataError } from '../../errors.js';
import { parseSize } from '../../util/units.js';

/**
 * The `dm.*` storage options, parsed as moby's NewDeviceSet does (keys case-insensitive, sizes
 * in binary units, unknown keys refused). Pure: no I/O, so every rule is unit-tested.
 */
export interface DmOptions {
  /** Virtual size of the base device (max rootfs size); default 10G. */
  baseSize: number;
  /** Whether dm.basesize was given (only then may it grow an existing base device). */
  baseSizeExplicit: boolean;
  loopDataSize: number;
  loopMetadataSize: number;
  /** Pool data block size in bytes (64K default; a multiple of 64K from 64K to 1G). */
  blockSize: number;
  fs: 'ext4' | 'xfs';
  mkfsArgs: string[];
  mountOptions: string[];
  blkDiscard: boolean;
  /** Files (or block devices) for the pool instead of the loopback files. */
  dataDev: string | null;
  metadataDev: string | null;
  /** Percent of data and metadata that must stay free for a new device (10 default). */
  minFreeSpacePercent: number;
  deferredRemoval: boolean;
  deferredDeletion: boolean;
  xfsNospaceMaxRetries: number | null;
}

export const DEFAULT_BASE_SIZE = 10 * 1024 ** 3;
export const DEFAULT_LOOP_DATA_SIZE = 100 * 1024 ** 3;
export const DEFAULT_LOOP_METADATA_SIZE = 2 * 1024 ** 3;
export const DEFAULT_BLOCK_SIZE = 64 * 1024;
export const DEFAULT_MIN_FREE_SPACE_PERCENT = 10;

/** Options that need a kernel device-mapper (or LVM) we do not have: refused by name. */
const KERNEL_ONLY = new Set(['dm.thinpooldev', 'dm.directlvm_device', 'dm.directlvm_device_force', 'dm.thinp_percent',
  'dm.thinp_metapercent', 'dm.thinp_autoextend_threshold', 'dm.thinp_autoextend_percent']);

function bool(key: string, value: string): boolean {
  // Go's strconv.ParseBool
  if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(value)) return true;
  if (['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(value)) return false;
  throw strataError('INVALID_OPTION', `devicemapper: ${key}=${value}: not a boolean`, { key });
}

function size(key: string, value: string): number {
  try {
    const n = parseSize(value);
    if (n <= 0) throw new Error('zero');
    return n;
  } catch {
    throw strataError('INVALID_OPTION', `devicemapper: ${key}=${value}: not a size`, { key });
  }
}

export function parseDmOptions(input: Record<string, string>): DmOptions {
  const o: DmOptions = {
    baseSize: DEFAULT_BASE_SIZE,
    baseSizeExplicit: false,
    loopDataSize: DEFAULT_LOOP_DATA_SIZE,
    loopMetadataSize: DEFAULT_LOOP_METADATA_SIZE,
    blockSize: DEFAULT_BLOCK_SIZE,
    fs: 'ext4',
    mkfsArgs: [],
    mountOptions: [],
    blkDiscard: true,
    dataDev: null,
    metadataDev: null,
    minFreeSpacePercent: DEFAULT_MIN_FREE_SPACE_PERCENT,
    deferredRemoval: false,
    deferredDeletion: false,
    xfsNospaceMaxRetries: null,
  };
  let blkDiscardExplicit = false;
  for (const [rawKey, rawValue] of Object.entries(input)) {
    const key = rawKey.trim().toLowerCase();
    const value = rawValue.trim();
    if (KERNEL_ONLY.has(key)) {
      throw strataError('INVALID_OPTION', `devicemapper: ${key} needs a kernel device-mapper pool; Strata's pool lives in files (use dm.datadev/dm.metadatadev)`, { key });
    }
    switch (key) {
      case 'dm.basesize': o.baseSize = size(key, value); o.baseSizeExplicit = true; break;
      case 'dm.loopdatasize': o.loopDataSize = size(key, value); break;
      case 'dm.loopmetadatasize': o.loopMetadataSize = size(key, value); break;
      case 'dm.blocksize': {
        const n = size(key, value);
        // dm-thin: a multiple of 64K between 64K and 1G
        if (n % (64 * 1024) !== 0 || n > 1024 ** 3) {
          throw strataError('INVALID_OPTION', `devicemapper: dm.blocksize=${value}: must be a multiple of 64K, at most 1G`, { key });
        }
        o.blockSize = n;
        break;
      }
      case 'dm.fs':
        if (value !== 'ext4' && value !== 'xfs') throw strataError('INVALID_OPTION', `devicemapper: unsupported filesystem ${value} (ext4 or xfs)`, { key });
        o.fs = value;
        break;
      case 'dm.mkfsarg': o.mkfsArgs.push(...value.split(/\s+/).filter(Boolean)); break;
      case 'dm.mountopt': o.mountOptions.push(...value.split(',').map((s) => s.trim()).filter(Boolean)); break;
      case 'dm.blkdiscard': o.blkDiscard = bool(key, value); blkDiscardExplicit = true; break;
      case 'dm.datadev': o.dataDev = value; break;
      case 'dm.metadatadev': o.metadataDev = value; break;
      case 'dm.min_free_space': {
        const m = /^(\d+)%$/.exec(value);
        if (!m) throw strataError('INVALID_OPTION', `devicemapper: dm.min_free_space=${value}: must be a percentage such as 10%`, { key });
        const pct = Number(m[1]);
        if (pct >= 100) throw strataError('INVALID_OPTION', `devicemapper: dm.min_free_space=${value}: must be below 100%`, { key });
        o.minFreeSpacePercent = pct;
        break;
      }
      case 'dm.use_deferred_removal': o.deferredRemoval = bool(key, value); break;
      case 'dm.use_deferred_deletion': o.deferredDeletion = bool(key, value); break;
      case 'dm.xfs_nospace_max_retries': {
        if (!/^\d+$/.test(value)) throw strataError('INVALID_OPTION', `devicemapper: ${key}=${value}: not a count`, { key });
        o.xfsNospaceMaxRetries = Number(value);
        break;
      }
      // accepted for compatibility; they tune libdevmapper, which is not involved here
      case 'dm.override_udev_sync_check':
      case 'dm.libdm_log_level':
        break;
      default:
        throw strataError('INVALID_OPTION', `devicemapper: unknown option ${rawKey}`, { key: rawKey });
    }
  }
  if ((o.dataDev === null) !== (o.metadataDev === null)) {
    throw strataError('INVALID_OPTION', 'devicemapper: dm.datadev and dm.metadatadev must be given together');
  }
  // as moby: a device still in use can only be deleted later if it can be released later
  if (o.deferredDeletion && !o.deferredRemoval) {
    throw strataError('INVALID_OPTION', 'devicemapper: deferred deletion cannot be enabled without deferred removal (dm.use_deferred_removal=true)', { key: 'dm.use_deferred_deletion' });
  }
  // as moby: a caller-provided data device is not discarded unless asked explicitly
  if (o.dataDev !== null && !blkDiscardExplicit) o.blkDiscard = false;
  if (o.baseSize % 512 !== 0) throw strataError('INVALID_OPTION', 'devicemapper: dm.basesize must be a multiple of 512 bytes', { key: 'dm.basesize' });
  return o;
}
