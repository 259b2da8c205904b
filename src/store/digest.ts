import { createHash } from 'node:crypto';
import { strataError } from '../errors.js';

/** `sha256:<64 hex>`: a DiffID, ChainID or image ID. */
export type Digest = `sha256:${string}`;

const DIGEST = /^sha256:[a-f0-9]{64}$/;

export function sha256(data: string | Uint8Array): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

export function isDigest(text: string): text is Digest {
  return DIGEST.test(text);
}

/** Parse a digest read from disk or input, trimming whitespace as moby does. */
export function parseDigest(text: string, what = 'digest'): Digest {
  const trimmed = text.trim();
  if (!isDigest(trimmed)) throw strataError('STORE_CORRUPT', `invalid ${what}: ${JSON.stringify(trimmed.slice(0, 80))}`);
  return trimmed;
}

export function hexOf(digest: Digest): string {
  return digest.slice('sha256:'.length);
}

/**
 * Docker's ChainID: ChainID(L0) = DiffID(L0); ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(Ln)).
 * Returns the chain id of every prefix, base first.
 */
export function chainIds(diffIds: readonly Digest[]): Digest[] {
  const out: Digest[] = [];
  for (const diffId of diffIds) {
    const previous = out[out.length - 1];
    out.push(previous === undefined ? diffId : sha256(`${previous} ${diffId}`));
  }
  return out;
}

export function chainId(diffIds: readonly Digest[]): Digest | null {
  return chainIds(diffIds).at(-1) ?? null;
}

/**
 * JSON as Go's encoding/json writes it: `<`, `>`, `&`, U+2028 and U+2029 escaped. Image IDs are
 * hashes of config bytes, so configs Strata creates must serialize the way Docker's do.
 */
export function goJson(value: unknown): string {
  return JSON.stringify(value)
    .replace(/</g, '\\u003c')
    .replace(/>/g, '\\u003e')
    .replace(/&/g, '\\u0026')
    .replace(/\u2028/g, '\\u2028')
    .replace(/\u2029/g, '\\u2029');
}

/** RFC 3339 UTC with trailing fractional zeros removed, as Go's time.Time marshals. */
export function goTime(date: Date = new Date()): string {
  return date.toISOString().replace(/\.?0+Z$/, 'Z');
}
