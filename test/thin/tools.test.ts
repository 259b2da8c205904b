import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { writeFile } from 'node:fs/promises';
import { NO_TOOLS, tempDir, sparseFile, tool, rng, pattern } from './helpers.js';
import { FileBlockDevice } from '../../src/thin/block-device.js';
import { ThinMetadata } from '../../src/thin/metadata.js';
import { checkMetadata } from '../../src/thin/check.js';
import { dumpXml, parseXmlDump } from '../../src/thin/xml.js';
import { restoreXml } from '../../src/thin/restore.js';
import { Pool } from '../../src/thin/pool.js';

/** A dump with range and single mappings, blocks shared between devices, and odd times. */
function makeXml(seed: number, devices: number, perDevice: number): string {
  const r = rng(seed);
  const nrData = 200_000;
  let xml = `<superblock uuid="" time="5" transaction="77" flags="0" version="2" data_block_size="128" nr_data_blocks="${nrData}">\n`;
  let nextData = 0;
  const shared: Array<[number, number]> = [];
  for (let d = 0; d < devices; d++) {
    const lines: string[] = [];
    let v = Math.floor(r() * 100);
    let mapped = 0;
    while (mapped < perDevice) {
      const useShared = shared.length > 0 && r() < 0.2;
      const len = 1 + Math.floor(r() * 20);
      const time = Math.floor(r() * 6);
      let data: number;
      if (useShared) data = shared[Math.floor(r() * shared.length)]![0];
      else {
        data = nextData;
        nextData += len;
        shared.push([data, len]);
      }
      const n = useShared ? 1 : len;
      lines.push(n === 1
        ? `    <single_mapping origin_block="${v}" data_block="${data}" time="${time}"/>\n`
        : `    <range_mapping origin_begin="${v}" data_begin="${data}" length="${n}" time="${time}"/>\n`);
      v += n + (r() < 0.5 ? Math.floor(r() * 50) : 0);
      mapped += n;
    }
    xml += `  <device dev_id="${d * 3 + 1}" mapped_blocks="${mapped}" transaction="${d}" creation_time="${d % 5}" snap_time="5">\n${lines.join('')}  </device>\n`;
  }
  return `${xml}</superblock>\n`;
}

async function* once(s: string): AsyncGenerator<string> {
  yield s;
}

test('Strata reads thin_restore metadata: same devices and mappings, clean check, identical dump', { skip: NO_TOOLS }, async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const xml = makeXml(11, 5, 20000); // devices larger than a dump batch
    await writeFile(join(dir, 'in.xml'), xml);
    const meta = join(dir, 'meta');
    await sparseFile(meta, 32 << 20);
    const r = tool('thin_restore', ['-i', join(dir, 'in.xml'), '-o', meta]);
    assert.equal(r.status, 0, r.stderr);
    const canonical = tool('thin_dump', [meta]).stdout;
    const expected = await parseXmlDump(xml);

    const dev = await FileBlockDevice.open(meta, { readOnly: true });
    const md = await ThinMetadata.open(dev, { readOnly: true });
    assert.deepEqual([...md.details.keys()].sort((a, b) => a - b), [...expected.devices.keys()]);
    for (const [id, d] of expected.devices) {
      const got = new Map<number, { block: number; time: number }>();
      await md.mappingsInRange(id, 0, Infinity, (v, m) => void got.set(v, m));
      assert.deepEqual(got, d.mappings, `device ${id}`);
      assert.equal(md.details.get(id)!.mappedBlocks, d.mappings.size);
    }
    const report = await checkMetadata(md);
    // thin_restore 0.9.0 records one more allocated block than it references (a known quirk,
    // accepted by its own thin_check): Strata reports it as a non-fatal issue
    assert.deepEqual(report.issues.filter((i) => i.fatal), []);
    let ours = '';
    await dumpXml(md, (s) => void (ours += s));
    assert.equal(ours, canonical);
    await dev.close();
  } finally {
    await cleanup();
  }
});

test('Strata restore writes metadata thin_check accepts and thin_dump reproduces', { skip: NO_TOOLS }, async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const xml = makeXml(12, 8, 5000);
    await writeFile(join(dir, 'in.xml'), xml);
    const theirs = join(dir, 'theirs');
    await sparseFile(theirs, 32 << 20);
    assert.equal(tool('thin_restore', ['-i', join(dir, 'in.xml'), '-o', theirs]).status, 0);
    const ours = join(dir, 'ours');
    await sparseFile(ours, 32 << 20);
    const dev = await FileBlockDevice.open(ours);
    await restoreXml(dev, once(xml), { commitEvery: 500 });
    await dev.close();
    const check = tool('thin_check', [ours]);
    assert.equal(check.status, 0, check.stderr);
    assert.match(check.stdout, /TRANSACTION_ID=77/);
    assert.equal(tool('thin_dump', [ours]).stdout, tool('thin_dump', [theirs]).stdout);
  } finally {
    await cleanup();
  }
});

test('a pool opened on thin_restore metadata keeps its mappings and stays thin_check clean', { skip: NO_TOOLS }, async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const xml = makeXml(13, 3, 500);
    await writeFile(join(dir, 'in.xml'), xml);
    const meta = join(dir, 'meta');
    const data = join(dir, 'data');
    await sparseFile(meta, 8 << 20);
    await sparseFile(data, 200_000 * 65536);
    assert.equal(tool('thin_restore', ['-i', join(dir, 'in.xml'), '-o', meta]).status, 0);
    const pool = await Pool.open({ metadataPath: meta, dataPath: data, dataBlockSectors: 128 });
    const before = await parseXmlDump(xml);
    const d1 = await pool.openThin(1, 1 << 30);
    // write into a mapped block (shared per time -> copied) and a fresh one
    const [vb] = before.devices.get(1)!.mappings.keys();
    await d1.write(pattern(1000, 3), vb! * 65536 + 100);
    await d1.write(pattern(1000, 4), 15_000 * 65536);
    await pool.message('create_snap 1000 1');
    await pool.message('delete 4');
    await pool.close();
    assert.equal(tool('thin_check', [meta]).status, 0);
    const after = await parseXmlDump(tool('thin_dump', [meta]).stdout);
    assert.deepEqual(after.devices.get(7)!.mappings, before.devices.get(7)!.mappings);
    assert.equal(after.devices.get(1)!.mappings.size, before.devices.get(1)!.mappings.size + 1);
    assert.deepEqual(after.devices.get(1000)!.mappings, after.devices.get(1)!.mappings);
    assert.equal(after.devices.has(4), false);
  } finally {
    await cleanup();
  }
});

test('metadata snapshot: thin_dump -m reads the frozen view; release leaves no leak', { skip: NO_TOOLS }, async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const meta = join(dir, 'meta');
    const data = join(dir, 'data');
    await sparseFile(meta, 8 << 20);
    await sparseFile(data, 64 << 20);
    const pool = await Pool.open({ metadataPath: meta, dataPath: data, dataBlockSectors: 128 });
    await pool.createThin(1);
    const dev = await pool.openThin(1, 16 << 20);
    await dev.write(pattern(1 << 20, 1), 0);
    const held = await pool.reserveMetadataSnap();
    await dev.write(pattern(1 << 20, 2), 4 << 20);
    await pool.createThin(2);
    await pool.commit();
    assert.equal(tool('thin_check', [meta]).status, 0);
    const frozen = await parseXmlDump(tool('thin_dump', ['-m', meta]).stdout);
    assert.deepEqual([...frozen.devices.keys()], [1]);
    assert.equal(frozen.devices.get(1)!.mappings.size, 16);
    const live = await parseXmlDump(tool('thin_dump', [meta]).stdout);
    assert.equal(live.devices.get(1)!.mappings.size, 32);
    assert.match((await pool.status()).toString(), new RegExp(` ${held} rw `));
    await pool.releaseMetadataSnap();
    await pool.close();
    const check = tool('thin_check', [meta]);
    assert.equal(check.status, 0, check.stderr);
    const metaDev = await FileBlockDevice.open(meta, { readOnly: true });
    try {
      const md = await ThinMetadata.open(metaDev, { readOnly: true });
      assert.deepEqual((await checkMetadata(md)).issues, []);
    } finally {
      await metaDev.close();
    }
  } finally {
    await cleanup();
  }
});

test('the checkers catch leaked and miscounted blocks (thin_check 0.9.0 only in the metadata map)', { skip: NO_TOOLS }, async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const cases = [
      { damage: 'data leak', kind: 'leak', block: 500, metadata: false },
      { damage: 'data count', kind: 'count-mismatch', block: 3, metadata: false },
      { damage: 'metadata leak', kind: 'leak', block: 300, metadata: true },
    ] as const;
    for (const c of cases) {
      const meta = join(dir, `meta-${c.block}`);
      const data = join(dir, 'data');
      await sparseFile(meta, 8 << 20);
      await sparseFile(data, 64 << 20);
      const pool = await Pool.open({ metadataPath: meta, dataPath: data, dataBlockSectors: 128 });
      await pool.createThin(1);
      const dev = await pool.openThin(1, 8 << 20);
      await dev.write(pattern(1 << 20, 1), 0);
      await dev.close();
      // damage a space map through the engine's own commit path
      await pool.locked(async () => {
        (c.metadata ? pool.md.metadataSm : pool.md.dataSm).inc(c.block);
        pool.md.changed = true;
        await pool.md.commit();
      });
      await pool.close();
      // Debian's thin_check 0.9.0 compares only the metadata space map's counts; data-map
      // damage passes it, which is why Strata's own checker runs next to it in these tests
      if (c.metadata) assert.notEqual(tool('thin_check', [meta]).status, 0, `thin_check misses the ${c.damage}`);
      const metaDev = await FileBlockDevice.open(meta, { readOnly: true });
      let report;
      try {
        report = await checkMetadata(await ThinMetadata.open(metaDev, { readOnly: true }));
      } finally {
        await metaDev.close();
      }
      assert.equal(report.ok, false, c.damage);
      assert.equal(report.issues[0]!.kind, c.kind);
      assert.equal(report.issues[0]!.block, c.block);
    }
  } finally {
    await cleanup();
  }
});
