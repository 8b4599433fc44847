import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, mkdtemp, realpath, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { dockerCli, sleep } from './proc.js';

/** A Kindling server started for the bench: its own data dir, its own port, stopped with SIGTERM. */
export interface BenchServer {
  url: string;
  pid: number;
  dataDir: string;
  /** The owner id the server labels its containers, cgroups and run dirs with (sha256 of the data dir's real path). */
  ownerId: string;
  args: string[];
  /** The last log lines (stdout and stderr), for error messages. */
  logTail(): string[];
  /** SIGTERM, wait for the exit (SIGKILL after the deadline), remove containers of its data dir, remove the data dir. */
  stop(): Promise<void>;
}

export interface LaunchOptions {
  repoRoot: string;
  executor: 'docker' | 'sandbox' | 'microvm' | 'auto';
  /** Extra environment for the server (e.g. KINDLING_MICROVM_ASSETS_DIR). */
  env?: NodeJS.ProcessEnv;
  prewarm?: number;
  extraArgs?: string[];
  startTimeoutMs?: number;
  /** Start on this data dir (a killed server's: the start reaps what it left) instead of a new one; removed at stop. */
  dataDir?: string;
}

/** Everything the bench must undo, also when it fails or is interrupted. Run in reverse order of registration. */
const cleanups = new Set<() => Promise<void>>();

export function onCleanup(fn: () => Promise<void>): () => void {
  cleanups.add(fn);
  return () => cleanups.delete(fn);
}

export async function runCleanups(): Promise<void> {
  const pending = [...cleanups].reverse();
  cleanups.clear();
  for (const fn of pending) {
    await fn().catch((error: unknown) => console.error(`bench: cleanup failed: ${String(error)}`));
  }
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

export async function launchServer(options: LaunchOptions): Promise<BenchServer> {
  const dataDir = options.dataDir ?? (await realpath(await mkdtemp(join(tmpdir(), 'kindling-bench-'))));
  // The sandbox executor's unprivileged uid must reach run dirs below it (mkdtemp makes 0700).
  await chmod(dataDir, 0o755);
  // The server labels its containers with this id (sha256 of the data dir's real path): the safety net below uses it.
  const ownerId = createHash('sha256').update(dataDir).digest('hex').slice(0, 16);
  const port = await freePort();
  const args = [
    // As bin/kindling.js's shebang and scripts/start.sh run it (the flag matters for raw streams: see bin/kindling.js).
    '--initial-old-space-size=64',
    join(options.repoRoot, 'bin', 'kindling.js'),
    'serve',
    '--host', '127.0.0.1',
    '--port', String(port),
    '--data-dir', dataDir,
    '--executor', options.executor,
    '--log-level', 'warn',
    ...(options.prewarm === undefined ? [] : ['--prewarm', String(options.prewarm)]),
    ...(options.extraArgs ?? []),
  ];
  const child = spawn(process.execPath, args, { cwd: options.repoRoot, stdio: ['ignore', 'pipe', 'pipe'], ...(options.env ? { env: { ...process.env, ...options.env } } : {}) });
  const tail: string[] = [];
  let announcedUrl: string | null = null;
  const remember = (line: string): void => {
    tail.push(line);
    if (tail.length > 40) tail.shift();
    try {
      const parsed = JSON.parse(line) as { msg?: string; url?: string };
      if (parsed.msg === 'Kindling is listening' && typeof parsed.url === 'string') announcedUrl = parsed.url;
    } catch {
      /* not JSON: kept in the tail as is */
    }
  };
  if (child.stdout) createInterface({ input: child.stdout }).on('line', remember);
  if (child.stderr) createInterface({ input: child.stderr }).on('line', remember);
  const exit = exited(child);

  let stopped: Promise<void> | null = null;
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const deadline = sleep(45_000).then(() => 'timeout' as const);
        if ((await Promise.race([exit.then(() => 'exited' as const), deadline])) === 'timeout') {
          console.error(`bench: server pid ${child.pid} ignored SIGTERM for 45 s; sending SIGKILL`);
          child.kill('SIGKILL');
          await exit;
        }
      }
      // Safety net: containers of this data dir that a crashed or killed server left behind.
      const leftovers = await dockerCli(['ps', '-aq', '--filter', `label=dev.kindling.owner=${ownerId}`]).catch(() => '');
      const ids = leftovers.split('\n').map((id) => id.trim()).filter(Boolean);
      if (ids.length > 0) {
        console.error(`bench: removing ${ids.length} container(s) the server left behind`);
        await dockerCli(['rm', '-f', ...ids]).catch(() => '');
      }
      await rm(dataDir, { recursive: true, force: true }).catch(() => undefined);
    })();
    return stopped;
  };
  const unregister = onCleanup(stop);

  const url = `http://127.0.0.1:${port}`;
  const started = Date.now();
  const timeoutMs = options.startTimeoutMs ?? 90_000;
  try {
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`server exited during start-up (code ${child.exitCode}, signal ${child.signalCode}): ${tail.slice(-5).join(' ')}`);
      }
      if (announcedUrl !== null) break;
      const healthy = await fetch(`${url}/healthz`).then((response) => response.ok, () => false);
      if (healthy) break;
      if (Date.now() - started > timeoutMs) throw new Error(`server did not answer /healthz within ${timeoutMs} ms: ${tail.slice(-5).join(' ')}`);
      await sleep(100);
    }
  } catch (error) {
    await stop();
    unregister();
    throw error;
  }
  return {
    url: announcedUrl ?? url,
    pid: child.pid ?? -1,
    dataDir,
    ownerId,
    args: args.slice(1),
    logTail: () => [...tail],
    stop: async () => {
      await stop();
      unregister();
    },
  };
}
