import { homedir } from 'node:os';
import { join } from 'node:path';

/** `/var/lib/strata` for root, `$XDG_DATA_HOME/strata` (or `~/.local/share/strata`) otherwise. */
export function defaultRoot(): string {
  if (process.getuid?.() === 0) return '/var/lib/strata';
  const xdg = process.env.XDG_DATA_HOME;
  return join(xdg && xdg.length > 0 ? xdg : join(homedir(), '.local', 'share'), 'strata');
}
