import type { PoolStatusFields } from '../../thin/index.js';

/**
 * The pool service's control protocol: one JSON object per line each way over a unix socket,
 * one request answered before the next is read (a client that wants concurrency opens another
 * connection). The service is the pool's only writer; drivers in short-lived processes send it
 * dm messages and ask it to serve (activate) or stop serving (deactivate) thin devices over NBD.
 */
export type ServiceRequest =
  | { op: 'hello' }
  | { op: 'status' }
  | { op: 'message'; text: string }
  | { op: 'devices' }
  | { op: 'activate'; name: string; deviceId: number; size: number }
  | { op: 'deactivate'; name: string; deferred?: boolean }
  | { op: 'discard'; deviceId: number; size: number }
  | { op: 'active' }
  | { op: 'shutdown'; force?: boolean };

export interface ServiceStatus {
  pool: PoolStatusFields;
  blockBytes: number;
}

export interface ActiveDevice {
  name: string;
  deviceId: number;
  size: number;
  clients: number;
}

export type ServiceResponse =
  | { ok: true; pid?: number; status?: ServiceStatus; ids?: number[]; active?: ActiveDevice[]; stopping?: boolean }
  | { ok: false; code: string; message: string };

/** Splits a byte stream into lines; calls `onLine` for each complete one. */
export function lineSplitter(onLine: (line: string) => void): (chunk: Buffer) => void {
  let pending = '';
  return (chunk) => {
    pending += chunk.toString('utf8');
    for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      if (line.trim()) onLine(line);
    }
  };
}

/** Unix socket paths are limited to 107 bytes (sun_path). */
export const MAX_SOCKET_PATH = 107;
