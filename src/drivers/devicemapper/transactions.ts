/**
 * The two-phase commit between the driver's JSON files and the pool (moby's
 * `openTransaction` / `closeTransaction` / `processPendingTransaction`), as pure decisions.
 *
 * Every create or delete runs:
 *   1. write `transaction-metadata` with open_transaction_id = pool transaction id + 1,
 *      and the device hash and id it is about;
 *   2. send the pool message (`create_thin`, `create_snap` or `delete`);
 *   3. write (or remove) the device's JSON;
 *   4. `set_transaction_id <pool id> <open id>`: the commit point.
 * A SIGKILL anywhere before 4 leaves the pool's id behind the open one; the next start then
 * rolls back: the device id is deleted from the pool (if it got there) and its JSON removed.
 * For a create that undoes it; for a delete it finishes it. Either way, JSON and pool agree.
 */
export interface OpenTransaction {
  open_transaction_id: number;
  device_hash: string;
  device_id: number;
}

export type Recovery =
  | { kind: 'none' }
  | { kind: 'rollback'; deviceHash: string; deviceId: number }
  /** The pool is ahead of what was ever opened: the metadata files are not this pool's. */
  | { kind: 'mismatch'; poolTransactionId: number; openTransactionId: number };

export function decideRecovery(poolTransactionId: number, open: OpenTransaction | null): Recovery {
  if (open === null || open.open_transaction_id === poolTransactionId) return { kind: 'none' };
  if (open.open_transaction_id > poolTransactionId) {
    return { kind: 'rollback', deviceHash: open.device_hash, deviceId: open.device_id };
  }
  return { kind: 'mismatch', poolTransactionId, openTransactionId: open.open_transaction_id };
}

/** The record written in step 1. */
export function openTransaction(poolTransactionId: number, deviceHash: string, deviceId: number): OpenTransaction {
  return { open_transaction_id: poolTransactionId + 1, device_hash: deviceHash, device_id: deviceId };
}
