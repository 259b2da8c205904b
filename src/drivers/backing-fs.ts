/** statfs magic numbers by the names `docker info` prints (moby's fsmagic table, abridged). */
const FS_NAMES: Record<number, string> = {
  0xef53: 'extfs',
  0x58465342: 'xfs',
  0x9123683e: 'btrfs',
  0x01021994: 'tmpfs',
  0x794c7630: 'overlayfs',
  0x2fc12fc1: 'zfs',
  0x65735546: 'fuse',
  0x6969: 'nfs',
  0xf2f52010: 'f2fs',
  0x61756673: 'aufs',
  0x73717368: 'squashfs',
  0x858458f6: 'ramfs',
  0xff534d42: 'cifs',
};

/** The `Backing Filesystem` of `docker info` for a statfs type. */
export function backingFsName(type: number): string {
  return FS_NAMES[type] ?? '<unknown>';
}
