// overlay2's pure rules, in memory: link ids, lower chains, mount options under a page, and the
// change list read from an upper directory.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { base32, generateLinkId, isLinkId, LINK_ID_LENGTH } from '../../src/drivers/overlay2/link-id.js';
import { buildMountSpec, childLower, MAX_LOWERS, splitLower, type MountRequest } from '../../src/drivers/overlay2/mount-options.js';
import { classifyUpper, type LowerStat, type UpperEntry } from '../../src/drivers/overlay2/upper-changes.js';
import { isStrataError } from '../../src/errors.js';

describe('overlay2 link ids', () => {
  it('encodes base32 as Go (RFC 4648 test vectors, without padding)', () => {
    assert.equal(base32(Buffer.from('')), '');
    assert.equal(base32(Buffer.from('f')), 'MY');
    assert.equal(base32(Buffer.from('fo')), 'MZXQ');
    assert.equal(base32(Buffer.from('foo')), 'MZXW6');
    assert.equal(base32(Buffer.from('foob')), 'MZXW6YQ');
    assert.equal(base32(Buffer.from('fooba')), 'MZXW6YTB');
    assert.equal(base32(Buffer.from('foobar')), 'MZXW6YTBOI');
  });

  it('makes 26-character ids from the base32 alphabet', () => {
    const ids = new Set<string>();
    for (let i = 0; i < 200; i++) {
      const id = generateLinkId();
      assert.equal(id.length, LINK_ID_LENGTH);
      assert.ok(isLinkId(id), id);
      ids.add(id);
    }
    assert.equal(ids.size, 200);
    assert.equal(generateLinkId((n) => new Uint8Array(n)), 'A'.repeat(26));
  });
});

describe('overlay2 lower chains', () => {
  it('puts the parent first, then its lowers', () => {
    assert.equal(childLower('PARENT', null), 'l/PARENT');
    assert.equal(childLower('P', 'l/A:l/B'), 'l/P:l/A:l/B');
    assert.deepEqual(splitLower('l/P:l/A'), ['l/P', 'l/A']);
    assert.deepEqual(splitLower(null), []);
  });

  it('refuses more than 128 lowers', () => {
    const lowers = (n: number) => Array.from({ length: n }, (_, i) => `l/${String(i).padStart(26, 'A')}`).join(':');
    assert.equal(splitLower(childLower('X', lowers(MAX_LOWERS - 1))).length, MAX_LOWERS);
    assert.throws(() => childLower('X', lowers(MAX_LOWERS)), (e) => isStrataError(e, 'INVALID_ARGUMENT') && /max depth/.test((e as Error).message));
  });
});

describe('overlay2 mount options', () => {
  const home = '/var/lib/docker/overlay2';
  const id = 'a'.repeat(64);
  const req = (lower: string, extra: Partial<MountRequest> = {}): MountRequest => ({ home, id, lower, readonly: false, indexOff: true, userxattr: false, pageSize: 4096, ...extra });

  it('uses absolute paths when they fit', () => {
    const spec = buildMountSpec(req('l/AAA:l/BBB'));
    assert.equal(spec.options, `index=off,lowerdir=${home}/l/AAA:${home}/l/BBB,upperdir=${home}/${id}/diff,workdir=${home}/${id}/work`);
    assert.equal(spec.target, `${home}/${id}/merged`);
    assert.equal(spec.cwd, null);
  });

  it('mounts a committed layer read-only with its own diff as the top lower', () => {
    const spec = buildMountSpec(req('l/AAA', { readonly: true, indexOff: false, userxattr: true }));
    assert.equal(spec.options, `userxattr,lowerdir=${home}/${id}/diff:${home}/l/AAA`);
  });

  it('falls back to paths relative to the home for 128 lowers, within one page', () => {
    const lower = Array.from({ length: MAX_LOWERS }, (_, i) => `l/${generateLinkId((n) => new Uint8Array(n).fill(i))}`).join(':');
    const spec = buildMountSpec(req(lower));
    assert.equal(spec.cwd, home);
    assert.equal(spec.target, `${id}/merged`);
    assert.ok(spec.options.startsWith(`index=off,lowerdir=${lower},upperdir=${id}/diff,workdir=${id}/work`));
    assert.ok(spec.options.length <= 4095, `${spec.options.length} bytes`);
    const ro = buildMountSpec(req(lower, { readonly: true }));
    assert.equal(ro.options, `index=off,lowerdir=${id}/diff:${lower}`);
  });

  it('refuses options that cannot fit even relative', () => {
    const lower = Array.from({ length: 200 }, (_, i) => `l/${'X'.repeat(24)}${String(i).padStart(3, '0')}`).join(':');
    assert.throws(() => buildMountSpec(req(lower)), (e) => isStrataError(e, 'MOUNT_FAILED'));
  });
});

describe('overlay2 changes from the upper directory', () => {
  const dirStat = (mtime: bigint): LowerStat => ({ isDir: true, size: 4096n, mode: 0o40755, mtimeNs: mtime });
  const fileStat: LowerStat = { isDir: false, size: 1n, mode: 0o100644, mtimeNs: 1n };
  const entry = (path: string, kind: 'dir' | 'file' | 'whiteout' | 'opaque', mtime = 5n): UpperEntry => ({
    path,
    isDir: kind === 'dir' || kind === 'opaque',
    whiteout: kind === 'whiteout',
    opaque: kind === 'opaque',
    size: kind === 'file' ? 3n : kind === 'whiteout' ? 0n : 4096n,
    mode: kind === 'file' ? 0o100644 : kind === 'whiteout' ? 0o20000 : 0o40755,
    mtimeNs: mtime,
  });

  it('classifies additions, changes and deletions as docker diff does', () => {
    const lowers = new Map<string, LowerStat>([['/etc', dirStat(1n)], ['/etc/hosts', fileStat], ['/tmp', dirStat(1n)]]);
    const list = classifyUpper([
      entry('/etc', 'dir', 9n), entry('/etc/hosts', 'file'), entry('/etc/passwd', 'whiteout'),
      entry('/tmp', 'dir', 9n), entry('/tmp/new', 'dir'), entry('/tmp/new/file', 'file'),
    ], (p) => lowers.get(p) ?? null);
    assert.deepEqual(list.map((c) => `${c.kind} ${c.path}`), ['C /etc', 'C /etc/hosts', 'D /etc/passwd', 'C /tmp', 'A /tmp/new', 'A /tmp/new/file']);
  });

  it('leaves out a copied-up directory that did not change, but lists the parent of an addition', () => {
    const lowers = new Map<string, LowerStat>([['/usr', dirStat(5n)], ['/usr/lib', dirStat(5n)], ['/usr/lib/x', fileStat]]);
    const list = classifyUpper([entry('/usr', 'dir', 5n), entry('/usr/lib', 'dir', 5n), entry('/usr/lib/new', 'file')], (p) => lowers.get(p) ?? null);
    assert.deepEqual(list.map((c) => `${c.kind} ${c.path}`), ['C /usr/lib', 'A /usr/lib/new']);
  });

  it('reports an opaque directory as deleted and its new children as added', () => {
    const lowers = new Map<string, LowerStat>([['/var', dirStat(1n)], ['/var/cache', dirStat(1n)]]);
    const list = classifyUpper([entry('/var', 'dir', 9n), entry('/var/cache', 'opaque'), entry('/var/cache/c', 'file')], (p) => lowers.get(p) ?? null);
    assert.deepEqual(list.map((c) => `${c.kind} ${c.path}`), ['C /var', 'D /var/cache', 'A /var/cache/c']);
  });

  it('lists only additions for a layer without lowers, with no change for the root', () => {
    const list = classifyUpper([entry('/a', 'file'), entry('/d', 'dir'), entry('/d/x', 'file')], () => null);
    assert.deepEqual(list.map((c) => `${c.kind} ${c.path}`), ['A /a', 'A /d', 'A /d/x']);
  });
});
