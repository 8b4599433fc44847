/**
 * Payloads and async invocations (issue 5), against baselines measured in the same run:
 * - 1 MiB round trip over an empty invocation: warm (node handler, warm pool) and cold (command function `cat`);
 * - 100 MiB and 1 GiB streamed through a command function `cat` by curl vs a plain `cat` pipe on the host (same
 *   file), with the server's peak RSS sampled from /proc;
 * - async enqueue rate (32 clients, 202s committed to SQLite) and end-to-end completion rate of a trivial function.
 */
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { open, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Agent } from 'node:http';
import { performance } from 'node:perf_hooks';
import { sendRaw, type RawReply } from './lib/raw-http.js';
import type { BenchContext, GroupResult } from './lib/context.js';
import { runLoad } from './lib/load.js';
import { launchServer } from './lib/server.js';
import { fmtMs, summarize } from './lib/stats.js';
import type { Row } from './lib/table.js';

const execFileAsync = promisify(execFile);
const MiB = 1024 * 1024;
const CLIENTS = 32;
/** One random block, sent over and over: the bench measures transport, not the random generator. */
const BLOCK = randomBytes(4 * MiB);

interface Raw extends RawReply {
  bytes: number;
}

function send(agent: Agent, base: URL, method: string, path: string, body: Buffer | null, headers: Record<string, string> = {}): Promise<Raw> {
  return sendRaw(agent, base, method, path, body, { 'content-type': 'application/octet-stream', ...headers }).then((reply) => ({ ...reply, bytes: reply.body.length }));
}

/** The previous baseline, kept as a note: the same bytes from this process through `cat` and back. Returns MiB/s. */
async function hostCat(size: number): Promise<number> {
  const started = performance.now();
  const child = spawn('cat', [], { stdio: ['pipe', 'pipe', 'ignore'] });
  let got = 0;
  const done = new Promise<void>((resolve) => child.stdout.on('data', (chunk: Buffer) => (got += chunk.length)).on('end', () => resolve()));
  let left = size;
  await new Promise<void>((resolve) => {
    const pump = (): void => {
      while (left > 0) {
        const chunk = BLOCK.subarray(0, Math.min(left, BLOCK.length));
        left -= chunk.length;
        if (!child.stdin.write(chunk)) {
          child.stdin.once('drain', pump);
          return;
        }
      }
      child.stdin.end();
      resolve();
    };
    pump();
  });
  await done;
  if (got !== size) throw new Error(`host cat returned ${got} of ${size} bytes`);
  return size / MiB / ((performance.now() - started) / 1000);
}

/** Writes `size` bytes of the random block to `file`. */
async function writePayload(file: string, size: number): Promise<void> {
  const handle = await open(file, 'w');
  try {
    for (let left = size; left > 0; left -= BLOCK.length) await handle.write(BLOCK, 0, Math.min(left, BLOCK.length));
  } finally {
    await handle.close();
  }
}

/**
 * The baseline: a plain pipe on the host with the same shape as the platform's path (a producer reading the file, the
 * function `cat`, a consumer), no node anywhere. Returns MiB/s.
 */
async function hostPipe(file: string, size: number): Promise<number> {
  const started = performance.now();
  const { stdout } = await execFileAsync('/bin/sh', ['-c', 'cat "$1" | cat | cat > /dev/null && stat -c %s "$1"', 'pipe', file]);
  const seconds = (performance.now() - started) / 1000;
  if (Number(stdout.trim()) !== size) throw new Error(`host pipe: the file has ${stdout.trim()} bytes, not ${size}`);
  return size / MiB / seconds;
}

/**
 * The client: curl uploads the file (streamed, no Expect wait) and throws the answer away, so that the client costs as
 * little as it can (a node client in this process competes with the server for the 2 cores and has its own GC).
 */
async function curlUpload(url: string, file: string): Promise<{ status: number; bytes: number; seconds: number }> {
  const { stdout } = await execFileAsync(
    'curl',
    ['-sS', '-o', '/dev/null', '-w', '%{http_code} %{size_download} %{time_total}', '-X', 'POST', '-H', 'content-type: application/octet-stream', '-H', 'expect:', '-T', file, url],
    { timeout: 600_000 },
  );
  const [status, bytes, seconds] = stdout.trim().split(' ').map(Number);
  return { status: status!, bytes: bytes!, seconds: seconds! };
}

async function rss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
}

export async function runAsyncGroup(ctx: BenchContext): Promise<GroupResult> {
  const rows: Row[] = [];
  const data: Record<string, unknown> = {};
  const server = await launchServer({ repoRoot: ctx.repoRoot, executor: 'sandbox', extraArgs: ['--async-concurrency', '8'] });
  const agent = new Agent({ keepAlive: true, maxSockets: CLIENTS });
  try {
    const base = new URL(server.url);
    const deploy = async (name: string, spec: Record<string, unknown>): Promise<void> => {
      const raw = await send(agent, base, 'PUT', `/v1/functions/${name}`, Buffer.from(JSON.stringify(spec)), { 'content-type': 'application/json' });
      if (raw.status >= 300) throw new Error(`deploy ${name}: ${raw.status} ${raw.body.toString().slice(0, 300)}`);
    };
    await deploy('b-echo', { runtime: 'node', code: 'export const handler = (body) => body;', handler: 'handler', minWarm: 1, maxConcurrency: 2 });
    await deploy('b-cat', { image: 'kindling/base', command: ['cat'], timeoutMs: 600_000 });
    await deploy('b-true', { runtime: 'node', code: 'export const handler = () => "ok";', handler: 'handler', minWarm: 2, maxConcurrency: 8, maxQueued: 10_000 });

    // 1 MiB vs empty, alternated.
    const n = ctx.runsOverridden ? Math.max(10, Math.min(ctx.runs.functions, 200)) : 100;
    const payload = BLOCK.subarray(0, MiB);
    for (const [kind, fn] of [['warm', 'b-echo'], ['cold', 'b-cat']] as const) {
      ctx.log(`async: 1 MiB vs empty round trip, ${kind} (${fn}), ${n} each`);
      const empty: number[] = [];
      const full: number[] = [];
      for (let i = 0; i < 5; i++) await send(agent, base, 'POST', `/v1/functions/${fn}/invoke`, payload);
      for (let i = 0; i < n; i++) {
        let t0 = performance.now();
        const a = await send(agent, base, 'POST', `/v1/functions/${fn}/invoke`, Buffer.alloc(0));
        empty.push(performance.now() - t0);
        t0 = performance.now();
        const b = await send(agent, base, 'POST', `/v1/functions/${fn}/invoke`, payload);
        full.push(performance.now() - t0);
        if (a.status !== 200 || b.status !== 200 || !b.body.equals(payload)) throw new Error(`${fn}: unexpected answer ${b.status} (${b.bytes} bytes)`);
      }
      const overhead = summarize(full).median - summarize(empty).median;
      data[`async.mib_${kind}`] = { empty, full };
      const target = kind === 'warm' ? 10 : 30;
      rows.push({
        group: 'async',
        id: `async.mib_${kind}`,
        scenario: `1 MiB round trip over an empty invocation, ${kind} (${kind === 'warm' ? 'node handler, warm pool' : 'command `cat`, a sandbox per call'})`,
        kindling: `+${fmtMs(overhead)} (median ${fmtMs(summarize(full).median)})`,
        baseline: `median ${fmtMs(summarize(empty).median)} (empty body)`,
        ratio: '—',
        target: `< ${target} ms`,
        status: overhead < target ? 'pass' : 'fail',
        note: `n=${n}, byte-exact`,
      });
    }

    // The same function on a server without the splice relay: what the node streams alone reach, for comparison.
    const plain = await launchServer({ repoRoot: ctx.repoRoot, executor: 'sandbox', extraArgs: ['--stream-relay', 'off'] });
    try {
      const raw = await send(agent, new URL(plain.url), 'PUT', '/v1/functions/b-cat', Buffer.from(JSON.stringify({ image: 'kindling/base', command: ['cat'], timeoutMs: 600_000 })), { 'content-type': 'application/json' });
      if (raw.status >= 300) throw new Error(`deploy b-cat (relay off): ${raw.status}`);
    } catch (error) {
      await plain.stop();
      throw error;
    }
    try {
      for (const size of [100 * MiB, 1024 * MiB]) {
        const label = size === 100 * MiB ? '100 MiB' : '1 GiB';
        ctx.log(`async: ${label} through command cat vs host cat pipe`);
        // The same file (in the page cache) for both sides: curl uploads it, `cat FILE` reads it.
        const file = join(ctx.workDir, `stream-${size}.bin`);
        await writePayload(file, size);
        try {
          const runs = 3;
          const pipe: number[] = [];
          const nodePipe: number[] = [];
          const platform: number[] = [];
          let peak = await rss(server.pid);
          // Alternated, best of `runs` each: the machine is shared, and a slow run says more about the neighbours.
          for (let i = 0; i < runs; i++) {
            pipe.push(await hostPipe(file, size));
            nodePipe.push(await hostCat(size));
            const sampler = setInterval(() => void rss(server.pid).then((value) => (peak = Math.max(peak, value))), 50);
            const run = await curlUpload(`${server.url}/v1/functions/b-cat/invoke`, file).finally(() => clearInterval(sampler));
            if (run.status !== 200 || run.bytes !== size) throw new Error(`${label}: ${run.status}, ${run.bytes} bytes back`);
            platform.push(size / MiB / run.seconds);
          }
          const mibps = Math.max(...platform);
          const baseline = Math.max(...pipe);
          const offRun = await curlUpload(`${plain.url}/v1/functions/b-cat/invoke`, file);
          if (offRun.status !== 200 || offRun.bytes !== size) throw new Error(`${label} (relay off): ${offRun.status}, ${offRun.bytes} bytes back`);
          const relayOff = size / MiB / offRun.seconds;
          data[`async.stream_${size}`] = { platformMibps: platform, pipeMibps: pipe, nodePipeMibps: nodePipe, relayOffMibps: relayOff, peakRssBytes: peak };
          rows.push({
            group: 'async',
            id: `async.stream_${label.replace(' ', '').toLowerCase()}`,
            scenario: `${label} streamed through a command function (\`cat\`, sandbox), curl client`,
            kindling: `${mibps.toFixed(0)} MiB/s`,
            baseline: `${baseline.toFixed(0)} MiB/s (\`cat FILE | cat | cat >/dev/null\`)`,
            ratio: `${((mibps / baseline) * 100).toFixed(0)}%`,
            target: '≥ 40% of the pipe',
            status: mibps / baseline >= 0.4 ? 'pass' : 'fail',
            note: `best of ${runs} (all: ${platform.map((v) => v.toFixed(0)).join(', ')} vs ${pipe.map((v) => v.toFixed(0)).join(', ')} MiB/s); splice relay on (default); with --stream-relay off: ${relayOff.toFixed(0)} MiB/s; node→cat→node pipe: ${Math.max(...nodePipe).toFixed(0)} MiB/s; server peak RSS ${(peak / MiB).toFixed(0)} MiB${size >= 1024 * MiB ? ' (target < 200 MB)' : ''}`,
          });
        } finally {
          await rm(file, { force: true });
        }
      }
    } finally {
      await plain.stop();
    }

    const total = ctx.runsOverridden ? Math.max(500, ctx.runs.functions) : 5000;
    ctx.log(`async: enqueue ${total} invocations with ${CLIENTS} clients, then wait for all to finish`);
    // A light client (bench/lib/load.ts): node:http's cost a request left the server waiting for requests on 2 cores.
    // Every answer is read and must be a 202 (the run fails otherwise).
    const t0 = performance.now();
    const load = await runLoad({
      url: base,
      method: 'POST',
      path: '/v1/functions/b-true/invoke',
      headers: { 'content-type': 'application/octet-stream', 'x-kindling-async': 'true' },
      body: Buffer.from('x'),
      connections: CLIENTS,
      total,
      status: 202,
    });
    if (load.answered !== total) throw new Error(`enqueue: ${load.answered} of ${total} answered with 202`);
    const enqueueSeconds = load.seconds;
    const pending = async (): Promise<boolean> => {
      for (const status of ['queued', 'running']) {
        const raw = await send(agent, base, 'GET', `/v1/invocations?function=b-true&status=${status}&limit=1`, null);
        if ((JSON.parse(raw.body.toString()) as { invocations: unknown[] }).invocations.length > 0) return true;
      }
      return false;
    };
    while (await pending()) await new Promise((resolve) => setTimeout(resolve, 20));
    const completeSeconds = (performance.now() - t0) / 1000;
    const failedRaw = await send(agent, base, 'GET', '/v1/invocations?function=b-true&status=failed&limit=1000', null);
    const failed = (JSON.parse(failedRaw.body.toString()) as { invocations: unknown[] }).invocations.length;
    const enqueueRate = total / enqueueSeconds;
    data['async.enqueue'] = { total, enqueueSeconds, completeSeconds, failed };
    rows.push({
      group: 'async',
      id: 'async.enqueue_rate',
      scenario: `Async enqueue rate (${CLIENTS} keep-alive connections, each 202 after the SQLite commit), while the dispatcher runs them`,
      kindling: `${Math.round(enqueueRate)}/s`,
      baseline: '—',
      ratio: '—',
      target: '≥ 2000/s',
      status: enqueueRate >= 2000 ? 'pass' : 'fail',
      note: `n=${total}, every answer checked to be 202; client: raw HTTP/1.1 (bench/lib/load.ts)`,
    });
    rows.push({
      group: 'async',
      id: 'async.completion_rate',
      scenario: 'Async end-to-end completion rate, trivial node handler (first enqueue to last finished)',
      kindling: `${Math.round(total / completeSeconds)}/s`,
      baseline: '—',
      ratio: '—',
      target: 'info',
      status: failed === 0 ? 'info' : 'fail',
      note: `n=${total}, ${failed} failed, async concurrency 8`,
    });
  } finally {
    agent.destroy();
    await server.stop();
  }
  return { rows, data };
}
