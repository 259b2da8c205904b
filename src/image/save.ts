/**
 * `strata save`: images as a docker-archive (what `docker load` and skopeo's `docker-archive:`
 * read) or as an OCI archive (a tar of an OCI layout). Layers are rebuilt byte for byte from
 * tar-split, so every saved layer hashes to its DiffID; the archive is streamed, entry by entry,
 * with each layer's length known in advance from tar-split.
 */
import type { Readable } from 'node:stream';
import type { Strata } from '../strata.js';
import { TarWriter } from '../archive/index.js';
import { strataError } from '../errors.js';
import { type Digest, goJson, hexOf, sha256 } from '../store/digest.js';
import { MEDIA, OCI_LAYOUT_TEXT, REF_NAME_ANNOTATION, blobPath, dockerRepositories, v1LayerId, v1LayerJson } from './manifest.js';

export type SaveFormat = 'docker' | 'oci';

interface SavedImage {
  id: Digest;
  configBytes: Buffer;
  config: Record<string, unknown>;
  tags: string[];
  layers: Array<{ diffId: Digest; chainId: Digest; open: () => Promise<Readable> }>;
}

/** Resolve refs (tags or IDs) to images, keeping the tags that were asked for. */
async function collect(strata: Strata, refs: string[]): Promise<SavedImage[]> {
  const byId = new Map<string, SavedImage>();
  const allTags = await strata.images.references();
  for (const ref of refs) {
    const id = await strata.images.resolve(ref);
    let image = byId.get(id);
    if (!image) {
      const stored = await strata.images.get(id);
      if (stored.config.rootfs.diff_ids.length === 0) throw strataError('INVALID_ARGUMENT', `cannot save ${ref}: empty export - image has no layers`);
      image = { id, configBytes: stored.bytes, config: stored.config as Record<string, unknown>, tags: [], layers: await strata.imageLayers(id) };
      byId.set(id, image);
    }
    for (const [tag, target] of allTags) if (target === id && (tag === ref || tag === `${ref}:latest`) && !image.tags.includes(tag)) image.tags.push(tag);
  }
  return [...byId.values()];
}

export async function saveImages(strata: Strata, refs: string[], format: SaveFormat): Promise<Readable> {
  if (refs.length === 0) throw strataError('INVALID_ARGUMENT', 'save needs at least one image');
  const images = await collect(strata, refs);
  const sizes = new Map<string, number>();
  for (const image of images) for (const l of image.layers) if (!sizes.has(l.diffId)) sizes.set(l.diffId, await strata.layers.tarSize(l.chainId));
  const out = new TarWriter();
  const write = format === 'docker' ? writeDockerArchive : writeOciArchive;
  write(out, images, sizes).catch((err: unknown) => out.destroy(err as Error));
  return out;
}

const FILE = { mode: 0o644, uid: 0, gid: 0, uname: 'root', gname: 'root' };
const DIR = { ...FILE, mode: 0o755, typeflag: '5' };

async function writeLayer(out: TarWriter, name: string, size: number, open: () => Promise<Readable>, mtime: number): Promise<void> {
  const stream = await open();
  await out.add({ ...FILE, name, size, mtime }, stream as AsyncIterable<Buffer>);
}

async function writeDockerArchive(out: TarWriter, images: SavedImage[], sizes: Map<string, number>): Promise<void> {
  const written = new Map<string, string>(); // diffId → path of the real layer.tar
  const manifest: Array<Record<string, unknown>> = [];
  const repositories: Array<{ ref: string; topV1: string }> = [];
  for (const image of images) {
    const created = Date.parse(String(image.config.created ?? '')) / 1000 || 0;
    const paths: string[] = [];
    let parentV1: string | null = null;
    for (const [i, layer] of image.layers.entries()) {
      const v1 = v1LayerId(layer.chainId, parentV1);
      const isTop = i === image.layers.length - 1;
      const existing = written.get(layer.diffId);
      if (existing) {
        // a real file once, then referenced by path: skopeo mis-sizes symlinked layers (§2.8)
        paths.push(existing);
      } else {
        await out.add({ ...DIR, name: `${v1}/`, mtime: created });
        await out.add({ ...FILE, name: `${v1}/VERSION`, mtime: created }, Buffer.from('1.0'));
        await out.add({ ...FILE, name: `${v1}/json`, mtime: created }, Buffer.from(v1LayerJson(v1, parentV1, isTop ? image.config : null)));
        await writeLayer(out, `${v1}/layer.tar`, sizes.get(layer.diffId)!, layer.open, created);
        written.set(layer.diffId, `${v1}/layer.tar`);
        paths.push(`${v1}/layer.tar`);
      }
      if (isTop) for (const ref of image.tags) repositories.push({ ref, topV1: v1 });
      parentV1 = v1;
    }
    await out.add({ ...FILE, name: `${hexOf(image.id)}.json`, mtime: created }, image.configBytes);
    manifest.push({ Config: `${hexOf(image.id)}.json`, RepoTags: image.tags.length > 0 ? image.tags : null, Layers: paths });
  }
  await out.add({ ...FILE, name: 'manifest.json', mtime: 0 }, Buffer.from(`${goJson(manifest)}\n`));
  const repos = dockerRepositories(repositories);
  if (repos) await out.add({ ...FILE, name: 'repositories', mtime: 0 }, Buffer.from(repos));
  await out.finish();
}

async function writeOciArchive(out: TarWriter, images: SavedImage[], sizes: Map<string, number>): Promise<void> {
  const now = Math.floor(Date.now() / 1000);
  await out.add({ ...DIR, name: 'blobs/', mtime: now });
  await out.add({ ...DIR, name: 'blobs/sha256/', mtime: now });
  const written = new Set<string>();
  const index: Array<Record<string, unknown>> = [];
  for (const image of images) {
    for (const layer of image.layers) {
      if (written.has(layer.diffId)) continue;
      // uncompressed layers: the blob digest is the DiffID itself
      await writeLayer(out, blobPath(layer.diffId), sizes.get(layer.diffId)!, layer.open, now);
      written.add(layer.diffId);
    }
    if (!written.has(image.id)) {
      await out.add({ ...FILE, name: blobPath(image.id), mtime: now }, image.configBytes);
      written.add(image.id);
    }
    const manifestBytes = Buffer.from(goJson({
      schemaVersion: 2,
      mediaType: MEDIA.ociManifest,
      config: { mediaType: MEDIA.ociConfig, digest: image.id, size: image.configBytes.length },
      layers: image.layers.map((l) => ({ mediaType: MEDIA.ociLayer, digest: l.diffId, size: sizes.get(l.diffId)! })),
    }));
    const manifestDigest = sha256(manifestBytes);
    if (!written.has(manifestDigest)) {
      await out.add({ ...FILE, name: blobPath(manifestDigest), mtime: now }, manifestBytes);
      written.add(manifestDigest);
    }
    const descriptor = { mediaType: MEDIA.ociManifest, digest: manifestDigest, size: manifestBytes.length };
    if (image.tags.length === 0) index.push(descriptor);
    for (const tag of image.tags) {
      index.push({ ...descriptor, annotations: { 'io.containerd.image.name': tag, [REF_NAME_ANNOTATION]: tag } });
    }
  }
  await out.add({ ...FILE, name: 'index.json', mtime: now }, Buffer.from(goJson({ schemaVersion: 2, mediaType: MEDIA.ociIndex, manifests: index })));
  await out.add({ ...FILE, name: 'oci-layout', mtime: now }, Buffer.from(OCI_LAYOUT_TEXT));
  await out.finish();
}
