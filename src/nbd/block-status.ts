/**
 * Shaping an export's allocation map into a BLOCK_STATUS reply (proto.md "BLOCK_STATUS"):
 * extents start at the requested offset, are non-empty, contiguous, merged when their flags are
 * equal, never run past the request (so each fits the u32 length field), number at most 2^20, and
 * with REQ_ONE there is exactly one.
 */
import { MAX_EXTENTS } from './protocol.js';
import type { NbdExtent } from './nbd-export.js';

export function shapeExtents(
  extents: readonly NbdExtent[], offset: number, length: number, reqOne: boolean, maxExtents = MAX_EXTENTS,
): NbdExtent[] {
  const end = offset + length;
  const out: NbdExtent[] = [];
  let pos = offset;
  for (const e of extents) {
    if (pos >= end) break;
    const eEnd = e.offset + e.length;
    if (eEnd <= pos) continue; // wholly before where we are
    if (e.offset > pos) break; // a gap: report what is contiguous, the client asks again
    const len = Math.min(eEnd, end) - pos;
    const last = out[out.length - 1];
    if (last && last.hole === e.hole && last.zero === e.zero) {
      last.length += len;
    } else {
      if (out.length === maxExtents) break;
      out.push({ offset: pos, length: len, hole: e.hole, zero: e.zero });
    }
    pos += len;
  }
  // An export that reported nothing useful: calling it all data is always truthful.
  if (out.length === 0) return [{ offset, length, hole: false, zero: false }];
  return reqOne ? out.slice(0, 1) : out;
}
