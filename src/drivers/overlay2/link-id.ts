import { randomBytes } from 'node:crypto';

/**
 * Short names for `l/` links. Docker uses 26 characters of base32 (A–Z, 2–7): short enough that
 * 128 lowers of `l/<id>:` fit in one page of mount options, random enough never to collide.
 */
export const LINK_ID_LENGTH = 26;

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** RFC 4648 base32 without padding (Go's base32.StdEncoding, minus the `=`). */
export function base32(bytes: Uint8Array): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    value &= (1 << bits) - 1;
  }
  if (bits > 0) out += ALPHABET[(value << (5 - bits)) & 31];
  return out;
}

export function generateLinkId(random: (n: number) => Uint8Array = randomBytes): string {
  // 17 bytes give 28 base32 characters; Docker keeps the first 26.
  return base32(random(17)).slice(0, LINK_ID_LENGTH);
}

export function isLinkId(text: string): boolean {
  return /^[A-Z2-7]{26}$/.test(text);
}
