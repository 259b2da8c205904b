import { open, type FileHandle } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { strataError, isErrno } from '../errors.js';

// flock(2) through fs-ext: the kernel drops the lock when the holder dies (even by SIGKILL), so a
// crashed process never leaves a stale lock behind, unlike pid files or lock directories.
const require = createRequire(import.meta.url);
const fsExt = require('fs-ext') as {
  flock(fd: number, flags: 'sh' | 'ex' | 'shnb' | 'exnb' | 'un', callback: (err: NodeJS.ErrnoException | null) => void): void;
};

function flock(fd: number, flags: 'sh' | 'ex' | 'shnb' | 'exnb' | 'un'): Promise<void> {
  return new Promise((resolve, reject) => fsExt.flock(fd, flags, (err) => (err ? reject(err) : resolve())));
}

export interface FileLock {
  release(): Promise<void>;
}

export interface LockOptions {
  /** Shared (reader) lock instead of exclusive. */
  shared?: boolean;
  /** Give up after this many ms (LOCK_TIMEOUT). Default: wait 60 s. */
  timeoutMs?: number;
}

/**
 * Take a flock on `path` (created if missing). Polls with a non-blocking flock so a timeout is
 * possible and no libuv thread is parked in the kernel.
 */
export async function lockFile(path: string, options: LockOptions = {}): Promise<FileLock> {
  const handle: FileHandle = await open(path, 'a', 0o644);
  const mode = options.shared ? 'shnb' : 'exnb';
  const deadline = Date.now() + (options.timeoutMs ?? 60_000);
  let delay = 2;
  for (;;) {
    try {
      await flock(handle.fd, mode);
      break;
    } catch (err) {
      if (!isErrno(err, 'EWOULDBLOCK', 'EAGAIN')) {
        await handle.close();
        throw err;
      }
      if (Date.now() >= deadline) {
        await handle.close();
        throw strataError('LOCK_TIMEOUT', `timed out waiting for lock ${path} (another strata process holds it)`, { path });
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 50);
    }
  }
  let released = false;
  return {
    async release() {
      if (released) return;
      released = true;
      // closing the descriptor drops the flock
      await handle.close();
    },
  };
}

/** Run `fn` holding the lock on `path`. */
export async function withFileLock<T>(path: string, fn: () => Promise<T>, options?: LockOptions): Promise<T> {
  const lock = await lockFile(path, options);
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}
