// Attach an NBD export as a kernel block device without the nbd module: nbdfuse exposes it as a
// file, losetup turns the file into /dev/loopN. detach() undoes it in the safe order (the caller
// unmounts first): losetup -d, fusermount3 -u, wait for nbdfuse to exit.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { run, runOk } from './helpers.js';

export interface Attached {
  /** The FUSE file nbdfuse serves. */
  file: string;
  /** /dev/loopN */
  loop: string;
  detach(): Promise<void>;
}

async function waitFor(check: () => Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

export async function attachNbd(socketPath: string, workDir: string, tag: string): Promise<Attached> {
  const mnt = join(workDir, `fuse-${tag}`);
  const pidfile = join(workDir, `nbdfuse-${tag}.pid`);
  await mkdir(mnt, { recursive: true });
  const child: ChildProcess = spawn('nbdfuse', ['-P', pidfile, join(mnt, 'disk'), '--unix', socketPath], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString(); });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let fuseMounted = false;
  let loop = '';
  const detach = async (): Promise<void> => {
    if (loop) {
      await run('losetup', ['-d', loop]);
      loop = '';
    }
    if (fuseMounted) {
      await run('fusermount3', ['-u', mnt]);
      fuseMounted = false;
    }
    const quit = await Promise.race([exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 5000))]);
    if (!quit) child.kill('SIGKILL');
    await rm(pidfile, { force: true });
    await rm(mnt, { recursive: true, force: true }).catch(() => undefined);
  };
  try {
    await waitFor(async () => {
      if (child.exitCode !== null) throw new Error(`nbdfuse exited: ${stderr}`);
      return readFile(pidfile, 'utf8').then(() => true, () => false);
    }, 15_000, 'nbdfuse');
    fuseMounted = true;
    loop = (await runOk('losetup', ['--find', '--show', join(mnt, 'disk')])).trim();
    return { file: join(mnt, 'disk'), loop, detach };
  } catch (err) {
    await detach();
    throw err;
  }
}

/** Mount, and an unmount that does not throw during cleanup. */
export async function mountDev(dev: string, dir: string, options: string[] = []): Promise<() => Promise<void>> {
  await mkdir(dir, { recursive: true });
  await runOk('mount', [...options, dev, dir]);
  let mounted = true;
  return async () => {
    if (!mounted) return;
    mounted = false;
    await run('fsfreeze', ['-u', dir]); // in case a test failed while frozen
    const r = await run('umount', [dir]);
    if (r.code !== 0) await run('umount', ['-l', dir]);
  };
}
