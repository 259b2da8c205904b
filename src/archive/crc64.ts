/**
 * CRC-64/GO-ISO, the checksum tar-split stores for each file's data (Go's `hash/crc64` with the
 * `crc64.ISO` table): reflected polynomial 0xD800000000000000, init and xorout all ones.
 * Check value: crc64("123456789") = 0xb90956c775a41001.
 *
 * Every file of every imported layer goes through here, so the work is done by a small
 * WebAssembly module (crc64-wasm.ts) with native i64 arithmetic and slicing-by-16, the input
 * copied into its memory a piece at a time. Inputs too short to repay the call, and runtimes
 * without WebAssembly, use plain JavaScript: it has no fast 64-bit integers, so there the register
 * is kept as two 32-bit halves and the tables are split into high and low words (slicing-by-8).
 */

import { loadCrc64Wasm } from './crc64-wasm.js';

const POLY_HI = 0xd8000000;
const POLY_LO = 0x00000000;

/**
 * Bytes per step of the WebAssembly loop; JavaScript uses the first 8 tables. 16 tables (32 KiB)
 * measured faster than 8 and than 32, whose 64 KiB no longer fit in a 32 KiB L1 cache.
 */
const SLICES = 16;

/** TABLE_HI[k*256 + i], TABLE_LO[k*256 + i]: slicing tables, k = 0..SLICES-1. */
const TABLE_HI = new Uint32Array(SLICES * 256);
const TABLE_LO = new Uint32Array(SLICES * 256);

function buildTables(): void {
  for (let i = 0; i < 256; i++) {
    let hi = 0;
    let lo = i;
    for (let bit = 0; bit < 8; bit++) {
      const lsb = lo & 1;
      lo = ((lo >>> 1) | ((hi & 1) << 31)) >>> 0;
      hi = hi >>> 1;
      if (lsb) {
        hi = (hi ^ POLY_HI) >>> 0;
        lo = (lo ^ POLY_LO) >>> 0;
      }
    }
    TABLE_HI[i] = hi;
    TABLE_LO[i] = lo;
  }
  for (let k = 1; k < SLICES; k++) {
    for (let i = 0; i < 256; i++) {
      const phi = TABLE_HI[(k - 1) * 256 + i]!;
      const plo = TABLE_LO[(k - 1) * 256 + i]!;
      // one more byte of zeros through the previous table entry
      const idx = plo & 0xff;
      const nlo = ((plo >>> 8) | (phi << 24)) >>> 0;
      const nhi = phi >>> 8;
      TABLE_HI[k * 256 + i] = (nhi ^ TABLE_HI[idx]!) >>> 0;
      TABLE_LO[k * 256 + i] = (nlo ^ TABLE_LO[idx]!) >>> 0;
    }
  }
}

/** Below this many bytes the JavaScript loop beats copying into WebAssembly memory and calling it (measured: ~20–30). */
const WASM_MIN = 32;
/** Bytes copied into WebAssembly memory per call: its memory stays the same whatever the input size. */
const PIECE = 256 * 1024;
const LAYOUT = { slices: SLICES, stateOffset: SLICES * 2048, dataOffset: 0x10000, pages: 1 + PIECE / 0x10000 };

interface WasmKernel {
  view: DataView;
  piece: Uint8Array;
  update: (len: number) => void;
}

/** Built on first use (tables and module take ~8 ms): most CLI calls never checksum anything. */
let wasm: WasmKernel | null | undefined;

function setUp(): WasmKernel | null {
  buildTables();
  const module = loadCrc64Wasm(LAYOUT);
  if (module === null) return null;
  // the memory never grows, so these views stay attached; WebAssembly memory is little-endian
  const view = new DataView(module.memory);
  for (let i = 0; i < SLICES * 256; i++) {
    view.setUint32(8 * i, TABLE_LO[i]!, true);
    view.setUint32(8 * i + 4, TABLE_HI[i]!, true);
  }
  return { view, piece: new Uint8Array(module.memory, LAYOUT.dataOffset, PIECE), update: module.update };
}

/** Incremental CRC-64/GO-ISO. */
export class Crc64 {
  /** The register, pre-inverted (init 0xFFFF…). */
  private hi = 0xffffffff;
  private lo = 0xffffffff;

  update(data: Uint8Array): this {
    if (wasm === undefined) wasm = setUp();
    if (wasm !== null && data.length >= WASM_MIN) this.updateWasm(data, wasm);
    else this.updateJs(data);
    return this;
  }

  private updateWasm(data: Uint8Array, { view, piece, update }: WasmKernel): void {
    view.setUint32(LAYOUT.stateOffset, this.lo, true);
    view.setUint32(LAYOUT.stateOffset + 4, this.hi, true);
    for (let off = 0; off < data.length; off += PIECE) {
      // subarray() allocates: for a short input that costs more than the checksum itself
      const part = data.length <= PIECE ? data : data.subarray(off, off + PIECE);
      piece.set(part);
      update(part.length);
    }
    this.lo = view.getUint32(LAYOUT.stateOffset, true);
    this.hi = view.getUint32(LAYOUT.stateOffset + 4, true);
  }

  private updateJs(data: Uint8Array): void {
    let hi = this.hi;
    let lo = this.lo;
    let i = 0;
    const n = data.length;
    const TH = TABLE_HI;
    const TL = TABLE_LO;
    // slicing-by-8
    for (; i + 8 <= n; i += 8) {
      const a = (lo ^ (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24))) >>> 0;
      const b = (hi ^ (data[i + 4]! | (data[i + 5]! << 8) | (data[i + 6]! << 16) | (data[i + 7]! << 24))) >>> 0;
      const i7 = 7 * 256 + (a & 0xff);
      const i6 = 6 * 256 + ((a >>> 8) & 0xff);
      const i5 = 5 * 256 + ((a >>> 16) & 0xff);
      const i4 = 4 * 256 + (a >>> 24);
      const i3 = 3 * 256 + (b & 0xff);
      const i2 = 2 * 256 + ((b >>> 8) & 0xff);
      const i1 = 1 * 256 + ((b >>> 16) & 0xff);
      const i0 = b >>> 24;
      hi = (TH[i7]! ^ TH[i6]! ^ TH[i5]! ^ TH[i4]! ^ TH[i3]! ^ TH[i2]! ^ TH[i1]! ^ TH[i0]!) >>> 0;
      lo = (TL[i7]! ^ TL[i6]! ^ TL[i5]! ^ TL[i4]! ^ TL[i3]! ^ TL[i2]! ^ TL[i1]! ^ TL[i0]!) >>> 0;
    }
    for (; i < n; i++) {
      const idx = (lo ^ data[i]!) & 0xff;
      lo = (((lo >>> 8) | (hi << 24)) ^ TL[idx]!) >>> 0;
      hi = ((hi >>> 8) ^ TH[idx]!) >>> 0;
    }
    this.hi = hi;
    this.lo = lo;
  }

  /** The 8 big-endian bytes tar-split stores (Go's `hash.Hash.Sum(nil)`). */
  digest(): Buffer {
    const out = Buffer.alloc(8);
    out.writeUInt32BE((this.hi ^ 0xffffffff) >>> 0, 0);
    out.writeUInt32BE((this.lo ^ 0xffffffff) >>> 0, 4);
    return out;
  }

  /** The value as a bigint (tests, diagnostics). */
  value(): bigint {
    return this.digest().readBigUInt64BE(0);
  }
}

export function crc64(data: Uint8Array): Buffer {
  return new Crc64().update(data).digest();
}
