/**
 * Deployed functions (issue 4): warm invoke latency and throughput of trivial node and python handlers over HTTP,
 * against a bare node `http` echo server (a child process on the same machine) as the floor; and the first (cold)
 * invocation of a freshly deployed handler against the executor's bare cold start of the same runtime
 * (`POST /v1/execute` running `node -e 0`), alternated in the same run.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { Agent, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { BenchClient } from './lib/client.js';
import { sendRaw, type RawReply } from './lib/raw-http.js';
import { CLEAN_ENV, type BenchContext, type GroupResult } from './lib/context.js';
import { launchServer, onCleanup } from './lib/server.js';
import { fmtMs, fmtRatio, quantile, summarize } from './lib/stats.js';
import type { Row } from './lib/table.js';

const CLIENTS = 32;
/** An echo handler in Go (compiled with the Go agent at deploy). */
const GO_ECHO = 'package main\n\nfunc Handle(body []byte) ([]byte, error) { return body, nil }\n';
const JAVA_ECHO = 'public class Echo {\n    public static byte[] handle(byte[] body) { return body; }\n}\n';
/** An echo handler in TypeScript (deno, bun). */
const TS_ECHO = 'export const handler = (body: Uint8Array): Uint8Array => body;';
const THROUGHPUT_MS = 5000;

type Raw = RawReply;

function send(agent: Agent, base: URL, method: string, path: string, body: Buffer | null, contentType = 'application/octet-stream', extraHeaders: Record<string, string> = {}): Promise<Raw> {
  return sendRaw(agent, base, method, path, body, { ...extraHeaders, ...(body === null ? {} : { 'content-type': contentType }) });
}

/** The floor: a bare node http server echoing the body, in its own process like Kindling. */
async function startEcho(): Promise<{ url: string; stop: () => Promise<void> }> {
  const code = `require('http').createServer((q, s) => { const c = []; q.on('data', (d) => c.push(d)); q.on('end', () => s.end(Buffer.concat(c))); }).listen(0, '127.0.0.1', function () { console.log(this.address().port); });`;
  const child: ChildProcess = spawn(process.execPath, ['-e', code], { env: CLEAN_ENV, stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', resolve);
    child.once('exit', () => reject(new Error('the echo server exited')));
  });
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
    }
  };
  onCleanup(stop);
  return { url: `http://127.0.0.1:${port}`, stop };
}

async function latency(agent: Agent, base: URL, path: string, n: number, check: (raw: Raw) => void, headers: Record<string, string> = {}): Promise<number[]> {
  const body = Buffer.from('ping');
  for (let i = 0; i < Math.min(200, n); i++) check(await send(agent, base, 'POST', path, body, undefined, headers));
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    const started = performance.now();
    const raw = await send(agent, base, 'POST', path, body, undefined, headers);
    samples.push(performance.now() - started);
    check(raw);
  }
  return samples;
}

async function throughput(agent: Agent, base: URL, path: string, check: (raw: Raw) => void): Promise<{ perSecond: number; errors: number; p50: number; p99: number }> {
  const body = Buffer.from('ping');
  const until = performance.now() + THROUGHPUT_MS;
  let done = 0;
  let errors = 0;
  const samples: number[] = [];
  const started = performance.now();
  await Promise.all(
    Array.from({ length: CLIENTS }, async () => {
      while (performance.now() < until) {
        const t0 = performance.now();
        try {
          check(await send(agent, base, 'POST', path, body));
          done++;
          samples.push(performance.now() - t0);
        } catch {
          errors++;
        }
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  samples.sort((a, b) => a - b);
  return { perSecond: done / elapsed, errors, p50: quantile(samples, 0.5), p99: quantile(samples, 0.99) };
}

const p = (samples: number[], q: number): number => quantile([...samples].sort((a, b) => a - b), q);

export async function runFunctionsGroup(ctx: BenchContext): Promise<GroupResult> {
  const n = ctx.runs.functions;
  const rows: Row[] = [];
  const data: Record<string, unknown> = {};
  const server = await launchServer({ repoRoot: ctx.repoRoot, executor: 'sandbox' });
  const echo = await startEcho();
  const agent = new Agent({ keepAlive: true, maxSockets: CLIENTS });
  try {
    const base = new URL(server.url);
    const echoBase = new URL(echo.url);
    const api = new BenchClient(server.url);
    const deploy = async (name: string, spec: Record<string, unknown>): Promise<void> => {
      const raw = await send(agent, base, 'PUT', `/v1/functions/${name}`, Buffer.from(JSON.stringify(spec)), 'application/json');
      if (raw.status >= 300) throw new Error(`deploy ${name}: ${raw.status} ${raw.body.toString().slice(0, 300)}`);
    };
    const okEcho = (raw: Raw): void => {
      if (raw.status !== 200 || raw.body.toString() !== 'ping') throw new Error(`unexpected answer ${raw.status}: ${raw.body.toString().slice(0, 200)}`);
    };
    const okInvoke = (raw: Raw): void => {
      okEcho(raw);
      if (raw.headers['x-kindling-exit-code'] !== '0') throw new Error(`exit code ${String(raw.headers['x-kindling-exit-code'])}`);
    };

    ctx.log(`functions: floor: bare node http echo, ${n} sequential requests`);
    const floor = await latency(agent, echoBase, '/', n, okEcho);
    data['functions.echo_floor'] = { samples: floor };

    await deploy('bench-node', { runtime: 'node', code: 'export const handler = (body) => body;', handler: 'handler', minWarm: 1, maxConcurrency: 2 });
    await deploy('bench-python', { runtime: 'python', code: 'def handler(body):\n    return body\n', handler: 'handler', minWarm: 1, maxConcurrency: 2 });
    // The TypeScript runtimes run the node agent: their rows show what Deno's and Bun's own runtimes add.
    for (const runtime of ['deno', 'bun'] as const) await deploy(`bench-${runtime}`, { runtime, code: TS_ECHO, handler: 'handler', minWarm: 1, maxConcurrency: 2 });
    // Go: the handler compiled with the Go agent at deploy (the deploy answers after the compile).
    await deploy('bench-go', { runtime: 'go', code: GO_ECHO, handler: 'Handle', minWarm: 1, maxConcurrency: 2 });
    // Java: the handler class compiled with the Java agent at deploy; one JVM per warm sandbox.
    await deploy('bench-java', { runtime: 'java', code: JAVA_ECHO, handler: 'Echo.handle', minWarm: 1, maxConcurrency: 2 });
    let warmNodeOpen: number[] = [];
    for (const runtime of ['node', 'python', 'deno', 'bun', 'go', 'java'] as const) {
      ctx.log(`functions: warm ${runtime} handler, ${n} sequential invocations`);
      const samples = await latency(agent, base, `/v1/functions/bench-${runtime}/invoke`, n, okInvoke);
      if (runtime === 'node') warmNodeOpen = samples;
      data[`functions.warm_${runtime}`] = { samples };
      const overhead50 = p(samples, 0.5) - p(floor, 0.5);
      const overhead99 = p(samples, 0.99) - p(floor, 0.99);
      const pass = overhead50 < 2 && overhead99 < 10;
      rows.push({
        group: 'functions',
        id: `functions.warm_${runtime}`,
        scenario: `Warm ${runtime} handler invoke via HTTP (p50 / p99)`,
        kindling: `${fmtMs(p(samples, 0.5))} / ${fmtMs(p(samples, 0.99))}`,
        baseline: `${fmtMs(p(floor, 0.5))} / ${fmtMs(p(floor, 0.99))} (node http echo)`,
        ratio: `+${fmtMs(overhead50)} / +${fmtMs(overhead99)}`,
        target: 'overhead p50 < 2 ms, p99 < 10 ms',
        status: pass ? 'pass' : 'fail',
        note: `n=${n}`,
      });
    }

    ctx.log(`functions: throughput, ${CLIENTS} clients for ${THROUGHPUT_MS} ms`);
    const echoTput = await throughput(agent, echoBase, '/', okEcho);
    await deploy('bench-node-tput', { runtime: 'node', code: 'export const handler = (body) => body;', handler: 'handler', minWarm: 2, maxConcurrency: 2, maxQueued: 1000 });
    await sleep(1000);
    await latency(agent, base, '/v1/functions/bench-node-tput/invoke', 200, okInvoke);
    const nodeTput = await throughput(agent, base, '/v1/functions/bench-node-tput/invoke', okInvoke);
    data['functions.throughput_node'] = { kindling: nodeTput, echo: echoTput };
    rows.push({
      group: 'functions',
      id: 'functions.throughput_node',
      scenario: `Warm node handler throughput, ${CLIENTS} concurrent clients`,
      kindling: `${Math.round(nodeTput.perSecond)}/s (p50 ${fmtMs(nodeTput.p50)}, p99 ${fmtMs(nodeTput.p99)})`,
      baseline: `${Math.round(echoTput.perSecond)}/s (node http echo)`,
      ratio: fmtRatio(nodeTput.perSecond / echoTput.perSecond),
      target: '≥ 1500/s',
      status: nodeTput.perSecond >= 1500 && nodeTput.errors === 0 ? 'pass' : 'fail',
      note: `errors ${nodeTput.errors}; maxConcurrency 2 (2 cores)`,
    });

    const coldRuns = Math.max(5, Math.min(15, Math.round(n / 100)));
    const coldCases = [
      // `node` is Node 20 (kindling/node20): the bare start runs the same image.
      { runtime: 'node', image: 'kindling/node20', code: 'export const handler = (body) => body;', bare: ['node', '-e', '0'], target: '≤ 1.2x', limit: 1.2 },
      { runtime: 'deno', image: 'kindling/deno', code: TS_ECHO, bare: ['deno', 'eval', '0'], target: '— (measured)', limit: null },
      { runtime: 'bun', image: 'kindling/bun', code: TS_ECHO, bare: ['bun', '-e', '0'], target: '— (measured)', limit: null },
    ] as const;
    for (const c of coldCases) {
      ctx.log(`functions: cold first invocation of a ${c.runtime} handler vs bare cold start (${c.bare.join(' ')} via /v1/execute), ${coldRuns} each, alternated`);
      const cold: number[] = [];
      const bare: number[] = [];
      // The first function of a runtime starts its generic sandbox; the measured ones find it waiting (the default).
      await deploy(`bench-cold-${c.runtime}-first`, { runtime: c.runtime, code: c.code, handler: 'handler' });
      okInvoke(await send(agent, base, 'POST', `/v1/functions/bench-cold-${c.runtime}-first/invoke`, Buffer.from('ping')));
      await api.executeOk({ image: c.image, command: [...c.bare] });
      for (let i = 0; i < coldRuns; i++) {
        const t0 = performance.now();
        await api.executeOk({ image: c.image, command: [...c.bare] });
        bare.push(performance.now() - t0);
        const name = `bench-cold-${c.runtime}-${i}`;
        await deploy(name, { runtime: c.runtime, code: c.code, handler: 'handler' });
        const t1 = performance.now();
        const raw = await send(agent, base, 'POST', `/v1/functions/${name}/invoke`, Buffer.from('ping'));
        cold.push(performance.now() - t1);
        okInvoke(raw);
        if (raw.headers['x-kindling-cold-start'] !== 'true') throw new Error('the first invocation was not a cold start');
        await send(agent, base, 'DELETE', `/v1/functions/${name}`, null);
      }
      data[`functions.cold_${c.runtime}`] = { cold, bare };
      const ratio = summarize(cold).median / summarize(bare).median;
      rows.push({
        group: 'functions',
        id: `functions.cold_${c.runtime}`,
        scenario: `First (cold) invocation of a ${c.runtime} handler vs bare cold start (\`${c.bare.join(' ')}\` via /v1/execute)`,
        kindling: `median ${fmtMs(summarize(cold).median)}`,
        baseline: `median ${fmtMs(summarize(bare).median)}`,
        ratio: fmtRatio(ratio),
        target: c.target,
        status: c.limit === null ? 'info' : ratio <= c.limit ? 'pass' : 'fail',
        note: `n=${coldRuns}; the cold start specialises a generic (code-less) ${c.runtime} sandbox that was already up (--generic-sandboxes 1, the default)${c.runtime === 'node' ? '; with --generic-sandboxes 0 it starts node itself (~1.25x)' : ''}`,
      });
    }

    ctx.log(`functions: warm node handler on a server exporting spans (--otlp-endpoint to a local receiver), ${n} sequential invocations`);
    const traced = await tracedWarmNode(ctx, agent, n, okInvoke);
    data['functions.warm_node_traced'] = { samples: traced.samples, spans: traced.spans };
    rows.push({
      group: 'functions',
      id: 'functions.warm_node_traced',
      scenario: 'Warm node handler invoke with --otlp-endpoint: request + queue/start/run/record spans exported (p50 / p99)',
      kindling: `${fmtMs(p(traced.samples, 0.5))} / ${fmtMs(p(traced.samples, 0.99))}`,
      baseline: `${fmtMs(p(warmNodeOpen, 0.5))} / ${fmtMs(p(warmNodeOpen, 0.99))} (no --otlp-endpoint)`,
      ratio: `${p(traced.samples, 0.5) - p(warmNodeOpen, 0.5) >= 0 ? '+' : ''}${fmtMs(p(traced.samples, 0.5) - p(warmNodeOpen, 0.5))} p50`,
      target: '— (measured)',
      status: 'info',
      note: `n=${n}; a second server, same machine; ${traced.spans} spans received (OTLP/HTTP JSON, batches every 5 s)`,
    });

    // Last, because it turns auth on for this server: the same warm invoke with a tenant's key, so that the auth hook
    // (key hash lookup), the tenant's token bucket and its concurrency slot are on the path.
    ctx.log(`functions: warm node handler as a tenant (API key, rate and concurrency quotas), ${n} sequential invocations`);
    const createdRaw = await send(agent, base, 'POST', '/v1/tenants', Buffer.from(JSON.stringify({ name: 'bench-tenant', quotas: { requestsPerSecond: 1_000_000, burst: 10_000_000, maxConcurrency: 1000 } })), 'application/json');
    if (createdRaw.status !== 201) throw new Error(`create tenant: ${createdRaw.status} ${createdRaw.body.toString().slice(0, 300)}`);
    const auth = { authorization: `Bearer ${(JSON.parse(createdRaw.body.toString()) as { apiKey: string }).apiKey}` };
    const tenantDeploy = await send(agent, base, 'PUT', '/v1/functions/bench-node', Buffer.from(JSON.stringify({ runtime: 'node', code: 'export const handler = (body) => body;', handler: 'handler', minWarm: 1, maxConcurrency: 2 })), 'application/json', auth);
    if (tenantDeploy.status >= 300) throw new Error(`tenant deploy: ${tenantDeploy.status} ${tenantDeploy.body.toString().slice(0, 300)}`);
    const tenantSamples = await latency(agent, base, '/v1/functions/bench-node/invoke', n, okInvoke, auth);
    data['functions.warm_node_tenant'] = { samples: tenantSamples };
    rows.push({
      group: 'functions',
      id: 'functions.warm_node_tenant',
      scenario: 'Warm node handler invoke as a tenant: API key + token bucket + concurrency slot (p50 / p99)',
      kindling: `${fmtMs(p(tenantSamples, 0.5))} / ${fmtMs(p(tenantSamples, 0.99))}`,
      baseline: `${fmtMs(p(warmNodeOpen, 0.5))} / ${fmtMs(p(warmNodeOpen, 0.99))} (open local mode, no key)`,
      ratio: `${p(tenantSamples, 0.5) - p(warmNodeOpen, 0.5) >= 0 ? '+' : ''}${fmtMs(p(tenantSamples, 0.5) - p(warmNodeOpen, 0.5))} p50`,
      target: '— (in memory: ~0)',
      status: 'info',
      note: `n=${n}; same server, measured after the open-mode rows (creating the tenant turns auth on)`,
    });
  } finally {
    agent.destroy();
    await echo.stop();
    await server.stop();
  }
  return { rows, data };
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The warm node invoke on a server started with --otlp-endpoint pointing at a receiver in this process (it counts the
 * spans it is sent; the SDK's exporter posts JSON): what tracing every request costs on the request path.
 */
async function tracedWarmNode(ctx: BenchContext, agent: Agent, n: number, check: (raw: Raw) => void): Promise<{ samples: number[]; spans: number }> {
  let spans = 0;
  const receiver = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      try {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { resourceSpans: { scopeSpans: { spans: unknown[] }[] }[] };
        for (const resource of body.resourceSpans) for (const scope of resource.scopeSpans) spans += scope.spans.length;
      } catch {
        /* not JSON: counted as nothing */
      }
      response.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  const stopReceiver = (): Promise<void> => new Promise((resolve) => receiver.close(() => resolve()));
  onCleanup(stopReceiver);
  const server = await launchServer({ repoRoot: ctx.repoRoot, executor: 'sandbox', extraArgs: ['--otlp-endpoint', `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`] });
  try {
    const base = new URL(server.url);
    const deployed = await send(agent, base, 'PUT', '/v1/functions/bench-node', Buffer.from(JSON.stringify({ runtime: 'node', code: 'export const handler = (body) => body;', handler: 'handler', minWarm: 1, maxConcurrency: 2 })), 'application/json');
    if (deployed.status >= 300) throw new Error(`deploy on the traced server: ${deployed.status} ${deployed.body.toString().slice(0, 300)}`);
    const samples = await latency(agent, base, '/v1/functions/bench-node/invoke', n, check);
    // Stopping the server sends what it still buffers: the count is taken after.
    await server.stop();
    return { samples, spans };
  } finally {
    await server.stop();
    receiver.closeAllConnections();
    await stopReceiver();
  }
}
