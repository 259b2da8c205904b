import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { isLayerId } from './layer-id.js';

/** The names in `dir` that are layer ids (not leftovers, links or housekeeping). */
export async function layerIdsIn(dir: string): Promise<string[]> {
  return (await readdir(dir).catch(() => [] as string[])).filter(isLayerId).sort();
}

/**
 * Drivers build a layer under a `.new-*` name and rename a doomed one to `.rm-*` before deleting
 * it, so a crash leaves one of those rather than a torn layer under a live id. Layer ids never
 * start with a dot (layer-id.ts), so the prefixes cannot match one. Returns what was removed.
 */
export async function sweepLeftovers(dir: string, prefixes: string[]): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (!prefixes.some((p) => name.startsWith(p))) continue;
    await rm(join(dir, name), { recursive: true, force: true });
    removed.push(`removed ${join(dir, name)}, left by an interrupted ${name.startsWith('.rm-') ? 'remove' : 'create'}`);
  }
  return removed;
}
