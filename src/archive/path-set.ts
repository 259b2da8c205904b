/**
 * A set of paths kept as UTF-8 bytes in one growing buffer, found through an open-addressing
 * table of entry numbers, each with a few flag bits. Applying a layer remembers every path it has
 * seen (duplicates are refused), created (it cannot exist already) and unpacked (whiteouts spare
 * it); in Sets of strings that cost ~300 bytes an entry, and a layer of 300,000 small files peaked
 * at 307 MB. Here a path is kept once for all three, as its bytes and ~30 more; paths under
 * `prefix` (the layer's root) are kept without it.
 */
import { randomBytes } from 'node:crypto';

const EMPTY = 0;
/**
 * The first byte of a stored key: 1 when `prefix` was taken off the path, + 2 when the rest is
 * UTF-16 (a string with a lone surrogate, which UTF-8 would turn into U+FFFD like another's).
 */
const UNDER_PREFIX = 1;
const UTF16 = 2;

export class PathSet {
  private bytes: Buffer = Buffer.allocUnsafe(64 * 1024);
  private used = 0;
  private starts: Int32Array = new Int32Array(1024);
  private lengths: Int32Array = new Int32Array(1024);
  private hashes: Int32Array = new Int32Array(1024);
  private flags: Uint8Array = new Uint8Array(1024);
  private count = 0;
  /** Entry number + 1 per slot (EMPTY: free); kept at most half full. */
  private table: Int32Array = new Int32Array(2048);
  private scratch: Buffer = Buffer.allocUnsafe(1024);
  /**
   * The hash's starting state, random for each set: the paths come from a layer, and names made
   * to collide under a known hash would turn every lookup into a walk of the table.
   */
  private readonly seed = randomBytes(4).readInt32LE(0);

  constructor(private readonly prefix = '') {}

  get size(): number {
    return this.count;
  }

  /** Whether `path` is in the set with any of `flags`. */
  has(path: string, flags = 0xff): boolean {
    return this.hasKey(this.encode(path), flags);
  }

  /** `has` for the path `prefix` + `rel`, without making that string. */
  hasUnder(rel: string, flags = 0xff): boolean {
    return this.hasKey(this.encodeKey(rel, true), flags);
  }

  /** Put `path` in the set with `flags` (added to those it has). */
  add(path: string, flags = 1): this {
    return this.addKey(this.encode(path), flags);
  }

  /** `add` for the path `prefix` + `rel`, without making that string. */
  addUnder(rel: string, flags = 1): this {
    return this.addKey(this.encodeKey(rel, true), flags);
  }

  private hasKey(length: number, flags: number): boolean {
    const slot = this.slotOf(length, hashOf(this.scratch, length, this.seed));
    return slot < 0 && (this.flags[this.table[-1 - slot]! - 1]! & flags) !== 0;
  }

  private addKey(length: number, flags: number): this {
    const hash = hashOf(this.scratch, length, this.seed);
    const slot = this.slotOf(length, hash);
    if (slot < 0) {
      this.flags[this.table[-1 - slot]! - 1]! |= flags;
      return this;
    }
    if (this.count === this.starts.length) this.growEntries();
    if (this.used + length > this.bytes.length) this.bytes = grown(this.bytes, this.used + length);
    this.scratch.copy(this.bytes, this.used, 0, length);
    const entry = this.count++;
    this.starts[entry] = this.used;
    this.lengths[entry] = length;
    this.hashes[entry] = hash;
    this.flags[entry] = flags;
    this.used += length;
    this.table[slot] = entry + 1;
    if (this.count * 2 > this.table.length) this.rehash(this.table.length * 2);
    return this;
  }

  private encode(path: string): number {
    const under = this.prefix !== '' && path.startsWith(this.prefix);
    return this.encodeKey(under ? path.slice(this.prefix.length) : path, under);
  }

  /** The stored form of `key` (under `prefix` or not) into `scratch`; returns its length. */
  private encodeKey(key: string, under: boolean): number {
    const most = 1 + 3 * key.length; // UTF-8 takes at most 3 bytes per UTF-16 unit, UTF-16 2
    if (most > this.scratch.length) this.scratch = Buffer.allocUnsafe(Math.max(most, 2 * this.scratch.length));
    const utf16 = !(key as string & { isWellFormed(): boolean }).isWellFormed();
    // (with no prefix, a key "under" it is the whole path)
    this.scratch[0] = (under && this.prefix !== '' ? UNDER_PREFIX : 0) + (utf16 ? UTF16 : 0);
    return 1 + this.scratch.write(key, 1, utf16 ? 'utf16le' : 'utf8');
  }

  /** The slot holding the key in `scratch` as a negative number (-1 - slot), or the free slot where it would go. */
  private slotOf(length: number, hash: number): number {
    const mask = this.table.length - 1;
    for (let slot = hash & mask; ; slot = (slot + 1) & mask) {
      const held = this.table[slot]!;
      if (held === EMPTY) return slot;
      const entry = held - 1;
      if (this.hashes[entry] === hash && this.lengths[entry] === length) {
        const start = this.starts[entry]!;
        if (this.scratch.compare(this.bytes, start, start + length, 0, length) === 0) return -1 - slot;
      }
    }
  }

  private growEntries(): void {
    const size = this.starts.length * 2;
    this.starts = widened(this.starts, size);
    this.lengths = widened(this.lengths, size);
    this.hashes = widened(this.hashes, size);
    this.flags = widened(this.flags, size);
  }

  private rehash(size: number): void {
    const table = new Int32Array(size);
    const mask = size - 1;
    for (let entry = 0; entry < this.count; entry++) {
      let slot = this.hashes[entry]! & mask;
      while (table[slot] !== EMPTY) slot = (slot + 1) & mask;
      table[slot] = entry + 1;
    }
    this.table = table;
  }
}

/** FNV-1a over the first `length` bytes, from `seed`. */
function hashOf(bytes: Uint8Array, length: number, seed: number): number {
  let h = 0x811c9dc5 ^ seed;
  for (let i = 0; i < length; i++) h = Math.imul(h ^ bytes[i]!, 0x01000193);
  // (mixed once more: FNV's low bits, which pick the slot, are weak for short keys)
  h ^= h >>> 15;
  return Math.imul(h, 0x2c1b3c6d) ^ (h >>> 13);
}

function widened<T extends Int32Array | Uint8Array>(from: T, size: number): T {
  const to = new (from.constructor as new (size: number) => T)(size);
  to.set(from);
  return to;
}

function grown(from: Buffer, least: number): Buffer {
  const to = Buffer.allocUnsafe(Math.max(least, 2 * from.length));
  from.copy(to);
  return to;
}
