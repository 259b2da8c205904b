import { TIME_MASK } from './constants.js';
import { readU64, writeU64 } from './int.js';

// Leaf values of the mapping and device-details trees (dm-thin-metadata.c).

/** struct disk_device_details. */
export interface DeviceDetails {
  mappedBlocks: number;
  transactionId: number;
  creationTime: number;
  snapshottedTime: number;
}

export interface Mapping {
  block: number;
  time: number;
}

/** block_time packing: data block in the high 40 bits, time in the low 24. */
export function packBlockTime(block: number, time: number, buf = Buffer.alloc(8)): Buffer {
  buf.writeUInt32LE((((block % 256) << 24) | (time & TIME_MASK)) >>> 0, 0);
  buf.writeUInt32LE(Math.floor(block / 256), 4);
  return buf;
}
export function unpackBlockTime(v: Buffer): Mapping {
  const lo = v.readUInt32LE(0);
  return { block: v.readUInt32LE(4) * 256 + (lo >>> 24), time: lo & TIME_MASK };
}

export function packDetails(d: DeviceDetails): Buffer {
  const buf = Buffer.alloc(24);
  writeU64(buf, 0, d.mappedBlocks);
  writeU64(buf, 8, d.transactionId);
  buf.writeUInt32LE(d.creationTime >>> 0, 16);
  buf.writeUInt32LE(d.snapshottedTime >>> 0, 20);
  return buf;
}
export function unpackDetails(v: Buffer): DeviceDetails {
  return { mappedBlocks: readU64(v, 0), transactionId: readU64(v, 8), creationTime: v.readUInt32LE(16), snapshottedTime: v.readUInt32LE(20) };
}
