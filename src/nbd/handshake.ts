/**
 * Option haggling for one connection (proto.md "Fixed newstyle negotiation"). Ends with an export
 * chosen (GO or EXPORT_NAME) or the connection abandoned (ABORT, EOF, a client we cannot talk to).
 */
import type { Socket } from 'node:net';
import { isStrataError } from '../errors.js';
import {
  OPT, REP, INFO, TFLAG, FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, MAX_OPTION_DATA,
  DEFAULT_MAX_PAYLOAD, BASE_ALLOCATION,
} from './protocol.js';
import {
  encodeGreeting, decodeOptionHeader, encodeOptionReply, encodeErrorReply, encodeServerEntry,
  encodeInfoExport, encodeInfoText, encodeInfoBlockSize, encodeMetaContext, encodeExportNameReply,
  decodeGoData, decodeMetaContextData, matchMetaContexts, OPTION_HEADER_LENGTH,
} from './option-codec.js';
import type { SocketReader } from './socket-reader.js';
import type { NbdExport } from './nbd-export.js';

/** Where the handshake finds exports by name. */
export interface ExportLookup {
  find(name: string): NbdExport | undefined;
  list(): NbdExport[];
}

/** The id we hand out for base:allocation in SET_META_CONTEXT (LIST answers with 0). */
export const BASE_ALLOCATION_ID = 1;

export interface Negotiated {
  export: NbdExport;
  structuredReplies: boolean;
  /** base:allocation was selected for this export. */
  metaContext: boolean;
}

export interface BlockSizes {
  min: number;
  preferred: number;
  max: number;
}

export function blockSizesOf(exp: NbdExport): BlockSizes {
  return {
    min: exp.minBlock ?? 1,
    preferred: exp.prefBlock ?? 4096,
    max: exp.maxBlock ?? DEFAULT_MAX_PAYLOAD,
  };
}

/** Transmission flags we advertise for an export. */
export function transmissionFlags(exp: NbdExport, structuredReplies: boolean): number {
  let flags = TFLAG.HAS_FLAGS | TFLAG.SEND_FLUSH | TFLAG.SEND_FUA | TFLAG.SEND_CACHE |
    // flush goes to the shared export, so it covers every connection's writes
    TFLAG.CAN_MULTI_CONN;
  if (exp.readOnly) flags |= TFLAG.READ_ONLY;
  else {
    flags |= TFLAG.SEND_WRITE_ZEROES | TFLAG.SEND_FAST_ZERO;
    if (exp.trim) flags |= TFLAG.SEND_TRIM;
  }
  if (structuredReplies) flags |= TFLAG.SEND_DF;
  return flags;
}

class Abandon extends Error {}

export async function negotiate(socket: Socket, reader: SocketReader, exports: ExportLookup): Promise<Negotiated | null> {
  socket.write(encodeGreeting());
  const clientFlags = (await reader.read(4)).readUInt32BE(0);
  // Unknown client flags: the spec says drop the connection. A client without FIXED_NEWSTYLE
  // (plain newstyle) still works: it only ever expects replies we also send fixed clients.
  if ((clientFlags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)) !== 0) return null;
  const noZeroes = (clientFlags & FLAG_C_NO_ZEROES) !== 0;

  let structuredReplies = false;
  let metaFor: string | undefined; // export name base:allocation was selected for

  const reply = (option: number, type: number, data?: Buffer): void => {
    socket.write(encodeOptionReply(option, type, data));
  };
  const fail = (option: number, type: number, message: string): void => {
    socket.write(encodeErrorReply(option, type, message));
  };
  const resolve = (name: string): NbdExport | undefined => {
    const found = exports.find(name);
    if (found || name !== '') return found;
    const all = exports.list();
    return all.length === 1 ? all[0] : undefined; // the default export when there is only one
  };

  for (;;) {
    const { option, length } = decodeOptionHeader(await reader.read(OPTION_HEADER_LENGTH));
    if (length > MAX_OPTION_DATA) {
      if (option === OPT.EXPORT_NAME) return null; // no error path exists for EXPORT_NAME
      await reader.skip(length);
      fail(option, REP.ERR_TOO_BIG, `option data of ${length} bytes is too large`);
      continue;
    }
    const data = await reader.read(length);
    try {
      switch (option) {
        case OPT.EXPORT_NAME: {
          const exp = resolve(data.toString('utf8'));
          if (!exp) return null; // the protocol says: just close
          socket.write(encodeExportNameReply(exp.size, transmissionFlags(exp, structuredReplies), noZeroes));
          return { export: exp, structuredReplies, metaContext: structuredReplies && metaFor === exp.name };
        }
        case OPT.ABORT:
          reply(option, REP.ACK);
          throw new Abandon();
        case OPT.LIST:
          if (length !== 0) {
            fail(option, REP.ERR_INVALID, 'NBD_OPT_LIST takes no data');
            break;
          }
          for (const exp of exports.list()) reply(option, REP.SERVER, encodeServerEntry(exp.name, exp.description));
          reply(option, REP.ACK);
          break;
        case OPT.STRUCTURED_REPLY:
          if (length !== 0) {
            fail(option, REP.ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
            break;
          }
          structuredReplies = true;
          reply(option, REP.ACK);
          break;
        case OPT.INFO:
        case OPT.GO: {
          const go = decodeGoData(data);
          const exp = resolve(go.name);
          if (!exp) {
            fail(option, REP.ERR_UNKNOWN, `no export named "${go.name}"`);
            break;
          }
          reply(option, REP.INFO, encodeInfoExport(exp.size, transmissionFlags(exp, structuredReplies)));
          if (go.infoRequests.includes(INFO.NAME)) reply(option, REP.INFO, encodeInfoText(INFO.NAME, exp.name));
          if (go.infoRequests.includes(INFO.DESCRIPTION) && exp.description !== undefined) {
            reply(option, REP.INFO, encodeInfoText(INFO.DESCRIPTION, exp.description));
          }
          const bs = blockSizesOf(exp);
          reply(option, REP.INFO, encodeInfoBlockSize(bs.min, bs.preferred, bs.max));
          reply(option, REP.ACK);
          if (option === OPT.GO) {
            // a selection made for another export does not carry over
            return { export: exp, structuredReplies, metaContext: structuredReplies && metaFor === exp.name };
          }
          break;
        }
        case OPT.LIST_META_CONTEXT:
        case OPT.SET_META_CONTEXT: {
          const setting = option === OPT.SET_META_CONTEXT;
          if (setting && !structuredReplies) {
            fail(option, REP.ERR_INVALID, 'structured replies must be negotiated first');
            break;
          }
          const req = decodeMetaContextData(data);
          const exp = resolve(req.exportName);
          if (!exp) {
            fail(option, REP.ERR_UNKNOWN, `no export named "${req.exportName}"`);
            break;
          }
          const contexts = matchMetaContexts(req.queries, !setting);
          if (setting) metaFor = contexts.includes(BASE_ALLOCATION) ? exp.name : undefined;
          for (const ctx of contexts) reply(option, REP.META_CONTEXT, encodeMetaContext(setting ? BASE_ALLOCATION_ID : 0, ctx));
          reply(option, REP.ACK);
          break;
        }
        default:
          // STARTTLS (we run in NOTLS mode), PEEK_EXPORT, EXTENDED_HEADERS and anything newer
          fail(option, REP.ERR_UNSUP, `option ${option} is not supported`);
      }
    } catch (err) {
      if (err instanceof Abandon) return null;
      if (isStrataError(err, 'PROTOCOL_ERROR') && typeof err.context.reply === 'number') {
        fail(option, err.context.reply, err.message);
        continue;
      }
      throw err;
    }
  }
}
