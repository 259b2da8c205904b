/**

 * `strata load`: docker-archive (Docker's `save`, skopeo's `docker-archive:`), OCI archives and
 * OCI layout directories. An archive file is first unpacked into a temp directory under the
 * root (as `docker load` does) through the same confined extractor as layers, so a hostile
 * archive cannot write outside it; every path the manifests name is then resolved inside it.
 */
import { mkdir, mkdtemp, readFile, realpath, rm, stat } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { join, sep } from 'node:path';
import type { Readable } from 'node:stream';
import type { Strata } from '../strata.js';
import { applyLayerTar, openFileInput, openLayerStream } from '../archive/index.js';
import { strataError, isErrno } from '../errors.js';
import { type Digest, sha256 } from '../store/digest.js';
import { parseConfig } from '../store/image-store.js';
import { parseReference, formatReference, withDefaultTag } from '../store/reference.js';
import { DigestVerifier } from '../util/digest-verifier.js';
import {
  type Descriptor, type OciIndex, type OciManifest, REF_NAME_ANNOTATION, blobPath, checkDescriptor, isIndexMediaType,
  isManifestMediaType, parseDockerManifest, parseJsonObject, pickPlatform,
} from './manifest.js';

/** Archives and layers are read once, start to end: 1 MiB reads. */
const READ_AHEAD = { highWaterMark: 1 << 20 };

export interface LoadedImage {
  id: Digest;
  tags: string[];
}

/** Load every image in `source` (an archive file, `-` for a stream, or a layout directory). */
export async function loadImages(strata: Strata, source: string | Readable): Promise<LoadedImage[]> {
  if (typeof source === 'string' && (await stat(source)).isDirectory()) return loadFromDirectory(strata, source);
  const tmpRoot = join(strata.root, 'tmp');
  await mkdir(tmpRoot, { recursive: true, mode: 0o700 });
  const dir = await mkdtemp(join(tmpRoot, 'load-'));
  try {
    const input = typeof source === 'string' ? await openFileInput(source) : source;
    await applyLayerTar(dir, await openLayerStream(input), { whiteouts: 'aufs' });
    return await loadFromDirectory(strata, dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function loadFromDirectory(strata: Strata, dir: string): Promise<LoadedImage[]> {
  if (await exists(join(dir, 'manifest.json'))) return loadDockerArchive(strata, dir);
  if (await exists(join(dir, 'oci-layout'))) return loadOciLayout(strata, dir);
  throw strataError('INVALID_ARCHIVE', 'not an image archive: it has neither manifest.json (docker-archive) nor oci-layout (OCI)');
}

async function loadDockerArchive(strata: Strata, dir: string): Promise<LoadedImage[]> {
  const items = parseDockerManifest(await readFile(join(dir, 'manifest.json'), 'utf8'));
  const loaded: LoadedImage[] = [];
  await strata.withWriteLock(async (txn) => {
    for (const item of items) {
      const configBytes = await readFile(await inside(dir, item.Config));
      const config = parseConfig(configBytes);
      if (!config.rootfs) throw strataError('INVALID_ARCHIVE', 'invalid image JSON, no RootFS key');
      if (item.Layers.length !== config.rootfs.diff_ids.length) {
        throw strataError('INVALID_ARCHIVE', `invalid manifest, layers length mismatch: expected ${config.rootfs.diff_ids.length}, got ${item.Layers.length}`);
      }
      const layers = item.Layers.map((path) => async () => openFileInput(await inside(dir, path)));
      const tags = (item.RepoTags ?? []).map((t) => formatReference(withDefaultTag(parseReference(t))));
      const id = await strata.addImage(txn, configBytes, layers, tags);
      loaded.push({ id, tags });
    }
  });
  return loaded;
}

async function loadOciLayout(strata: Strata, dir: string): Promise<LoadedImage[]> {
  const layout = parseJsonObject<{ imageLayoutVersion?: unknown }>(await readFile(join(dir, 'oci-layout'), 'utf8'), 'oci-layout');
  if (typeof layout.imageLayoutVersion !== 'string') throw strataError('INVALID_ARCHIVE', 'oci-layout has no imageLayoutVersion');
  const index = parseJsonObject<OciIndex>(await readFile(join(dir, 'index.json'), 'utf8'), 'index.json');
  if (!Array.isArray(index.manifests)) throw strataError('INVALID_ARCHIVE', 'index.json has no manifests list');
  const loaded: LoadedImage[] = [];
  await strata.withWriteLock(async (txn) => {
    for (const top of index.manifests) {
      if (!isManifestMediaType(top.mediaType) && !isIndexMediaType(top.mediaType)) continue; // tolerated, not an image
      const manifestDesc = await resolveManifest(dir, checkDescriptor(top, 'index.json'));
      const manifest = parseJsonObject<OciManifest>((await readBlob(dir, manifestDesc)).toString('utf8'), `manifest ${manifestDesc.digest}`);
      const configDesc = checkDescriptor(manifest.config, 'manifest config');
      if (!Array.isArray(manifest.layers)) throw strataError('INVALID_ARCHIVE', `manifest ${manifestDesc.digest} has no layers list`);
      const configBytes = await readBlob(dir, configDesc);
      const layers = manifest.layers.map((d, i) => {
        const desc = checkDescriptor(d, `layer ${i}`);
        return async () => {
          const file = createReadStream(await inside(dir, blobPath(desc.digest)), READ_AHEAD);
          const verifier = new DigestVerifier(desc.digest, `layer blob ${desc.digest}`);
          file.on('error', (err) => verifier.destroy(err));
          return file.pipe(verifier) as Readable;
        };
      });
      const tags = ociTags(top);
      const id = await strata.addImage(txn, configBytes, layers, tags);
      loaded.push({ id, tags });
    }
  });
  return loaded;
}

/** Follow nested indexes down to the image manifest for this platform. */
async function resolveManifest(dir: string, desc: Descriptor, depth = 0): Promise<Descriptor> {
  if (isManifestMediaType(desc.mediaType)) return desc;
  if (depth > 4) throw strataError('INVALID_ARCHIVE', 'image indexes nest too deeply');
  const nested = parseJsonObject<OciIndex>((await readBlob(dir, desc)).toString('utf8'), `index ${desc.digest}`);
  const arch = { x64: 'amd64', arm64: 'arm64' }[process.arch as 'x64' | 'arm64'] ?? process.arch;
  const chosen = pickPlatform(nested.manifests ?? [], arch);
  if (!chosen) throw strataError('INVALID_ARCHIVE', `index ${desc.digest} has no image for linux/${arch}`);
  return resolveManifest(dir, checkDescriptor(chosen, `index ${desc.digest}`), depth + 1);
}

/** Tags from a layout entry: containerd's full name, else the ref.name annotation if it is a reference. */
function ociTags(desc: Descriptor): string[] {
  const name = desc.annotations?.['io.containerd.image.name'] ?? desc.annotations?.[REF_NAME_ANNOTATION];
  if (!name) return [];
  try {
    const ref = parseReference(name);
    // a bare tag such as "latest" parses as a name; only names with a tag are taken as references
    return ref.tag !== undefined ? [formatReference(withDefaultTag(ref))] : [];
  } catch {
    return [];
  }
}

/** A small blob (manifest, config), checked against its descriptor. */
async function readBlob(dir: string, desc: Descriptor): Promise<Buffer> {
  if (desc.size > 16 * 1024 * 1024) throw strataError('INVALID_ARCHIVE', `blob ${desc.digest} is too large for a manifest or config (${desc.size} bytes)`);
  const bytes = await readFile(await inside(dir, blobPath(desc.digest)));
  if (bytes.length !== desc.size || sha256(bytes) !== desc.digest) {
    throw strataError('DIGEST_MISMATCH', `blob ${desc.digest} does not match its descriptor`, { id: desc.digest });
  }
  return bytes;
}

/** Resolve a path named by a manifest, following symlinks but never leaving `dir`. */
async function inside(dir: string, path: string): Promise<string> {
  const base = await realpath(dir);
  let real: string;
  try {
    real = await realpath(join(base, path));
  } catch (err) {
    if (isErrno(err, 'ENOENT', 'ENOTDIR', 'ELOOP')) throw strataError('INVALID_ARCHIVE', `the archive has no ${path}`);
    throw err;
  }
  if (real !== base && !real.startsWith(base + sep)) throw strataError('PATH_ESCAPE', `archive path ${path} points outside the archive`);
  return real;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false);
}
