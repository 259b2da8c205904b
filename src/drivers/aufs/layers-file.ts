/**
 * `<root>/aufs/layers/<id>`: the layer's ancestors, nearest parent first, one id per line; empty
 * for a base layer (moby daemon/graphdriver/aufs/dirs.go getParentIds).
 */

export function parseLayers(text: string): string[] {
  return text.split('\n').map((l) => l.trim()).filter((l) => l !== '');
}

export function formatLayers(ancestors: readonly string[]): string {
  return ancestors.length === 0 ? '' : ancestors.join('\n') + '\n';
}

/** A child's ancestors: its parent, then the parent's own ancestors. */
export function childLayers(parent: string | null, parentAncestors: readonly string[]): string[] {
  return parent === null ? [] : [parent, ...parentAncestors];
}
