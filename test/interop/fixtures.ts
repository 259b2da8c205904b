// Layer tars and docker-archives for the interop tests, made by GNU tar (a real producer).
import { mkdir, writeFile, rm, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { dir, file, hardlink, layerTar, opaque, run, sym, tempDir, whiteout, xattr, type FsOp } from '../helpers/fstest.js';

export const sha256 = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** A small root filesystem with the awkward parts: setuid, hardlink, symlinks, xattr, sticky dir. */
export const BASE_OPS: FsOp[] = [
  dir('bin'), file('bin/tool', '#!/bin/sh\necho tool\n', 0o4755), hardlink('bin/tool-alias', 'bin/tool'), sym('bin/link', 'tool'),
  dir('etc'), file('etc/os-release', 'ID=strata\n'), file('etc/motd', 'hello\n'), dir('tmp', 0o1777),
  dir('var/cache'), file('var/cache/a', 'a'), file('var/cache/b', 'b'), file('data', 'data'), xattr('data', 'user.colour', 'blue'),
];

/** A layer on BASE_OPS that deletes, hides a directory's contents and adds. */
export const WHITEOUT_OPS: FsOp[] = [
  dir('etc'), whiteout('etc/motd'), file('etc/os-release', 'ID=strata\nVERSION=2\n'),
  dir('var/cache'), opaque('var/cache'), file('var/cache/c', 'c'), dir('srv'), file('srv/index.html', '<h1>hi</h1>\n'),
];

export async function baseTar(): Promise<Buffer> {
  return layerTar(BASE_OPS);
}

/**
 * A docker-archive (what `docker save` writes and `docker load` reads) of one image built from
 * layer tars, base first.
 */
export async function dockerArchive(ref: string, layers: Buffer[]): Promise<Buffer> {
  const work = await tempDir('strata-archive-');
  try {
    const diffIds = layers.map(sha256);
    const layerPaths: string[] = [];
    for (const [i, tar] of layers.entries()) {
      const name = `${diffIds[i]!.slice(7)}/layer.tar`;
      await mkdir(join(work, diffIds[i]!.slice(7)), { recursive: true });
      await writeFile(join(work, name), tar);
      layerPaths.push(name);
    }
    const config = Buffer.from(JSON.stringify({
      architecture: 'amd64',
      config: { Cmd: ['/bin/tool'] },
      created: '2026-01-01T00:00:00Z',
      history: layers.map((_, i) => ({ created: '2026-01-01T00:00:00Z', created_by: `layer ${i}` })),
      os: 'linux',
      rootfs: { type: 'layers', diff_ids: diffIds },
    }));
    const configName = `${sha256(config).slice(7)}.json`;
    await writeFile(join(work, configName), config);
    await writeFile(join(work, 'manifest.json'), JSON.stringify([{ Config: configName, RepoTags: [ref], Layers: layerPaths }]));
    return await run('tar', ['--format=posix', '-C', work, '-cf', '-', '.']);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Layer digests of a docker-archive as `docker save` wrote it (sha256 of each layer file). */
export async function archiveLayerDigests(archive: string, ref?: string): Promise<string[]> {
  const work = await tempDir('strata-unpack-');
  try {
    await run('tar', ['-C', work, '-xf', archive]);
    const manifest = JSON.parse(await readFile(join(work, 'manifest.json'), 'utf8')) as Array<{ RepoTags: string[] | null; Layers: string[] }>;
    const item = ref ? manifest.find((m) => m.RepoTags?.includes(ref)) : manifest[0];
    if (!item) throw new Error(`${ref} is not in ${archive}`);
    const out: string[] = [];
    for (const layer of item.Layers) out.push(sha256(await readFile(join(work, layer))));
    return out;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}
