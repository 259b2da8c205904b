/**
 * What the NBD server serves: a range of bytes with a few operations. The server validates every
 * request (range, flags, read-only) before calling these hooks, so implementations never repeat
 * the checks; they only do the I/O.
 *
 * Lifecycle: an export is registered with a server by name; any number of connections may use it
 * at once (the server advertises CAN_MULTI_CONN, so `flush` must make every completed write
 * durable, whichever connection wrote it). The owner closes it after the server stops serving it.
 *
 * Errors: throw a StrataError (POOL_NO_SPACE → NBD_ENOSPC, POOL_READ_ONLY → NBD_EPERM,
 * OUT_OF_RANGE → NBD_EINVAL, NOT_IMPLEMENTED on a fast-zero request → NBD_ENOTSUP) or a Node errno
 * error (ENOSPC/EDQUOT/EFBIG → NBD_ENOSPC, EROFS/EPERM/EACCES → NBD_EPERM); anything else is
 * answered NBD_EIO. The connection and the server carry on either way.
 */
import type { BatchRequest, PlannedBatch } from '../thin/thin-device.js';
import type { ReadMap } from '../thin/read-map.js';

/** One run of bytes with the same allocation state (`base:allocation`). */
export interface NbdExtent {
  offset: number;
  length: number;
  /** Not provisioned: reads as zero, a write may hit ENOSPC. */
  hole: boolean;
  /** Reads as zeroes. */
  zero: boolean;
}

export interface WriteOptions {
  /** Force unit access: durable before returning. */
  fua: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** The client forbids deallocation (NBD_CMD_FLAG_NO_HOLE). */
  noHole: boolean;
  /** Fail with NOT_IMPLEMENTED unless zeroing is faster than writing zeroes (NBD_CMD_FLAG_FAST_ZERO). */
  fastZero: boolean;
}

/**
 * Writes of whole, aligned blocks a connection's thread makes into data blocks leased to it, and
 * answers at once; the blocks are mapped afterwards, in order with everything else (a thin
 * device: Pool.leaseDataBlocks, ThinDevice.adopt, Pool.beforeEachLock).
 */
export interface LeasedWrites {
  readonly blockBytes: number;
  /** [FAST_OPEN, FAST_INFLIGHT] in shared memory (thin-device.ts): writes start only while open. */
  readonly gate: Int32Array;
  /** The pool's map epoch (ReadMaps.epoch): the thread adds one to it once it has published writes, before it answers them. */
  readonly mapEpoch: Int32Array;
  lease(max: number): number[];
  returnLease(blocks: readonly number[]): void;
  /** Map virtual block `vblocks[i]` to `blocks[i]`, which holds its data, in order. */
  adopt(vblocks: readonly number[], blocks: readonly number[]): Promise<void>;
  /** Call `hook` before anything else takes the pool's mutex, until the returned function is called. */
  beforeEachLock(hook: () => void): () => void;
}

/**
 * Maps of where a thin device's blocks are, for a connection's thread to plan READs inside them
 * itself (read-map.ts): a map is valid while `epoch`, in shared memory, is what it was before the
 * map was asked for, and each read made from one is held in `gate` (as writes into leased blocks
 * are: a suspend waits for it) and checked against `epoch` again once done.
 */
export interface ReadMaps {
  readonly blockBytes: number;
  readonly epoch: Int32Array;
  readonly gate: Int32Array;
  lookUp(offset: number, length: number): Promise<ReadMap>;
}

export interface NbdExport {
  readonly name: string;
  readonly description?: string;
  /** Size in bytes (a safe integer: exports up to 8 PiB). */
  readonly size: number;
  readonly readOnly?: boolean;
  /** Block size constraints advertised with NBD_INFO_BLOCK_SIZE (defaults 1 / 4096 / 32 MiB). */
  readonly minBlock?: number;
  readonly prefBlock?: number;
  readonly maxBlock?: number;
  /**
   * The export's bytes are in this open file, which stays open while the server serves it:
   * connections may then be served on threads with blocking calls to it (transmission-threads.ts),
   * the export's methods called only for the rest. Without `plan`, the export is the file's first
   * `size` bytes (reading as zeroes past its end). With it, they are wherever `plan` puts each
   * batch of reads and writes (a thin device's data blocks: ThinDevice.planBatch).
   */
  readonly blockingFile?: {
    readonly fd: number;
    plan?(requests: readonly BatchRequest[]): Promise<PlannedBatch>;
    /** With `plan`: whole-block writes a thread may make into leased blocks and answer at once. */
    readonly leasedWrites?: LeasedWrites;
    /** With `plan`: maps a thread plans READs from itself. */
    readonly readMaps?: ReadMaps;
  };

  /** Fill `buf` from `offset` (the range is inside the export). */
  read(buf: Buffer, offset: number): Promise<void>;
  /** `buf` is the server's (reused for later requests): copy what must outlive the promise. */
  write(buf: Buffer, offset: number, options: WriteOptions): Promise<void>;
  /**
   * The same write, its bytes in pieces (a WRITE payload as the socket delivered it, so nothing
   * is copied on the way to pwritev). Optional: without it the server copies the pieces into one
   * buffer for `write`. The pieces are the server's too: copy what must outlive the promise.
   */
  writev?(bufs: readonly Buffer[], offset: number, options: WriteOptions): Promise<void>;
  flush(): Promise<void>;
  /** Discard: a hint; contents are undefined until rewritten. Absent: TRIM not advertised. */
  trim?(offset: number, length: number, options: WriteOptions): Promise<void>;
  /** Absent: the server writes zero buffers through `write` (and refuses FAST_ZERO). */
  writeZeroes?(offset: number, length: number, options: ZeroOptions): Promise<void>;
  /**
   * Allocation map from `offset`: contiguous extents, the first starting at `offset`, covering at
   * least one byte (they may stop before `offset + length`; the client asks again). Absent: all
   * data.
   */
  blockStatus?(offset: number, length: number): Promise<NbdExtent[]>;
  /** Prefetch hint. Absent: CACHE is answered at once. */
  cache?(offset: number, length: number): Promise<void>;
}
