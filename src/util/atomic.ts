import { open, rename, mkdir, rm, writeFile } from 'node:fs/promises';
import { dirname, basename, join } from 'node:path';
import { randomBytes } from 'node:crypto';

/** fsync a directory so a rename or create inside it survives a crash. */
export async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** A file written and synced beside its final name, not yet in place. */
export interface PreparedFile {
  /** Rename it over the final name and fsync the directory. */
  publish(): Promise<void>;
  /** Throw it away (on an error before publishing). */
  discard(): Promise<void>;
}

/**
 * The first half of writeFileAtomic: write `data` to a temp file beside `path` and fsync it.
 * Callers with other work to do meanwhile (driver layers, another record) publish it later and
 * so take the sync off their critical path.
 */
export async function prepareFileAtomic(path: string, data: string | Uint8Array, mode = 0o644): Promise<PreparedFile> {
  const dir = dirname(path);
  const tmp = join(dir, `.tmp-${basename(path)}-${randomBytes(6).toString('hex')}`);
  const handle = await open(tmp, 'w', mode);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } catch (err) {
    await handle.close();
    await rm(tmp, { force: true });
    throw err;
  }
  await handle.close();
  return {
    publish: async () => {
      await rename(tmp, path);
      await fsyncDir(dir);
    },
    discard: () => rm(tmp, { force: true }),
  };
}

/**
 * Replace `path` with `data` atomically: write a temp file beside it, fsync, rename over, fsync
 * the directory. A crash leaves either the old content or the new, never a torn file (at worst a
 * stray `.tmp-*` sibling, which sweepers may delete).
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  await (await prepareFileAtomic(path, data, mode)).publish();
}

/**
 * Replace `path` with `data` so a killed process leaves the old content or the new, never a torn
 * file; without fsync, so not across a power cut. For state that does not outlive a boot.
 */
export async function replaceFile(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = join(dirname(path), `.tmp-${basename(path)}-${randomBytes(6).toString('hex')}`);
  try {
    await writeFile(tmp, data);
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** mkdir -p, then fsync the parent so the new directory entry is durable. */
export async function mkdirDurable(path: string, mode = 0o755): Promise<void> {
  await mkdir(path, { recursive: true, mode });
  await fsyncDir(dirname(path));
}

/** Whether a temp name was made by writeFileAtomic (for sweepers). */
export function isAtomicTemp(name: string): boolean {
  return name.startsWith('.tmp-');
}
