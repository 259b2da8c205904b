/**
 * Path rules for layer archives: Go's filepath.Clean (what Docker applies to every entry name),
 * escape checks, and a chroot-style resolver that maps a path inside a layer to a real directory
 * without ever leaving the root, even through symlinks planted by earlier layers or earlier
 * entries of the same tar.
 */
import { lstatSync, mkdirSync, readlinkSync } from 'node:fs';
import { strataError } from '../errors.js';

/** Whether every '/'-separated part of `p` (after a leading '/') is a name: not '', '.' or '..'. */
function isClean(p: string): boolean {
  let start = p.charCodeAt(0) === 0x2f ? 1 : 0;
  if (start === p.length) return true; // '' is never asked; '/' is clean
  for (let i = start; i <= p.length; i++) {
    if (i < p.length && p.charCodeAt(i) !== 0x2f) continue;
    const n = i - start;
    if (n === 0) return false;
    if (n <= 2 && p.charCodeAt(start) === 0x2e && (n === 1 || p.charCodeAt(start + 1) === 0x2e)) return false;
    start = i + 1;
  }
  return true;
}

/** Go's path.Clean: lexical, `..` kept at the start of a relative path, dropped at a root. */
export function goClean(p: string): string {
  if (p === '') return '.';
  // most tar names are clean already but for a leading './' or a directory's trailing '/'
  // (tar -C dir . writes those): no split and join for them
  let from = 0;
  while (p.startsWith('./', from)) from += 2;
  const end = p.length - from > 1 && p.endsWith('/') ? p.length - 1 : p.length;
  if (end > from && (from === 0 || p.charCodeAt(from) !== 0x2f)) {
    const rest = from === 0 && end === p.length ? p : p.slice(from, end);
    if (isClean(rest)) return rest;
  }
  const rooted = p.startsWith('/');
  const out: string[] = [];
  for (const part of p.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (out.length > 0 && out[out.length - 1] !== '..') out.pop();
      else if (!rooted) out.push('..');
      continue;
    }
    out.push(part);
  }
  const s = out.join('/');
  if (rooted) return `/${s}`;
  return s === '' ? '.' : s;
}

/**
 * The path of an archive entry relative to the layer root ('' for the root itself), the way
 * Docker treats names: cleaned, a leading '/' made relative, a `..` that climbs out refused.
 */
export function entryPath(name: string, what = 'entry'): string {
  if (name.includes('\0')) throw strataError('INVALID_ARCHIVE', `${what} name contains a NUL byte`, { path: name });
  const c = goClean(name);
  if (c === '..' || c.startsWith('../')) {
    throw strataError('PATH_ESCAPE', `${what} ${JSON.stringify(name)} is outside the layer root`, { path: name });
  }
  const rel = c.replace(/^\/+/, '');
  if (Buffer.byteLength(rel) >= PATH_MAX) {
    throw strataError('INVALID_ARCHIVE', `${what} name is longer than ${PATH_MAX} bytes`, { path: name.slice(0, 200) });
  }
  let depth = 1;
  for (let i = rel.indexOf('/'); i !== -1; i = rel.indexOf('/', i + 1)) depth++;
  if (depth > MAX_DEPTH) {
    throw strataError('INVALID_ARCHIVE', `${what} is nested ${depth} levels deep (limit ${MAX_DEPTH})`, { path: name.slice(0, 200) });
  }
  return rel === '.' ? '' : rel;
}

/** Linux PATH_MAX: no longer path can be created or opened. */
export const PATH_MAX = 4096;
/** Deepest entry accepted (node-tar's default too): deeper trees break recursive tools. */
export const MAX_DEPTH = 1024;

export function dirOf(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i === -1 ? '' : rel.slice(0, i);
}

export function baseOf(rel: string): string {
  return rel.slice(rel.lastIndexOf('/') + 1);
}

/** Symlink hops allowed while resolving one path (Linux's MAXSYMLINKS is 40). */
const MAX_HOPS = 40;

/**
 * Resolves directories inside `root` as if `root` were `/`: a symlink's target is read and
 * followed with `..` clamped at the root and absolute targets taken relative to it. Every
 * directory returned is a real directory (checked with lstat) inside the root. Results are
 * cached by the logical path; call `invalidate()` after removing or replacing a directory or a
 * symlink.
 */
export class RootResolver {
  private readonly cache = new Map<string, string>();

  constructor(readonly root: string, private readonly opts: { create: boolean; onCreate?: (real: string) => void }) {
    this.cache.set('', root);
  }

  /** Record that logical directory `rel` is the real directory `real` (just created there). */
  remember(rel: string, real: string): void {
    this.cache.set(rel, real);
  }

  invalidate(): void {
    this.cache.clear();
    this.cache.set('', this.root);
  }

  /** Real path of `rel` relative to the root (no leading '/'). */
  relOf(real: string): string {
    return real === this.root ? '' : real.slice(this.root.length + 1);
  }

  /**
   * The real directory for logical directory `rel` ('' = root). Missing components are created
   * (mode 0755) when the resolver was made with `create`, else null is returned.
   */
  resolveDir(rel: string, entry = rel, create = this.opts.create): string | null {
    return this.resolve(rel, entry, { hops: 0 }, create);
  }

  private resolve(rel: string, entry: string, state: { hops: number }, create: boolean): string | null {
    const cached = this.cache.get(rel);
    if (cached !== undefined) return cached;
    const parentReal = this.resolve(dirOf(rel), entry, state, create);
    if (parentReal === null) return null;
    const name = baseOf(rel);
    const real = `${parentReal}/${name}`;
    const st = lstatSync(real, { throwIfNoEntry: false });
    if (!st) {
      if (!create) return null;
      mkdirSync(real, 0o755);
      this.opts.onCreate?.(real);
      this.cache.set(rel, real);
      return real;
    }
    if (st.isDirectory()) {
      this.cache.set(rel, real);
      return real;
    }
    if (st.isSymbolicLink()) {
      if (++state.hops > MAX_HOPS) {
        throw strataError('INVALID_ARCHIVE', `too many levels of symbolic links resolving the parent of ${entry}`, { path: entry });
      }
      const target = readlinkSync(real);
      const base = target.startsWith('/') ? target : `${this.relOf(parentReal)}/${target}`;
      const next = goClean(`/${base}`).slice(1);
      // a symlink's target is followed, never created
      const resolvedParent = this.resolve(dirOf(next), entry, state, false);
      let result: string | null = null;
      if (next === '') result = this.root;
      else if (resolvedParent !== null) {
        const candidate = `${resolvedParent}/${baseOf(next)}`;
        const st2 = lstatSync(candidate, { throwIfNoEntry: false });
        if (st2?.isDirectory()) result = candidate;
        else if (st2?.isSymbolicLink()) result = this.resolve(this.relOf(candidate), entry, state, false);
        else if (st2) {
          throw strataError('INVALID_ARCHIVE', `parent of ${entry} is not a directory (${rel} -> ${target})`, { path: entry });
        }
      }
      if (result === null) {
        throw strataError('PATH_ESCAPE',
          `parent of ${entry}: ${rel} is a symlink to ${target}, which is not a directory inside the layer`, { path: entry });
      }
      this.cache.set(rel, result);
      return result;
    }
    throw strataError('INVALID_ARCHIVE', `parent of ${entry} is not a directory: ${rel}`, { path: entry });
  }
}
