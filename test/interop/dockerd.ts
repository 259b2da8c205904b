// A private Docker daemon for interop tests and benchmarks: Debian's dockerd (20.10) on its own
// unix socket, data root and exec root, with no networking set up and no containers ever run.
// dockerd starts its own containerd under the exec root, so nothing clashes with a host daemon.
// Stopped by PID (its containerd too, should dockerd die first), mounts below the temp dir undone.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { open, readFile, mkdir } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';

export interface Dockerd {
  readonly socket: string;
  readonly dataRoot: string;
  readonly pid: number;
  /** Run the docker CLI against this daemon; rejects on a non-zero exit. */
  docker(args: string[], opts?: { input?: Buffer; env?: Record<string, string> }): Promise<string>;
  /** Raw Engine API call (no CLI start-up), e.g. for benchmarks. */
  api(method: string, path: string, body?: unknown): Promise<{ status: number; body: string }>;
  stop(): Promise<void>;
  log(): Promise<string>;
}

export async function which(cmd: string): Promise<boolean> {
  return new Promise((resolve) => execFile('sh', ['-c', `command -v ${cmd}`], (err) => resolve(!err)));
}

/** Why a private dockerd cannot run here, or null. */
export async function dockerdUnavailable(): Promise<string | null> {
  if (process.getuid?.() !== 0) return 'dockerd needs root';
  for (const cmd of ['dockerd', 'docker', 'containerd']) if (!(await which(cmd))) return `${cmd} is not installed (Debian: apt-get install docker.io)`;
  return null;
}

function runDocker(socket: string, args: string[], input?: Buffer, env?: Record<string, string>): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('docker', ['-H', `unix://${socket}`, ...args], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, DOCKER_CONFIG: join(socket, '..', 'client'), ...env },
    });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve(Buffer.concat(out).toString());
      else reject(new Error(`docker ${args.join(' ')} exited ${code}: ${err.trim()}`));
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
  });
}

function apiCall(socket: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = request({ socketPath: socket, method, path, headers: payload ? { 'Content-Type': 'application/json', 'Content-Length': payload.length } : {} }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => (text += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(payload);
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return true;
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** Unmount whatever is still mounted below `dir` (deepest first). */
export async function unmountBelow(dir: string): Promise<void> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const points = text.split('\n').map((l) => l.split(' ')[4] ?? '').filter((p) => p.startsWith(`${dir}/`));
  for (const p of points.sort((a, b) => b.length - a.length)) {
    await new Promise<void>((resolve) => execFile('umount', ['-l', p], () => resolve()));
  }
}

/**
 * Start dockerd with `dataRoot` as --data-root; everything else (socket, exec root, pid file,
 * log) lives in `workDir`. Resolves once the API answers.
 */
export async function startDockerd(workDir: string, dataRoot: string, driver: string): Promise<Dockerd> {
  await mkdir(workDir, { recursive: true });
  const socket = join(workDir, 'd.sock');
  const execRoot = join(workDir, 'exec');
  const logPath = join(workDir, `dockerd-${Date.now()}.log`);
  const logFile = await open(logPath, 'a');
  const child = spawn('dockerd', [
    '--host', `unix://${socket}`,
    '--data-root', dataRoot,
    '--exec-root', execRoot,
    '--pidfile', join(workDir, 'dockerd.pid'),
    '--iptables=false', '--ip6tables=false', '--bridge=none', '--ip-masq=false',
    '--storage-driver', driver,
  ], { stdio: ['ignore', logFile.fd, logFile.fd] });
  await logFile.close();
  const pid = child.pid;
  if (pid === undefined) throw new Error('dockerd did not start');
  const log = () => readFile(logPath, 'utf8').catch(() => '');

  const stop = async (): Promise<void> => {
    const containerdPid = Number.parseInt(await readFile(join(execRoot, 'containerd', 'containerd.pid'), 'utf8').catch(() => ''), 10);
    if (alive(pid)) {
      process.kill(pid, 'SIGTERM');
      if (!(await waitExit(child, 30_000))) {
        process.kill(pid, 'SIGKILL');
        await waitExit(child, 5_000);
      }
    }
    // dockerd stops its containerd; if it could not, do it by its own PID.
    if (Number.isInteger(containerdPid) && containerdPid > 0 && alive(containerdPid)) {
      process.kill(containerdPid, 'SIGTERM');
      for (let i = 0; i < 50 && alive(containerdPid); i++) await new Promise((r) => setTimeout(r, 100));
      if (alive(containerdPid)) process.kill(containerdPid, 'SIGKILL');
    }
    await unmountBelow(execRoot);
    await unmountBelow(dataRoot);
  };

  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`dockerd exited with ${child.exitCode}:\n${(await log()).slice(-3000)}`);
    const ok = await apiCall(socket, 'GET', '/_ping').then((r) => r.status === 200, () => false);
    if (ok) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`dockerd did not answer within 60 s:\n${(await log()).slice(-3000)}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    socket,
    dataRoot,
    pid,
    docker: (args, opts = {}) => runDocker(socket, args, opts.input, opts.env),
    api: (method, path, body) => apiCall(socket, method, path, body),
    stop,
    log,
  };
}
