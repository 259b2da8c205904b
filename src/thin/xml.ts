import type { ThinMetadata, DeviceDetails } from './metadata.js';
import { strataError } from '../errors.js';

/**
 * thin_dump's XML (thin-provisioning-tools xml_format): `<superblock>` holding `<device>`s that
 * hold `<range_mapping>` (runs of consecutive virtual and data blocks with one time) and
 * `<single_mapping>` elements. dumpXml writes exactly what thin_dump 0.9.0 writes (which leaves
 * out `metadata_snap`; the held root is in the pool status); the parser
 * reads that, and also the `<def>`/`<ref>` factoring of the Rust tools.
 */

export interface XmlSuperblock {
  uuid: string;
  time: number;
  transaction: number;
  flags: number;
  version: number;
  dataBlockSize: number;
  nrDataBlocks: number;
  metadataSnap?: number;
}

const BATCH = 8192;

/** Stream the metadata as XML through `out` (called with chunks, in order). */
export async function dumpXml(md: ThinMetadata, out: (chunk: string) => void | Promise<void>): Promise<void> {
  const sb = md.superblock;
  await out(`<superblock uuid="" time="${sb.time}" transaction="${sb.transId}" flags="${sb.flags}" version="${sb.version}" ` +
    `data_block_size="${sb.dataBlockSize}" nr_data_blocks="${md.dataSm.nrBlocks}">\n`);
  for (const id of [...md.details.keys()].sort((a, b) => a - b)) {
    const d = md.details.get(id)!;
    await out(`  <device dev_id="${id}" mapped_blocks="${d.mappedBlocks}" transaction="${d.transactionId}" ` +
      `creation_time="${d.creationTime}" snap_time="${d.snapshottedTime}">\n`);
    let run: { v: number; d: number; len: number; t: number } | null = null;
    const line = (r: NonNullable<typeof run>): string => r.len === 1
      ? `    <single_mapping origin_block="${r.v}" data_block="${r.d}" time="${r.t}"/>\n`
      : `    <range_mapping origin_begin="${r.v}" data_begin="${r.d}" length="${r.len}" time="${r.t}"/>\n`;
    // walk in batches of mappings so memory stays bounded however large the device
    for (let from = 0; from < Infinity;) {
      const lines: string[] = [];
      let seen = 0;
      let last = -1;
      await md.mappingsInRange(id, from, Infinity, (vb, m) => {
        if (seen++ === BATCH) return false;
        last = vb;
        if (run && vb === run.v + run.len && m.block === run.d + run.len && m.time === run.t) {
          run.len++;
          return true;
        }
        if (run) lines.push(line(run));
        run = { v: vb, d: m.block, len: 1, t: m.time };
        return true;
      });
      if (lines.length) await out(lines.join(''));
      if (seen <= BATCH) break;
      from = last + 1;
    }
    if (run) await out(line(run));
    await out('  </device>\n');
  }
  await out('</superblock>\n');
}

/** One XML element event. */
interface Tag {
  name: string;
  attrs: Record<string, string>;
  close: boolean;
  selfClose: boolean;
}

function* tags(text: string): Generator<Tag> {
  const re = /<(\/?)([A-Za-z_][\w-]*)((?:\s+[\w-]+\s*=\s*(?:"[^"]*"|'[^']*'))*)\s*(\/?)>|<\?[^>]*\?>|<!--[\s\S]*?-->/g;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    if (m[2] === undefined) continue;
    const attrs: Record<string, string> = {};
    const are = /([\w-]+)\s*=\s*(?:"([^"]*)"|'([^']*)')/g;
    for (let a = are.exec(m[3] ?? ''); a; a = are.exec(m[3] ?? '')) attrs[a[1]!] = a[2] ?? a[3] ?? '';
    yield { name: m[2], attrs, close: m[1] === '/', selfClose: m[4] === '/' };
  }
}

/** Callbacks for a restore, in document order. */
export interface XmlSink {
  superblock(sb: XmlSuperblock): Promise<void>;
  device(id: number, d: DeviceDetails): Promise<void>;
  /** `length` consecutive mappings from (vblock, dataBlock). */
  mapping(dev: number, vblock: number, dataBlock: number, length: number, time: number): Promise<void>;
}

function n(attrs: Record<string, string>, key: string, dflt?: number): number {
  const v = attrs[key];
  if (v === undefined) {
    if (dflt !== undefined) return dflt;
    throw strataError('INVALID_ARGUMENT', `XML attribute ${key} missing`);
  }
  if (!/^\d+$/.test(v)) throw strataError('INVALID_ARGUMENT', `XML attribute ${key}="${v}" is not a number`);
  return Number(v);
}

/**
 * Parse thin_dump XML from chunks (bounded memory: tags are cut at the last '>' of each chunk).
 */
export async function parseXml(chunks: AsyncIterable<string | Buffer>, sink: XmlSink): Promise<void> {
  let rest = '';
  let dev: number | null = null;
  let sawSuper = false;
  const defs = new Map<string, Array<[number, number, number, number]>>();
  let def: Array<[number, number, number, number]> | null = null;
  const handle = async (t: Tag): Promise<void> => {
    if (t.close) {
      if (t.name === 'device') dev = null;
      if (t.name === 'def') def = null;
      return;
    }
    switch (t.name) {
      case 'superblock':
        sawSuper = true;
        await sink.superblock({
          uuid: t.attrs.uuid ?? '', time: n(t.attrs, 'time'), transaction: n(t.attrs, 'transaction'),
          flags: n(t.attrs, 'flags', 0), version: n(t.attrs, 'version', 2),
          dataBlockSize: n(t.attrs, 'data_block_size'), nrDataBlocks: n(t.attrs, 'nr_data_blocks'),
          ...(t.attrs.metadata_snap !== undefined ? { metadataSnap: n(t.attrs, 'metadata_snap') } : {}),
        });
        return;
      case 'device':
        if (!sawSuper) throw strataError('INVALID_ARGUMENT', '<device> outside <superblock>');
        dev = n(t.attrs, 'dev_id');
        await sink.device(dev, {
          mappedBlocks: n(t.attrs, 'mapped_blocks', 0), transactionId: n(t.attrs, 'transaction', 0),
          creationTime: n(t.attrs, 'creation_time', 0), snapshottedTime: n(t.attrs, 'snap_time', 0),
        });
        return;
      case 'def':
        def = [];
        defs.set(t.attrs.name ?? '', def);
        return;
      case 'ref': {
        const body = defs.get(t.attrs.name ?? '');
        if (!body) throw strataError('INVALID_ARGUMENT', `<ref name="${t.attrs.name}"> to an unknown <def>`);
        for (const [v, d, len, time] of body) await emitMapping(v, d, len, time);
        return;
      }
      case 'range_mapping':
        await emitMapping(n(t.attrs, 'origin_begin'), n(t.attrs, 'data_begin'), n(t.attrs, 'length'), n(t.attrs, 'time', 0));
        return;
      case 'single_mapping':
        await emitMapping(n(t.attrs, 'origin_block'), n(t.attrs, 'data_block'), 1, n(t.attrs, 'time', 0));
        return;
      default:
        return; // <identifier> and friends carry nothing we need
    }
  };
  const emitMapping = async (v: number, d: number, len: number, time: number): Promise<void> => {
    if (def) {
      def.push([v, d, len, time]);
      return;
    }
    if (dev === null) throw strataError('INVALID_ARGUMENT', 'mapping outside <device>');
    await sink.mapping(dev, v, d, len, time);
  };
  for await (const chunk of chunks) {
    rest += chunk.toString();
    const cut = rest.lastIndexOf('>');
    if (cut < 0) continue;
    const text = rest.slice(0, cut + 1);
    rest = rest.slice(cut + 1);
    for (const t of tags(text)) await handle(t);
  }
  if (rest.trim()) for (const t of tags(rest)) await handle(t);
  if (!sawSuper) throw strataError('INVALID_ARGUMENT', 'no <superblock> in the XML');
}

/** A parsed dump held in memory (tests and small tools). */
export interface XmlDump {
  superblock: XmlSuperblock;
  devices: Map<number, DeviceDetails & { mappings: Map<number, { block: number; time: number }> }>;
}

export async function parseXmlDump(text: string): Promise<XmlDump> {
  let superblock!: XmlSuperblock;
  const devices: XmlDump['devices'] = new Map();
  await parseXml((async function* () { yield text; })(), {
    async superblock(sb) { superblock = sb; },
    async device(id, d) { devices.set(id, { ...d, mappings: new Map() }); },
    async mapping(dev, v, d, len, time) {
      const m = devices.get(dev)!.mappings;
      for (let i = 0; i < len; i++) m.set(v + i, { block: d + i, time });
    },
  });
  return { superblock, devices };
}
