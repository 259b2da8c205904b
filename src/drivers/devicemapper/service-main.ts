// Entry point of the pool service process (spawned detached by pool-client.ts).
import { runPoolService, type ServiceConfig } from './pool-service.js';
import { tuneJitForServing } from '../../util/serving-jit.js';

tuneJitForServing();

const config = JSON.parse(process.argv[2] ?? '{}') as ServiceConfig;
runPoolService(config).catch((err: unknown) => {
  process.stderr.write(`strata pool service: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exit(1);
});
