import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { strataError } from '../../errors.js';
import type { SubvolumeOps } from './subvolume.js';

/**
 * Subvolume operations through the `btrfs` tool of btrfs-progs, for hosts where koffi cannot
 * load. Each call is a child process (10–15 ms from Node); the tool's messages are passed on as
 * the error text, never parsed.
 */

export function btrfsTool(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('btrfs', args, { encoding: 'utf8', maxBuffer: 4 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      const detail = (stderr || err.message).trim().replace(/\s*\n\s*/g, '; ');
      reject(strataError('INTERNAL', `btrfs ${args.join(' ')}: ${detail}`, { cmd: 'btrfs' }, err));
    });
  });
}

/** `btrfs --version` ("btrfs-progs v6.2"), or null when the tool is not installed. */
export async function btrfsToolVersion(): Promise<string | null> {
  try {
    return (await btrfsTool(['--version'])).trim().split('\n')[0] ?? null;
  } catch {
    return null;
  }
}

export function cliSubvolumeOps(): SubvolumeOps {
  return {
    via: 'btrfs-progs',
    create: async (dir, name) => void (await btrfsTool(['subvolume', 'create', join(dir, name)])),
    snapshot: async (source, dir, name) => void (await btrfsTool(['subvolume', 'snapshot', source, join(dir, name)])),
    destroy: async (dir, name) => void (await btrfsTool(['subvolume', 'delete', join(dir, name)])),
    async subvolumeId(path) {
      const out = (await btrfsTool(['inspect-internal', 'rootid', path])).trim();
      if (!/^\d+$/.test(out)) throw strataError('INTERNAL', `btrfs inspect-internal rootid ${path}: unexpected output ${JSON.stringify(out)}`);
      return BigInt(out);
    },
    enableQuota: async (path) => void (await btrfsTool(['quota', 'enable', path])),
    limitReferenced: async (subvolume, bytes) => void (await btrfsTool(['qgroup', 'limit', String(bytes), subvolume])),
    destroyQgroup: async (path, subvolId) => void (await btrfsTool(['qgroup', 'destroy', `0/${subvolId}`, path])),
  };
}
