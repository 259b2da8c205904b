/**
 * OCI/aufs whiteout naming (shared/reference/graphdriver.md §5): pure functions only.
 * `.wh.<name>` deletes <name> from lower layers; `.wh..wh..opq` makes its directory opaque;
 * other `.wh..wh.*` names are aufs housekeeping (plnk, aufs, orph) that layers must ignore.
 */
import { strataError } from '../errors.js';

export const WHITEOUT_PREFIX = '.wh.';
export const WHITEOUT_META_PREFIX = '.wh..wh.';
export const WHITEOUT_OPAQUE = '.wh..wh..opq';
export const WHITEOUT_LINK_DIR = '.wh..wh.plnk';

export type WhiteoutKind =
  | { kind: 'none' }
  | { kind: 'opaque' }
  | { kind: 'whiteout'; target: string }
  /** aufs housekeeping (`.wh..wh.aufs`, `.wh..wh.orph/…`): ignored */
  | { kind: 'meta' }
  /** a regular file under `/.wh..wh.plnk/`: a hardlink target aufs copied up */
  | { kind: 'plnk'; name: string };

/** Classify an entry by its cleaned relative path (no leading '/'). */
export function classifyWhiteout(rel: string): WhiteoutKind {
  const base = rel.slice(rel.lastIndexOf('/') + 1);
  if (rel === WHITEOUT_LINK_DIR || rel.startsWith(`${WHITEOUT_LINK_DIR}/`)) {
    const rest = rel.slice(WHITEOUT_LINK_DIR.length + 1);
    return rest && !rest.includes('/') ? { kind: 'plnk', name: rest } : { kind: 'meta' };
  }
  if (rel.startsWith(WHITEOUT_META_PREFIX) && rel !== WHITEOUT_OPAQUE) return { kind: 'meta' };
  if (base === WHITEOUT_OPAQUE) return { kind: 'opaque' };
  if (base.startsWith(WHITEOUT_META_PREFIX)) return { kind: 'meta' };
  if (base.startsWith(WHITEOUT_PREFIX)) {
    const target = base.slice(WHITEOUT_PREFIX.length);
    if (target === '' || target === '.' || target === '..') {
      throw strataError('PATH_ESCAPE', `whiteout ${JSON.stringify(rel)} names no file inside its directory`, { path: rel });
    }
    return { kind: 'whiteout', target };
  }
  return { kind: 'none' };
}

/** The whiteout entry name for a deleted path: `/a/b` → `a/.wh.b`. */
export function whiteoutName(deleted: string): string {
  const rel = deleted.replace(/^\/+/, '');
  const i = rel.lastIndexOf('/');
  return i === -1 ? `${WHITEOUT_PREFIX}${rel}` : `${rel.slice(0, i + 1)}${WHITEOUT_PREFIX}${rel.slice(i + 1)}`;
}

/** The opaque marker entry name for a directory: `a/b` → `a/b/.wh..wh..opq`. */
export function opaqueName(dir: string): string {
  const rel = dir.replace(/^\/+/, '').replace(/\/+$/, '');
  return rel ? `${rel}/${WHITEOUT_OPAQUE}` : WHITEOUT_OPAQUE;
}
