/**
 * Container records as Docker keeps them: `<root>/containers/<id>/config.v2.json`. Strata's
 * containers are never run, but the record has the fields dockerd needs to load it, so a Docker
 * daemon pointed at a Strata root starts and lists them.
 */
import { mkdirSync, statSync } from 'node:fs';
import { readFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { strataError, isErrno, isStrataError } from '../errors.js';
import { mapLimit } from '../util/map-limit.js';
import { prepareFileAtomic, type PreparedFile } from '../util/atomic.js';
import type { Digest } from './digest.js';
import type { WriteTxn } from './write-lock.js';

export interface ContainerRecord {
  ID: string;
  Created: string;
  Name: string;
  Image: Digest;
  Driver: string;
  Config: { Image: string; Labels?: Record<string, string>; [key: string]: unknown };
  [key: string]: unknown;
}

const NAME = /^\/?[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
const ZERO_TIME = '0001-01-01T00:00:00Z';
const RECORD = 'config.v2.json';

export class ContainerStore {
  readonly dir: string;
  private readonly cache = new Map<string, { version: string; record: ContainerRecord }>();

  constructor(root: string) {
    this.dir = join(root, 'containers');
  }

  private path(id: string): string {
    if (!/^[a-f0-9]{64}$/.test(id)) throw strataError('INVALID_ID', `invalid container id ${id}`);
    return join(this.dir, id, RECORD);
  }

  static newRecord(id: string, name: string, image: Digest, imageRef: string, driver: string): ContainerRecord {
    if (!NAME.test(name)) throw strataError('INVALID_ARGUMENT', `invalid container name ${JSON.stringify(name)}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed`);
    return {
      StreamConfig: {},
      State: { Running: false, Paused: false, Restarting: false, OOMKilled: false, RemovalInProgress: false, Dead: false, Pid: 0, ExitCode: 0, Error: '', StartedAt: ZERO_TIME, FinishedAt: ZERO_TIME, Health: null },
      ID: id,
      Created: new Date().toISOString(),
      Managed: false,
      Path: '',
      Args: [],
      Config: { Hostname: id.slice(0, 12), Domainname: '', User: '', AttachStdin: false, AttachStdout: false, AttachStderr: false, Tty: false, OpenStdin: false, StdinOnce: false, Env: null, Cmd: null, Image: imageRef, Volumes: null, WorkingDir: '', Entrypoint: null, OnBuild: null, Labels: { 'org.strata.created-by': 'strata' } },
      Image: image,
      NetworkSettings: { Bridge: '', SandboxID: '', HairpinMode: false, LinkLocalIPv6Address: '', LinkLocalIPv6PrefixLen: 0, Networks: null, Service: null, Ports: null, SandboxKey: '', SecondaryIPAddresses: null, SecondaryIPv6Addresses: null, IsAnonymousEndpoint: false, HasSwarmEndpoint: false },
      LogPath: '',
      Name: `/${name.replace(/^\//, '')}`,
      Driver: driver,
      OS: 'linux',
      MountLabel: '',
      ProcessLabel: '',
      RestartCount: 0,
      HasBeenStartedBefore: false,
      HasBeenManuallyStopped: false,
      MountPoints: {},
      SecretReferences: null,
      ConfigReferences: null,
      AppArmorProfile: '',
      HostnamePath: '',
      HostsPath: '',
      ShmPath: '',
      ResolvConfPath: '',
      SeccompProfile: '',
      NoNewPrivileges: false,
    };
  }

  async put(txn: WriteTxn, record: ContainerRecord): Promise<void> {
    await (await this.prepare(txn, record)).publish();
  }

  /** Write and sync the record under a temp name; it exists for readers once published. */
  async prepare(_txn: WriteTxn, record: ContainerRecord): Promise<PreparedFile> {
    mkdirSync(join(this.dir, record.ID), { recursive: true, mode: 0o710 });
    return prepareFileAtomic(this.path(record.ID), JSON.stringify(record), 0o600);
  }

  async get(id: string): Promise<ContainerRecord> {
    try {
      return JSON.parse(await readFile(this.path(id), 'utf8')) as ContainerRecord;
    } catch (err) {
      if (isErrno(err, 'ENOENT')) throw strataError('CONTAINER_NOT_FOUND', `no such container: ${id}`, { id });
      throw err;
    }
  }

  /**
   * Every record, current: each is re-read only when a stat shows its file changed (another
   * process rewrote it, as a `docker rename` would). The stats are synchronous: a few µs each
   * where a thread-pool round trip costs tens, and create checks its name against every record,
   * so this bounds how create slows down as containers pile up.
   */
  private async records(): Promise<ContainerRecord[]> {
    const ids = (await readdir(this.dir).catch(() => [] as string[])).filter((n) => /^[a-f0-9]{64}$/.test(n)).sort();
    const live = new Set(ids);
    for (const id of this.cache.keys()) if (!live.has(id)) this.cache.delete(id);
    const changed: Array<[string, string]> = [];
    for (const id of ids) {
      // no record: a create that never finished; fsck reports it
      const st = statSync(join(this.dir, id, RECORD), { throwIfNoEntry: false });
      if (st === undefined) {
        this.cache.delete(id);
        continue;
      }
      // (times in ms with a fraction: bigint stats cost several times more, per record per create)
      const version = `${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
      if (this.cache.get(id)?.version !== version) changed.push([id, version]);
    }
    await mapLimit(changed, 16, async ([id, version]) => {
      const record = await this.get(id).catch((err: unknown) => {
        if (isStrataError(err, 'CONTAINER_NOT_FOUND')) return null;
        throw err;
      });
      if (record !== null) this.cache.set(id, { version, record });
      else this.cache.delete(id);
    });
    return ids.flatMap((id) => this.cache.get(id)?.record ?? []);
  }

  /** Every container's name ("/name"). */
  async names(): Promise<Set<string>> {
    return new Set((await this.records()).map((r) => r.Name));
  }

  async list(): Promise<ContainerRecord[]> {
    // copies: callers may change what they get without changing the cache
    return (await this.records()).map((r) => structuredClone(r));
  }

  async remove(_txn: WriteTxn, id: string): Promise<void> {
    await rm(join(this.dir, id), { recursive: true, force: true });
  }

  /** Find by full ID, unique ID prefix, or name (with or without the leading slash). */
  async resolve(text: string, driver?: string): Promise<ContainerRecord> {
    const all = (await this.list()).filter((c) => driver === undefined || c.Driver === driver);
    const byId = all.find((c) => c.ID === text);
    if (byId) return byId;
    const byName = all.find((c) => c.Name === `/${text.replace(/^\//, '')}`);
    if (byName) return byName;
    if (/^[a-f0-9]{1,63}$/.test(text)) {
      const matches = all.filter((c) => c.ID.startsWith(text));
      if (matches.length === 1) return matches[0]!;
      if (matches.length > 1) throw strataError('INVALID_ARGUMENT', `container ID prefix ${text} is ambiguous`);
    }
    throw strataError('CONTAINER_NOT_FOUND', `no such container: ${text}`, { id: text });
  }
}
