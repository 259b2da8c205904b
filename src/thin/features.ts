import { strataError } from '../errors.js';

/** thin-pool feature arguments (dm-thin.c parse_pool_features). */
export interface PoolFeatures {
  skipBlockZeroing: boolean;
  ignoreDiscard: boolean;
  noDiscardPassdown: boolean;
  readOnly: boolean;
  errorIfNoSpace: boolean;
}

/** Table order, as pool_status emits them. */
const WORDS: Array<[string, keyof PoolFeatures]> = [
  ['skip_block_zeroing', 'skipBlockZeroing'],
  ['ignore_discard', 'ignoreDiscard'],
  ['no_discard_passdown', 'noDiscardPassdown'],
  ['read_only', 'readOnly'],
  ['error_if_no_space', 'errorIfNoSpace'],
];

export const NO_FEATURES: PoolFeatures = {
  skipBlockZeroing: false, ignoreDiscard: false, noDiscardPassdown: false, readOnly: false, errorIfNoSpace: false,
};

/** Parse feature words (case-insensitive, like the kernel). */
export function parseFeatures(words: readonly string[]): PoolFeatures {
  const f = { ...NO_FEATURES };
  for (const w of words) {
    const hit = WORDS.find(([word]) => word === w.toLowerCase());
    if (!hit) throw strataError('INVALID_TABLE', `unknown thin-pool feature ${JSON.stringify(w)}`);
    f[hit[1]] = true;
  }
  return f;
}

export function featureWords(f: PoolFeatures): string[] {
  return WORDS.filter(([, key]) => f[key]).map(([word]) => word);
}

export function normaliseFeatures(f: Partial<PoolFeatures> | readonly string[] | undefined): PoolFeatures {
  if (f === undefined) return { ...NO_FEATURES };
  if (Array.isArray(f)) return parseFeatures(f as readonly string[]);
  return { ...NO_FEATURES, ...(f as Partial<PoolFeatures>) };
}
