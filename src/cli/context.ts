import type { Command } from 'commander';
import { createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { rename, rm } from 'node:fs/promises';
import type { Readable, Writable } from 'node:stream';
import { Strata } from '../strata.js';
import { isErrno, strataError } from '../errors.js';
import { globalsOf } from './main.js';
import { formatSize } from '../util/units.js';
import { drainedOrClosed } from '../util/drained.js';
import { FileChunks, TappedChunks, isTappable, openFileInput } from '../archive/index.js';

/** Open the library for a subcommand, from the global flags. */
export async function openStrata(cmd: Command): Promise<Strata> {
  const g = globalsOf(cmd);
  const storageOpts: Record<string, string> = {};
  for (const pair of g.storageOpt ?? []) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw strataError('INVALID_OPTION', `--storage-opt wants KEY=VALUE, got ${JSON.stringify(pair)}`);
    storageOpts[pair.slice(0, eq).trim().toLowerCase()] = pair.slice(eq + 1).trim();
  }
  return Strata.open({
    ...(g.root !== undefined ? { root: g.root } : {}),
    ...(g.storageDriver !== undefined ? { driver: g.storageDriver } : {}),
    storageOpts,
  });
}

export function print(line = ''): void {
  process.stdout.write(`${line}\n`);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Columns padded as docker's tabwriter does (three spaces between columns). */
export function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]! + 3))).join('').trimEnd();
  print(line(header));
  for (const r of rows) print(line(r));
}

/** "3 minutes ago", as docker prints ages (go-units HumanDuration). */
export function since(iso: string): string {
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  if (!Number.isFinite(seconds)) return 'N/A';
  const minutes = seconds / 60;
  const hours = minutes / 60;
  const days = hours / 24;
  let text: string;
  if (seconds < 1) text = 'Less than a second';
  else if (seconds < 2) text = '1 second';
  else if (seconds < 60) text = `${Math.floor(seconds)} seconds`;
  else if (minutes < 2) text = 'About a minute';
  else if (minutes < 60) text = `${Math.floor(minutes)} minutes`;
  else if (hours < 2) text = 'About an hour';
  else if (hours < 48) text = `${Math.floor(hours)} hours`;
  else if (days < 14) text = `${Math.floor(days)} days`;
  else if (days < 60) text = `${Math.floor(days / 7)} weeks`;
  else if (days < 730) text = `${Math.floor(days / 30)} months`;
  else text = `${Math.floor(days / 365)} years`;
  return `${text} ago`;
}

/**
 * Open FILE (or `-` for stdin) as a stream; when stderr is a terminal, show bytes read so far
 * (and the total when known) so long imports are not silent. A file is read as FileChunks, whose
 * recycled buffers the layer store can parse and record without copying.
 */
export async function openInput(path: string): Promise<Readable> {
  const source: Readable = path === '-' ? process.stdin : await openFileInput(path);
  if (!process.stderr.isTTY) return source;
  const total = source instanceof FileChunks ? source.size : 0;
  let done = 0;
  let last = 0;
  const tapped = isTappable(source) ? source : new TappedChunks(source[Symbol.asyncIterator]());
  tapped.tap((chunk) => {
    done += chunk.length;
    const now = Date.now();
    if (now - last > 200) {
      last = now;
      process.stderr.write(`\r${formatSize(done)}${total ? ` / ${formatSize(total)}` : ''}   `);
    }
  });
  tapped.once('end', () => process.stderr.write('\r\x1b[K'));
  return tapped;
}

export function shortId(id: string): string {
  return id.replace(/^sha256:/, '').slice(0, 12);
}

/**
 * Write `data` to `sink`, waiting while it is full. A sink that is gone ends the command with its
 * error: EPIPE when the reader went away (`strata thin read t -o - | head`), which main() turns
 * into a quiet exit 141, instead of a wait for a 'drain' that never comes.
 */
export async function writeChunk(sink: Writable, data: Uint8Array | string): Promise<void> {
  if (!sink.write(data)) await drainedOrClosed(sink);
  if (sink.destroyed) throw sink.errored ?? Object.assign(new Error('the output was closed'), { code: 'EPIPE' });
}

/**
 * Stream to FILE through a temp sibling renamed into place at the end, so a failed save or
 * export never leaves a truncated archive under the name asked for; without FILE, to stdout.
 */
export async function writeOutput(stream: Readable, path: string | undefined): Promise<void> {
  if (!path) {
    if (process.stdout.isTTY) throw strataError('INVALID_ARGUMENT', 'cowardly refusing to write a tar to a terminal: use -o FILE or redirect');
    await pipeline(stream, process.stdout);
    return;
  }
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    // (a 1 MiB buffer: at the default 16 KiB, an export of 10,000 small files waited on every few writes, 1.45 s -> 0.7 s)
    await pipeline(stream, createWriteStream(tmp, { highWaterMark: 1 << 20 }));
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    // (the temporary name is ours: the error names the file asked for)
    if (isErrno(err) && err.path === tmp) err.path = path;
    throw err;
  }
}
