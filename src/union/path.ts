/**
 * Union paths: always relative to the union root, `/` separated. `..` never climbs above the
 * root, which is how absolute symlink targets and `../../..` chains stay inside the union.
 */

/** Split a union path into components, dropping empty and `.` parts (`..` is kept: it is resolved against symlinks as the walk goes). */
export function splitPath(path: string): string[] {
  return path.split('/').filter((c) => c !== '' && c !== '.');
}

export function joinRel(parent: string, name: string): string {
  return parent === '' ? name : `${parent}/${name}`;
}

export function parentRel(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i < 0 ? '' : rel.slice(0, i);
}

export function baseName(rel: string): string {
  return rel.slice(rel.lastIndexOf('/') + 1);
}

/** Whether `rel` is `ancestor` or lies beneath it. */
export function isWithin(rel: string, ancestor: string): boolean {
  return ancestor === '' || rel === ancestor || rel.startsWith(ancestor + '/');
}
