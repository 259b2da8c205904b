import { access, constants } from 'node:fs/promises';
import { join } from 'node:path';

/** The first executable `name` in `searchPath` (PATH's form), or null. */
export async function which(name: string, searchPath = process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'): Promise<string | null> {
  for (const dir of searchPath.split(':')) {
    if (!dir) continue;
    const p = join(dir, name);
    try {
      await access(p, constants.X_OK);
      return p;
    } catch {
      // keep looking
    }
  }
  return null;
}
