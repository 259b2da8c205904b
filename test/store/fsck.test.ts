// fsck finds driver layers no record refers to (what a power cut during create can leave,
// since the intent marker is not synced) and removes them on repair, leaving the rest alone.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { Readable } from 'node:stream';
import { Strata } from '../../src/strata.js';
import { probeOverlay2 } from '../../src/drivers/overlay2/overlay-support.js';
import { file, isRoot, layerTar, tempDir } from '../helpers/fstest.js';

const drivers: Array<[string, () => Promise<string | null>]> = [
  ['vfs', async () => null],
  ['overlay2', () => (isRoot ? probeOverlay2(tmpdir()) : Promise.resolve('needs root'))],
];

describe('fsck and driver layers nothing refers to', () => {
  for (const [driver, unavailable] of drivers) {
    it(`${driver}: reported with --no-repair, removed on repair; referenced layers stay`, async (t) => {
      const reason = await unavailable();
      if (reason !== null) return t.skip(reason);
      const root = await tempDir('strata-fsck-');
      try {
        const strata = await Strata.open({ root, driver });
        await strata.importImage(Readable.from(await layerTar([file('a', 'a')])), { ref: 'img:1' });
        await strata.createContainer('img:1', { name: 'c' });
        const orphan = 'f'.repeat(64);
        await strata.driver.create(orphan, null);
        const before = (await strata.driver.layerIds!()).length;

        const report = await strata.fsck({ repair: false });
        assert.deepEqual(report.problems, [`driver layer ${orphan} is not referenced by any layer or container`]);
        assert.equal(await strata.driver.exists(orphan), true);

        const repaired = await strata.fsck();
        assert.deepEqual(repaired.problems, []);
        assert.ok(repaired.repaired.some((r) => r.includes(orphan)), repaired.repaired.join('; '));
        assert.equal(await strata.driver.exists(orphan), false);
        assert.equal((await strata.driver.layerIds!()).length, before - 1, 'image, init and container layers kept');
        assert.deepEqual((await strata.fsck({ repair: false })).problems, []);
        await strata.driver.cleanup();
      } finally {
        await rm(root, { recursive: true, force: true });
      }
    });
  }
});
