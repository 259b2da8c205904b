/**
 * CRC-64/GO-ISO, the checksum tar-split stores for each file's data (Go's `hash/crc64` with the
 * `crc64.ISO` table): reflected polynomial 0xD800000000000000, init and xorout all ones.
 * Check value: crc64("123456789") = 0xb90956c775a41001.
 *
 * JavaScript has no fast 64-bit integers, so the register is kept as two 32-bit halves and the
 * table is split into high and low words (slicing-by-8 for throughput on large files).
 */

const POLY_HI = 0xd8000000;
const POLY_LO = 0x00000000;

/** TABLE_HI[k*256 + i], TABLE_LO[k*256 + i]: slicing-by-8 tables, k = 0..7. */
const TABLE_HI = new Uint32Array(8 * 256);
const TABLE_LO = new Uint32Array(8 * 256);

(function buildTables(): void {
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
  for (let k = 1; k < 8; k++) {
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
})();

/** Incremental CRC-64/GO-ISO. */
export class Crc64 {
  /** The register, pre-inverted (init 0xFFFF…). */
  private hi = 0xffffffff;
  private lo = 0xffffffff;

  update(data: Uint8Array): this {
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
    return this;
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
