/**
 * The btrfs ioctls the driver uses, as request numbers and argument buffers: pure functions over
 * `Buffer`, unit-tested against the values the kernel headers produce. Layouts are from
 * include/uapi/linux/btrfs.h; every field is a little-endian u64/s64 on the hosts Strata runs on
 * (x86_64, aarch64), so numbers that fit 53 bits are written as `number`, raw u64s as `bigint`.
 */

// asm-generic/ioctl.h: dir(2 bits) << 30 | size(14 bits) << 16 | type << 8 | nr
const IOC_WRITE = 1;
const IOC_READ = 2;
const BTRFS_IOCTL_MAGIC = 0x94;

export function ioc(dir: number, nr: number, size: number): number {
  if (size >= 1 << 14) throw new RangeError(`ioctl argument of ${size} bytes does not fit the 14-bit size field`);
  // >>> 0 keeps it an unsigned 32-bit value (the top bit is set for _IOR)
  return ((dir << 30) | (size << 16) | (BTRFS_IOCTL_MAGIC << 8) | nr) >>> 0;
}

/** struct btrfs_ioctl_vol_args: { __s64 fd; char name[BTRFS_PATH_NAME_MAX + 1]; } = 4096 bytes. */
export const VOL_ARGS_SIZE = 4096;
const PATH_NAME_MAX = 4087;
/** struct btrfs_ioctl_ino_lookup_args: { __u64 treeid; __u64 objectid; char name[4080]; }. */
const INO_LOOKUP_SIZE = 4096;
/** struct btrfs_ioctl_quota_ctl_args: { __u64 cmd; __u64 status; }. */
const QUOTA_CTL_SIZE = 16;
/** struct btrfs_ioctl_qgroup_create_args: { __u64 create; __u64 qgroupid; }. */
const QGROUP_CREATE_SIZE = 16;
/** struct btrfs_ioctl_qgroup_limit_args: { __u64 qgroupid; struct btrfs_qgroup_limit { flags, max_rfer, max_excl, rsv_rfer, rsv_excl } }. */
const QGROUP_LIMIT_SIZE = 48;

export const BTRFS_IOC = {
  SNAP_CREATE: ioc(IOC_WRITE, 1, VOL_ARGS_SIZE),
  SUBVOL_CREATE: ioc(IOC_WRITE, 14, VOL_ARGS_SIZE),
  SNAP_DESTROY: ioc(IOC_WRITE, 15, VOL_ARGS_SIZE),
  INO_LOOKUP: ioc(IOC_READ | IOC_WRITE, 18, INO_LOOKUP_SIZE),
  QUOTA_CTL: ioc(IOC_READ | IOC_WRITE, 40, QUOTA_CTL_SIZE),
  QGROUP_CREATE: ioc(IOC_WRITE, 42, QGROUP_CREATE_SIZE),
  // _IOR although the kernel reads the argument: a historical slip kept for ABI's sake
  QGROUP_LIMIT: ioc(IOC_READ, 43, QGROUP_LIMIT_SIZE),
} as const;

export const BTRFS_QUOTA_CTL_ENABLE = 1;
const BTRFS_QGROUP_LIMIT_MAX_RFER = 1n << 0n;
/** The objectid of every subvolume's root directory, and so the inode number `stat` shows for it. */
export const BTRFS_FIRST_FREE_OBJECTID = 256;

/** Arguments for SUBVOL_CREATE / SNAP_CREATE / SNAP_DESTROY: `name` inside the directory the ioctl is called on. */
export function volArgs(name: string, fd = 0): Buffer {
  const encoded = Buffer.from(name, 'utf8');
  if (encoded.length === 0 || encoded.length > PATH_NAME_MAX || name.includes('/') || encoded.includes(0)) {
    throw new RangeError(`invalid subvolume name ${JSON.stringify(name)}`);
  }
  const buf = Buffer.alloc(VOL_ARGS_SIZE);
  buf.writeBigInt64LE(BigInt(fd), 0);
  encoded.copy(buf, 8); // the rest is zero: NUL-terminated
  return buf;
}

/** INO_LOOKUP of the subvolume root: the kernel fills in `treeid`, the subvolume id. */
export function subvolIdLookupArgs(): Buffer {
  const buf = Buffer.alloc(INO_LOOKUP_SIZE);
  buf.writeBigUInt64LE(BigInt(BTRFS_FIRST_FREE_OBJECTID), 8);
  return buf;
}

export function subvolIdOf(lookupResult: Buffer): bigint {
  return lookupResult.readBigUInt64LE(0);
}

export function quotaCtlArgs(cmd: number): Buffer {
  const buf = Buffer.alloc(QUOTA_CTL_SIZE);
  buf.writeBigUInt64LE(BigInt(cmd), 0);
  return buf;
}

/** A level-0 qgroup id is the subvolume id itself (level << 48 | id). */
export function qgroupDestroyArgs(subvolId: bigint): Buffer {
  const buf = Buffer.alloc(QGROUP_CREATE_SIZE);
  buf.writeBigUInt64LE(0n, 0); // create = 0: destroy
  buf.writeBigUInt64LE(subvolId, 8);
  return buf;
}

/** Limit the referenced bytes of the subvolume the ioctl is called on (qgroupid 0 means "this one"). */
export function qgroupLimitArgs(maxReferenced: number): Buffer {
  if (!Number.isSafeInteger(maxReferenced) || maxReferenced <= 0) throw new RangeError(`invalid quota ${maxReferenced}`);
  const buf = Buffer.alloc(QGROUP_LIMIT_SIZE);
  buf.writeBigUInt64LE(0n, 0);
  buf.writeBigUInt64LE(BTRFS_QGROUP_LIMIT_MAX_RFER, 8);
  buf.writeBigUInt64LE(BigInt(maxReferenced), 16);
  return buf;
}
