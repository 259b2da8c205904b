import { strataError } from '../../errors.js';

/**
 * 64-bit on-disk fields are read as JS numbers, checked to be safe integers: block numbers,
 * device ids, counts and transaction ids of any real pool fit in 2^53. A field beyond that is
 * reported as corrupt metadata rather than silently rounded.
 */
export function readU64(buf: Buffer, offset: number): number {
  const lo = buf.readUInt32LE(offset);
  const hi = buf.readUInt32LE(offset + 4);
  if (hi >= 0x200000) {
    throw strataError('METADATA_CORRUPT', `64-bit field at offset ${offset} exceeds 2^53`, { offset });
  }
  return hi * 0x100000000 + lo;
}

export function writeU64(buf: Buffer, offset: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw strataError('OUT_OF_RANGE', `value ${value} is not a non-negative safe integer`, { value });
  }
  buf.writeUInt32LE(value % 0x100000000, offset);
  buf.writeUInt32LE(Math.floor(value / 0x100000000), offset + 4);
}
