/**
 * Serve one file over NBD until SIGTERM/SIGINT (benchmarks and manual testing):
 *
 *     node --import tsx src/nbd/serve-main.ts FILE SOCKET [--name NAME] [--read-only] [--tcp PORT]
 *
 * Prints "ready" on stdout once listening.
 */
import { NbdServer } from './server.js';
import { FileExport } from './file-export.js';
import { tuneJitForServing } from '../util/serving-jit.js';

tuneJitForServing();

const args = process.argv.slice(2);
const file = args[0];
const socket = args[1];
if (!file || !socket) {
  process.stderr.write('usage: serve-main FILE SOCKET [--name NAME] [--read-only] [--tcp PORT]\n');
  process.exit(2);
}
const flag = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const exp = await FileExport.open(file, { name: flag('--name') ?? '', readOnly: args.includes('--read-only') });
const server = new NbdServer([exp], { log: (m) => void process.stderr.write(`${m}\n`) });
await server.listenUnix(socket);
const port = flag('--tcp');
if (port !== undefined) await server.listenTcp(Number(port));
process.stdout.write('ready\n');
const stop = async (): Promise<void> => {
  await server.close();
  await exp.flush();
  await exp.close();
  process.exit(0);
};
process.on('SIGTERM', () => void stop());
process.on('SIGINT', () => void stop());
