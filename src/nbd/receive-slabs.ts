/**
 * Socket reads into reused memory. By default Node reads a socket into a fresh 64 KiB allocation
 * per read(2); at NBD write rates (hundreds of MiB/s of WRITE payload) that is thousands of
 * mallocs, page faults on never-touched memory, and garbage per second. Measured on the WRITE
 * path, page faults under the socket read alone cost more CPU than the copy into the page cache
 * did for nbdkit.
 *
 * Here reads land back to back in 512 KiB slabs: each read(2) fills the free tail of the current
 * slab, the bytes read are handed on as a view of it, and a slab goes back to a free list (shared
 * by every connection, capped at 16 MiB) once no view of it is held any more. An idle connection
 * holds its current slab: 512 KiB each. WRITE payloads go from these
 * views straight to pwritev, so a payload byte is copied twice (socket → slab, slab → page cache)
 * as in nbdkit, into memory that is already mapped.
 *
 * Node documents this mechanism (`onread` with a buffer function) for sockets it connects, not
 * for sockets a server accepts; `attachReceiveSlabs` sets the same three fields on an accepted
 * socket. Their names are found on a probe socket built with `onread` and checked to hold what
 * was passed in; when that fails (another Node), it returns null and the caller reads 'data'
 * events as before.
 */
import { Socket } from 'node:net';

const SLAB_BYTES = 512 * 1024;
/** A tail shorter than this is not offered for a read: the next read starts a new slab. */
const MIN_READ = 64 * 1024;
/** Free slabs kept for reuse across all connections (16 MiB). */
const MAX_FREE_SLABS = 32;

export class Slab {
  /** Views handed out and not yet released, plus one while reads still land in it. */
  refs = 1;
  used = 0;
  constructor(readonly buf: Buffer) {}
}

const freeSlabs: Slab[] = [];

function newSlab(): Slab {
  const s = freeSlabs.pop();
  if (s) {
    s.refs = 1;
    s.used = 0;
    return s;
  }
  return new Slab(Buffer.allocUnsafeSlow(SLAB_BYTES));
}

export function releaseSlab(slab: Slab): void {
  if (--slab.refs === 0 && freeSlabs.length < MAX_FREE_SLABS) freeSlabs.push(slab);
}

interface OnreadFields {
  buffer: symbol;
  callback: symbol;
  generator: symbol;
}

let fields: OnreadFields | null | undefined;

/** The private fields behind `onread` on this Node, or null. */
function onreadFields(): OnreadFields | null {
  if (fields !== undefined) return fields;
  fields = null;
  try {
    const gen = (): Buffer => Buffer.alloc(1);
    const cb = (): void => undefined;
    // (documented for net.Socket; missing from this @types/node's SocketConstructorOpts)
    const probe = new Socket({ onread: { buffer: gen, callback: cb } } as ConstructorParameters<typeof Socket>[0]);
    const rec = probe as unknown as Record<symbol, unknown>;
    const find = (name: string): symbol | undefined =>
      Object.getOwnPropertySymbols(probe).find((s) => s.description === name);
    const buffer = find('kBuffer');
    const callback = find('kBufferCb');
    const generator = find('kBufferGen');
    if (buffer && callback && generator && rec[buffer] === true && rec[callback] === cb && rec[generator] === gen) {
      fields = { buffer, callback, generator };
    }
    probe.destroy();
  } catch {
    fields = null;
  }
  return fields;
}

interface ReadableHandle {
  useUserBuffer?: (buf: Uint8Array) => void;
  reading?: boolean;
}

/**
 * Make a paused, freshly accepted socket read into slabs: `onData(view, slab)` gets each read's
 * bytes (the receiver calls `releaseSlab(slab)` once done with the view). Then resume the socket.
 * Returns false, changing nothing, where this Node does not allow it.
 */
export function attachReceiveSlabs(socket: Socket, onData: (view: Buffer, slab: Slab) => void): boolean {
  const f = onreadFields();
  const handle = (socket as unknown as { _handle?: ReadableHandle | null })._handle;
  if (!f || !handle || typeof handle.useUserBuffer !== 'function' || handle.reading) return false;
  let slab = newSlab();
  let next = slab.buf;
  const nextBuffer = (): Buffer => {
    if (SLAB_BYTES - slab.used < MIN_READ) {
      releaseSlab(slab); // reads no longer land in it
      slab = newSlab();
    }
    next = slab.buf.subarray(slab.used);
    return next;
  };
  const rec = socket as unknown as Record<symbol, unknown>;
  rec[f.generator] = nextBuffer;
  rec[f.callback] = (nread: number, buf: Buffer): void => {
    // `buf` is the tail handed out last (`next`): its first nread bytes are what was read
    const view = buf.subarray(0, nread);
    slab.used += nread;
    slab.refs++;
    onData(view, slab);
  };
  rec[f.buffer] = next;
  handle.useUserBuffer(next);
  // Node keeps only a raw pointer to the buffer it reads into: `slab` (held by the closures above
  // for the socket's lifetime) keeps it alive. When the socket closes, the current slab goes back.
  socket.once('close', () => releaseSlab(slab));
  return true;
}
