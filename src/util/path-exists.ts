import { lstat } from 'node:fs/promises';
import { isErrno } from '../errors.js';

/** Whether `path` names anything (a link is not followed). Other errors than ENOENT are thrown. */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return false;
    throw err;
  }
}
