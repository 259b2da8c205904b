/**
 * Named points where the crash tests kill the process (SIGKILL, so nothing gets to clean up):
 * `STRATA_DM_CRASH_AT=create:messaged` dies right after that step. Unset, this does nothing.
 */
export function crashPoint(name: string): void {
  if (process.env.STRATA_DM_CRASH_AT === name) process.kill(process.pid, 'SIGKILL');
}
