import { mkdtemp, rm, open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { Pool, type PoolOptions } from '../../src/thin/pool.js';
import { MemoryBlockDevice, CrashController, FileBlockDevice } from '../../src/thin/block-device.js';
import { ThinMetadata } from '../../src/thin/metadata.js';
import { checkMetadata, type CheckReport } from '../../src/thin/check.js';

export { rng } from '../helpers/rng.js';

export async function tempDir(prefix = 'strata-thin-'): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

export async function sparseFile(path: string, size: number): Promise<void> {
  const h = await open(path, 'w');
  await h.truncate(size);
  await h.close();
}

/** The thin-provisioning-tools binaries (Debian's 0.9.0 in CI); tests using them skip when absent. */
export const thinTools = spawnSync('thin_check', ['-V'], { encoding: 'utf8' }).status === 0;
export const NO_TOOLS = thinTools ? false : 'thin-provisioning-tools (thin_check, thin_dump, thin_restore) not installed';

export function tool(cmd: string, args: string[]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 30 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

export async function filePool(dir: string, opts: Partial<PoolOptions> & { metaBytes?: number; dataBytes?: number } = {}): Promise<Pool> {
  const metadataPath = join(dir, 'metadata');
  const dataPath = join(dir, 'data');
  await sparseFile(metadataPath, opts.metaBytes ?? 8 << 20);
  await sparseFile(dataPath, opts.dataBytes ?? 64 << 20);
  return Pool.open({ metadataPath, dataPath, dataBlockSectors: 128, ...opts });
}

export interface MemPool {
  pool: Pool;
  meta: MemoryBlockDevice;
  data: MemoryBlockDevice;
}

export async function memPool(
  opts: Partial<PoolOptions> & { metaBytes?: number; dataBytes?: number; crash?: CrashController } = {},
): Promise<MemPool> {
  const crash = opts.crash ?? new CrashController();
  const meta = new MemoryBlockDevice(opts.metaBytes ?? 4 << 20, crash);
  const data = new MemoryBlockDevice(opts.dataBytes ?? 16 << 20, crash);
  const pool = await Pool.open({ metadataDevice: meta, dataDevice: data, dataBlockSectors: 128, ...opts });
  return { pool, meta, data };
}

/** Open metadata read-only from a device and run Strata's checker. */
export async function checkDevice(dev: MemoryBlockDevice | FileBlockDevice): Promise<CheckReport> {
  const md = await ThinMetadata.open(dev, { readOnly: true });
  return checkMetadata(md);
}

/** Deterministic bytes for (tag, offset). */
export function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}
