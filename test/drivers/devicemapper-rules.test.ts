// Pure rules of the devicemapper driver: dm.* options, device ids, transaction recovery,
// status figures and the minimum-free-space refusal. No I/O.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parseDmOptions, DEFAULT_BASE_SIZE, DEFAULT_LOOP_DATA_SIZE, DEFAULT_LOOP_METADATA_SIZE } from '../../src/drivers/devicemapper/options.js';
import { allocateDeviceId, MAX_DEVICE_ID } from '../../src/drivers/devicemapper/device-ids.js';
import { decideRecovery, openTransaction } from '../../src/drivers/devicemapper/transactions.js';
import { humanSize, minFreeSpaceRefusal, statusLines } from '../../src/drivers/devicemapper/status-figures.js';
import { deviceFileName } from '../../src/drivers/devicemapper/device-store.js';
import { isStrataError } from '../../src/errors.js';

const G = 1024 ** 3;

describe('devicemapper: dm.* options', () => {
  it('defaults as Docker (100G data, 2G metadata, 10G base, 64K blocks, 10% free, ext4 here)', () => {
    const o = parseDmOptions({});
    assert.equal(o.loopDataSize, 100 * G);
    assert.equal(o.loopMetadataSize, 2 * G);
    assert.equal(o.baseSize, 10 * G);
    assert.equal(DEFAULT_BASE_SIZE + DEFAULT_LOOP_DATA_SIZE + DEFAULT_LOOP_METADATA_SIZE, 112 * G);
    assert.equal(o.blockSize, 64 * 1024);
    assert.equal(o.fs, 'ext4');
    assert.equal(o.minFreeSpacePercent, 10);
    assert.equal(o.blkDiscard, true);
    assert.equal(o.deferredRemoval, false);
    assert.equal(o.deferredDeletion, false);
    assert.equal(o.baseSizeExplicit, false);
  });

  it('parses every supported key, case-insensitively, in binary units', () => {
    const o = parseDmOptions({
      'DM.BaseSize': '20G', 'dm.loopdatasize': '200g', 'dm.loopmetadatasize': '4GiB', 'dm.blocksize': '512K',
      'dm.fs': 'xfs', 'dm.mkfsarg': '-m crc=1', 'dm.mountopt': 'nodiscard,noatime', 'dm.blkdiscard': 'false',
      'dm.min_free_space': '5%', 'dm.use_deferred_removal': 'true', 'dm.use_deferred_deletion': '1',
      'dm.xfs_nospace_max_retries': '3', 'dm.override_udev_sync_check': 'true', 'dm.libdm_log_level': '7',
    });
    assert.equal(o.baseSize, 20 * G);
    assert.equal(o.baseSizeExplicit, true);
    assert.equal(o.loopDataSize, 200 * G);
    assert.equal(o.loopMetadataSize, 4 * G);
    assert.equal(o.blockSize, 512 * 1024);
    assert.equal(o.fs, 'xfs');
    assert.deepEqual(o.mkfsArgs, ['-m', 'crc=1']);
    assert.deepEqual(o.mountOptions, ['nodiscard', 'noatime']);
    assert.equal(o.blkDiscard, false);
    assert.equal(o.minFreeSpacePercent, 5);
    assert.equal(o.deferredRemoval, true);
    assert.equal(o.deferredDeletion, true);
    assert.equal(o.xfsNospaceMaxRetries, 3);
  });

  it('refuses unknown keys, bad values and kernel-only options with INVALID_OPTION', () => {
    const bad: Array<Record<string, string>> = [
      { 'dm.nosuchthing': '1' }, { size: '10G' }, { 'dm.basesize': 'ten' }, { 'dm.blocksize': '100K' },
      { 'dm.blocksize': '2G' }, { 'dm.fs': 'btrfs' }, { 'dm.min_free_space': '10' }, { 'dm.min_free_space': '100%' },
      { 'dm.blkdiscard': 'maybe' }, { 'dm.thinpooldev': 'docker-pool' }, { 'dm.directlvm_device': '/dev/xvdf' },
      { 'dm.datadev': '/tmp/data' }, { 'dm.use_deferred_deletion': 'true' },
    ];
    for (const opts of bad) {
      assert.throws(() => parseDmOptions(opts), (e) => isStrataError(e, 'INVALID_OPTION'), JSON.stringify(opts));
    }
  });

  it('turns blkdiscard off for a caller-provided data device unless asked (as moby)', () => {
    assert.equal(parseDmOptions({ 'dm.datadev': '/d', 'dm.metadatadev': '/m' }).blkDiscard, false);
    assert.equal(parseDmOptions({ 'dm.datadev': '/d', 'dm.metadatadev': '/m', 'dm.blkdiscard': 'true' }).blkDiscard, true);
  });
});

describe('devicemapper: device ids', () => {
  it('hands out ids round-robin after the last, skipping used ones and wrapping at 2^24-1', () => {
    assert.equal(allocateDeviceId(new Set(), 0), 1);
    assert.equal(allocateDeviceId(new Set([1, 2, 3]), 0), 4);
    assert.equal(allocateDeviceId(new Set([5]), 4), 6);
    assert.equal(allocateDeviceId(new Set(), MAX_DEVICE_ID), 0);
    assert.equal(allocateDeviceId(new Set([0, 1]), MAX_DEVICE_ID - 1), MAX_DEVICE_ID);
    assert.equal(allocateDeviceId(new Set([MAX_DEVICE_ID, 0, 1]), MAX_DEVICE_ID - 1), 2);
  });
});

describe('devicemapper: transaction recovery', () => {
  it('nothing to do when the pool caught up, or nothing was ever opened', () => {
    assert.deepEqual(decideRecovery(7, null), { kind: 'none' });
    assert.deepEqual(decideRecovery(7, openTransaction(6, 'abc', 3)), { kind: 'none' });
  });
  it('rolls back the device of a transaction the pool never reached', () => {
    assert.deepEqual(decideRecovery(7, openTransaction(7, 'abc', 3)), { kind: 'rollback', deviceHash: 'abc', deviceId: 3 });
    assert.deepEqual(decideRecovery(0, openTransaction(0, '', 1)), { kind: 'rollback', deviceHash: '', deviceId: 1 });
  });
  it('a pool ahead of the recorded transaction is a mismatch', () => {
    assert.equal(decideRecovery(9, openTransaction(3, 'x', 1)).kind, 'mismatch');
  });
});

describe('devicemapper: status figures', () => {
  it('formats sizes as Docker (decimal, four significant digits)', () => {
    assert.equal(humanSize(65536), '65.54kB');
    assert.equal(humanSize(10 * G), '10.74GB');
    assert.equal(humanSize(100 * G), '107.4GB');
    assert.equal(humanSize(2 * G), '2.147GB');
    assert.equal(humanSize(0), '0B');
  });

  it('prints the keys docker info prints, in its order', () => {
    const lines = statusLines({
      poolName: 'strata-8:1-42-pool', options: parseDmOptions({}), baseDeviceSize: 10 * G, backingFilesystem: 'extfs',
      dataFile: '/r/devicemapper/devicemapper/data', metadataFile: '/r/devicemapper/devicemapper/metadata', loopback: true,
      blockBytes: 65536, usedDataBlocks: 180, totalDataBlocks: 1638400, usedMetadataBlocks: 150, totalMetadataBlocks: 524288,
      hostFreeForData: 5e9, hostFreeForMetadata: 5e9, deferredDeletedCount: 0, libraryVersion: 'x',
    });
    const m = new Map(lines);
    assert.deepEqual(lines.map(([k]) => k), ['Pool Name', 'Pool Blocksize', 'Base Device Size', 'Backing Filesystem', 'Data file',
      'Metadata file', 'Data loop file', 'Metadata loop file', 'Data Space Used', 'Data Space Total', 'Data Space Available',
      'Metadata Space Used', 'Metadata Space Total', 'Metadata Space Available', 'Thin Pool Minimum Free Space',
      'Deferred Removal Enabled', 'Deferred Deletion Enabled', 'Deferred Deleted Device Count', 'Library Version']);
    assert.equal(m.get('Pool Blocksize'), '65.54kB');
    assert.equal(m.get('Data Space Used'), humanSize(180 * 65536));
    assert.equal(m.get('Data Space Total'), '107.4GB');
    assert.equal(m.get('Data Space Available'), '5GB', 'a loopback pool is capped by its host filesystem');
    assert.equal(m.get('Metadata Space Total'), '2.147GB');
    assert.equal(m.get('Thin Pool Minimum Free Space'), '10.74GB');
    assert.equal(m.get('Deferred Removal Enabled'), 'false');
  });

  it('refuses new devices below dm.min_free_space, naming the option', () => {
    const p = { usedDataBlocks: 95, totalDataBlocks: 100, usedMetadataBlocks: 1, totalMetadataBlocks: 100 };
    assert.match(minFreeSpaceRefusal(p, 10) ?? '', /5 free data blocks .* minimum required 10 .*dm\.min_free_space/);
    assert.equal(minFreeSpaceRefusal(p, 5), null);
    assert.equal(minFreeSpaceRefusal(p, 0), null);
    assert.match(minFreeSpaceRefusal({ ...p, usedDataBlocks: 0, usedMetadataBlocks: 95 }, 10) ?? '', /metadata blocks/);
  });
});

describe('devicemapper: metadata file names', () => {
  it('keeps Docker names and moves ids that collide with the driver\'s own files aside', () => {
    assert.equal(deviceFileName(''), 'base');
    assert.equal(deviceFileName('a'.repeat(64)), 'a'.repeat(64));
    assert.equal(deviceFileName('base'), '_base');
    assert.equal(deviceFileName('transaction-metadata'), '_transaction-metadata');
    assert.equal(deviceFileName('abc-init'), 'abc-init');
  });
});
