// overlay2's pure rules, in memory: link ids, lower chains, mount options under a page, and the
// change list read from an upper directory.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { base32, generateLinkId, isLinkId, LINK_ID_LENGTH } from '../../src/drivers/overlay2/link-id.js';
import { buildMountSpec, childLower, MAX_LOWERS, splitLower, type MountRequest } from '../../src/drivers/overlay2/mount-options.js';
import { classifyUpper, type Attrs, type ParentView, type UpperEntry } from '../../src/drivers/overlay2/upper-changes.js';
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

  it("mounts through paths relative to a home whose path holds ':', ',' or a backslash, however short", () => {
    for (const odd of ['/srv/a:b/overlay2', '/srv/a,b/overlay2', '/srv/a\\b/overlay2']) {
      const spec = buildMountSpec({ ...req('l/AAA:l/BBB'), home: odd });
      assert.deepEqual(spec, { options: `index=off,lowerdir=l/AAA:l/BBB,upperdir=${id}/diff,workdir=${id}/work`, target: `${id}/merged`, cwd: odd });
    }
  });

  it('refuses options that cannot fit even relative', () => {
    const lower = Array.from({ length: 200 }, (_, i) => `l/${'X'.repeat(24)}${String(i).padStart(3, '0')}`).join(':');
    assert.throws(() => buildMountSpec(req(lower)), (e) => isStrataError(e, 'MOUNT_FAILED'));
  });
});

describe('overlay2 changes from the upper directory', () => {
  const attrs = (kind: 'dir' | 'file' | 'whiteout', extra: Partial<Attrs> = {}): Attrs => ({
    isDir: kind === 'dir',
    mode: kind === 'dir' ? 0o40755 : kind === 'file' ? 0o100644 : 0o20000,
    uid: 0,
    gid: 0,
    rdev: 0n,
    size: kind === 'file' ? 3n : kind === 'dir' ? 4096n : 0n,
    mtimeNs: 1_000_000_000n,
    linkTarget: null,
    xattrs: {},
    ...extra,
  });
  const up = (path: string, kind: 'dir' | 'file' | 'whiteout' | 'opaque', extra: Partial<Attrs> = {}): UpperEntry => ({
    path,
    attrs: attrs(kind === 'opaque' ? 'dir' : kind, extra),
    whiteout: kind === 'whiteout',
    opaque: kind === 'opaque',
  });
  const view = (entries: Record<string, Attrs>, children: Record<string, string[]> = {}): ParentView => ({
    lookup: (p) => entries[p] ?? null,
    children: (p) => children[p] ?? [],
  });
  const lines = (list: Array<{ kind: string; path: string }>) => list.map((c) => `${c.kind} ${c.path}`);

  it('classifies additions, changes and deletions as docker diff does', () => {
    const parent = view({ '/etc': attrs('dir'), '/etc/hosts': attrs('file'), '/etc/passwd': attrs('file'), '/tmp': attrs('dir') });
    const list = classifyUpper([
      up('/etc', 'dir', { mtimeNs: 9n }), up('/etc/hosts', 'file', { size: 7n }), up('/etc/passwd', 'whiteout'),
      up('/tmp', 'dir', { mtimeNs: 9n }), up('/tmp/new', 'dir'), up('/tmp/new/file', 'file'),
    ], parent);
    assert.deepEqual(lines(list), ['C /etc', 'C /etc/hosts', 'D /etc/passwd', 'C /tmp', 'A /tmp/new', 'A /tmp/new/file']);
  });

  it('lists every directory above a change, but not a copied-up file that did not change', () => {
    const parent = view({ '/usr': attrs('dir'), '/usr/lib': attrs('dir'), '/usr/lib/x': attrs('file'), '/usr/lib/same': attrs('file') });
    const list = classifyUpper([up('/usr', 'dir'), up('/usr/lib', 'dir'), up('/usr/lib/new', 'file'), up('/usr/lib/same', 'file')], parent);
    assert.deepEqual(lines(list), ['C /usr', 'C /usr/lib', 'A /usr/lib/new']);
  });

  it('an opaque directory deletes what the parent had in it, one entry each', () => {
    const parent = view({ '/var': attrs('dir'), '/var/cache': attrs('dir'), '/var/cache/a': attrs('file'), '/var/cache/b': attrs('dir'), '/var/cache/c': attrs('file') },
      { '/var/cache': ['a', 'b', 'c'] });
    const list = classifyUpper([up('/var', 'dir'), up('/var/cache', 'opaque'), up('/var/cache/c', 'file', { size: 1n })], parent);
    assert.deepEqual(lines(list), ['C /var', 'C /var/cache', 'D /var/cache/a', 'D /var/cache/b', 'C /var/cache/c']);
  });

  it('compares mode, owner, symlink target and xattrs; not a directory\'s mtime', () => {
    const parent = view({ '/d': attrs('dir'), '/l': attrs('file', { linkTarget: 'a' }), '/o': attrs('file'), '/x': attrs('file') });
    const list = classifyUpper([up('/d', 'dir', { mtimeNs: 5n }), up('/l', 'file', { linkTarget: 'b' }), up('/o', 'file', { uid: 1 }), up('/x', 'file', { xattrs: { 'user.a': 'eA==' } })], parent);
    assert.deepEqual(lines(list), ['C /l', 'C /o', 'C /x']);
  });

  it('ignores a whiteout for something the parent does not have; everything is added without lowers', () => {
    assert.deepEqual(lines(classifyUpper([up('/gone', 'whiteout')], view({}))), []);
    assert.deepEqual(lines(classifyUpper([up('/a', 'file'), up('/d', 'dir'), up('/d/x', 'file')], view({}))), ['A /a', 'A /d', 'A /d/x']);
  });
});
