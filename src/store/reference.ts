import { strataError } from '../errors.js';

/**
 * Image references in Docker's familiar form. `ubuntu` means `docker.io/library/ubuntu:latest`
 * and is stored as repository `ubuntu`, key `ubuntu:latest` in repositories.json.
 */
export interface Reference {
  /** Familiar repository name: `ubuntu`, `foo/bar`, `registry.example:5000/x/y`. */
  name: string;
  tag?: string;
  digest?: string;
}

const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-fA-F0-9]{32,}$/;

export function parseReference(text: string): Reference {
  const bad = (why: string) => strataError('INVALID_REFERENCE', `invalid reference format: ${JSON.stringify(text)} (${why})`);
  let rest = text;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw bad('bad digest');
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw bad('bad tag');
  }
  if (rest.length === 0 || rest.length > 255) throw bad('bad name length');
  const parts = rest.split('/');
  let domain: string | undefined;
  if (parts.length > 1 && /[.:]|^localhost$/.test(parts[0]!)) domain = parts.shift();
  for (const part of parts) if (!COMPONENT.test(part)) throw bad('name components must be lowercase alphanumerics and separators');
  let path = parts.join('/');
  if (domain === 'docker.io' || domain === 'index.docker.io' || domain === undefined) {
    if (path.startsWith('library/') && path.split('/').length === 2) path = path.slice('library/'.length);
    domain = undefined;
  }
  const name = domain ? `${domain}/${path}` : path;
  if (name === 'sha256') throw bad('"sha256" is not a repository name');
  return { name, ...(tag !== undefined ? { tag } : {}), ...(digest !== undefined ? { digest } : {}) };
}

/** Add `:latest` when neither tag nor digest is given, as docker does for tags. */
export function withDefaultTag(ref: Reference): Reference {
  return ref.tag === undefined && ref.digest === undefined ? { ...ref, tag: 'latest' } : ref;
}

export function formatReference(ref: Reference): string {
  return `${ref.name}${ref.tag !== undefined ? `:${ref.tag}` : ''}${ref.digest !== undefined ? `@${ref.digest}` : ''}`;
}
