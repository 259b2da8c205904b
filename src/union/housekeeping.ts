import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { lstatOrNull } from './branches.js';
import { AUFS_MARKER, ORPH_DIR, PLINK_DIR } from './whiteout.js';

/** Mode for whiteouts and markers: aufs' whiteout base `.wh..wh.aufs` is r--r--r--. */
export const WHITEOUT_MODE = 0o444;

/** aufs' branch-root housekeeping: the whiteout base file, pseudo-link and orphan directories. */
export async function createHousekeeping(branchRoot: string): Promise<void> {
  const marker = join(branchRoot, AUFS_MARKER);
  if ((await lstatOrNull(marker)) === null) await writeFile(marker, '', { mode: WHITEOUT_MODE });
  await mkdir(join(branchRoot, PLINK_DIR), { recursive: true, mode: 0o700 });
  await mkdir(join(branchRoot, ORPH_DIR), { recursive: true, mode: 0o700 });
}
