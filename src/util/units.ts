import { strataError } from '../errors.js';

const SUFFIX: Record<string, number> = { '': 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4, p: 1024 ** 5 };

/**
 * Parse a size as Docker's `units.RAMInBytes` does: binary multiples, case-insensitive,
 * optional `b`/`ib` tail (`64k`, `10G`, `2GiB`, `512`).
 */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*$/i.exec(text);
  if (!m) throw strataError('INVALID_ARGUMENT', `invalid size: ${JSON.stringify(text)}`);
  const value = Number(m[1]) * SUFFIX[(m[2] ?? '').toLowerCase()]!;
  if (!Number.isSafeInteger(Math.floor(value))) throw strataError('INVALID_ARGUMENT', `size too large: ${text}`);
  return Math.floor(value);
}

/** Human size in Docker's style: 1.5GB, 12.3MB, 512B (decimal units, as `docker images`). */
export function formatSize(bytes: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB', 'PB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit++;
  }
  const digits = value >= 100 || unit === 0 ? 0 : value >= 10 ? 1 : 2;
  return `${Number(value.toFixed(digits))}${units[unit]}`;
}
