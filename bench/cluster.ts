/**
 * Cluster foundation (issue 18): the async enqueue rate of the JetStream queue (src/cluster/async-queue.ts), each
 * enqueue counted once the stream has acked it (when a gateway may answer 202), with N enqueues in flight on one
 * connection. Measured on a 3-node nats-server cluster on loopback: the R3 stream (the cluster's default) against an R1
 * stream on the same cluster in the same run (the baseline: no replication). All three NATS servers and this process
 * share this machine's cores, so the figure is a floor for servers on separate machines, not a model of them.
 * Also: the time from SIGKILL of a worker process in the middle of a run to that invocation running on another worker
 * (the target: < ack wait + 1 s); and sync invocations of a warm node handler sent to a gateway that runs them
 * on a worker (`serve --cluster`), against the same calls sent to the worker's own API, alternated in the same run:
 * what the gateway hop and NATS cost per call. Gateway, worker and NATS share this machine's two cores. And with two
 * gateways: how soon a key made or revoked through one is in force at the other, and what a tenant's concurrency quota
 * shared across gateways adds to a warm call.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { REMOTE_RUNS_DEFAULTS } from '../src/cluster/remote-runs.js';
import { AsyncQueue } from '../src/cluster/async-queue.js';
import { connectCluster } from '../src/cluster/connection.js';
import { startNatsCluster } from '../test/helpers/nats-cluster.js';
import type { BenchContext, GroupResult } from './lib/context.js';
import { Agent } from 'node:http';
import { timedRequest } from './lib/bare.js';
import { runCurveStep, type CurveStep } from './lib/load-curve.js';
import { launchServer, onCleanup, type BenchServer } from './lib/server.js';
import { fmtMs, quantile } from './lib/stats.js';
import type { Row } from './lib/table.js';

const TARGET_PER_SECOND = 3_000;
const CHILD = fileURLToPath(new URL('../test/helpers/cluster-worker-child.js', import.meta.url));
const ACK_WAIT_MS = 2_000;
/** JetStream reserves each stream's max bytes up front: the bench's six streams must fit the test servers' store. */
const SMALL = { maxBytes: 256 * 1024 * 1024, outcomesMaxBytes: 256 * 1024 * 1024 };

/** Milliseconds from SIGKILL of a worker mid-run to the same invocation starting on a surviving worker. */
async function killToRedelivery(urls: string[], queue: AsyncQueue, id: string): Promise<number> {
  const child = spawn(process.execPath, [CHILD, JSON.stringify({ urls, names: queue.names, ackWaitMs: ACK_WAIT_MS, maxDeliveries: 3, node: 'victim' })], { stdio: ['ignore', 'pipe', 'inherit'] });
  const stopChild = onCleanup(async () => void child.kill('SIGKILL'));
  try {
    const lines = createInterface({ input: child.stdout });
    const waitLine = (text: string): Promise<void> => new Promise((resolve) => lines.on('line', (line) => line === text && resolve()));
    await waitLine('ready');
    const running = waitLine(`running ${id} 1`);
    await queue.enqueue(id, 'tenant-a', {});
    await running;
    let resolveRun: (at: number) => void = () => {};
    const ranElsewhere = new Promise<number>((resolve) => (resolveRun = resolve));
    const survivor = await queue.work(async () => (resolveRun(performance.now()), { status: 'succeeded' }), { node: 'survivor', fetchExpiresMs: 1_000 });
    const exited = once(child, 'exit');
    const killedAt = performance.now();
    child.kill('SIGKILL');
    await exited;
    const ms = (await ranElsewhere) - killedAt;
    await survivor.close();
    return ms;
  } finally {
    stopChild();
    child.kill('SIGKILL');
  }
}

/** Enqueues `total` invocations with `inFlight` awaiting their ack at any time; returns enqueues per second. */
async function enqueueRate(queue: AsyncQueue, total: number, inFlight: number, tag: string): Promise<number> {
  let next = 0;
  const data = { function: 'fn', version: 1, input: 'inline:e30=' };
  const started = performance.now();
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next < total) {
        const id = `${tag}-${next++}`;
        await queue.enqueue(id, `tenant-${next % 4}`, data);
      }
    }),
  );
  return total / ((performance.now() - started) / 1000);
}

export async function runClusterGroup(ctx: BenchContext): Promise<GroupResult> {
  const cluster = await startNatsCluster({ after: (fn) => void onCleanup(fn) }, { nodes: 3 });
  const conn = await connectCluster(cluster.urls, { name: 'bench' });
  onCleanup(() => conn.close());
  const total = ctx.runsOverridden ? Math.max(1_000, ctx.runs.functions * 5) : 20_000;
  const tag = randomBytes(3).toString('hex');
  const open = (replicas: number) => AsyncQueue.open(conn.nc, { replicas, ...SMALL, names: { stream: `BENCH_R${replicas}_${tag}`, subjectPrefix: `bench${tag}.r${replicas}`, consumer: 'w', outcomesBucket: `BENCH_OUT_R${replicas}_${tag}` } });
  const r3 = await open(3);
  const r1 = await open(1);
  const rows: Row[] = [];
  const data: Record<string, unknown> = {};
  for (const inFlight of [32, 256]) {
    // Warm both paths first (connections, stream leaders' caches), then alternate so drift hits both alike.
    await enqueueRate(r3, 500, inFlight, `warm3-${inFlight}`);
    await enqueueRate(r1, 500, inFlight, `warm1-${inFlight}`);
    const rate3 = await enqueueRate(r3, total, inFlight, `r3-${inFlight}`);
    const rate1 = await enqueueRate(r1, total, inFlight, `r1-${inFlight}`);
    ctx.log(`cluster: ${inFlight} in flight: R3 ${rate3.toFixed(0)}/s, R1 ${rate1.toFixed(0)}/s`);
    data[`cluster.enqueue.${inFlight}`] = { total, inFlight, r3PerSecond: rate3, r1PerSecond: rate1 };
    rows.push({
      group: 'cluster',
      id: `cluster.enqueue.${inFlight}`,
      scenario: `async enqueue, stream ack, R3 on a 3-node loopback cluster, ${inFlight} in flight`,
      kindling: `${rate3.toFixed(0)}/s`,
      baseline: `R1 same cluster: ${rate1.toFixed(0)}/s`,
      ratio: `${(rate3 / rate1).toFixed(2)}x`,
      target: `>= ${TARGET_PER_SECOND.toLocaleString('en')}/s`,
      status: rate3 >= TARGET_PER_SECOND ? 'pass' : 'fail',
      note: `${total} enqueues on one connection; the 3 NATS servers share this machine's cores with the client`,
    });
  }
  const samples: number[] = [];
  const killQueue = await AsyncQueue.open(conn.nc, { replicas: 3, ...SMALL, ackWaitMs: ACK_WAIT_MS, names: { stream: `BENCH_KILL_${tag}`, subjectPrefix: `bench${tag}.kill`, consumer: 'w', outcomesBucket: `BENCH_KILL_OUT_${tag}` } });
  for (let i = 0; i < 3; i++) samples.push(await killToRedelivery(cluster.urls, killQueue, `kill-${i}`));
  const worst = Math.max(...samples);
  ctx.log(`cluster: SIGKILL to redelivery: ${samples.map((ms) => ms.toFixed(0)).join(', ')} ms`);
  data['cluster.kill-redelivery'] = { ackWaitMs: ACK_WAIT_MS, samplesMs: samples };
  rows.push({
    group: 'cluster',
    id: 'cluster.kill-redelivery',
    scenario: 'SIGKILL of a worker process mid-run -> the invocation runs on another worker (R3)',
    kindling: `worst of ${samples.length}: ${worst.toFixed(0)} ms`,
    baseline: `ack wait ${ACK_WAIT_MS} ms`,
    ratio: '—',
    target: `< ack wait + 1 s (${ACK_WAIT_MS + 1_000} ms)`,
    status: worst < ACK_WAIT_MS + 1_000 ? 'pass' : 'fail',
    note: `all: ${samples.map((ms) => ms.toFixed(0)).join(', ')} ms; the dead worker's last progress signal was up to ackWait/3 before the kill`,
  });
  const natsPids = cluster.nodes.flatMap((node) => (node.process?.pid === undefined ? [] : [node.process.pid]));
  // First of the sections with server processes: the workers they start stay registered until the bench ends, and
  // the invocation must be placed on this section's first worker.
  rows.push(await servedWorkerKill(ctx, cluster.urls, data));
  rows.push(...(await gatewayHop(ctx, cluster.urls, data, natsPids)));
  rows.push(...(await workerScaling(ctx, cluster.urls, data)));
  rows.push(...(await sharedGateways(ctx, cluster.urls, data)));
  return { rows, data };
}

/** The value of a gauge or counter (no labels, or the first series) in a server's GET /metrics; 0 when absent. */
async function metricOf(server: BenchServer, name: string): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  return Number(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text)?.[1] ?? 0);
}

/**
 * The server roles' redelivery: an async invocation runs on worker A, A is killed with SIGKILL, and the gateway (which
 * hears nothing from A for its silence timeout, 5 s) queues it again and places it on worker B. Measured: from the
 * kill to the run starting on B (its cold start included), and the invocation's record at the end (succeeded, 2
 * attempts). A's leftovers are reaped by a start on its data dir, as an operator's restart would.
 */
async function servedWorkerKill(ctx: BenchContext, urls: string[], data: Record<string, unknown>): Promise<Row> {
  const natsUrls = urls.join(',');
  const role = (name: string, dataDir?: string) =>
    launchServer({ repoRoot: ctx.repoRoot, executor: 'sandbox', prewarm: 0, ...(dataDir === undefined ? {} : { dataDir }), extraArgs: ['--cluster', natsUrls, '--role', name.includes('gateway') ? 'gateway' : 'worker', '--node-name', name, '--generic-sandboxes', '0'] });
  const sees = async (gateway: BenchServer, nodeId: string, present: boolean): Promise<void> => {
    await until(async () => ((await (await fetch(`${gateway.url}/v1/cluster`)).json()) as { workers?: { nodeId: string }[] }).workers?.some((one) => one.nodeId === nodeId) === present, performance.now(), `the gateway to see ${nodeId}`);
  };
  const gateway = await role('kill-gateway');
  const first = await role('kill-worker-a');
  await sees(gateway, 'kill-worker-a', true);
  const deployed = await jsonRequest(gateway, 'PUT', '/v1/functions/kill-sleep', null, { runtime: 'node', handler: 'handler', timeoutMs: 60_000, code: 'exports.handler = async (event) => { await new Promise((r) => setTimeout(r, 3000)); return "slept " + event; }' });
  if (deployed.status !== 201) throw new Error(`deploy failed: ${deployed.status} ${JSON.stringify(deployed.json)}`);
  const accepted = await fetch(`${gateway.url}/v1/functions/kill-sleep/invoke`, { method: 'POST', headers: { 'x-kindling-async': 'true' }, body: 'x' });
  const location = accepted.headers.get('location');
  if (accepted.status !== 202 || location === null) throw new Error(`async invoke: ${accepted.status}`);
  await until(async () => (await metricOf(first, 'kindling_handler_invocations_in_flight')) === 1, performance.now(), 'the run to start on worker A');
  const second = await role('kill-worker-b');
  await sees(gateway, 'kill-worker-b', true);
  const killedAt = performance.now();
  process.kill(first.pid, 'SIGKILL');
  await until(async () => (await metricOf(second, 'kindling_handler_invocations_in_flight')) === 1, performance.now(), 'the run to start on worker B');
  const elapsedMs = performance.now() - killedAt;
  let view: { status?: string; attempts?: number } = {};
  await until(async () => {
    view = (await (await fetch(`${gateway.url}${location}`)).json()) as typeof view;
    return view.status === 'succeeded' || view.status === 'failed';
  }, performance.now(), 'the invocation to finish');
  // A's mounts and cgroups: reaped by a start on its data dir (then removed with it).
  const reaper = await role('kill-worker-a', first.dataDir);
  await reaper.stop();
  await first.stop();
  await second.stop();
  await gateway.stop();
  const silenceMs = REMOTE_RUNS_DEFAULTS.silenceTimeoutMs;
  const ok = view.status === 'succeeded' && view.attempts === 2;
  ctx.log(`cluster: SIGKILL of a worker mid-run -> its async invocation started on another worker after ${elapsedMs.toFixed(0)} ms (${view.status}, ${view.attempts} attempts)`);
  data['cluster.async.worker-kill'] = { silenceTimeoutMs: silenceMs, elapsedMs, status: view.status, attempts: view.attempts };
  return {
    group: 'cluster',
    id: 'cluster.async.worker-kill',
    scenario: 'serve --cluster: SIGKILL of a worker mid-run of an async invocation -> it starts on another worker (cold)',
    kindling: `${elapsedMs.toFixed(0)} ms`,
    baseline: `silence timeout ${silenceMs} ms`,
    ratio: '—',
    target: `< silence timeout + 1 s (${silenceMs + 1_000} ms), recorded once`,
    status: ok && elapsedMs < silenceMs + 1_000 ? 'pass' : 'fail',
    note: `record at the end: ${view.status}, attempts ${view.attempts}; the gateway gives a worker up after the silence timeout (it sends "alive" every second while a run lasts), then places the invocation again`,
  };
}

const SCALING_FUNCTIONS = 6;
const SCALING_CLIENTS_PER_FUNCTION = 2;

/**
 * One gateway with 1, then 2, then 3 workers (all on this machine's cores): warm handlers of 6 functions called by 12
 * clients at once. Each step deploys functions of its own, so rendezvous placement spreads them over the workers
 * present (the warm pools of the previous step stay where they formed).
 */
async function workerScaling(ctx: BenchContext, urls: string[], data: Record<string, unknown>): Promise<Row[]> {
  const natsUrls = urls.join(',');
  const gateway = await launchServer({ repoRoot: ctx.repoRoot, executor: 'sandbox', prewarm: 0, extraArgs: ['--cluster', natsUrls, '--role', 'gateway', '--node-name', 'scale-gateway', '--generic-sandboxes', '0'] });
  onCleanup(() => gateway.stop());
  const workers: BenchServer[] = [];
  const rows: Row[] = [];
  let single: number | null = null;
  for (const count of [1, 2, 3]) {
    const worker = await launchServer({ repoRoot: ctx.repoRoot, executor: 'sandbox', prewarm: 0, extraArgs: ['--cluster', natsUrls, '--role', 'worker', '--node-name', `scale-worker-${count}`, '--generic-sandboxes', '0'] });
    onCleanup(() => worker.stop());
    workers.push(worker);
    for (let i = 0; ; i++) {
      const view = (await (await fetch(`${gateway.url}/v1/cluster`)).json()) as { workers?: { nodeId: string }[] };
      if ((view.workers ?? []).filter((one) => one.nodeId.startsWith('scale-worker-')).length === count) break;
      if (i > 300) throw new Error(`the gateway did not see ${count} workers within 30 s`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const names = Array.from({ length: SCALING_FUNCTIONS }, (_, i) => `scale-${count}-${i}`);
    const placed = new Map<string, number>();
    for (const name of names) {
      const node = (await deployWarm(gateway, name)) ?? 'gateway';
      placed.set(node, (placed.get(node) ?? 0) + 1);
    }
    const steps = await Promise.all(
      names.map((name) =>
        runCurveStep({ url: new URL(gateway.url), method: 'POST', path: `/v1/functions/${name}/invoke`, headers: { 'content-type': 'application/octet-stream' }, body: Buffer.from('ping'), connections: SCALING_CLIENTS_PER_FUNCTION, durationMs: ctx.scale.stepMs * 2, status: 200 }),
      ),
    );
    const samples = steps.flatMap((one) => one.samples).sort((a, b) => a - b);
    const seconds = Math.max(...steps.map((one) => one.seconds));
    const perSecond = samples.length / seconds;
    const errors = steps.reduce((sum, one) => sum + one.errors, 0);
    single ??= perSecond;
    const spread = [...placed.entries()].sort().map(([node, functions]) => `${node} ${functions}`).join(', ');
    ctx.log(`cluster: ${count} worker(s): ${perSecond.toFixed(0)}/s p50 ${fmtMs(quantile(samples, 0.5))}; warm pools: ${spread}`);
    data[`cluster.workers.${count}`] = { workers: count, functions: SCALING_FUNCTIONS, clients: SCALING_FUNCTIONS * SCALING_CLIENTS_PER_FUNCTION, perSecond, p50Ms: quantile(samples, 0.5), p99Ms: quantile(samples, 0.99), errors, warmPoolsByNode: Object.fromEntries(placed) };
    rows.push({
      group: 'cluster',
      id: `cluster.workers.${count}`,
      scenario: `${SCALING_FUNCTIONS} warm node handlers, ${SCALING_FUNCTIONS * SCALING_CLIENTS_PER_FUNCTION} clients, through one gateway to ${count} worker(s)`,
      kindling: `${perSecond.toFixed(0)}/s, p50 ${fmtMs(quantile(samples, 0.5))}, p99 ${fmtMs(quantile(samples, 0.99))}`,
      baseline: `1 worker, same run: ${single.toFixed(0)}/s`,
      ratio: `${(perSecond / single).toFixed(2)}x`,
      target: '— (measured: workers share the same 2 cores here)',
      status: errors === 0 ? 'pass' : 'fail',
      note: `functions per worker: ${spread}; errors ${errors}; the gateway, ${count} worker(s) and 3 NATS servers share 2 cores, so more workers cannot add CPU here`,
    });
  }
  return rows;
}

/** A warm handler deployed to `server`, answered 50 times before measuring; the node of the last answer. */
async function deployWarm(server: BenchServer, name: string, apiKey?: string, limits: { maxConcurrency?: number } = { maxConcurrency: 2 }): Promise<string | null> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const base = new URL(server.url);
  const auth: Record<string, string> = apiKey === undefined ? {} : { authorization: `Bearer ${apiKey}` };
  const spec = { runtime: 'node', code: 'export const handler = (body) => body;', handler: 'handler', minWarm: 2, ...limits, maxQueued: 1000 };
  const deployed = await timedRequest(agent, base, 'PUT', `/v1/functions/${name}`, Buffer.from(JSON.stringify(spec)), 60_000, { 'content-type': 'application/json', ...auth });
  if (deployed.status >= 300) throw new Error(`deploy: ${deployed.status} ${deployed.body.slice(0, 300)}`);
  let node: string | null = null;
  for (let i = 0; i < 50; i++) {
    const out = await timedRequest(agent, base, 'POST', `/v1/functions/${name}/invoke`, Buffer.from('ping'), 60_000, { 'content-type': 'application/octet-stream', ...auth });
    if (out.status !== 200 || out.body !== 'ping') throw new Error(`warm-up invoke: ${out.status} ${out.body.slice(0, 300)}`);
    node = (out.headers?.['x-kindling-node'] as string | undefined) ?? null;
  }
  agent.destroy();
  return node;
}

/** CPU time a process has used so far (user + system, from /proc; USER_HZ is 100 on Linux), in ms. */
function processCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces: count the fields after its closing parenthesis.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** CPU ms each process used while `body` ran. */
async function cpuDuring<T>(pids: Record<string, number[]>, body: () => Promise<T>): Promise<{ result: T; cpuMs: Record<string, number> }> {
  const total = (list: number[]): number => list.reduce((sum, pid) => sum + processCpuMs(pid), 0);
  const before = Object.fromEntries(Object.entries(pids).map(([name, list]) => [name, total(list)]));
  const result = await body();
  return { result, cpuMs: Object.fromEntries(Object.entries(pids).map(([name, list]) => [name, total(list) - before[name]!])) };
}

async function gatewayHop(ctx: BenchContext, urls: string[], data: Record<string, unknown>, natsPids: number[]): Promise<Row[]> {
  const natsUrls = urls.join(',');
  const worker = await launchServer({ repoRoot: ctx.repoRoot, executor: 'sandbox', extraArgs: ['--cluster', natsUrls, '--role', 'worker', '--node-name', 'bench-worker', '--generic-sandboxes', '0'] });
  onCleanup(() => worker.stop());
  const gateway = await launchServer({ repoRoot: ctx.repoRoot, executor: 'sandbox', prewarm: 0, extraArgs: ['--cluster', natsUrls, '--role', 'gateway', '--node-name', 'bench-gateway', '--generic-sandboxes', '0'] });
  onCleanup(() => gateway.stop());
  // The gateway sees the worker once its registry watch has the first heartbeat.
  for (let i = 0; ; i++) {
    if ((await fetch(`${gateway.url}/readyz`)).status === 200) break;
    if (i > 300) throw new Error('the gateway did not see the worker within 30 s');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const node = await deployWarm(gateway, 'hop');
  if (node !== 'bench-worker') throw new Error(`the gateway's calls ran on ${node ?? 'the gateway'}, not on the worker`);
  await deployWarm(worker, 'direct');
  const rows: Row[] = [];
  for (const connections of [1, 8]) {
    const step = (server: BenchServer, name: string): Promise<CurveStep> =>
      runCurveStep({ url: new URL(server.url), method: 'POST', path: `/v1/functions/${name}/invoke`, headers: { 'content-type': 'application/octet-stream' }, body: Buffer.from('ping'), connections, durationMs: ctx.scale.stepMs, status: 200 });
    // Alternated twice, so drift on this shared machine hits both paths alike.
    const hop: CurveStep[] = [];
    const direct: CurveStep[] = [];
    // CPU of each process during the calls through the gateway (the sandboxes' own time is not the worker's).
    const spent: Record<string, number> = { gateway: 0, worker: 0, nats: 0 };
    for (let round = 0; round < 2; round++) {
      const measured = await cpuDuring({ gateway: [gateway.pid], worker: [worker.pid], nats: natsPids }, () => step(gateway, 'hop'));
      hop.push(measured.result);
      for (const [name, ms] of Object.entries(measured.cpuMs)) spent[name] = (spent[name] ?? 0) + ms;
      direct.push(await step(worker, 'direct'));
    }
    const viaGateway = mergeSteps(hop);
    const straight = mergeSteps(direct);
    const calls = hop.reduce((sum, one) => sum + one.samples.length, 0);
    const cpuPerCallUs = Object.fromEntries(Object.entries(spent).map(([name, ms]) => [name, calls === 0 ? null : Math.round((ms * 1000) / calls)]));
    ctx.log(`cluster: ${connections} clients: via gateway ${viaGateway.perSecond.toFixed(0)}/s p50 ${fmtMs(viaGateway.p50Ms)}; worker direct ${straight.perSecond.toFixed(0)}/s p50 ${fmtMs(straight.p50Ms)}`);
    data[`cluster.gateway-hop.${connections}`] = { connections, viaGateway, direct: straight, cpuPerCallUs };
    ctx.log(`cluster: CPU per call through the gateway (${connections} clients): gateway ${cpuPerCallUs.gateway} µs, worker ${cpuPerCallUs.worker} µs, 3 NATS servers ${cpuPerCallUs.nats} µs`);
    rows.push({
      group: 'cluster',
      id: `cluster.gateway-hop.${connections}`,
      scenario: `warm node handler, sync, ${connections} client(s): gateway -> NATS -> worker`,
      kindling: `${viaGateway.perSecond.toFixed(0)}/s, p50 ${fmtMs(viaGateway.p50Ms)}, p99 ${fmtMs(viaGateway.p99Ms)}`,
      baseline: `the worker's own API: ${straight.perSecond.toFixed(0)}/s, p50 ${fmtMs(straight.p50Ms)}, p99 ${fmtMs(straight.p99Ms)}`,
      ratio: `+${fmtMs(viaGateway.p50Ms - straight.p50Ms)} p50`,
      target: '— (measured: the cost of the hop)',
      status: viaGateway.errors === 0 ? 'pass' : 'fail',
      note: `errors: ${viaGateway.errors} via gateway, ${straight.errors} direct; CPU per call through the gateway: gateway ${cpuPerCallUs.gateway} µs, worker process ${cpuPerCallUs.worker} µs (its sandbox apart), 3 NATS servers ${cpuPerCallUs.nats} µs; all share 2 cores`,
    });
  }
  // Gone before the next rows: a worker still registered would take part of their calls.
  await gateway.stop();
  await worker.stop();
  return rows;
}

const PROPAGATION_ROUNDS = 20;

/** A JSON request; the answer's status and body. */
async function jsonRequest(server: BenchServer, method: string, path: string, apiKey: string | null, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const response = await fetch(`${server.url}${path}`, {
    method,
    headers: { ...(apiKey === null ? {} : { authorization: `Bearer ${apiKey}` }), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await response.text();
  return { status: response.status, json: text === '' ? {} : (JSON.parse(text) as Record<string, unknown>) };
}

/** Milliseconds from `since` until `check` holds (polled back to back). */
async function until(check: () => Promise<boolean>, since: number, what: string): Promise<number> {
  for (;;) {
    if (await check()) return performance.now() - since;
    if (performance.now() - since > 30_000) throw new Error(`${what}: not within 30 s`);
  }
}

interface MergedSteps {
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
}

/** Two load steps measured in turn, twice each (so drift hits both alike), each pair of runs merged. */
async function alternated(first: () => Promise<CurveStep>, second: () => Promise<CurveStep>): Promise<[MergedSteps, MergedSteps]> {
  const firsts: CurveStep[] = [];
  const seconds: CurveStep[] = [];
  for (let round = 0; round < 2; round++) {
    firsts.push(await first());
    seconds.push(await second());
  }
  return [mergeSteps(firsts), mergeSteps(seconds)];
}

/** A row that prices a feature: the calls with it against the same calls without it, measured in turn. */
function costRow(id: string, scenario: string, withIt: MergedSteps, without: MergedSteps, text: { baseline: string; target: string; note: string }): Row {
  return {
    group: 'cluster',
    id,
    scenario,
    kindling: `${withIt.perSecond.toFixed(0)}/s, p50 ${fmtMs(withIt.p50Ms)}, p99 ${fmtMs(withIt.p99Ms)}`,
    baseline: `${text.baseline}: ${without.perSecond.toFixed(0)}/s, p50 ${fmtMs(without.p50Ms)}, p99 ${fmtMs(without.p99Ms)}`,
    ratio: `+${fmtMs(withIt.p50Ms - without.p50Ms)} p50`,
    target: text.target,
    status: withIt.errors === 0 && without.errors === 0 ? 'pass' : 'fail',
    note: text.note,
  };
}

/** Load steps of one kind as one: calls per second over their time, latency quantiles over all their samples. */
function mergeSteps(steps: CurveStep[]): MergedSteps {
  const samples = steps.flatMap((one) => one.samples).sort((x, y) => x - y);
  return { perSecond: samples.length / steps.reduce((sum, one) => sum + one.seconds, 0), p50Ms: quantile(samples, 0.5), p99Ms: quantile(samples, 0.99), errors: steps.reduce((sum, one) => sum + one.errors, 0) };
}

/**
 * Two gateways and a worker: how soon a key made or revoked through one gateway is in force at the other (the shared
 * state's watch), and what a tenant's concurrency quota shared across gateways (a slot taken and given back in NATS
 * per call) adds to a warm call, against a tenant without the quota in the same run.
 */
async function sharedGateways(ctx: BenchContext, urls: string[], data: Record<string, unknown>): Promise<Row[]> {
  const natsUrls = urls.join(',');
  const worker = await launchServer({ repoRoot: ctx.repoRoot, executor: 'sandbox', prewarm: 0, extraArgs: ['--cluster', natsUrls, '--role', 'worker', '--node-name', 'shared-worker', '--generic-sandboxes', '0'] });
  onCleanup(() => worker.stop());
  const gatewayArgs = (name: string) => ({ repoRoot: ctx.repoRoot, executor: 'sandbox' as const, prewarm: 0, extraArgs: ['--cluster', natsUrls, '--role', 'gateway', '--node-name', name, '--generic-sandboxes', '0'] });
  const a = await launchServer(gatewayArgs('shared-a'));
  onCleanup(() => a.stop());
  const b = await launchServer(gatewayArgs('shared-b'));
  onCleanup(() => b.stop());
  for (let i = 0; ; i++) {
    if ((await fetch(`${a.url}/readyz`)).status === 200 && (await fetch(`${b.url}/readyz`)).status === 200) break;
    if (i > 300) throw new Error('the gateways did not see the worker within 30 s');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  const quota = await jsonRequest(a, 'POST', '/v1/tenants', null, { name: 'bench-quota', quotas: { maxConcurrency: 64 } });
  if (quota.status !== 201) throw new Error(`tenant: ${quota.status} ${JSON.stringify(quota.json)}`);
  const adminKey = String(quota.json.adminKey);
  const free = await jsonRequest(a, 'POST', '/v1/tenants', adminKey, { name: 'bench-free' });
  if (free.status !== 201) throw new Error(`tenant: ${free.status} ${JSON.stringify(free.json)}`);

  // Keys made through B and revoked through A, one at a time, each polled at the other gateway.
  const madeMs: number[] = [];
  const revokedMs: number[] = [];
  for (let round = 0; round < PROPAGATION_ROUNDS; round++) {
    const made = await jsonRequest(b, 'POST', '/v1/tenants/bench-free/keys', adminKey);
    if (made.status !== 201) throw new Error(`key: ${made.status} ${JSON.stringify(made.json)}`);
    const key = String(made.json.apiKey);
    madeMs.push(await until(async () => (await jsonRequest(a, 'GET', '/v1/tenant', key)).status === 200, performance.now(), 'a new key at the other gateway'));
    const revoked = await jsonRequest(a, 'DELETE', `/v1/tenants/bench-free/keys/${String(made.json.id)}`, adminKey);
    if (revoked.status !== 204) throw new Error(`revoke: ${revoked.status} ${JSON.stringify(revoked.json)}`);
    revokedMs.push(await until(async () => (await jsonRequest(b, 'GET', '/v1/tenant', key)).status === 401, performance.now(), 'a revoked key refused at the other gateway'));
  }
  madeMs.sort((x, y) => x - y);
  revokedMs.sort((x, y) => x - y);
  ctx.log(`cluster: shared state: key in force at the other gateway p50 ${fmtMs(quantile(madeMs, 0.5))}, revoked p50 ${fmtMs(quantile(revokedMs, 0.5))}`);
  data['cluster.shared-state.keys'] = { rounds: PROPAGATION_ROUNDS, madeMs, revokedMs };
  const rows: Row[] = [
    {
      group: 'cluster',
      id: 'cluster.shared-state.revoke',
      scenario: `a key revoked through gateway A -> refused by gateway B (${PROPAGATION_ROUNDS} keys, polled back to back)`,
      kindling: `p50 ${fmtMs(quantile(revokedMs, 0.5))}, worst ${fmtMs(revokedMs[revokedMs.length - 1]!)}`,
      baseline: `a key made through B -> accepted by A: p50 ${fmtMs(quantile(madeMs, 0.5))}, worst ${fmtMs(madeMs[madeMs.length - 1]!)}`,
      ratio: '—',
      target: '< 1 s (documented bound: the watch delivers in milliseconds on a healthy cluster)',
      status: revokedMs[revokedMs.length - 1]! < 1_000 ? 'pass' : 'fail',
      note: 'times from the answer at one gateway to the first request the other answers accordingly; both gateways, a worker and 3 NATS servers share 2 cores',
    },
  ];

  // A warm call of a tenant with a concurrency quota (a shared slot per call) against one without, alternated.
  const quotaKey = String(quota.json.apiKey);
  const freeKey = String(free.json.apiKey);
  // Without their own maxConcurrency: the row prices the tenant's quota alone (see cluster.function-limit.1).
  await deployWarm(a, 'slot', quotaKey, {});
  await deployWarm(a, 'slot', freeKey, {});
  const step = (apiKey: string): Promise<CurveStep> =>
    runCurveStep({ url: new URL(a.url), method: 'POST', path: '/v1/functions/slot/invoke', headers: { 'content-type': 'application/octet-stream', authorization: `Bearer ${apiKey}` }, body: Buffer.from('ping'), connections: 1, durationMs: ctx.scale.stepMs, status: 200 });
  const [slotted, plain] = await alternated(() => step(quotaKey), () => step(freeKey));
  ctx.log(`cluster: tenant quota shared: p50 ${fmtMs(slotted.p50Ms)} against ${fmtMs(plain.p50Ms)} without`);
  data['cluster.tenant-quota.1'] = { withQuota: slotted, withoutQuota: plain };
  rows.push(
    costRow('cluster.tenant-quota.1', 'warm node handler through a gateway, 1 client, tenant with maxConcurrency (a slot taken and given back in NATS per call)', slotted, plain, {
      baseline: 'tenant without the quota, same run',
      target: '— (measured: the cost of a cluster-wide quota)',
      note: `errors: ${slotted.errors} with the quota, ${plain.errors} without; the release is not awaited by the call`,
    }),
  );

  // A function's own maxConcurrency shared by the two gateways (a slot per call in NATS) against one that sets none
  // (counted by each gateway itself), same tenant, alternated.
  await deployWarm(a, 'limited', freeKey, { maxConcurrency: 8 });
  await deployWarm(a, 'unlimited', freeKey, {});
  const callStep = (name: string): Promise<CurveStep> =>
    runCurveStep({ url: new URL(a.url), method: 'POST', path: `/v1/functions/${name}/invoke`, headers: { 'content-type': 'application/octet-stream', authorization: `Bearer ${freeKey}` }, body: Buffer.from('ping'), connections: 1, durationMs: ctx.scale.stepMs, status: 200 });
  const [limited, unlimited] = await alternated(() => callStep('limited'), () => callStep('unlimited'));
  ctx.log(`cluster: function limit shared: p50 ${fmtMs(limited.p50Ms)} against ${fmtMs(unlimited.p50Ms)} without`);
  data['cluster.function-limit.1'] = { withLimit: limited, withoutLimit: unlimited };
  rows.push(
    costRow('cluster.function-limit.1', "warm node handler through gateway A (B up too), 1 client, function with its own maxConcurrency (a slot of the cluster's per call)", limited, unlimited, {
      baseline: 'function without its own maxConcurrency (per gateway), same run',
      target: '— (measured: the cost of a function limit held across gateways; a gateway alone pays nothing)',
      note: `errors: ${limited.errors} with the shared limit, ${unlimited.errors} without`,
    }),
  );

  // GET /v1/invocations at B, which asks A for its list and merges it, against a request B answers alone.
  const listAgent = new Agent({ keepAlive: true, maxSockets: 1 });
  const listMs: number[] = [];
  const floorMs: number[] = [];
  const auth = { authorization: `Bearer ${freeKey}` };
  for (let i = 0; i < 60; i++) {
    const listed = await timedRequest(listAgent, new URL(b.url), 'GET', '/v1/invocations?limit=100', Buffer.alloc(0), 10_000, auth);
    if (listed.status !== 200) throw new Error(`list: ${listed.status} ${listed.body.slice(0, 200)}`);
    const tenant = await timedRequest(listAgent, new URL(b.url), 'GET', '/v1/tenant', Buffer.alloc(0), 10_000, auth);
    if (i >= 10) {
      listMs.push(listed.ms);
      floorMs.push(tenant.ms);
    }
  }
  listAgent.destroy();
  listMs.sort((x, y) => x - y);
  floorMs.sort((x, y) => x - y);
  data['cluster.invocations.list'] = { listMs, floorMs };
  rows.push({
    group: 'cluster',
    id: 'cluster.invocations.list',
    scenario: 'GET /v1/invocations?limit=100 at gateway B, merged with gateway A\'s list over NATS (n=50)',
    kindling: `p50 ${fmtMs(quantile(listMs, 0.5))}, p99 ${fmtMs(quantile(listMs, 0.99))}`,
    baseline: `GET /v1/tenant at B (no NATS): p50 ${fmtMs(quantile(floorMs, 0.5))}, p99 ${fmtMs(quantile(floorMs, 0.99))}`,
    ratio: `${(quantile(listMs, 0.5) / quantile(floorMs, 0.5)).toFixed(2)}x`,
    target: '— (measured: a list waits for every other gateway up, at most 1 s)',
    status: quantile(listMs, 0.99) < 1_000 ? 'pass' : 'fail',
    note: 'each list holds up to 100 invocations of each gateway (the warm calls above)',
  });
  rows.push(await bundleFetch(ctx, a, b, freeKey, data));
  await a.stop();
  await b.stop();
  await worker.stop();
  return rows;
}

const BUNDLE_FETCH_ROUNDS = 5;
const BIG_BUNDLE_BYTES = 16 * 1024 * 1024;

/**
 * A bundle deployed through gateway A, first called through gateway B: the worker fetches it from the cluster's object
 * store before the cold start. Against the same handler in a bundle of 1 KiB, alternated, each round with new content
 * (so nothing is fetched before).
 */
async function bundleFetch(ctx: BenchContext, a: BenchServer, b: BenchServer, apiKey: string, data: Record<string, unknown>): Promise<Row> {
  const dir = mkdtempSync(join(tmpdir(), 'kindling-bench-bundle-'));
  onCleanup(async () => rmSync(dir, { recursive: true, force: true }));
  const firstCall = async (name: string, bytes: number): Promise<number> => {
    rmSync(join(dir, 'data.bin'), { force: true });
    writeFileSync(join(dir, 'handler.py'), 'def main(body):\n    return b"ok"\n');
    writeFileSync(join(dir, 'data.bin'), randomBytes(bytes));
    const deployed = await fetch(`${a.url}/v1/functions/${name}`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/x-tar', 'kindling-function-spec': JSON.stringify({ runtime: 'python', handler: 'handler.py:main' }) },
      body: new Uint8Array(execFileSync('tar', ['-c', '-f', '-', '-C', dir, '.'], { maxBuffer: 64 * 1024 * 1024 })),
    });
    if (deployed.status !== 201) throw new Error(`bundle deploy: ${deployed.status} ${await deployed.text()}`);
    await until(async () => (await jsonRequest(b, 'GET', `/v1/functions/${name}`, apiKey)).status === 200, performance.now(), 'the bundle function at B');
    const started = performance.now();
    const called = await fetch(`${b.url}/v1/functions/${name}/invoke`, { method: 'POST', headers: { authorization: `Bearer ${apiKey}` }, body: 'x' });
    const text = await called.text();
    const ms = performance.now() - started;
    if (called.status !== 200 || text !== 'ok') throw new Error(`bundle call: ${called.status} ${text.slice(0, 200)}`);
    return ms;
  };
  const bigMs: number[] = [];
  const smallMs: number[] = [];
  for (let round = 0; round < BUNDLE_FETCH_ROUNDS; round++) {
    bigMs.push(await firstCall(`big-${round}`, BIG_BUNDLE_BYTES));
    smallMs.push(await firstCall(`small-${round}`, 1024));
  }
  bigMs.sort((x, y) => x - y);
  smallMs.sort((x, y) => x - y);
  ctx.log(`cluster: first call of a 16 MiB bundle through the other gateway p50 ${fmtMs(quantile(bigMs, 0.5))}, 1 KiB ${fmtMs(quantile(smallMs, 0.5))}`);
  data['cluster.bundle.first-call'] = { bundleBytes: BIG_BUNDLE_BYTES, bigMs, smallMs };
  return {
    group: 'cluster',
    id: 'cluster.bundle.first-call',
    scenario: `first (cold) call through gateway B of a python bundle of 16 MiB deployed through A: the worker fetches it from the object store (n=${BUNDLE_FETCH_ROUNDS})`,
    kindling: `p50 ${fmtMs(quantile(bigMs, 0.5))}, worst ${fmtMs(bigMs[bigMs.length - 1]!)}`,
    baseline: `the same first call with a 1 KiB bundle: p50 ${fmtMs(quantile(smallMs, 0.5))}, worst ${fmtMs(smallMs[smallMs.length - 1]!)}`,
    ratio: `${(quantile(bigMs, 0.5) / quantile(smallMs, 0.5)).toFixed(2)}x`,
    target: '— (measured: what fetching a bundle adds to a first call; later calls fetch nothing)',
    status: 'info',
    note: 'random (incompressible) content, new each round; gateways, the worker and 3 NATS servers (R3) share 2 cores',
  };
}
