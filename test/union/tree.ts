// Test helpers: declarative tree fixtures and a field-by-field snapshot of a tree, usable on a
// real directory (node:fs/promises) or on a UnionFs.
import * as fsp from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';

export type Spec =
  | { kind: 'file'; path: string; content?: string; mode?: number }
  | { kind: 'dir'; path: string; mode?: number }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'link'; path: string; target: string }
  | { kind: 'whiteout'; path: string }
  | { kind: 'opaque'; path: string };

export const file = (path: string, content = path, mode?: number): Spec => ({ kind: 'file', path, content, ...(mode === undefined ? {} : { mode }) });
export const dir = (path: string, mode?: number): Spec => ({ kind: 'dir', path, ...(mode === undefined ? {} : { mode }) });
export const symlink = (path: string, target: string): Spec => ({ kind: 'symlink', path, target });
export const hardlink = (path: string, target: string): Spec => ({ kind: 'link', path, target });
/** aufs whiteout of `path` (`.wh.<name>` beside it). */
export const whiteout = (path: string): Spec => ({ kind: 'whiteout', path });
export const opaque = (path: string): Spec => ({ kind: 'opaque', path });

export async function build(root: string, specs: Spec[]): Promise<void> {
  await fsp.mkdir(root, { recursive: true });
  for (const s of specs) {
    const p = join(root, s.path);
    const parent = join(p, '..');
    await fsp.mkdir(parent, { recursive: true });
    switch (s.kind) {
      case 'file':
        await fsp.writeFile(p, s.content ?? '');
        if (s.mode !== undefined) await fsp.chmod(p, s.mode);
        break;
      case 'dir':
        await fsp.mkdir(p, { recursive: true });
        if (s.mode !== undefined) await fsp.chmod(p, s.mode);
        break;
      case 'symlink':
        await fsp.symlink(s.target, p);
        break;
      case 'link':
        await fsp.link(join(root, s.target), p);
        break;
      case 'whiteout': {
        const slash = s.path.lastIndexOf('/');
        await fsp.writeFile(join(root, s.path.slice(0, slash + 1) + '.wh.' + s.path.slice(slash + 1)), '');
        break;
      }
      case 'opaque':
        await fsp.mkdir(p, { recursive: true });
        await fsp.writeFile(join(p, '.wh..wh..opq'), '');
        break;
    }
  }
}

export interface TreeFs {
  readdir(path: string, options: { withFileTypes: true }): Promise<Array<{ name: string; isDirectory(): boolean; isSymbolicLink(): boolean; isFile(): boolean }>>;
  lstat(path: string): Promise<{ mode: number; size: number }>;
  readFile(path: string): Promise<Buffer>;
  readlink(path: string): Promise<string>;
}

/** One line per entry: `path type mode content-hash|link-target`, sorted. */
export async function snapshot(fs: TreeFs, root: string, opts: { skip?: (name: string) => boolean } = {}): Promise<string[]> {
  const out: string[] = [];
  async function walk(rel: string): Promise<void> {
    const entries = await fs.readdir(rel === '' ? root : join(root, rel), { withFileTypes: true });
    for (const e of [...entries].sort((a, b) => (a.name < b.name ? -1 : 1))) {
      if (opts.skip?.(e.name)) continue;
      const r = rel === '' ? e.name : `${rel}/${e.name}`;
      const p = join(root, r);
      const st = await fs.lstat(p);
      const mode = (st.mode & 0o7777).toString(8);
      if (e.isDirectory()) {
        out.push(`${r} dir ${mode}`);
        await walk(r);
      } else if (e.isSymbolicLink()) {
        out.push(`${r} symlink -> ${await fs.readlink(p)}`);
      } else if (e.isFile()) {
        out.push(`${r} file ${mode} ${createHash('sha256').update(await fs.readFile(p)).digest('hex').slice(0, 12)}`);
      } else {
        out.push(`${r} other ${mode}`);
      }
    }
  }
  await walk('');
  return out;
}

export async function tempDir(prefix: string): Promise<string> {
  return fsp.mkdtemp(join(process.env.TMPDIR ?? '/tmp', `strata-${prefix}-`));
}
