import { join } from 'node:path';
import { mkdir } from 'node:fs/promises';
import { lockFile } from '../util/file-lock.js';

/**
 * Proof that the caller holds the root's write lock. Mutating store methods take one, so the
 * type states the precondition (containers/storage can only say it in comments).
 */
export interface WriteTxn {
  readonly root: string;
}

/** Run `fn` holding the exclusive lock on `<root>/.strata.lock`, across processes. */
export async function withWriteLock<T>(root: string, fn: (txn: WriteTxn) => Promise<T>, timeoutMs?: number): Promise<T> {
  await mkdir(root, { recursive: true });
  const lock = await lockFile(join(root, '.strata.lock'), timeoutMs === undefined ? {} : { timeoutMs });
  try {
    return await fn({ root });
  } finally {
    await lock.release();
  }
}
