/**
 * Pure codecs for the two image archive formats Strata loads and saves (see
 * shared/reference/image-formats.md §2 and §3): docker-archive's manifest.json / repositories,
 * and the OCI layout's index.json, manifests and descriptors.
 */
import { strataError } from '../errors.js';
import { type Digest, goJson, hexOf, isDigest, sha256 } from '../store/digest.js';

export const MEDIA = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;

export const OCI_LAYOUT_TEXT = '{"imageLayoutVersion": "1.0.0"}';
export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';

// ---- docker-archive --------------------------------------------------------------------------

export interface DockerManifestItem {
  Config: string;
  RepoTags: string[] | null;
  Layers: string[];
  Parent?: string;
}

export function parseDockerManifest(text: string): DockerManifestItem[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw strataError('INVALID_ARCHIVE', `manifest.json is not valid JSON: ${(err as Error).message}`);
  }
  if (!Array.isArray(parsed)) throw strataError('INVALID_ARCHIVE', 'manifest.json must be a JSON array');
  return parsed.map((item: unknown, i) => {
    const o = item as Partial<DockerManifestItem>;
    if (typeof o?.Config !== 'string' || !Array.isArray(o.Layers) || !o.Layers.every((l) => typeof l === 'string')) {
      throw strataError('INVALID_ARCHIVE', `manifest.json item ${i} needs a Config path and a Layers list`);
    }
    if (o.RepoTags != null && (!Array.isArray(o.RepoTags) || !o.RepoTags.every((t) => typeof t === 'string'))) {
      throw strataError('INVALID_ARCHIVE', `manifest.json item ${i} has invalid RepoTags`);
    }
    return { Config: o.Config, RepoTags: o.RepoTags ?? null, Layers: o.Layers, ...(typeof o.Parent === 'string' ? { Parent: o.Parent } : {}) };
  });
}

/**
 * A layer's legacy v1 ID for the `<v1id>/` directory: sha256 of its chain ID and parent v1 ID.
 * Docker and skopeo disagree on these already, and `docker load` ignores them when
 * manifest.json is present (§2.7), so a stable, simple definition is enough.
 */
export function v1LayerId(chainId: Digest, parentV1: string | null): string {
  return hexOf(sha256(goJson(parentV1 ? { layer_id: chainId, parent: `sha256:${parentV1}` } : { layer_id: chainId })));
}

/** The `<v1id>/json` of a layer: id and parent, plus the image's fields for the top layer. */
export function v1LayerJson(id: string, parent: string | null, top: Record<string, unknown> | null): string {
  const base: Record<string, unknown> = { id, ...(parent ? { parent } : {}) };
  if (top) {
    for (const key of ['comment', 'created', 'container', 'container_config', 'docker_version', 'author', 'config', 'architecture', 'variant', 'os']) {
      if (top[key] !== undefined) base[key] = top[key];
    }
  } else base.created = '1970-01-01T00:00:00Z';
  return goJson(base);
}

/** `repositories`: {"repo": {"tag": "<v1 id of top layer>"}} with sorted keys and a newline. */
export function dockerRepositories(tags: Array<{ ref: string; topV1: string }>): string | null {
  const repos: Record<string, Record<string, string>> = {};
  for (const { ref, topV1 } of tags) {
    const colon = ref.lastIndexOf(':');
    (repos[ref.slice(0, colon)] ??= {})[ref.slice(colon + 1)] = topV1;
  }
  const names = Object.keys(repos).sort();
  if (names.length === 0) return null;
  const sorted = Object.fromEntries(names.map((n) => [n, Object.fromEntries(Object.entries(repos[n]!).sort(([a], [b]) => a.localeCompare(b)))]));
  return `${goJson(sorted)}\n`;
}

// ---- OCI layout --------------------------------------------------------------------------------

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: { architecture?: string; os?: string; variant?: string };
  urls?: string[];
}

export interface OciIndex {
  schemaVersion: number;
  mediaType?: string;
  manifests: Descriptor[];
}

export interface OciManifest {
  schemaVersion: number;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
}

export function parseJsonObject<T>(text: string, what: string): T {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw strataError('INVALID_ARCHIVE', `${what} is not valid JSON: ${(err as Error).message}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw strataError('INVALID_ARCHIVE', `${what} must be a JSON object`);
  return parsed as T;
}

export function checkDescriptor(d: Descriptor, what: string): Descriptor {
  if (typeof d?.mediaType !== 'string' || typeof d.digest !== 'string' || typeof d.size !== 'number') {
    throw strataError('INVALID_ARCHIVE', `${what}: a descriptor needs mediaType, digest and size`);
  }
  if (!/^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/.test(d.digest)) throw strataError('INVALID_ARCHIVE', `${what}: invalid digest ${JSON.stringify(d.digest)}`);
  if (!isDigest(d.digest)) throw strataError('UNSUPPORTED_ARCHIVE', `${what}: only sha256 digests are supported, got ${d.digest}`);
  return d;
}

export function isIndexMediaType(mediaType: string | undefined): boolean {
  return mediaType === MEDIA.ociIndex || mediaType === MEDIA.dockerManifestList;
}

export function isManifestMediaType(mediaType: string | undefined): boolean {
  return mediaType === MEDIA.ociManifest || mediaType === MEDIA.dockerManifest;
}

/** From a platform list, the manifest for linux on this machine's architecture (or the only one). */
export function pickPlatform(manifests: Descriptor[], arch: string): Descriptor | null {
  const images = manifests.filter((m) => isManifestMediaType(m.mediaType) || isIndexMediaType(m.mediaType));
  if (images.length <= 1) return images[0] ?? null;
  return images.find((m) => m.platform?.os === 'linux' && m.platform.architecture === arch) ?? images.find((m) => !m.platform) ?? null;
}

/** The layout's blob path for a digest. */
export function blobPath(digest: string): string {
  const [alg, encoded] = digest.split(':');
  return `blobs/${alg}/${encoded}`;
}
