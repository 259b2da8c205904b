/**
 * Process entry of the active-devices service: `node service-main.js <root>` (ensureService
 * starts it detached). SIGTERM or SIGINT: finish in-flight requests, flush, commit, close, exit 0.
 */
import { NbdService } from './service.js';
import { tuneJitForServing } from '../util/serving-jit.js';

tuneJitForServing();

const root = process.argv[2];
if (!root) {
  process.stderr.write('usage: service-main <root>\n');
  process.exit(2);
}
const log = (m: string): void => void process.stderr.write(`${new Date().toISOString()} strata-nbd[${process.pid}] ${m}\n`);
process.on('unhandledRejection', (err) => log(`unhandled: ${err instanceof Error ? err.stack : String(err)}`));

/** STRATA_NBD_IDLE_MS (0: never), else 15 s, as the devicemapper pool service (STRATA_DM_IDLE_MS). */
function idleExitMs(): number | undefined {
  const ms = Number(process.env.STRATA_NBD_IDLE_MS ?? 15_000);
  return Number.isFinite(ms) && ms > 0 ? ms : undefined;
}

try {
  const svc = await NbdService.start(root, { log, idleExitMs: idleExitMs() });
  log(`serving ${root}`);
  const shutdown = (signal: string): void => {
    log(`${signal}: stopping`);
    void svc.stop();
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  await svc.stopped;
  log('stopped');
  process.exit(0);
} catch (err) {
  log(`cannot start: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
}
