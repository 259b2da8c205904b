/**
 * Image configs and tags, in Docker's layout:
 *
 *   image/<driver>/imagedb/content/sha256/<imageID hex>   config bytes (the ID is their sha256)
 *   image/<driver>/imagedb/metadata/sha256/<hex>/{parent,lastUpdated}
 *   image/<driver>/repositories.json                      {"Repositories":{name:{ref:id}}}
 */
import { mkdir, readFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { strataError, isErrno } from '../errors.js';
import { writeFileAtomic } from '../util/atomic.js';
import { type Digest, hexOf, isDigest, sha256 } from './digest.js';
import { formatReference, parseReference, withDefaultTag } from './reference.js';
import type { WriteTxn } from './write-lock.js';

export interface ImageConfig {
  architecture?: string;
  os?: string;
  created?: string;
  author?: string;
  comment?: string;
  config?: Record<string, unknown>;
  container?: string;
  container_config?: Record<string, unknown>;
  docker_version?: string;
  history?: HistoryEntry[];
  rootfs: { type: string; diff_ids: Digest[] };
  [key: string]: unknown;
}

export interface HistoryEntry {
  created?: string;
  author?: string;
  created_by?: string;
  comment?: string;
  empty_layer?: boolean;
}

export interface StoredImage {
  id: Digest;
  config: ImageConfig;
  bytes: Buffer;
}

type Repositories = Record<string, Record<string, string>>;

export class ImageStore {
  readonly dir: string;

  constructor(readonly imageDir: string) {
    this.dir = join(imageDir, 'imagedb');
  }

  private contentPath(id: Digest): string {
    return join(this.dir, 'content', 'sha256', hexOf(id));
  }

  /** Store config bytes exactly as given; the image ID is their sha256. */
  async put(_txn: WriteTxn, bytes: Buffer): Promise<Digest> {
    const config = parseConfig(bytes);
    if (!Array.isArray(config.rootfs?.diff_ids)) throw strataError('INVALID_ARGUMENT', 'image config has no rootfs.diff_ids');
    const id = sha256(bytes);
    await mkdir(join(this.dir, 'content', 'sha256'), { recursive: true, mode: 0o700 });
    await writeFileAtomic(this.contentPath(id), bytes, 0o600);
    return id;
  }

  async get(id: Digest): Promise<StoredImage> {
    let bytes: Buffer;
    try {
      bytes = await readFile(this.contentPath(id));
    } catch (err) {
      if (isErrno(err, 'ENOENT')) throw strataError('IMAGE_NOT_FOUND', `no such image: ${id}`, { id });
      throw err;
    }
    if (sha256(bytes) !== id) throw strataError('DIGEST_MISMATCH', `failed to verify image ${id}: its config does not hash to its ID`, { id });
    return { id, config: parseConfig(bytes), bytes };
  }

  async has(id: Digest): Promise<boolean> {
    return readFile(this.contentPath(id)).then(() => true, () => false);
  }

  async list(): Promise<Digest[]> {
    const names = await readdir(join(this.dir, 'content', 'sha256')).catch(() => [] as string[]);
    return names.filter((n) => /^[a-f0-9]{64}$/.test(n)).map((n) => `sha256:${n}` as Digest);
  }

  async remove(_txn: WriteTxn, id: Digest): Promise<void> {
    await rm(this.contentPath(id), { force: true });
    await rm(join(this.dir, 'metadata', 'sha256', hexOf(id)), { recursive: true, force: true });
  }

  async setMetadata(_txn: WriteTxn, id: Digest, key: 'parent' | 'lastUpdated', value: string): Promise<void> {
    const dir = join(this.dir, 'metadata', 'sha256', hexOf(id));
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await writeFileAtomic(join(dir, key), value, 0o600);
  }

  async getMetadata(id: Digest, key: 'parent' | 'lastUpdated'): Promise<string | null> {
    return readFile(join(this.dir, 'metadata', 'sha256', hexOf(id), key), 'utf8').then((t) => t.trim() || null, () => null);
  }

  // ---- tags -------------------------------------------------------------------------------

  private get repositoriesPath(): string {
    return join(this.imageDir, 'repositories.json');
  }

  private async readRepositories(): Promise<Repositories> {
    try {
      const parsed = JSON.parse(await readFile(this.repositoriesPath, 'utf8')) as { Repositories?: Repositories };
      return parsed.Repositories ?? {};
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return {};
      if (err instanceof SyntaxError) throw strataError('STORE_CORRUPT', `repositories.json is not valid JSON: ${err.message}`);
      throw err;
    }
  }

  private async writeRepositories(repos: Repositories): Promise<void> {
    // Docker writes Go maps: keys sorted, compact, no trailing newline.
    const sorted: Repositories = {};
    for (const name of Object.keys(repos).sort()) {
      const refs = repos[name]!;
      if (Object.keys(refs).length === 0) continue;
      sorted[name] = Object.fromEntries(Object.keys(refs).sort().map((k) => [k, refs[k]!]));
    }
    await mkdir(this.imageDir, { recursive: true });
    await writeFileAtomic(this.repositoriesPath, JSON.stringify({ Repositories: sorted }), 0o600);
  }

  /** Every tag, as `name:tag` → image ID. */
  async references(): Promise<Map<string, Digest>> {
    const out = new Map<string, Digest>();
    for (const refs of Object.values(await this.readRepositories())) {
      for (const [ref, id] of Object.entries(refs)) if (isDigest(id)) out.set(ref, id);
    }
    return out;
  }

  async tag(_txn: WriteTxn, refText: string, id: Digest): Promise<string> {
    const ref = withDefaultTag(parseReference(refText));
    const repos = await this.readRepositories();
    const key = formatReference(ref);
    (repos[ref.name] ??= {})[key] = id;
    await this.writeRepositories(repos);
    return key;
  }

  /** Remove a tag; returns the image it pointed at. */
  async untag(_txn: WriteTxn, refText: string): Promise<Digest> {
    const ref = withDefaultTag(parseReference(refText));
    const key = formatReference(ref);
    const repos = await this.readRepositories();
    const id = repos[ref.name]?.[key];
    if (!id || !isDigest(id)) throw strataError('REFERENCE_NOT_FOUND', `no such image: ${refText}`);
    delete repos[ref.name]![key];
    await this.writeRepositories(repos);
    return id;
  }

  /**
   * Resolve what a user typed: a tag (`busybox`, `busybox:1`), a full or `sha256:`-prefixed ID,
   * or an unambiguous ID prefix, as the docker CLI accepts.
   */
  async resolve(text: string): Promise<Digest> {
    const hex = text.startsWith('sha256:') ? text.slice(7) : text;
    if (/^[a-f0-9]{64}$/.test(hex) && (await this.has(`sha256:${hex}`))) return `sha256:${hex}`;
    try {
      const key = formatReference(withDefaultTag(parseReference(text)));
      const found = (await this.references()).get(key);
      if (found) return found;
    } catch (err) {
      if (!/^[a-f0-9]{1,64}$/.test(hex)) throw err;
    }
    if (/^[a-f0-9]{4,63}$/.test(hex)) {
      const matches = (await this.list()).filter((id) => hexOf(id).startsWith(hex));
      if (matches.length === 1) return matches[0]!;
      if (matches.length > 1) throw strataError('INVALID_REFERENCE', `image ID prefix ${hex} is ambiguous`);
    }
    throw strataError('IMAGE_NOT_FOUND', `no such image: ${text}`);
  }
}

export function parseConfig(bytes: Buffer): ImageConfig {
  try {
    return JSON.parse(bytes.toString('utf8')) as ImageConfig;
  } catch (err) {
    throw strataError('INVALID_ARGUMENT', `image config is not valid JSON: ${(err as Error).message}`);
  }
}
