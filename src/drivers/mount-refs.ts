import { readFileSync } from 'node:fs';
import { readFile, readdir, mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { withFileLock } from '../util/file-lock.js';
import { replaceFile } from '../util/atomic.js';
import { isErrno } from '../errors.js';

/**
 * Who holds a reference. 'kept': it outlives the process that took it (`strata mount`, until
 * `strata unmount`). 'process': it is the taking process's (a save, an export, a diff reading a
 * layer), and is let go if that process dies: a process killed mid-way must not leave the layer
 * counted as mounted, which would refuse its removal for good.
 */
export type RefHolder = 'kept' | 'process';

/** A layer's mount references: all live ones, and those of them kept past their process. */
export interface MountUsage {
  total: number;
  kept: number;
}

/** The counts of one id: kept ones, and each live process's (by "pid:start time"). */
interface Counts {
  kept: number;
  byProcess: Map<string, number>;
}

/**
 * Mount reference counts kept on disk, because every strata CLI call is a separate process
 * (containers/storage keeps mountpoints.json for the same reason). One file per id under
 * `<home>/mountrefs/`: the kept count on its first line, then one `<pid> <start time> <count>`
 * line per process holding references. Changed under a flock so concurrent processes count
 * correctly; replaced atomically but never fsynced: they describe mounts, which do not outlive a
 * boot either (get() mounts again when a count has no mount behind it).
 *
 * A process that died is not counted: its references go (its pid may be reused, so a process is
 * told by its start time too). A mount it left behind is found by the next get() of the layer,
 * as one left by a crash always was, and a remove() unmounts it.
 */
export class MountRefs {
  private readonly dir: string;

  constructor(home: string) {
    this.dir = join(home, 'mountrefs');
  }

  /** References held by a live process or kept. */
  async count(id: string): Promise<number> {
    return total(await this.read(id));
  }

  /** All references, and those kept beyond their process (`strata mount`): Driver.mountRefs. */
  async usage(id: string): Promise<MountUsage> {
    const counts = await this.read(id);
    return { total: total(counts), kept: counts.kept };
  }

  /**
   * Change `holder`'s count by `delta` and run `onEdge` when the total crosses zero (mount on
   * 0→1, unmount on 1→0) inside the same lock, so no other process sees a count that disagrees
   * with the mount. Returns the new total; a put that holder has no reference for is ignored.
   */
  async change(id: string, delta: 1 | -1, holder: RefHolder, onEdge?: () => Promise<void>): Promise<number> {
    await mkdir(this.dir, { recursive: true });
    return withFileLock(join(this.dir, '.lock'), async () => {
      const counts = await this.read(id);
      const before = total(counts);
      if (holder === 'kept') {
        counts.kept = Math.max(0, counts.kept + delta);
      } else {
        const me = processKey();
        const mine = Math.max(0, (counts.byProcess.get(me) ?? 0) + delta);
        if (mine > 0) counts.byProcess.set(me, mine);
        else counts.byProcess.delete(me);
      }
      const after = total(counts);
      if (after !== before && (before === 0 || after === 0)) await onEdge?.();
      if (after === 0) await rm(join(this.dir, id), { force: true });
      else await replaceFile(join(this.dir, id), format(counts));
      return after;
    });
  }

  async forget(id: string): Promise<void> {
    await rm(join(this.dir, id), { force: true });
  }

  /** Ids with a count file, live or not (for cleanup). */
  async mounted(): Promise<string[]> {
    try {
      return (await readdir(this.dir)).filter((n) => !n.startsWith('.'));
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return [];
      throw err;
    }
  }

  /** The counts of `id`, without processes that have died. */
  private async read(id: string): Promise<Counts> {
    let text: string;
    try {
      text = await readFile(join(this.dir, id), 'utf8');
    } catch (err) {
      if (isErrno(err, 'ENOENT')) return { kept: 0, byProcess: new Map() };
      throw err;
    }
    // (a file of one number is what earlier versions wrote: every reference was kept)
    const [first = '', ...rest] = text.split('\n');
    const counts: Counts = { kept: Number.parseInt(first, 10) || 0, byProcess: new Map() };
    for (const line of rest) {
      const [pid, start, n] = line.split(' ');
      const key = `${pid}:${start}`;
      if (pid && start && n && isAlive(key)) counts.byProcess.set(key, (counts.byProcess.get(key) ?? 0) + (Number.parseInt(n, 10) || 0));
    }
    return counts;
  }
}

function total(c: Counts): number {
  let n = c.kept;
  for (const v of c.byProcess.values()) n += v;
  return n;
}

function format(c: Counts): string {
  let s = `${c.kept}\n`;
  for (const [key, n] of c.byProcess) s += `${key.replace(':', ' ')} ${n}\n`;
  return s;
}

/** A process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), or null. */
function startTime(pid: number | 'self'): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // the command name (field 2) may hold spaces and parentheses: count from the last ')'
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

let me: string | undefined;

/** This process as a holder: "pid:start time". */
function processKey(): string {
  me ??= `${process.pid}:${startTime('self') ?? '?'}`;
  return me;
}

/** Whether the process a key names still runs (unknowable without /proc: then assumed so). */
function isAlive(key: string): boolean {
  const [pid, start] = key.split(':');
  if (start === '?') return true;
  const now = startTime(Number(pid));
  return now === null ? !existsProc() : now === start;
}

let procMounted: boolean | undefined;

function existsProc(): boolean {
  procMounted ??= startTime('self') !== null;
  return procMounted;
}

/** How a get or put holds its reference (Driver.get / Driver.put options). */
export interface MountOptions {
  /** The reference outlives this process (`strata mount`, until `strata unmount`). */
  keep?: boolean;
}

export function holderOf(opts?: MountOptions): RefHolder {
  return opts?.keep === true ? 'kept' : 'process';
}
