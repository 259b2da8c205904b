import { strataError } from '../../errors.js';
import { parseSize } from '../../util/units.js';
import type { CreateOptions } from '../driver.js';

/**
 * The options moby's btrfs driver takes (daemon/graphdriver/btrfs/btrfs.go): one driver option,
 * `btrfs.min_space` (turns quotas on and is the smallest per-layer size allowed), and one
 * per-layer option, `size` (`--storage-opt size=10G`: a qgroup limit on the layer's
 * subvolume). Keys are case-insensitive; anything else is refused, as moby does.
 */

export interface BtrfsOptions {
  /** Bytes; 0 when not set. */
  minSpace: number;
}

export function parseDriverOptions(options: Record<string, string>): BtrfsOptions {
  const parsed: BtrfsOptions = { minSpace: 0 };
  for (const [rawKey, value] of Object.entries(options)) {
    const key = rawKey.toLowerCase();
    if (key !== 'btrfs.min_space') throw strataError('INVALID_OPTION', `btrfs: unknown option ${rawKey}`);
    parsed.minSpace = parseSize(value);
  }
  return parsed;
}

/**
 * The size limit a create asks for, in bytes, or null for none. Accepts `opts.size` (bytes) or
 * `opts.storageOpt.size` (a size string, `512M`).
 */
export function requestedSize(opts: CreateOptions | undefined, driver: BtrfsOptions): number | null {
  let size: number | null = opts?.size ?? null;
  for (const [rawKey, value] of Object.entries(opts?.storageOpt ?? {})) {
    if (rawKey.toLowerCase() !== 'size') throw strataError('INVALID_OPTION', `btrfs: unknown storage option ${rawKey}`);
    size = parseSize(value);
  }
  if (size === null) return null;
  if (!Number.isSafeInteger(size) || size <= 0) throw strataError('INVALID_OPTION', `btrfs: invalid storage size ${size}`);
  if (driver.minSpace > 0 && size < driver.minSpace) {
    throw strataError('INVALID_OPTION', `btrfs: storage size ${size} is below btrfs.min_space (${driver.minSpace} bytes)`);
  }
  return size;
}
