// Test helpers for the archive module: temp dirs, tree snapshots, stream collection.
import { createHash } from 'node:crypto';
import { lstatSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { Readable, Writable } from 'node:stream';
import { execFileSync } from 'node:child_process';
import { listAttributesSync, getAttributeSync } from '@napi-rs/xattr';
import { isStrataError } from '../../src/errors.js';

export const IS_ROOT = process.getuid?.() === 0;

export function tempDir(prefix = 'strata-archive-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(`${tmpdir()}/${prefix}`);
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export async function collect(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of stream) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

export function sha256(data: Buffer): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

export function sink(): { stream: Writable; data: () => Buffer } {
  const parts: Buffer[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _e, cb) {
      parts.push(chunk);
      cb();
    },
  });
  return { stream, data: () => Buffer.concat(parts) };
}

function xattrs(path: string): string {
  try {
    const names = listAttributesSync(path).filter((n) => !n.startsWith('trusted.overlay.')).sort();
    return names.map((n) => `${n}=${getAttributeSync(path, n)?.toString('hex')}`).join(',');
  } catch {
    return '';
  }
}

export interface SnapshotOptions {
  /** include mtimes of directories (off when comparing trees whose dirs were touched) */
  dirMtimes?: boolean;
  mtimes?: boolean;
  /** names (relative, no leading '/') to leave out */
  exclude?: (rel: string) => boolean;
}

/**
 * Every entry under `root` with its type, mode, owner, size, mtime (seconds), link target,
 * content hash and xattrs, one line each, sorted; hardlink groups shown by a shared tag.
 */
export function snapshot(root: string, opts: SnapshotOptions = {}): string[] {
  const lines: string[] = [];
  const inodes = new Map<string, string>();
  const walk = (rel: string) => {
    const abs = rel ? `${root}/${rel}` : root;
    for (const name of readdirSync(abs).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      if (opts.exclude?.(r)) continue;
      const p = `${root}/${r}`;
      const st = lstatSync(p, { bigint: true });
      const mtime = st.mtimeNs / 1_000_000_000n;
      let detail = '';
      if (st.isFile()) detail = createHash('sha256').update(readFileSync(p)).digest('hex').slice(0, 16);
      else if (st.isSymbolicLink()) detail = `-> ${readlinkSync(p)}`;
      else if (st.isCharacterDevice() || st.isBlockDevice()) detail = `rdev ${st.rdev}`;
      let link = '';
      if (!st.isDirectory() && st.nlink > 1n) {
        const key = `${st.dev}:${st.ino}`;
        if (!inodes.has(key)) inodes.set(key, r);
        link = ` link:${inodes.get(key)}`;
      }
      const showTime = opts.mtimes !== false && (!st.isDirectory() || opts.dirMtimes !== false) && !st.isSymbolicLink();
      lines.push(`${r} mode=${st.mode.toString(8)} ${st.uid}:${st.gid} size=${st.isDirectory() ? '-' : st.size}` +
        `${showTime ? ` mtime=${mtime}` : ''} ${detail}${link} [${xattrs(p)}]`);
      if (st.isDirectory()) walk(r);
    }
  };
  walk('');
  return lines;
}

export function run(cmd: string, args: string[], opts: { cwd?: string; input?: Buffer } = {}): Buffer {
  return execFileSync(cmd, args, { cwd: opts.cwd, input: opts.input, maxBuffer: 1 << 30, stdio: ['pipe', 'pipe', 'pipe'] });
}

export function bufferStream(data: Buffer, chunk = 65536): Readable {
  const pieces: Buffer[] = [];
  for (let i = 0; i < data.length; i += chunk) pieces.push(data.subarray(i, i + chunk));
  return Readable.from(pieces);
}

export function hasTrustedXattrs(dir: string): boolean {
  if (!IS_ROOT) return false;
  try {
    execFileSync('setfattr', ['-n', 'trusted.strata-probe', '-v', 'y', dir], { stdio: 'ignore' });
    execFileSync('setfattr', ['-x', 'trusted.strata-probe', dir], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** The StrataError code `p` fails with ('no error', or the message of another error, otherwise). */
export async function errorCode(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    return isStrataError(err) ? err.code : `non-strata: ${(err as Error).message}`;
  }
  return 'no error';
}
