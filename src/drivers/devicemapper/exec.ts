import { execFile } from 'node:child_process';
import { strataError, type ErrorCode } from '../../errors.js';
import { tiedToThisProcess } from '../../util/tied-child.js';

/**
 * Run a host tool; on failure throw `code` with its stderr (the tools say what went wrong). The
 * tool dies with this process (a mkfs left running would write on into a device the next
 * command formats again).
 */
export async function run(cmd: string, args: string[], code: ErrorCode = 'MOUNT_FAILED'): Promise<string> {
  const [command, argv] = await tiedToThisProcess(cmd, args);
  return new Promise((resolve, reject) => {
    execFile(command, argv, { maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(strataError(code, `devicemapper: ${cmd} ${args.join(' ')}: ${(stderr || err.message).trim()}`, { cmd }, err));
      else resolve(stdout);
    });
  });
}
