// CRC-64/GO-ISO (src/archive/crc64.ts) against a bit-at-a-time reference: both the WebAssembly
// path and the JavaScript one (short updates, and a child process that has no WebAssembly), with
// updates split at every alignment and inputs larger than the piece copied into WebAssembly memory.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { Crc64, crc64 } from '../../src/archive/crc64.js';

const POLY = 0xd800000000000000n;
const ONES = 0xffffffffffffffffn;

/** One byte through the reflected register, a bit at a time. */
function referenceByte(crc: bigint, byte: number): bigint {
  crc ^= BigInt(byte);
  for (let bit = 0; bit < 8; bit++) crc = crc & 1n ? (crc >> 1n) ^ POLY : crc >> 1n;
  return crc;
}

function reference(data: Uint8Array): bigint {
  let crc = ONES;
  for (const b of data) crc = referenceByte(crc, b);
  return crc ^ ONES;
}

/** The same, a byte at a time through a table built from referenceByte: fast enough for megabytes. */
function referenceLarge(data: Uint8Array): bigint {
  const table = Array.from({ length: 256 }, (_, i) => referenceByte(0n, i));
  let crc = ONES;
  for (const b of data) crc = table[Number((crc ^ BigInt(b)) & 0xffn)]! ^ (crc >> 8n);
  return crc ^ ONES;
}

/** mulberry32: reproducible random numbers in [0, n). */
function prng(seed: number): (n: number) => number {
  return (n) => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 2 ** 32) * n);
  };
}

function randomBytes(rnd: (n: number) => number, n: number): Buffer {
  const out = Buffer.alloc(n);
  for (let i = 0; i < n; i++) out[i] = rnd(256);
  return out;
}

const hex = (v: bigint): string => v.toString(16).padStart(16, '0');

/** A large input whose bytes do not repeat with any short period. */
function largeInput(): Buffer {
  const data = Buffer.alloc(3 * 1024 * 1024 + 5);
  for (let i = 0; i < data.length; i++) data[i] = (i * 131 + (i >>> 9) * 7 + (i >>> 17)) & 0xff;
  return data;
}

describe('crc64', () => {
  it('gives the check value, and 0 for no input', () => {
    assert.equal(crc64(Buffer.from('123456789')).toString('hex'), 'b90956c775a41001');
    assert.equal(new Crc64().update(Buffer.from('123456789')).value(), 0xb90956c775a41001n);
    assert.equal(new Crc64().update(new Uint8Array(0)).value(), 0n);
  });

  it('agrees with the bit-at-a-time reference over random lengths, offsets and update splits', () => {
    const rnd = prng(0x5eed);
    const pool = randomBytes(rnd, 6000);
    for (let round = 0; round < 300; round++) {
      const offset = rnd(64);
      const data = pool.subarray(offset, offset + rnd(5001));
      const expected = hex(reference(data));
      assert.equal(hex(new Crc64().update(data).value()), expected, `round ${round}: one update of ${data.length}`);
      // short and long updates mixed, so the register passes between the two paths at every alignment
      const c = new Crc64();
      const sizes: number[] = [];
      for (let o = 0; o < data.length; ) {
        const n = Math.min(data.length - o, rnd(2) ? rnd(48) : rnd(data.length + 1));
        c.update(data.subarray(o, o + n));
        sizes.push(n);
        o += n;
      }
      assert.equal(hex(c.value()), expected, `round ${round}: updates of ${sizes.join(', ')}`);
    }
  });

  it('handles an input larger than the WebAssembly piece, whole and in odd-sized updates', () => {
    const data = largeInput();
    const expected = referenceLarge(data);
    assert.equal(crc64(data).readBigUInt64BE(0), expected);
    const sizes = [1, 31, 32, 33, 4095, 65537, 262143, 262145, 1048583, 7];
    const c = new Crc64();
    for (let o = 0, k = 0; o < data.length; k++) {
      const n = sizes[k % sizes.length]!;
      c.update(data.subarray(o, o + n));
      o += n;
    }
    assert.equal(c.value(), expected);
  });

  it('gives the same results without WebAssembly (the JavaScript fallback)', () => {
    const data = largeInput();
    const lengths = [0, 7, 8, 9, 31, 32, 33, 1000, 4099, data.length];
    const crcUrl = new URL('../../src/archive/crc64.ts', import.meta.url).href;
    const script = `
      const { Crc64 } = await import(${JSON.stringify(crcUrl)});
      const chunks = []; for await (const c of process.stdin) chunks.push(c);
      const data = Buffer.concat(chunks);
      const out = { wasm: typeof WebAssembly, crcs: [] };
      for (const n of ${JSON.stringify(lengths)}) {
        const c = new Crc64();
        for (let o = 0; o < n; o += 1021) c.update(data.subarray(o, Math.min(n, o + 1021)));
        out.crcs.push(c.value().toString(16).padStart(16, '0'));
      }
      console.log(JSON.stringify(out));`;
    const child = spawnSync(process.execPath, ['--no-expose-wasm', '--import', 'tsx', '--input-type=module', '-e', script], {
      input: data,
      encoding: 'utf8',
      maxBuffer: 1 << 20,
    });
    assert.equal(child.status, 0, child.stderr);
    const out = JSON.parse(child.stdout) as { wasm: string; crcs: string[] };
    assert.equal(out.wasm, 'undefined');
    assert.deepEqual(out.crcs, lengths.map((n) => hex(referenceLarge(data.subarray(0, n)))));
  });
});
