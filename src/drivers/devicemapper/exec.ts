import { execFile } from 'node:child_process';
import { strataError, type ErrorCode } from '../../errors.js';

/** Run a host tool; on failure throw `code` with its stderr (the tools say what went wrong). */
export function run(cmd: string, args: string[], code: ErrorCode = 'MOUNT_FAILED'): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(strataError(code, `devicemapper: ${cmd} ${args.join(' ')}: ${(stderr || err.message).trim()}`, { cmd }, err));
      else resolve(stdout);
    });
  });
}
