/**
 * Debian's real Prometheus for tests: started on a free loopback port with its own TSDB dir (inside the caller's temp
 * dir), ready once /-/ready answers 200, queried through its HTTP API, stopped by PID.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { skipOrFail } from '../../src/executors/test-support.js';
import { waitFor } from './wait.js';

export const PROMETHEUS = '/usr/bin/prometheus';
export const PROMTOOL = '/usr/bin/promtool';

/** Why the Prometheus tests cannot run here (they fail instead where KINDLING_TEST_REQUIRE names prometheus, as in CI). */
export function prometheusUnavailableReason(): string | null {
  const missing = [PROMETHEUS, PROMTOOL].filter((path) => !existsSync(path));
  return missing.length === 0 ? null : skipOrFail('prometheus', `${missing.join(' and ')} missing: install Debian's prometheus package (scripts/setup.sh does)`);
}

export interface RunningPrometheus {
  url: string;
  pid: number;
  /** Output so far (stderr: Prometheus logs there), for failure messages. */
  log(): string;
  /** An instant query; throws with Prometheus's error when the query is refused. */
  query(promql: string): Promise<PromSample[]>;
  /** A GET of /api/v1/<path>: its `data`. */
  api<T>(path: string): Promise<T>;
  stop(): Promise<void>;
}

export interface PromSample {
  metric: Record<string, string>;
  value: [number, string];
}

/** A port free right now on 127.0.0.1 (another process may take it before Prometheus does: start() retries). */
async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  server.close();
  await once(server, 'close');
  return port;
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  // Prometheus flushes its head block on SIGTERM; a hung one is killed.
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(timer);
}

/** Starts Prometheus with `configFile`; its data goes to `<dir>/tsdb`. */
export async function startPrometheus(configFile: string, dir: string): Promise<RunningPrometheus> {
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const child = spawn(PROMETHEUS, [
      `--config.file=${configFile}`,
      `--storage.tsdb.path=${join(dir, 'tsdb')}`,
      `--web.listen-address=127.0.0.1:${port}`,
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const url = `http://127.0.0.1:${port}`;
    const api = async <T>(path: string): Promise<T> => {
      const response = await fetch(`${url}/api/v1/${path}`);
      const body = (await response.json()) as { status: string; data: T; error?: string; errorType?: string };
      if (body.status !== 'success') throw new Error(`Prometheus refused ${path}: ${body.errorType}: ${body.error}`);
      return body.data;
    };
    const running: RunningPrometheus = {
      url,
      pid: child.pid!,
      log: () => output,
      api,
      query: async (promql) => (await api<{ result: PromSample[] }>(`query?query=${encodeURIComponent(promql)}`)).result,
      stop: () => stopChild(child),
    };
    try {
      await waitFor(async () => {
        if (child.exitCode !== null) throw new Error(`prometheus exited (${child.exitCode}): ${output.slice(-2000)}`);
        return (await fetch(`${url}/-/ready`).catch(() => null))?.status === 200;
      }, { timeoutMs: 60_000, intervalMs: 100, what: `prometheus on port ${port} to be ready` });
      return running;
    } catch (error) {
      lastError = error;
      await stopChild(child);
      // Only a port taken meanwhile is worth another try.
      if (!/address already in use/.test(output)) break;
    }
  }
  throw lastError;
}
