// The union engine against the kernel's OverlayFS as an oracle: the same random lower layers
// (aufs whiteouts for the engine, overlay's 0/0 char devices and trusted.overlay.opaque for the
// kernel), the same random operation sequence applied to both, then the merged trees compared
// after every operation and the two writable layers compared at the end after converting
// overlay's whiteout format to aufs'. At the end the engine also reads the kernel's own layers
// (format: 'overlay') and must show the same tree as the mount, and fuse-overlayfs (where
// installed) must read the engine's aufs-format branches as the engine does.
//
// Generator restrictions, each with its reason:
// - symlink targets are relative and only descend (`a`, `a/b`), so even after a rename moves the
//   link they cannot climb: the kernel resolves an absolute or escaping target on the host (which
//   this test must never write to), the engine inside the union (unit-tested);
// - no hard links in the lower layers: OverlayFS with index=off (this kernel's default) breaks a
//   hardlink group on copy-up, aufs keeps it (plnk; unit-tested);
// - directory rename: mounted with redirect_dir=off, OverlayFS answers EXDEV for directories with
//   lower content, and the test then does what `mv` does on EXDEV (copy the tree, remove the
//   source); the engine renames by copying the merged tree itself, so both must end up equal.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { UnionFs } from '../../src/union/index.js';
import { getXattr, setXattr } from '../../src/util/xattr.js';
import { snapshot, tempDir } from './tree.js';
import { rng } from '../helpers/rng.js';

const run = promisify(execFile);

const NAMES = ['a', 'b', 'c', 'd'];

async function overlayAvailable(): Promise<string | null> {
  if (process.getuid?.() !== 0) return 'needs root to mount OverlayFS';
  const fss = await fsp.readFile('/proc/filesystems', 'utf8').catch(() => '');
  if (!/\toverlay\n/.test(fss)) {
    await run('modprobe', ['overlay']).catch(() => undefined);
    if (!/\toverlay\n/.test(await fsp.readFile('/proc/filesystems', 'utf8').catch(() => ''))) return 'kernel has no overlay filesystem';
  }
  return null;
}

type Kind = 'file' | 'dir' | 'symlink' | 'whiteout' | 'opaque';

/** One random lower layer, written twice: aufs format into `aufs`, overlay format into `ovl`. */
async function randomLayer(r: () => number, aufs: string, ovl: string, below: UnionFs | null): Promise<void> {
  await fsp.mkdir(aufs, { recursive: true });
  await fsp.mkdir(ovl, { recursive: true });
  const used = new Map<string, Kind>();
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;
  for (let k = 0; k < 14; k++) {
    const depth = 1 + Math.floor(r() * 3);
    const parts = Array.from({ length: depth }, () => pick(NAMES));
    const path = parts.join('/');
    const kind = pick<Kind>(['file', 'file', 'dir', 'dir', 'symlink', 'whiteout', 'opaque']);
    // parents must be (or become) plain directories of this layer
    const ancestors = parts.slice(0, -1).map((_, i) => parts.slice(0, i + 1).join('/'));
    if (ancestors.some((a) => used.has(a) && used.get(a) !== 'dir' && used.get(a) !== 'opaque')) continue;
    if (used.has(path) || [...used.keys()].some((p) => p.startsWith(path + '/'))) continue;
    for (const a of ancestors) {
      if (!used.has(a)) {
        used.set(a, 'dir');
        await fsp.mkdir(join(aufs, a), { recursive: true });
        await fsp.mkdir(join(ovl, a), { recursive: true });
      }
    }
    // OverlayFS lists a whiteout that hides nothing (in a directory that does not merge with a
    // lower one) as a char device, where aufs never shows one: only generate effective whiteouts
    if (kind === 'whiteout' && !(await hidesSomething(below, parts, used))) continue;
    used.set(path, kind);
    const name = parts[parts.length - 1] as string;
    const parent = parts.slice(0, -1).join('/');
    switch (kind) {
      case 'file': {
        const content = `${path}@${Math.floor(r() * 1000)}\n`;
        const mode = pick([0o644, 0o600, 0o755]);
        for (const root of [aufs, ovl]) {
          await fsp.writeFile(join(root, path), content);
          await fsp.chmod(join(root, path), mode);
        }
        break;
      }
      case 'dir':
        await fsp.mkdir(join(aufs, path), { recursive: true });
        await fsp.mkdir(join(ovl, path), { recursive: true });
        break;
      case 'opaque':
        await fsp.mkdir(join(aufs, path), { recursive: true });
        await fsp.mkdir(join(ovl, path), { recursive: true });
        await fsp.writeFile(join(aufs, path, '.wh..wh..opq'), '');
        await setXattr(join(ovl, path), 'trusted.overlay.opaque', 'y');
        break;
      case 'symlink': {
        const target = pick(NAMES) + (r() < 0.5 ? '' : '/' + pick(NAMES));
        await fsp.symlink(target, join(aufs, path));
        await fsp.symlink(target, join(ovl, path));
        break;
      }
      case 'whiteout':
        await fsp.writeFile(join(aufs, parent, '.wh.' + name), '');
        await run('mknod', [join(ovl, path), 'c', '0', '0']);
        break;
    }
  }
}

async function hidesSomething(below: UnionFs | null, parts: string[], used: Map<string, Kind>): Promise<boolean> {
  if (below === null) return false;
  for (let i = 1; i < parts.length; i++) {
    const prefix = parts.slice(0, i).join('/');
    if (used.get(prefix) === 'opaque') return false;
    const st = await below.lstat(prefix).catch(() => null);
    if (st === null || !st.isDirectory()) return false;
  }
  return (await below.lstat(parts.join('/')).catch(() => null)) !== null;
}

/** A writable layer as aufs-format lines: overlay's char-dev whiteouts and opaque xattrs converted. */
async function layerLines(root: string, format: 'aufs' | 'overlay'): Promise<string[]> {
  const out: string[] = [];
  async function walk(rel: string): Promise<void> {
    const dir = join(root, rel);
    if (format === 'overlay' && rel !== '' && (await getXattr(dir, 'trusted.overlay.opaque'))?.toString() === 'y') {
      out.push(`${rel}/.wh..wh..opq opaque`);
    }
    for (const e of (await fsp.readdir(dir, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const r = rel === '' ? e.name : `${rel}/${e.name}`;
      const p = join(root, r);
      if (format === 'aufs' && e.name.startsWith('.wh.')) {
        if (e.name === '.wh..wh..opq') out.push(`${r} opaque`);
        else if (!e.name.startsWith('.wh..wh.')) out.push(`${r} whiteout`);
        continue;
      }
      const st = await fsp.lstat(p);
      if (format === 'overlay' && st.isCharacterDevice() && st.rdev === 0) {
        out.push(`${rel === '' ? '' : rel + '/'}.wh.${e.name} whiteout`);
        continue;
      }
      const mode = (st.mode & 0o7777).toString(8);
      if (st.isDirectory()) {
        out.push(`${r} dir ${mode}`);
        await walk(r);
      } else if (st.isSymbolicLink()) out.push(`${r} symlink -> ${await fsp.readlink(p)}`);
      else out.push(`${r} file ${mode} ${createHash('sha256').update(await fsp.readFile(p)).digest('hex').slice(0, 12)}`);
    }
  }
  await walk('');
  return out.sort();
}

type Op =
  | { op: 'writeFile' | 'appendFile'; path: string; data: string }
  | { op: 'unlink' | 'rmdir' | 'rmrf' | 'truncate'; path: string }
  | { op: 'mkdir'; path: string; mode: number }
  | { op: 'rename'; path: string; to: string }
  | { op: 'link'; path: string; to: string }
  | { op: 'symlink'; path: string; target: string }
  | { op: 'chmod'; path: string; mode: number }
  | { op: 'chown'; path: string; uid: number };

function randomOp(r: () => number, existing: string[]): Op {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;
  const some = (): string => (existing.length > 0 && r() < 0.7 ? pick(existing) : pick(NAMES));
  const fresh = (): string => {
    const base = existing.length > 0 && r() < 0.6 ? pick(existing) + '/' : '';
    return base + pick(NAMES) + (r() < 0.3 ? 'x' : '');
  };
  const kind = pick(['writeFile', 'writeFile', 'appendFile', 'unlink', 'rmdir', 'rmrf', 'rmrf', 'mkdir', 'mkdir', 'rename', 'rename', 'rename', 'symlink', 'chmod', 'chown', 'truncate', 'link'] as const);
  switch (kind) {
    case 'writeFile': case 'appendFile': return { op: kind, path: r() < 0.5 ? some() : fresh(), data: `w${Math.floor(r() * 1e6)}` };
    case 'unlink': case 'rmdir': case 'rmrf': case 'truncate': return { op: kind, path: some() };
    case 'mkdir': return { op: 'mkdir', path: fresh(), mode: pick([0o755, 0o700]) };
    case 'rename': return { op: 'rename', path: some(), to: r() < 0.5 ? fresh() : some() };
    case 'link': return { op: 'link', path: some(), to: r() < 0.8 ? fresh() : some() };
    case 'symlink': {
      const target = pick(NAMES) + (r() < 0.5 ? '' : '/' + pick(NAMES));
      return { op: 'symlink', path: fresh(), target };
    }
    case 'chmod': return { op: 'chmod', path: some(), mode: pick([0o600, 0o640, 0o751]) };
    case 'chown': return { op: 'chown', path: some(), uid: pick([0, 1000, 4242]) };
  }
}

/** Apply to the kernel mount; EXDEV on directory rename is handled as `mv` does. */
async function applyKernel(mnt: string, o: Op): Promise<void> {
  const p = join(mnt, o.path);
  switch (o.op) {
    case 'writeFile': return fsp.writeFile(p, o.data);
    case 'appendFile': return fsp.appendFile(p, o.data);
    case 'unlink': return fsp.unlink(p);
    case 'rmdir': return fsp.rmdir(p);
    case 'rmrf': {
      await fsp.lstat(p);
      return fsp.rm(p, { recursive: true });
    }
    case 'truncate': return fsp.truncate(p, 0);
    case 'mkdir': { await fsp.mkdir(p, { mode: o.mode }); return; }
    case 'symlink': return fsp.symlink(o.target, p);
    case 'chmod': return fsp.chmod(p, o.mode);
    case 'chown': return fsp.chown(p, o.uid, o.uid);
    case 'link': return fsp.link(p, join(mnt, o.to));
    case 'rename': {
      const to = join(mnt, o.to);
      try {
        await fsp.rename(p, to);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
        const st = await fsp.lstat(to).catch(() => null);
        if (st?.isDirectory()) await fsp.rmdir(to);
        await run('cp', ['-a', '--', p, to]);
        await fsp.rm(p, { recursive: true });
      }
    }
  }
}

async function applyEngine(u: UnionFs, o: Op): Promise<void> {
  switch (o.op) {
    case 'writeFile': return u.writeFile(o.path, o.data);
    case 'appendFile': return u.appendFile(o.path, o.data);
    case 'unlink': return u.unlink(o.path);
    case 'rmdir': return u.rmdir(o.path);
    case 'rmrf': return u.rm(o.path, { recursive: true });
    case 'truncate': return u.truncate(o.path, 0);
    case 'mkdir': { await u.mkdir(o.path, { mode: o.mode }); return; }
    case 'symlink': return u.symlink(o.target, o.path);
    case 'chmod': return u.chmod(o.path, o.mode);
    case 'chown': return u.chown(o.path, o.uid, o.uid);
    case 'rename': return u.rename(o.path, o.to);
    case 'link': return u.link(o.path, o.to);
  }
}

const outcome = (p: Promise<void>): Promise<string> => p.then(() => 'ok', (err: NodeJS.ErrnoException) => err.code ?? String(err));

const SEEDS = Number(process.env.STRATA_ORACLE_SEEDS ?? 10);
const OPS = Number(process.env.STRATA_ORACLE_OPS ?? 60);

test('union engine matches kernel OverlayFS on random layers and operations', async (t) => {
  const why = await overlayAvailable();
  if (why !== null) return t.skip(why);
  // optional second reader of the engine's output (the aufs driver's mount program)
  const fuseOverlayfs = await run('which', ['fuse-overlayfs']).then((r) => r.stdout.trim() || null, () => null);
  if (fuseOverlayfs === null) t.diagnostic('fuse-overlayfs not installed: the engine\'s branches are not cross-read');
  for (let seed = Number(process.env.STRATA_ORACLE_FIRST ?? 1); seed <= SEEDS; seed++) {
    const base = await tempDir('oracle');
    const mnt = join(base, 'mnt');
    let mounted = false;
    try {
      const r = rng(seed * 7919);
      const aufsLowers: string[] = [];
      const ovlLowers: string[] = [];
      for (let i = 0; i < 3; i++) {
        const below = i === 0 ? null : await UnionFs.open({ lowers: aufsLowers });
        await randomLayer(r, join(base, `aufs-l${i}`), join(base, `ovl-l${i}`), below);
        aufsLowers.push(join(base, `aufs-l${i}`));
        ovlLowers.push(join(base, `ovl-l${i}`));
      }
      for (const d of ['upper', 'work', 'mnt', 'top']) await fsp.mkdir(join(base, d));
      const lowerdir = [...ovlLowers].reverse().join(':');
      await run('mount', ['-t', 'overlay', 'overlay', '-o',
        `lowerdir=${lowerdir},upperdir=${join(base, 'upper')},workdir=${join(base, 'work')},redirect_dir=off,index=off,metacopy=off`, mnt]);
      mounted = true;
      const u = await UnionFs.open({ lowers: aufsLowers, top: join(base, 'top') });
      const skipHousekeeping = { skip: (n: string) => n.startsWith('.wh.') };
      assert.deepEqual(await snapshot(u, '/'), await snapshot(fsp, mnt), `seed ${seed}: initial merged view`);
      const log: string[] = [];
      for (let i = 0; i < OPS; i++) {
        const before = await snapshot(u, '/');
        const existing = before.map((l) => l.slice(0, l.indexOf(' ')));
        const o = randomOp(r, existing);
        const k = await outcome(applyKernel(mnt, o));
        const e = await outcome(applyEngine(u, o));
        log.push(`${JSON.stringify(o)} kernel=${k} engine=${e}`);
        assert.equal(e, k, `seed ${seed} op ${i}: ${JSON.stringify(o)}\n${log.join("\n")}\n${existing.join(" ")}\n${(await snapshot(u, "/")).join("\n")}`);
        if (process.env.STRATA_ORACLE_LAYERS_EACH_OP) {
          assert.deepEqual(await layerLines(join(base, 'top'), 'aufs'), await layerLines(join(base, 'upper'), 'overlay'), `seed ${seed} op ${i}: layers differ after ${JSON.stringify(o)}\nbefore:\n${before.join('\n')}`);
        }
        assert.deepEqual(await snapshot(u, '/'), await snapshot(fsp, mnt, skipHousekeeping), `seed ${seed} op ${i}: merged trees differ after ${JSON.stringify(o)}\n${log.join('\n')}\nbefore:\n${before.join('\n')}`);
      }
      // an independent reader of aufs' format: fuse-overlayfs over the engine's branches, its top
      // included as the highest read-only layer, must show the engine's tree
      if (fuseOverlayfs !== null) {
        const fmnt = join(base, 'fmnt');
        await fsp.mkdir(fmnt);
        await run(fuseOverlayfs, ['-o', `lowerdir=${[join(base, 'top'), ...[...aufsLowers].reverse()].join(':')}`, fmnt]);
        try {
          const viaFuse = await snapshot(fsp, fmnt).catch((err: NodeJS.ErrnoException) => {
            // fuse-overlayfs 1.10 fails a readdir with ENOMEM when a directory shadows a
            // self-referencing symlink (`a -> a/c`) of a lower branch; the kernel and the engine
            // do not (reproduced by hand; see src/drivers/aufs/README.md)
            if (err.code === 'ENOMEM') return null;
            return [`seed ${seed}: reading through fuse-overlayfs failed: ${err.message}`];
          });
          if (viaFuse === null) t.diagnostic(`seed ${seed}: fuse-overlayfs cross-read skipped (its ENOMEM on a directory over a looping symlink)`);
          else assert.deepEqual(viaFuse, await snapshot(u, '/'), `seed ${seed}: fuse-overlayfs reads the engine's branches differently\n${log.join('\n')}`);
        } finally {
          await run('umount', [fmnt]);
        }
      }
      // the engine also reads OverlayFS' own format: the kernel's layers, upper included
      const overlayView = await UnionFs.open({ lowers: [...ovlLowers, join(base, 'upper')], format: 'overlay' });
      assert.deepEqual(await snapshot(overlayView, '/'), await snapshot(fsp, mnt, skipHousekeeping), `seed ${seed}: overlay-format view differs`);
      await run('umount', [mnt]);
      mounted = false;
      assert.deepEqual(await layerLines(join(base, 'top'), 'aufs'), await layerLines(join(base, 'upper'), 'overlay'), `seed ${seed}: writable layers differ\n${log.join('\n')}`);
    } finally {
      // STRATA_ORACLE_KEEP=1 leaves a failing case on disk (unmounted) for inspection
      if (mounted) await run('umount', ['-l', mnt]).catch(() => undefined);
      if (process.env.STRATA_ORACLE_KEEP) console.error(`kept ${base}`);
      else await fsp.rm(base, { recursive: true, force: true });
    }
  }
});
