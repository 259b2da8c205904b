/**
 * From an NBD export to a block device and back, with what this kernel has (no dm, no nbd
 * module): `nbdfuse` shows the export as a file, `losetup` makes that file a block device. Both
 * outlive the calling process, as a dm device does; nothing about them is kept in memory, so
 * another process can find and undo an attachment from the file name alone.
 */
import { spawn } from 'node:child_process';
import { open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { isErrno, strataError } from '../../errors.js';
import { run } from './exec.js';
import { processAlive } from '../../util/process-alive.js';

const ATTACH_TIMEOUT_MS = 20_000;

function nbdUri(socket: string, exportName: string): string {
  return `nbd+unix:///${encodeURIComponent(exportName)}?socket=${encodeURIComponent(socket)}`;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Serve `exportName` as the file `fuseFile` (nbdfuse mounted over a regular file) and attach a
 * loop device to it. Returns the loop device path.
 */
export async function attachBlockDevice(fuseFile: string, socket: string, exportName: string, size: number, logPath: string): Promise<string> {
  await writeFile(fuseFile, '', { flag: 'a' });
  const pidFile = `${fuseFile}.pid`;
  await rm(pidFile, { force: true });
  const log = await open(logPath, 'a', 0o600);
  let pid: number | undefined;
  try {
    const child = spawn('nbdfuse', ['-P', pidFile, fuseFile, nbdUri(socket, exportName)], { detached: true, stdio: ['ignore', log.fd, log.fd] });
    pid = child.pid;
    child.unref();
  } finally {
    await log.close();
  }
  // ready once the pid file exists and the file shows the export's size
  const deadline = Date.now() + ATTACH_TIMEOUT_MS;
  for (;;) {
    const ready = await readFile(pidFile, 'utf8').then(() => true, () => false);
    if (ready && (await stat(fuseFile)).size === size) break;
    if (pid === undefined || !processAlive(pid) || Date.now() > deadline) {
      await fuseUnmount(fuseFile);
      throw strataError('MOUNT_FAILED', `devicemapper: nbdfuse did not serve ${exportName} (see ${logPath})`, { id: exportName });
    }
    await sleep(10);
  }
  try {
    const loop = (await run('losetup', ['--find', '--show', fuseFile])).trim();
    // remembered beside the file, so finding it again costs a read rather than a losetup run
    await writeFile(`${fuseFile}.loop`, loop);
    return loop;
  } catch (err) {
    await fuseUnmount(fuseFile);
    throw err;
  }
}

/** The loop device attached to `fuseFile`, checked against the kernel's record; null if none. */
export async function attachedLoop(fuseFile: string): Promise<string | null> {
  const loop = (await readFile(`${fuseFile}.loop`, 'utf8').catch(() => '')).trim();
  if (!loop) return null;
  const backing = (await readFile(`/sys/block/${basename(loop)}/loop/backing_file`, 'utf8').catch(() => '')).trim();
  return backing === fuseFile ? loop : null;
}

/** Loop devices backed by `file`. */
export async function loopsOf(file: string): Promise<string[]> {
  const out = await run('losetup', ['--noheadings', '--output', 'NAME', '--associated', file]).catch(() => '');
  return out.split('\n').map((s) => s.trim()).filter(Boolean);
}

/**
 * Undo attachBlockDevice: detach the loop device(s), unmount the FUSE file, wait for nbdfuse.
 * `lazy` (for attachments whose server died): a FUSE file still held open is unmounted lazily.
 */
export async function detachBlockDevice(fuseFile: string, options: { lazy?: boolean } = {}): Promise<void> {
  const known = await attachedLoop(fuseFile);
  for (const loop of known ? [known] : await loopsOf(fuseFile)) {
    await run('losetup', ['--detach', loop]);
    await loopReleased(loop, fuseFile);
  }
  await fuseUnmount(fuseFile, options.lazy === true);
  await rm(fuseFile, { force: true });
  await rm(`${fuseFile}.loop`, { force: true });
}

/**
 * `losetup --detach` only marks a loop device for release; the kernel lets go of its backing file
 * once the last opener (a finishing umount, udev's blkid probe) closes it. Until then the FUSE
 * file is busy, so wait for the release rather than race it.
 */
async function loopReleased(loop: string, fuseFile: string): Promise<void> {
  const backingFile = `/sys/block/${basename(loop)}/loop/backing_file`;
  const deadline = Date.now() + ATTACH_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const backing = (await readFile(backingFile, 'utf8').catch(() => '')).trim();
    if (backing !== fuseFile) return;
    await sleep(10);
  }
}

async function fuseUnmount(fuseFile: string, lazy = false): Promise<void> {
  const pidFile = `${fuseFile}.pid`;
  const pid = Number.parseInt(await readFile(pidFile, 'utf8').catch(() => ''), 10);
  const deadline = Date.now() + ATTACH_TIMEOUT_MS;
  for (;;) {
    const outcome = await run('fusermount3', ['-u', ...(lazy ? ['-z'] : []), fuseFile]).then(
      () => 'done' as const,
      (err: unknown) => {
        const message = String((err as Error).message);
        // not mounted (already gone) is fine; busy passes once the last opener lets go
        if (/not found in|not mounted|Invalid argument|No such file/.test(message)) return 'done' as const;
        if (/busy/i.test(message) && Date.now() < deadline) return 'busy' as const;
        throw err;
      },
    );
    if (outcome === 'done') break;
    await sleep(20);
  }
  // nbdfuse flushes and exits once unmounted; wait so its last writes have reached the service
  if (Number.isInteger(pid) && pid > 0) {
    const deadline = Date.now() + ATTACH_TIMEOUT_MS;
    while (processAlive(pid) && Date.now() < deadline) await sleep(5);
  }
  await rm(pidFile, { force: true }).catch((err: unknown) => {
    if (!isErrno(err, 'ENOENT')) throw err;
  });
}
