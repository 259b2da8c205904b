import { featureWords, parseFeatures, type PoolFeatures } from './features.js';
import { DATA_BLOCK_SIZE_MAX_SECTORS, DATA_BLOCK_SIZE_MIN_SECTORS, MAX_DEV_ID } from './format/constants.js';
import { strataError } from '../errors.js';

/**
 * dm table lines for the two targets (pure parse/format; no I/O):
 *
 *   <start> <len> thin-pool <metadata dev> <data dev> <block size> <low water mark> [<#features> <feature>*]
 *   <start> <len> thin <pool dev> <dev id> [<external origin dev>]
 *
 * Lengths and the block size are in 512-byte sectors, the low-water mark in data blocks. Where the
 * kernel names devices by major:minor, Strata names files (pool lines) and pool names (thin lines).
 */
export interface ThinPoolTable {
  target: 'thin-pool';
  start: number;
  length: number;
  metadataDev: string;
  dataDev: string;
  dataBlockSectors: number;
  lowWaterMark: number;
  features: PoolFeatures;
}

export interface ThinTable {
  target: 'thin';
  start: number;
  length: number;
  poolDev: string;
  devId: number;
  externalOrigin?: string;
}

export type TableLine = ThinPoolTable | ThinTable;

function uint(word: string | undefined, what: string): number {
  if (word === undefined || !/^\d+$/.test(word)) throw strataError('INVALID_TABLE', `invalid ${what}: ${JSON.stringify(word ?? '')}`);
  const n = Number(word);
  if (!Number.isSafeInteger(n)) throw strataError('INVALID_TABLE', `${what} ${word} is too large`);
  return n;
}

export function parseTable(text: string): TableLine {
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  if (lines.length !== 1) throw strataError('INVALID_TABLE', `expected one table line, got ${lines.length}`);
  const w = lines[0]!.split(/\s+/);
  const start = uint(w[0], 'start sector');
  const length = uint(w[1], 'length');
  if (start !== 0) throw strataError('INVALID_TABLE', 'only single-target tables starting at sector 0 are supported');
  if (length === 0) throw strataError('INVALID_TABLE', 'table length must be positive');
  const target = w[2];
  if (target === 'thin-pool') {
    if (w.length < 7) throw strataError('INVALID_TABLE', 'thin-pool needs <metadata dev> <data dev> <block size> <low water mark>');
    const dataBlockSectors = uint(w[5], 'data block size');
    if (dataBlockSectors < DATA_BLOCK_SIZE_MIN_SECTORS || dataBlockSectors > DATA_BLOCK_SIZE_MAX_SECTORS || dataBlockSectors % DATA_BLOCK_SIZE_MIN_SECTORS !== 0) {
      throw strataError('INVALID_TABLE', `data block size ${dataBlockSectors} must be a multiple of 128 sectors between 128 and ${DATA_BLOCK_SIZE_MAX_SECTORS}`);
    }
    const lowWaterMark = uint(w[6], 'low water mark');
    let features = parseFeatures([]);
    if (w.length > 7) {
      const n = uint(w[7], 'feature count');
      const words = w.slice(8);
      if (words.length !== n) throw strataError('INVALID_TABLE', `feature count ${n} does not match ${words.length} feature argument(s)`);
      features = parseFeatures(words);
    }
    if (length < dataBlockSectors) throw strataError('INVALID_TABLE', 'pool length is smaller than one data block');
    return { target, start, length, metadataDev: w[3]!, dataDev: w[4]!, dataBlockSectors, lowWaterMark, features };
  }
  if (target === 'thin') {
    if (w.length < 5 || w.length > 6) throw strataError('INVALID_TABLE', 'thin needs <pool dev> <dev id> [<external origin dev>]');
    const devId = uint(w[4], 'device id');
    if (devId > MAX_DEV_ID) throw strataError('INVALID_TABLE', `device id ${devId} exceeds ${MAX_DEV_ID}`);
    const t: ThinTable = { target, start, length, poolDev: w[3]!, devId };
    if (w[5] !== undefined) t.externalOrigin = w[5];
    return t;
  }
  throw strataError('INVALID_TABLE', `unsupported target ${JSON.stringify(target ?? '')} (thin-pool and thin only)`);
}

export function formatTable(t: TableLine): string {
  if (t.target === 'thin-pool') {
    const f = featureWords(t.features);
    const feat = f.length > 0 ? ` ${f.length} ${f.join(' ')}` : ' 0';
    return `${t.start} ${t.length} thin-pool ${t.metadataDev} ${t.dataDev} ${t.dataBlockSectors} ${t.lowWaterMark}${feat}`;
  }
  return `${t.start} ${t.length} thin ${t.poolDev} ${t.devId}${t.externalOrigin ? ` ${t.externalOrigin}` : ''}`;
}
