/**
 * Helpers shared by the density, burst and throughput groups: plain-bwrap baselines on the runtime images, the bare
 * HTTP servers (node:http, fastify) that give the ceiling a Kindling route is measured against, and one-request
 * timing with a client-side timeout.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { request, type Agent } from 'node:http';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { CLEAN_ENV } from './context.js';
import { smapsRollup } from './cgroup-probe.js';
import { sleep } from './proc.js';
import { onCleanup } from './server.js';

export const IMAGES_DIR = '/var/lib/kindling/images';
export const rootfsOf = (image: 'base' | 'python' | 'node'): string => join(IMAGES_DIR, image, 'rootfs');

/** Plain bwrap as bench/sandbox.ts runs it: read-only rootfs, fresh /proc and /dev, every namespace unshared. */
export const bwrapArgs = (rootfs: string, command: string[]): string[] => ['--ro-bind', rootfs, '/', '--proc', '/proc', '--dev', '/dev', '--unshare-all', '--die-with-parent', ...command];

/** A process and all its descendants (host pids), from /proc/PID/task/TID/children. */
export function processTree(pid: number): number[] {
  const out: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const current = queue.shift() as number;
    out.push(current);
    try {
      for (const tid of readFileSync(`/proc/${current}/task/${current}/children`, 'utf8').split(/\s+/).filter(Boolean)) queue.push(Number(tid));
    } catch {
      /* exited */
    }
  }
  return out;
}

/**
 * PSS/USS of an idle interpreter started bare in plain bwrap: spawn it, wait until the tree's PSS stops changing
 * (the interpreter finished starting), read smaps_rollup of every process of the tree, kill it.
 */
export async function bareIdleMemory(rootfs: string, command: string[]): Promise<{ pssKiB: number; ussKiB: number; pids: number }> {
  const child = spawn('bwrap', bwrapArgs(rootfs, command), { env: CLEAN_ENV, stdio: 'ignore' });
  const kill = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await new Promise((resolve) => child.once('exit', resolve));
    }
  };
  const unregister = onCleanup(kill);
  try {
    let last = -1;
    let stableFor = 0;
    for (let i = 0; i < 200 && stableFor < 3; i++) {
      await sleep(100);
      if (child.exitCode !== null) throw new Error(`bare bwrap ${command.join(' ')} exited ${child.exitCode}`);
      const pss = processTree(child.pid as number).reduce((sum, pid) => sum + smapsRollup(pid).pssKiB, 0);
      stableFor = pss > 0 && Math.abs(pss - last) < 64 ? stableFor + 1 : 0;
      last = pss;
    }
    const tree = processTree(child.pid as number);
    const memories = tree.map(smapsRollup);
    return { pssKiB: memories.reduce((s, m) => s + m.pssKiB, 0), ussKiB: memories.reduce((s, m) => s + m.ussKiB, 0), pids: tree.length };
  } finally {
    await kill();
    unregister();
  }
}

/** A bare HTTP server in its own process answering every POST with its body: node:http, or fastify (one route). */
export async function startBareServer(kind: 'node-http' | 'fastify', repoRoot: string): Promise<{ url: string; stop: () => Promise<void> }> {
  const code =
    kind === 'node-http'
      ? `require('http').createServer((q, s) => { const c = []; q.on('data', (d) => c.push(d)); q.on('end', () => s.end(Buffer.concat(c))); }).listen(0, '127.0.0.1', function () { console.log(this.address().port); });`
      : `const f = require('fastify')({ logger: false }); f.addContentTypeParser('*', { parseAs: 'buffer' }, (q, b, d) => d(null, b)); f.post('/*', async (q) => q.body); f.listen({ port: 0, host: '127.0.0.1' }).then(() => console.log(f.server.address().port));`;
  // cwd: the repo, so that require('fastify') finds the project's own copy.
  const child: ChildProcess = spawn(process.execPath, ['-e', code], { cwd: repoRoot, env: CLEAN_ENV, stdio: ['ignore', 'pipe', 'inherit'] });
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
    }
  };
  const unregister = onCleanup(stop);
  const port = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', resolve);
    child.once('exit', () => reject(new Error(`the bare ${kind} server exited`)));
  });
  return {
    url: `http://127.0.0.1:${port}`,
    stop: async () => {
      await stop();
      unregister();
    },
  };
}

export interface Outcome {
  status: number;
  /** 0 for a client timeout (hung) or a connection error. */
  ms: number;
  retryAfter: boolean;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  hung: boolean;
  error?: string;
}

/** One request with a client-side timeout: an answer that never comes is counted as hung, not awaited forever. */
export function timedRequest(agent: Agent, base: URL, method: string, path: string, body: Buffer | null, timeoutMs: number, headers: Record<string, string> = {}): Promise<Outcome> {
  return new Promise((resolve) => {
    const started = performance.now();
    const req = request(
      { host: base.hostname, port: base.port, method, path, agent, headers: { ...headers, ...(body ? { 'content-length': String(body.length) } : {}) } },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, ms: performance.now() - started, retryAfter: res.headers['retry-after'] !== undefined, headers: res.headers, body: Buffer.concat(chunks).toString('utf8'), hung: false }),
        );
        res.on('error', (error) => resolve({ status: 0, ms: performance.now() - started, retryAfter: false, headers: {}, body: '', hung: false, error: error.message }));
      },
    );
    req.setTimeout(timeoutMs, () => {
      req.destroy();
      resolve({ status: 0, ms: performance.now() - started, retryAfter: false, headers: {}, body: '', hung: true });
    });
    req.on('error', (error) => resolve({ status: 0, ms: performance.now() - started, retryAfter: false, headers: {}, body: '', hung: false, error: error.message }));
    req.end(body ?? undefined);
  });
}
