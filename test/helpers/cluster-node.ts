/** Kindling server processes in a cluster (`serve --cluster`), for the tests that start a gateway and workers. */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, realpath, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { CleanupOwner } from './nats-cluster.js';
import { IMAGES_DIR } from './server.js';

export const KINDLING_CLI = new URL('../../../bin/kindling.js', import.meta.url).pathname;

export interface Node {
  child: ChildProcess;
  url: string;
  name: string;
  dataDir: string;
}

/**
 * A server process in the cluster (a new data dir unless one is given, a free port), stopped gracefully and its dir
 * removed by the owner's cleanup.
 */
export async function startNode(
  t: CleanupOwner,
  natsUrl: string,
  role: string,
  name: string,
  existingDataDir?: string,
  env: NodeJS.ProcessEnv = {},
  extraArgs: string[] = [],
  /** An argv prefix the server runs under, e.g. `nsenter --net=...` to start it in a test's network namespace. */
  launcher: string[] = [],
): Promise<Node> {
  const dataDir = existingDataDir ?? (await realpath(await mkdtemp(join(tmpdir(), `kindling-cluster-${name}-`))));
  if (existingDataDir === undefined) t.after(() => rm(dataDir, { recursive: true, force: true }));
  const [program, ...programArgs] = [...launcher, process.execPath];
  const child = spawn(
    program as string,
    [...programArgs, KINDLING_CLI, 'serve', '--cluster', natsUrl, '--role', role, '--node-name', name, '--port', '0', '--data-dir', dataDir, '--images-dir', IMAGES_DIR, '--executor', 'sandbox', '--enable-executors', '', '--prewarm', '0', '--generic-sandboxes', '0', '--log-level', 'info', ...extraArgs],
    { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...env } },
  );
  alive.add(child);
  child.once('exit', () => alive.delete(child));
  // SIGTERM: a graceful stop removes the server's sandboxes, mounts and cgroups before it exits.
  t.after(() => stop(child, 'SIGTERM'));
  const url = await new Promise<string>((resolve, reject) => {
    // A node that neither listens nor exits must not hang the suite: killed, and the start fails.
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${name} did not listen within ${START_TIMEOUT_MS} ms`));
    }, START_TIMEOUT_MS);
    timer.unref();
    createInterface({ input: child.stdout! }).on('line', (line) => {
      try {
        const entry = JSON.parse(line) as { msg?: string; url?: string };
        if (entry.msg === 'Kindling is listening' && entry.url) {
          clearTimeout(timer);
          resolve(entry.url);
        }
      } catch {
        // not a log line
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited with ${code} before listening`));
    });
  });
  return { child, url, name, dataDir };
}

export async function stop(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill(signal);
  // A graceful stop drains for up to --shutdown-timeout-ms (10 s by default): past that and more, it is killed.
  const timer = signal === 'SIGKILL' ? null : setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
  await exited;
  if (timer !== null) clearTimeout(timer);
}

const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 35_000;
/** Nodes still running when the test process exits (a test that failed before its cleanup) are killed with it. */
const alive = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of alive) child.kill('SIGKILL');
});

