/**
 * Validation of a request against the negotiated state, before the export sees it: which NBD
 * error a malformed or out-of-range request earns (proto.md "Error values": write past the end →
 * ENOSPC, read/trim past the end or a bad flag → EINVAL, writes to a read-only export → EPERM,
 * oversize no-payload reads → EOVERFLOW).
 */
import { CMD, CMD_FLAG, NBD_ERR, type NbdErrno } from './protocol.js';
import type { Request } from './request-codec.js';

export interface CheckContext {
  size: number;
  readOnly: boolean;
  structuredReplies: boolean;
  /** A meta context (base:allocation) was selected with SET_META_CONTEXT. */
  metaContext: boolean;
  maxPayload: number;
}

const KNOWN_FLAGS = CMD_FLAG.FUA | CMD_FLAG.NO_HOLE | CMD_FLAG.DF | CMD_FLAG.REQ_ONE | CMD_FLAG.FAST_ZERO;

/** Flags that only make sense on one command type. */
const FLAG_OWNER: Array<[number, number]> = [
  [CMD_FLAG.NO_HOLE, CMD.WRITE_ZEROES],
  [CMD_FLAG.FAST_ZERO, CMD.WRITE_ZEROES],
  [CMD_FLAG.DF, CMD.READ],
  [CMD_FLAG.REQ_ONE, CMD.BLOCK_STATUS],
];

function beyond(req: Request, size: number): boolean {
  return req.offsetOverflow || req.offset > size || req.length > size - req.offset;
}

/** 0 when the request may proceed, else the NBD error to answer with. */
export function checkRequest(req: Request, ctx: CheckContext): 0 | NbdErrno {
  if ((req.flags & ~KNOWN_FLAGS) !== 0) return NBD_ERR.EINVAL;
  for (const [flag, owner] of FLAG_OWNER) {
    if ((req.flags & flag) !== 0 && req.type !== owner) return NBD_ERR.EINVAL;
  }
  switch (req.type) {
    case CMD.READ:
      if ((req.flags & CMD_FLAG.DF) !== 0 && !ctx.structuredReplies) return NBD_ERR.EINVAL;
      if (beyond(req, ctx.size)) return NBD_ERR.EINVAL;
      if (req.length > ctx.maxPayload) return NBD_ERR.EOVERFLOW;
      return 0;
    case CMD.WRITE:
      if (ctx.readOnly) return NBD_ERR.EPERM;
      if (req.length > ctx.maxPayload) return NBD_ERR.EINVAL;
      if (beyond(req, ctx.size)) return NBD_ERR.ENOSPC;
      return 0;
    case CMD.WRITE_ZEROES:
      if (ctx.readOnly) return NBD_ERR.EPERM;
      if (beyond(req, ctx.size)) return NBD_ERR.ENOSPC;
      return 0;
    case CMD.TRIM:
      if (ctx.readOnly) return NBD_ERR.EPERM;
      if (beyond(req, ctx.size)) return NBD_ERR.EINVAL;
      return 0;
    case CMD.FLUSH:
      return req.offset !== 0 || req.length !== 0 || req.offsetOverflow ? NBD_ERR.EINVAL : 0;
    case CMD.CACHE:
      return beyond(req, ctx.size) ? NBD_ERR.EINVAL : 0;
    case CMD.BLOCK_STATUS:
      if (!ctx.structuredReplies || !ctx.metaContext) return NBD_ERR.EINVAL;
      if (req.length === 0 || beyond(req, ctx.size)) return NBD_ERR.EINVAL;
      return 0;
    case CMD.DISC:
      return 0;
    default:
      return NBD_ERR.EINVAL;
  }
}
