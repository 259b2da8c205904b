/** Pool status in dm-thin's words (pool_status, STATUSTYPE_INFO, current kernels). */
export interface PoolStatusFields {
  transactionId: number;
  usedMetadataBlocks: number;
  totalMetadataBlocks: number;
  usedDataBlocks: number;
  totalDataBlocks: number;
  /** Block of the metadata snapshot, null when none is held. */
  heldRoot: number | null;
  mode: 'rw' | 'ro' | 'out_of_data_space';
  discard: 'discard_passdown' | 'no_discard_passdown' | 'ignore_discard';
  noSpace: 'queue_if_no_space' | 'error_if_no_space';
  needsCheck: boolean;
  metadataLowWatermark: number;
}

export interface PoolStatus extends PoolStatusFields {
  /** `<trans id> <used>/<total meta> <used>/<total data> <held root|-> <mode> <discard> <no space> <needs_check|-> <meta low water>` */
  toString(): string;
}

export function formatPoolStatus(f: PoolStatusFields): PoolStatus {
  return {
    ...f,
    toString: () =>
      `${f.transactionId} ${f.usedMetadataBlocks}/${f.totalMetadataBlocks} ${f.usedDataBlocks}/${f.totalDataBlocks} ` +
      `${f.heldRoot ?? '-'} ${f.mode} ${f.discard} ${f.noSpace} ${f.needsCheck ? 'needs_check' : '-'} ${f.metadataLowWatermark}`,
  };
}

/** Parse a pool status line (also the older, shorter forms without the last two fields). */
export function parsePoolStatus(line: string): PoolStatusFields {
  const w = line.trim().split(/\s+/);
  const frac = (s: string | undefined): [number, number] => {
    const [a, b] = (s ?? '').split('/');
    return [Number(a), Number(b)];
  };
  const [um, tm] = frac(w[1]);
  const [ud, td] = frac(w[2]);
  return {
    transactionId: Number(w[0]),
    usedMetadataBlocks: um, totalMetadataBlocks: tm, usedDataBlocks: ud, totalDataBlocks: td,
    heldRoot: w[3] === '-' || w[3] === undefined ? null : Number(w[3]),
    mode: (w[4] ?? 'rw') as PoolStatusFields['mode'],
    discard: (w[5] ?? 'discard_passdown') as PoolStatusFields['discard'],
    noSpace: (w[6] ?? 'queue_if_no_space') as PoolStatusFields['noSpace'],
    needsCheck: w[7] === 'needs_check',
    metadataLowWatermark: w[8] === undefined ? 0 : Number(w[8]),
  };
}

export interface ThinStatus {
  mappedSectors: number;
  /** null when nothing is mapped (`-`). */
  highestMappedSector: number | null;
  toString(): string;
}

export function formatThinStatus(mappedSectors: number, highestMappedSector: number | null): ThinStatus {
  return { mappedSectors, highestMappedSector, toString: () => `${mappedSectors} ${highestMappedSector ?? '-'}` };
}
