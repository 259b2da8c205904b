/**
 * The service's control protocol: one JSON request line per connection, one JSON reply line.
 * Errors cross as `{ ok: false, code, message }` and become StrataErrors with the same code on
 * the client side, so callers branch on codes exactly as they would in-process.
 */
import { ERROR_CODES, isStrataError, strataError, type ErrorCode, type StrataError } from '../errors.js';

export type ServiceRequest =
  | { op: 'ping' }
  | { op: 'list' }
  | { op: 'sync' }
  | { op: 'activate'; name: string }
  | { op: 'deactivate'; name: string; force?: boolean }
  | { op: 'create'; name: string; table: string }
  | { op: 'remove'; name: string; force?: boolean }
  | { op: 'message'; pool: string; text: string }
  | { op: 'suspend'; name: string }
  | { op: 'resume'; name: string }
  | { op: 'status'; name: string }
  | { op: 'stop' };

export interface ActiveDevice {
  name: string;
  socket: string;
  pool: string;
  devId: number;
  size: number;
  suspended: boolean;
  clients: number;
}

export interface SyncResult {
  activated: string[];
  deactivated: string[];
  /** Names that could not be (de)activated, with the reason. */
  failed: Array<{ name: string; code: string; message: string }>;
}

export type ServiceReply = { ok: true; result: unknown } | { ok: false; code: string; message: string };

const OPS = new Set(['ping', 'list', 'sync', 'activate', 'deactivate', 'create', 'remove', 'message', 'suspend', 'resume', 'status', 'stop']);

export function decodeServiceRequest(line: string): ServiceRequest {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw strataError('PROTOCOL_ERROR', 'control request is not JSON');
  }
  const v = value as Record<string, unknown>;
  if (typeof v !== 'object' || v === null || typeof v.op !== 'string' || !OPS.has(v.op)) {
    throw strataError('PROTOCOL_ERROR', 'control request has no known op');
  }
  for (const key of ['name', 'table', 'pool', 'text'] as const) {
    if (key in v && typeof v[key] !== 'string') throw strataError('PROTOCOL_ERROR', `control request field ${key} must be a string`);
  }
  const needs: Record<string, string[]> = {
    activate: ['name'], deactivate: ['name'], create: ['name', 'table'], remove: ['name'],
    message: ['pool', 'text'], suspend: ['name'], resume: ['name'], status: ['name'],
  };
  for (const key of needs[v.op] ?? []) {
    if (typeof v[key] !== 'string') throw strataError('PROTOCOL_ERROR', `control request ${v.op} needs ${key}`);
  }
  return v as unknown as ServiceRequest;
}

export function encodeReplyError(err: unknown): ServiceReply {
  if (isStrataError(err)) return { ok: false, code: err.code, message: err.message };
  return { ok: false, code: 'INTERNAL', message: err instanceof Error ? err.message : String(err) };
}

export function replyError(reply: { code: string; message: string }): StrataError {
  const code = (reply.code in ERROR_CODES ? reply.code : 'INTERNAL') as ErrorCode;
  return strataError(code, reply.message);
}
