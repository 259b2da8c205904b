import { strataError } from '../errors.js';

/** A parsed pool message (dm-thin.c pool_message; keywords case-insensitive, exact arg counts). */
export type PoolMessage =
  | { kind: 'create_thin'; id: number }
  | { kind: 'create_snap'; id: number; origin: number }
  | { kind: 'delete'; id: number }
  | { kind: 'set_transaction_id'; current: number; next: number }
  | { kind: 'reserve_metadata_snap' }
  | { kind: 'release_metadata_snap' };

const ARGS: Record<PoolMessage['kind'], number> = {
  create_thin: 1, create_snap: 2, delete: 1, set_transaction_id: 2, reserve_metadata_snap: 0, release_metadata_snap: 0,
};

function num(word: string, what: string): number {
  if (!/^\d+$/.test(word)) throw strataError('INVALID_MESSAGE', `invalid ${what} ${JSON.stringify(word)}`);
  const n = Number(word);
  if (!Number.isSafeInteger(n)) throw strataError('OUT_OF_RANGE', `${what} ${word} is too large`);
  return n;
}

export function parseMessage(text: string): PoolMessage {
  const words = text.trim().split(/\s+/).filter(Boolean);
  const kind = (words[0] ?? '').toLowerCase() as PoolMessage['kind'];
  if (!(kind in ARGS)) throw strataError('INVALID_MESSAGE', `unrecognised pool message ${JSON.stringify(text)}`);
  if (words.length - 1 !== ARGS[kind]) {
    throw strataError('INVALID_MESSAGE', `${kind} takes ${ARGS[kind]} argument(s), got ${words.length - 1}`);
  }
  switch (kind) {
    case 'create_thin': return { kind, id: num(words[1]!, 'device id') };
    case 'create_snap': return { kind, id: num(words[1]!, 'device id'), origin: num(words[2]!, 'origin id') };
    case 'delete': return { kind, id: num(words[1]!, 'device id') };
    case 'set_transaction_id': return { kind, current: num(words[1]!, 'transaction id'), next: num(words[2]!, 'transaction id') };
    default: return { kind } as PoolMessage;
  }
}

export function formatMessage(m: PoolMessage): string {
  switch (m.kind) {
    case 'create_thin': return `create_thin ${m.id}`;
    case 'create_snap': return `create_snap ${m.id} ${m.origin}`;
    case 'delete': return `delete ${m.id}`;
    case 'set_transaction_id': return `set_transaction_id ${m.current} ${m.next}`;
    default: return m.kind;
  }
}
