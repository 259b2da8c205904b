import { LP64_LITTLE_ENDIAN, errnoError, libcBinding } from './libc.js';

/**
 * Giving byte ranges back to the storage underneath, which Node's fs cannot: fallocate(2)
 * PUNCH_HOLE on a file (the range then reads as zeros and takes no space) and ioctl(BLKDISCARD)
 * on a block device, through libc on koffi's worker threads.
 */

type AsyncFn = { async(...args: unknown[]): void };

const FALLOC_FL_KEEP_SIZE = 0x01;
const FALLOC_FL_PUNCH_HOLE = 0x02;
const BLKDISCARD = 0x1277; // _IO(0x12, 119)

// (the BLKDISCARD argument is two little-endian u64s)
const load = libcBinding((lib) => ({
  fallocate: lib.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)') as AsyncFn,
  ioctl: lib.func('int ioctl(int fd, unsigned long request, void *arg)') as AsyncFn,
  errno: () => lib.errno(),
}), LP64_LITTLE_ENDIAN);

/**
 * A function that discards `[offset, offset + length)` of the open file or block device `fd`
 * (`path` names it in errors), or null where this host cannot.
 */
export function discarder(fd: number, path: string, blockDevice: boolean): ((offset: number, length: number) => Promise<void>) | null {
  const c = load();
  if (!c) return null;
  const call = (fn: AsyncFn, name: string, ...args: unknown[]): Promise<void> =>
    new Promise((resolve, reject) => {
      fn.async(...args, (err: unknown, result: number) => {
        if (err) reject(err);
        else if (result !== 0) reject(errnoError(c.errno(), name, path));
        else resolve();
      });
    });
  if (!blockDevice) return (offset, length) => call(c.fallocate, 'fallocate', fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
  return (offset, length) => {
    const range = Buffer.alloc(16);
    range.writeBigUInt64LE(BigInt(offset), 0);
    range.writeBigUInt64LE(BigInt(length), 8);
    return call(c.ioctl, 'ioctl BLKDISCARD', fd, BLKDISCARD, range);
  };
}
