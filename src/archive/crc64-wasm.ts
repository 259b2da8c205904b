/**
 * The bytes of the WebAssembly module behind `crc64.ts`, assembled here by hand so that no
 * toolchain or build step is needed: one function, `update(len)`, that runs the `len` bytes at
 * `dataOffset` through the CRC register stored at `stateOffset`, slicing `slices` bytes at a time
 * with native i64 table lookups.
 *
 * Memory layout (fixed size, never grown): the slicing tables at 0 (`slices` × 256 little-endian
 * i64, table k at k × 2048), the register at `stateOffset` (i64, pre-inverted), the data piece at
 * `dataOffset`. The caller fills the tables and the register; the module only reads the tables.
 */

/** The part of the WebAssembly JavaScript API used here: the project's libs do not declare it. */
declare const WebAssembly:
  | {
      Module: new (bytes: Uint8Array) => object;
      Instance: new (module: object) => { exports: Record<string, unknown> };
    }
  | undefined;

export interface Crc64WasmLayout {
  /** Bytes per step of the main loop: a multiple of 4, at least 8 (the register is xored into the first 8). */
  slices: number;
  stateOffset: number;
  dataOffset: number;
  /** Memory size in 64 KiB pages. */
  pages: number;
}

export interface Crc64Wasm {
  /** The module's whole memory. */
  memory: ArrayBuffer;
  /** Runs the `len` bytes at `dataOffset` through the register at `stateOffset`. */
  update: (len: number) => void;
}

/** The module, instantiated; null where the runtime has no WebAssembly (e.g. `node --jitless`). */
export function loadCrc64Wasm(layout: Crc64WasmLayout): Crc64Wasm | null {
  if (typeof WebAssembly !== 'object') return null;
  const { exports } = new WebAssembly.Instance(new WebAssembly.Module(crc64WasmBytes(layout)));
  return { memory: (exports.memory as { buffer: ArrayBuffer }).buffer, update: exports.update as Crc64Wasm['update'] };
}

/** Unsigned LEB128. */
function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    const b = n & 0x7f;
    n >>>= 7;
    out.push(n ? b | 0x80 : b);
  } while (n);
  return out;
}

/** Signed LEB128, for the constants. */
function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && !(b & 0x40)) || (n === -1 && b & 0x40)) return [...out, b];
    out.push(b | 0x80);
  }
}

const vec = (items: number[][]): number[] => [...uleb(items.length), ...items.flat()];
const section = (id: number, body: number[]): number[] => [id, ...uleb(body.length), ...body];
const name = (s: string): number[] => vec([...Buffer.from(s)].map((b) => [b]));

const I32 = 0x7f;
const I64 = 0x7e;
const op = {
  block: [0x02, 0x40],
  loop: [0x03, 0x40],
  end: [0x0b],
  br: (depth: number) => [0x0c, depth],
  brIf: (depth: number) => [0x0d, depth],
  get: (local: number) => [0x20, local],
  set: (local: number) => [0x21, local],
  i32Const: (n: number) => [0x41, ...sleb(n)],
  i64Const: (n: number) => [0x42, ...sleb(n)],
  i32Load: (offset: number) => [0x28, 2, ...uleb(offset)],
  i64Load: (offset: number) => [0x29, 3, ...uleb(offset)],
  i32Load8U: [0x2d, 0, 0],
  i64Store: (offset: number) => [0x37, 3, ...uleb(offset)],
  i32Eq: [0x46],
  i32Add: [0x6a],
  i32And: [0x71],
  i32Xor: [0x73],
  i32Shl: [0x74],
  i32ShrU: [0x76],
  i64Xor: [0x85],
  i64ShrU: [0x88],
  i32WrapI64: [0xa7],
};

/** XORs the i64 values as a balanced tree: a chain of xors would make each step wait for all of them in turn. */
function xorTree(values: number[][]): number[] {
  if (values.length === 1) return values[0]!;
  const half = values.length >> 1;
  return [...xorTree(values.slice(0, half)), ...xorTree(values.slice(half)), ...op.i64Xor];
}

function crc64WasmBytes({ slices, stateOffset, dataOffset, pages }: Crc64WasmLayout): Uint8Array {
  // locals: 0 len (param), 1 p, 2 end, 3 crc (i64), 4.. one i32 per 4-byte word of a step
  const [LEN, P, END, CRC, WORD] = [0, 1, 2, 3, 4];
  const words = slices / 4;

  /** Table (slices-1-b)[byte b of the step] for the byte `j` of word `w`, as a byte address. */
  const lookup = (w: number, j: number): number[] => [
    ...op.get(WORD + w),
    ...op.i32Const(j === 0 ? 3 : 8 * j - 3),
    ...(j === 0 ? op.i32Shl : op.i32ShrU),
    ...op.i32Const(0x7f8),
    ...op.i32And,
    ...op.i64Load((slices - 1 - (4 * w + j)) * 2048),
  ];

  const step: number[] = [];
  for (let w = 0; w < words; w++) {
    step.push(...op.get(P), ...op.i32Load(4 * w));
    // the register is xored into the first 8 bytes of the step
    if (w === 0) step.push(...op.get(CRC), ...op.i32WrapI64, ...op.i32Xor);
    if (w === 1) step.push(...op.get(CRC), ...op.i64Const(32), ...op.i64ShrU, ...op.i32WrapI64, ...op.i32Xor);
    step.push(...op.set(WORD + w));
  }
  const lookups: number[][] = [];
  for (let w = 0; w < words; w++) for (let j = 0; j < 4; j++) lookups.push(lookup(w, j));
  step.push(...xorTree(lookups));
  step.push(...op.set(CRC));

  const advance = (n: number): number[] => [...op.get(P), ...op.i32Const(n), ...op.i32Add, ...op.set(P)];
  const loopUntilEnd = (body: number[]): number[] => [
    ...op.block, ...op.loop,
    ...op.get(P), ...op.get(END), ...op.i32Eq, ...op.brIf(1),
    ...body,
    ...op.br(0), ...op.end, ...op.end,
  ];

  const code = [
    ...vec([[2, I32], [1, I64], [words, I32]]),
    ...op.i32Const(0), ...op.i64Load(stateOffset), ...op.set(CRC),
    ...op.i32Const(dataOffset), ...op.set(P),
    // whole steps, then the tail a byte at a time
    ...op.get(LEN), ...op.i32Const(-slices), ...op.i32And, ...op.get(P), ...op.i32Add, ...op.set(END),
    ...loopUntilEnd([...step, ...advance(slices)]),
    ...op.get(LEN), ...op.i32Const(dataOffset), ...op.i32Add, ...op.set(END),
    ...loopUntilEnd([
      ...op.get(CRC), ...op.i32WrapI64, ...op.get(P), ...op.i32Load8U, ...op.i32Xor,
      ...op.i32Const(3), ...op.i32Shl, ...op.i32Const(0x7f8), ...op.i32And, ...op.i64Load(0),
      ...op.get(CRC), ...op.i64Const(8), ...op.i64ShrU, ...op.i64Xor, ...op.set(CRC),
      ...advance(1),
    ]),
    ...op.i32Const(0), ...op.get(CRC), ...op.i64Store(stateOffset),
    ...op.end,
  ];

  return new Uint8Array([
    ...[0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00],
    ...section(1, vec([[0x60, ...vec([[I32]]), ...vec([])]])), // type: (i32) -> ()
    ...section(3, vec([uleb(0)])), // function 0 has type 0
    ...section(5, vec([[0x01, ...uleb(pages), ...uleb(pages)]])), // memory: min = max = pages
    ...section(7, vec([[...name('memory'), 0x02, 0], [...name('update'), 0x00, 0]])),
    ...section(10, vec([[...uleb(code.length), ...code]])),
  ]);
}
