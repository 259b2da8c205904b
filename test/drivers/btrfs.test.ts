// btrfs: the conformance suite on a scratch btrfs this file makes itself (a sparse file,
// mkfs.btrfs, a loop mount), once with ioctls and once with the btrfs tool; then what only btrfs
// has: snapshots, nested subvolumes, crash leftovers, quotas, the create latency, and SIGKILLs.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { access, mkdir, mkdtemp, readFile, readdir, rm, statfs, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { constants, tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { runDriverSuite } from '../conformance/driver-suite.js';
import { BTRFS_SUPER_MAGIC, BtrfsDriver, createBtrfsDriver, probeBtrfs } from '../../src/drivers/btrfs/btrfs-driver.js';
import { BTRFS_IOC, qgroupLimitArgs, volArgs } from '../../src/drivers/btrfs/ioctl-args.js';
import { parseDriverOptions, requestedSize } from '../../src/drivers/btrfs/options.js';
import { ioctlSubvolumeOps } from '../../src/drivers/btrfs/ioctl-ops.js';
import { cliSubvolumeOps } from '../../src/drivers/btrfs/cli-ops.js';
import { isSubvolume, type SubvolumeOps } from '../../src/drivers/btrfs/subvolume.js';
import { isStrataError } from '../../src/errors.js';
import { scratchBtrfs, sh } from '../helpers/scratch-fs.js';

let scratch: Promise<{ mount: string; dispose: () => Promise<void> } | string> | null = null;
const previousTmp = process.env.STRATA_TEST_TMP;

/** Made once for the whole file; every test's root (and the suite's fixtures) go on it. */
async function btrfsUnavailable(): Promise<string | null> {
  scratch ??= scratchBtrfs();
  const s = await scratch;
  if (typeof s === 'string') return s;
  process.env.STRATA_TEST_TMP = s.mount;
  return null;
}

after(async () => {
  if (previousTmp === undefined) delete process.env.STRATA_TEST_TMP;
  else process.env.STRATA_TEST_TMP = previousTmp;
  const s = await scratch;
  if (s && typeof s !== 'string') await s.dispose();
});

const cli = cliSubvolumeOps();
const ioctl = ioctlSubvolumeOps();

runDriverSuite('btrfs', (root) => createBtrfsDriver({ root, options: {} }), { unavailable: btrfsUnavailable });
runDriverSuite('btrfs-cli', (root) => createBtrfsDriver({ root, options: {} }, cli), { unavailable: btrfsUnavailable });

describe('btrfs ioctl arguments and options (pure)', () => {
  it('request numbers are the kernel headers\' values', () => {
    // computed with _IOW/_IOR/_IOWR from include/uapi/linux/btrfs.h
    assert.equal(BTRFS_IOC.SNAP_CREATE, 0x50009401);
    assert.equal(BTRFS_IOC.SUBVOL_CREATE, 0x5000940e);
    assert.equal(BTRFS_IOC.SNAP_DESTROY, 0x5000940f);
    assert.equal(BTRFS_IOC.INO_LOOKUP, 0xd0009412);
    assert.equal(BTRFS_IOC.QUOTA_CTL, 0xc0109428);
    assert.equal(BTRFS_IOC.QGROUP_CREATE, 0x4010942a);
    assert.equal(BTRFS_IOC.QGROUP_LIMIT, 0x8030942b);
  });

  it('encodes vol args and qgroup limits', () => {
    const args = volArgs('layer-1', 7);
    assert.equal(args.length, 4096);
    assert.equal(args.readBigInt64LE(0), 7n);
    assert.equal(args.subarray(8, 16).toString(), 'layer-1\0');
    assert.throws(() => volArgs('a/b'));
    assert.throws(() => volArgs(''));
    const lim = qgroupLimitArgs(10 << 20);
    assert.equal(lim.length, 48);
    assert.equal(lim.readBigUInt64LE(8), 1n, 'BTRFS_QGROUP_LIMIT_MAX_RFER');
    assert.equal(lim.readBigUInt64LE(16), BigInt(10 << 20));
    assert.throws(() => qgroupLimitArgs(0));
  });

  it('parses moby\'s options and refuses others', () => {
    assert.deepEqual(parseDriverOptions({}), { minSpace: 0 });
    assert.deepEqual(parseDriverOptions({ 'BTRFS.min_space': '10M' }), { minSpace: 10 << 20 });
    assert.throws(() => parseDriverOptions({ size: '1G' }), (e) => isStrataError(e, 'INVALID_OPTION'));
    assert.equal(requestedSize(undefined, { minSpace: 0 }), null);
    assert.equal(requestedSize({ storageOpt: { Size: '2M' } }, { minSpace: 0 }), 2 << 20);
    assert.equal(requestedSize({ size: 4096 }, { minSpace: 0 }), 4096);
    assert.throws(() => requestedSize({ storageOpt: { size: '1M' } }, { minSpace: 2 << 20 }), (e) => isStrataError(e, 'INVALID_OPTION'));
    assert.throws(() => requestedSize({ storageOpt: { inodes: '5' } }, { minSpace: 0 }), (e) => isStrataError(e, 'INVALID_OPTION'));
    assert.throws(() => requestedSize({ storageOpt: { size: '0' } }, { minSpace: 0 }), (e) => isStrataError(e, 'INVALID_OPTION'));
  });
});

async function subvolumeShow(path: string): Promise<{ uuid: string; parentUuid: string }> {
  const out = await sh('btrfs', ['subvolume', 'show', path]);
  return { uuid: /^\s*UUID:\s*(\S+)/m.exec(out)?.[1] ?? '', parentUuid: /^\s*Parent UUID:\s*(\S+)/m.exec(out)?.[1] ?? '' };
}

const variants: Array<[string, SubvolumeOps | null]> = [['ioctl', ioctl], ['btrfs tool', cli]];

// Before the specifics below: those turn quotas on for the scratch filesystem, which slows
// every later snapshot (qgroup accounting).
for (const [via, ops] of variants) {
  describe(`btrfs create and remove latency (${via})`, () => {
    it('snapshot create and remove, 40 deep', async (t) => {
      const reason = ops === null ? 'koffi cannot load libc here' : await btrfsUnavailable();
      if (reason) return t.skip(reason);
      const root = await mkdtemp(join(process.env.STRATA_TEST_TMP!, 'strata-btrfs-latency-'));
      const d = await createBtrfsDriver({ root, options: {} }, ops!);
      try {
        const n = 40;
        await d.create('l-base', null);
        let started = performance.now();
        for (let i = 0; i < n; i++) await d.create(`l-${i}`, i === 0 ? 'l-base' : `l-${i - 1}`);
        const create = (performance.now() - started) / n;
        started = performance.now();
        for (let i = n - 1; i >= 0; i--) await d.remove(`l-${i}`);
        const remove = (performance.now() - started) / n;
        t.diagnostic(`${via}: snapshot create ${create.toFixed(2)} ms, remove ${remove.toFixed(2)} ms (mean of ${n})`);
        assert.ok(create < 1000 && remove < 1000);
      } finally {
        await rm(root, { recursive: true, force: true });
      }
    });
  });
}

for (const [via, ops] of variants) {
  describe(`btrfs driver specifics (${via})`, () => {
    let reason: string | null = null;
    before(async () => {
      reason = ops === null ? 'koffi cannot load libc here' : await btrfsUnavailable();
    });

    function test(title: string, fn: (d: BtrfsDriver, root: string, t: { diagnostic(msg: string): void }) => Promise<void>, options: Record<string, string> = {}): void {
      it(title, async (t) => {
        if (reason) return t.skip(reason);
        const root = await mkdtemp(join(process.env.STRATA_TEST_TMP!, 'strata-btrfs-specific-'));
        const d = (await createBtrfsDriver({ root, options }, ops!)) as BtrfsDriver;
        try {
          await fn(d, root, t);
        } finally {
          await rm(root, { recursive: true, force: true });
        }
      });
    }

    test('a base layer is a fresh subvolume, a child a snapshot of its parent', async (d, root) => {
      await d.create('base', null);
      await writeFile(join(await d.get('base'), 'f'), 'base');
      await d.put('base');
      await d.create('child', 'base');
      await d.createReadWrite('ctr', 'child');
      const sub = (id: string) => join(root, 'btrfs/subvolumes', id);
      for (const id of ['base', 'child', 'ctr']) assert.ok(await isSubvolume(sub(id)), `${id} is a subvolume`);
      assert.equal(await d.get('ctr'), sub('ctr'), 'get returns the subvolume itself');
      await d.put('ctr');
      const [base, child, ctr] = await Promise.all(['base', 'child', 'ctr'].map((id) => subvolumeShow(sub(id))));
      assert.equal(base!.parentUuid, '-', 'a base layer has no parent');
      assert.equal(child!.parentUuid, base!.uuid);
      assert.equal(ctr!.parentUuid, child!.uuid);
      assert.equal(await readFile(join(sub('ctr'), 'f'), 'utf8'), 'base');
      const meta = await d.metadata('ctr');
      assert.equal(meta['Dir'], sub('ctr'));
    });

    test('remove deletes subvolumes nested inside a layer, as moby\'s subvolDelete', async (d, root) => {
      await d.createReadWrite('ctr', null);
      const p = await d.get('ctr');
      await mkdir(join(p, 'var/lib'), { recursive: true });
      await ops!.create(join(p, 'var/lib'), 'inner');
      await ops!.create(join(p, 'var/lib/inner'), 'innermost');
      await writeFile(join(p, 'var/lib/inner/innermost/data'), 'x');
      await d.put('ctr');
      const before = await sh('btrfs', ['subvolume', 'list', '-o', join(root, 'btrfs/subvolumes/ctr')]);
      assert.match(before, /inner/);
      await d.remove('ctr');
      assert.equal(await d.exists('ctr'), false);
      const all = await sh('btrfs', ['subvolume', 'list', process.env.STRATA_TEST_TMP!]);
      assert.doesNotMatch(all, new RegExp(`${root.split('/').pop()}/btrfs/subvolumes`), 'no subvolume of this root left');
      assert.deepEqual(await readdir(join(root, 'btrfs/subvolumes')), []);
    });

    test('sweep deletes what a killed create or remove left, and stray quota records', async (d, root) => {
      await d.create('live', null);
      const subvols = join(root, 'btrfs/subvolumes');
      await ops!.snapshot(join(subvols, 'live'), subvols, '.new-half-0badc0de'); // killed before the rename
      await ops!.create(subvols, '.rm-gone-12345678'); // killed after the rename out of the way
      await mkdir(join(subvols, '.new-plain-00000000')); // not a subvolume at all
      await mkdir(join(root, 'btrfs/quotas'), { recursive: true });
      await writeFile(join(root, 'btrfs/quotas/never-made'), '1048576');
      const lines = await d.sweep();
      assert.equal(lines.length, 4, lines.join('\n'));
      assert.deepEqual(await readdir(subvols), ['live']);
      assert.deepEqual(await d.layerIds(), ['live']);
      assert.deepEqual(await readdir(join(root, 'btrfs/quotas')), []);
      assert.deepEqual(await d.sweep(), []);
      const listed = await sh('btrfs', ['subvolume', 'list', '-o', subvols]).catch(() => '');
      assert.doesNotMatch(listed, /\.new-|\.rm-/);
    });

    test('--storage-opt size becomes a qgroup limit the kernel enforces', async (d, root) => {
      await d.create('image', null);
      await d.createReadWrite('ctr', 'image', { storageOpt: { size: '4M' } });
      assert.equal(await readFile(join(root, 'btrfs/quotas/ctr'), 'utf8'), String(4 << 20));
      assert.equal((await d.metadata('ctr'))['Size'], String(4 << 20));
      const p = await d.get('ctr');
      try {
        await writeFile(join(p, 'small'), Buffer.alloc(64 << 10, 1));
        await assert.rejects(writeFile(join(p, 'big'), Buffer.alloc(16 << 20, 1)), // libuv has no name for EDQUOT: "Unknown system error -122"
          (e: NodeJS.ErrnoException) => e.errno === -constants.errno.EDQUOT);
      } finally {
        await d.put('ctr');
      }
      // layers without the option have no limit
      const free = await d.get('image');
      await writeFile(join(free, 'big'), Buffer.alloc(16 << 20, 1));
      await d.put('image');
      await d.remove('ctr');
      await assert.rejects(access(join(root, 'btrfs/quotas/ctr')));
    });

    test('btrfs.min_space turns quotas on and is the smallest size allowed', async (_d, root) => {
      const strict = (await createBtrfsDriver({ root, options: { 'btrfs.min_space': '8M' } }, ops!)) as BtrfsDriver;
      await assert.rejects(strict.create('small', null, { storageOpt: { size: '1M' } }), (e) => isStrataError(e, 'INVALID_OPTION'));
      assert.equal(await strict.exists('small'), false);
      await strict.create('big', null, { storageOpt: { size: '8M' } });
      assert.ok((await strict.status()).some(([k, v]) => k === 'Min Space' && v === String(8 << 20)));
      await strict.remove('big');
      await assert.rejects(createBtrfsDriver({ root, options: { 'btrfs.nope': '1' } }, ops!), (e) => isStrataError(e, 'INVALID_OPTION'));
    });

    test('status shows the build version as docker info does', async (d) => {
      const status = new Map(await d.status());
      assert.match(status.get('Build Version') ?? '', /^btrfs-progs v\d/);
      assert.equal(status.get('Backing Filesystem'), 'btrfs');
      assert.equal(status.get('Subvolume Operations'), via === 'ioctl' ? 'ioctl (no libbtrfs)' : 'btrfs-progs tool');
    });
  });
}

describe('btrfs probe', () => {
  it('accepts a root on btrfs (or under one that does not exist yet), refuses others with the reason', async (t) => {
    const unavailable = await btrfsUnavailable();
    if (unavailable) return t.skip(unavailable);
    const mount = process.env.STRATA_TEST_TMP!;
    assert.equal(await probeBtrfs(mount), null);
    assert.equal(await probeBtrfs(join(mount, 'not/made/yet')), null);
    const elsewhere = await mkdtemp(join(previousTmp ?? tmpdir(), 'strata-btrfs-probe-'));
    try {
      if ((await statfs(elsewhere)).type !== BTRFS_SUPER_MAGIC) {
        assert.match((await probeBtrfs(elsewhere)) ?? '', /not btrfs/);
      }
      assert.deepEqual(await readdir(elsewhere), [], 'the probe leaves nothing behind');
    } finally {
      await rm(elsewhere, { recursive: true, force: true });
    }
  });
});

// SIGKILL a process that creates (some with a quota) and removes layers as fast as it can, at
// varied moments: every live id must be a whole subvolume with its quota record, and sweep()
// must clear whatever was in flight.
describe('btrfs: SIGKILL during create and remove', () => {
  const driverModule = fileURLToPath(new URL('../../src/drivers/btrfs/btrfs-driver.ts', import.meta.url));

  function churnUntilKilled(root: string, start: number, delayMs: number): Promise<void> {
    const code = `import { createBtrfsDriver } from ${JSON.stringify(driverModule)};
const d = await createBtrfsDriver({ root: ${JSON.stringify(root)}, options: {} });
let prev = ${start > 0 ? JSON.stringify(`c-${start - 1}`) : 'null'};
if (prev !== null && !(await d.exists(prev))) prev = null;
for (let i = ${start}; ; i++) {
  const id = 'c-' + i;
  await d.create(id, prev, i % 3 === 0 ? { storageOpt: { size: '64M' } } : undefined);
  if (i >= 2 && await d.exists('c-' + (i - 2))) await d.remove('c-' + (i - 2));
  prev = id;
  process.stdout.write(i + '\\n');
}`;
    const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), '--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
    let started = false;
    let err = '';
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    child.stdout.on('data', () => {
      // kill `delayMs` after the first layer is made (the import takes a while)
      if (!started) setTimeout(() => child.kill('SIGKILL'), delayMs);
      started = true;
    });
    return new Promise((resolve, reject) => child.on('close', (_status, signal) => {
      if (signal === 'SIGKILL') resolve();
      else reject(new Error(`the churning child ended without being killed: ${err}`));
    }));
  }

  it('leaves only whole layers under live ids, and leftovers sweep() removes', async (t) => {
    const unavailable = ioctl === null ? 'koffi cannot load libc here' : await btrfsUnavailable();
    if (unavailable) return t.skip(unavailable);
    const root = await mkdtemp(join(process.env.STRATA_TEST_TMP!, 'strata-btrfs-crash-'));
    const subvols = join(root, 'btrfs/subvolumes');
    let leftovers = 0;
    let next = 0;
    try {
      for (let round = 0; round < 12; round++) {
        await churnUntilKilled(root, next, 5 + ((round * 37) % 120));
        const names = await readdir(subvols);
        const live = names.filter((n) => !n.startsWith('.'));
        for (const id of live) {
          assert.ok(await isSubvolume(join(subvols, id)), `${id} is a whole subvolume`);
          if (Number(id.slice(2)) % 3 === 0) await access(join(root, 'btrfs/quotas', id));
        }
        const d = await createBtrfsDriver({ root, options: {} });
        const swept = await d.sweep();
        leftovers += swept.length;
        assert.deepEqual((await readdir(subvols)).filter((n) => n.startsWith('.')), [], swept.join('\n'));
        assert.deepEqual(await d.sweep(), []);
        next = Math.max(next, ...live.map((id) => Number(id.slice(2)) + 1));
      }
      const listed = await sh('btrfs', ['subvolume', 'list', '-o', subvols]);
      assert.doesNotMatch(listed, /\.new-|\.rm-/);
      t.diagnostic(`12 kills, ${next} layers made, ${leftovers} interrupted creates/removes swept`);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
