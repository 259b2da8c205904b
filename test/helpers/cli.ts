// Run the real strata CLI (through tsx, so tests need no build) in a child process.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

// `npm test` builds first and sets STRATA_TEST_BUILT=1: then the compiled CLI is used (twice as
// fast to start); a test file run on its own goes through tsx and needs no build.
const built = process.env.STRATA_TEST_BUILT === '1';
const entry = fileURLToPath(new URL(built ? '../../bin/strata.js' : './strata-entry.ts', import.meta.url));
const loader = built ? [] : ['--import', 'tsx'];

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function strata(root: string, args: string[], opts: { input?: Buffer; driver?: string } = {}): Promise<CliResult> {
  const driverArgs = opts.driver ? ['--storage-driver', opts.driver] : [];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...loader, entry, '--root', root, ...driverArgs, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    child.stdin.end(opts.input);
  });
}

/** Run and insist on success; returns trimmed stdout. */
export async function strataOk(root: string, args: string[], opts: { input?: Buffer; driver?: string } = {}): Promise<string> {
  const r = await strata(root, args, opts);
  if (r.code !== 0) throw new Error(`strata ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`);
  return r.stdout.trim();
}

export function strataArgsFor(root: string, args: string[]): string[] {
  return [...loader, entry, '--root', root, ...args];
}
