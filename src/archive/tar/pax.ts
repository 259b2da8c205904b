/**
 * PAX extended header records (`<len> <key>=<value>\n`), parsed with Go archive/tar's rules
 * (which decide what Docker accepts) and encoded deterministically (keys sorted).
 */
import { strataError } from '../../errors.js';

/** Key → raw value bytes (values are byte strings: xattr values need not be UTF-8). */
export type PaxRecords = Map<string, Buffer>;

/** Largest PAX or GNU long-name payload accepted, as Go's maxSpecialFileSize. */
export const MAX_SPECIAL_FILE_SIZE = 1 << 20;

function bad(message: string): Error {
  return strataError('INVALID_ARCHIVE', `PAX header: ${message}`);
}

/** Parse the data of an `x`/`g` header. Later duplicates of a key win, as in Go. */
export function parsePaxRecords(data: Buffer): PaxRecords {
  const out: PaxRecords = new Map();
  let pos = 0;
  while (pos < data.length) {
    const sp = data.indexOf(0x20, pos);
    if (sp === -1) throw bad('record without a length');
    const lenText = data.toString('latin1', pos, sp);
    if (!/^[0-9]+$/.test(lenText)) throw bad(`invalid record length ${JSON.stringify(lenText.slice(0, 20))}`);
    const n = Number(lenText);
    if (!Number.isSafeInteger(n) || n < 5 || pos + n > data.length) {
      throw bad(`record length ${lenText.slice(0, 20)} does not fit the header data`);
    }
    const afterSpace = sp + 1;
    const end = pos + n;
    if (afterSpace >= end - 1) throw bad('record length ends before its key');
    if (data[end - 1] !== 0x0a) throw bad('record does not end with a newline');
    const rec = data.subarray(afterSpace, end - 1);
    const eq = rec.indexOf(0x3d);
    if (eq === -1) throw bad('record without "="');
    const keyBytes = rec.subarray(0, eq);
    const value = Buffer.from(rec.subarray(eq + 1));
    if (keyBytes.length === 0) throw bad('empty key');
    if (keyBytes.includes(0)) throw bad('key contains NUL');
    const key = keyBytes.toString('utf8');
    if ((key === 'path' || key === 'linkpath' || key === 'uname' || key === 'gname') && value.includes(0)) {
      throw bad(`${key} contains a NUL byte`);
    }
    out.set(key, value);
    pos = end;
  }
  return out;
}

/** One record, its length prefix counting itself. */
export function formatPaxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'utf8'), value, Buffer.from('\n')]);
  let size = body.length + String(body.length).length;
  if (String(size).length + body.length !== size) size = String(size).length + body.length;
  return Buffer.concat([Buffer.from(String(size), 'latin1'), body]);
}

export function encodePaxRecords(records: PaxRecords): Buffer {
  const keys = [...records.keys()].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  return Buffer.concat(keys.map((k) => formatPaxRecord(k, records.get(k)!)));
}

/** PAX time `<seconds>[.<fraction>]` (may be negative). */
export function parsePaxTime(value: string): number {
  if (!/^-?[0-9]+(\.[0-9]*)?$/.test(value)) throw bad(`invalid time ${JSON.stringify(value.slice(0, 40))}`);
  const n = Number(value);
  if (!Number.isFinite(n)) throw bad(`invalid time ${JSON.stringify(value.slice(0, 40))}`);
  return n;
}

export function parsePaxInteger(key: string, value: string): number {
  if (!/^-?[0-9]+$/.test(value)) throw bad(`invalid ${key} ${JSON.stringify(value.slice(0, 40))}`);
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw bad(`${key} ${value.slice(0, 40)} is out of range`);
  return n;
}
