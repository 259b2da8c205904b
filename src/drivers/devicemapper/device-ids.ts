/**
 * Thin device ids, as moby allocates them: 24 bits (dm-thin's limit), handed out round-robin
 * starting after the last one given (`next_device_id` in deviceset-metadata), skipping ids in use
 * and wrapping at the top. Round-robin rather than lowest-free keeps a just-deleted id out of reuse
 * for as long as possible, which helps when a delete was deferred. Pure.
 */
export const MAX_DEVICE_ID = 0xffffff;

/** The first id after `last` (wrapping to 0 past MAX_DEVICE_ID) not in `used`; null when all are taken. */
export function allocateDeviceId(used: ReadonlySet<number>, last: number): number | null {
  let id = last;
  for (let tried = 0; tried <= MAX_DEVICE_ID; tried++) {
    id = id >= MAX_DEVICE_ID ? 0 : id + 1;
    if (!used.has(id)) return id;
  }
  return null;
}
