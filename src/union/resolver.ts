import { readlink } from 'node:fs/promises';
import type { Branches } from './branches.js';
import { errnoError } from './errno.js';
import { joinRel, splitPath } from './path.js';
import { isReservedName, lookupName, type EntryType } from './whiteout.js';

/** A name as the union sees it: where it lives, what it is, which branches make it up. */
export interface UnionNode {
  /** Canonical union path ('' for the root): no symlinks, no `..`. */
  rel: string;
  type: EntryType;
  /** Contributing branches, top first. One for a non-directory; a directory may merge several. */
  branches: number[];
}

export interface Resolved {
  /** The (fully resolved) directory that holds the final name. */
  parent: UnionNode;
  /** Final name ('' when the path is the root). */
  name: string;
  node: UnionNode | null;
}

/** Linux's MAXSYMLINKS (include/linux/namei.h). */
const MAX_SYMLINKS = 40;

/**
 * Walks union paths component by component, following symlinks inside the union: an absolute
 * target restarts at the union root and `..` stops there, so no path ever leaves the union.
 */
export class Resolver {
  constructor(
    private readonly branches: Branches,
    readonly root: UnionNode,
  ) {}

  async child(parent: UnionNode, name: string): Promise<UnionNode | null> {
    if (isReservedName(name)) return null;
    const rel = joinRel(parent.rel, name);
    const found = await lookupName(
      parent.branches,
      (b) => this.branches.probe(b, parent.rel, name),
      (b) => this.branches.opaque(b, rel),
    );
    return found === null ? null : { rel, type: found.type, branches: found.branches };
  }

  /** The node at a canonical path (no symlinks in it), or null. */
  async at(rel: string): Promise<UnionNode | null> {
    let node: UnionNode | null = this.root;
    for (const name of splitPath(rel)) {
      if (node === null || node.type !== 'dir') return null;
      node = await this.child(node, name);
    }
    return node;
  }

  /**
   * Resolve `path`. Intermediate symlinks are always followed; the final one only if
   * `followLast`. A missing final name gives `node: null` (so creators know where to create);
   * a missing or non-directory intermediate throws ENOENT / ENOTDIR.
   */
  async resolve(path: string, followLast: boolean, syscall: string): Promise<Resolved> {
    let queue = splitPath(path);
    let stack: UnionNode[] = [this.root];
    let links = 0;
    const settle = (): Resolved => {
      const node = stack[stack.length - 1] ?? this.root;
      const parent = stack[stack.length - 2] ?? this.root;
      return { parent, name: stack.length > 1 ? node.rel.slice(node.rel.lastIndexOf('/') + 1) : '', node };
    };
    while (queue.length > 0) {
      const name = queue.shift() as string;
      if (name === '..') {
        if (stack.length > 1) stack.pop();
        continue;
      }
      const dir = stack[stack.length - 1] ?? this.root;
      if (dir.type !== 'dir') throw errnoError('ENOTDIR', syscall, path);
      const node = await this.child(dir, name);
      const last = queue.length === 0;
      if (node === null) {
        if (last) return { parent: dir, name, node: null };
        throw errnoError('ENOENT', syscall, path);
      }
      if (node.type === 'symlink' && (!last || followLast)) {
        if (++links > MAX_SYMLINKS) throw errnoError('ELOOP', syscall, path);
        const target = await readlink(this.branches.real(node.branches[0] as number, node.rel));
        if (target.startsWith('/')) stack = [this.root];
        queue = [...splitPath(target), ...queue];
        continue;
      }
      stack.push(node);
    }
    return settle();
  }

  /** Resolve to an existing node or throw ENOENT. */
  async existing(path: string, followLast: boolean, syscall: string): Promise<Resolved & { node: UnionNode }> {
    const r = await this.resolve(path, followLast, syscall);
    if (r.node === null) throw errnoError('ENOENT', syscall, path);
    return r as Resolved & { node: UnionNode };
  }
}
