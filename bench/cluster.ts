/**
 * Cluster foundation (issue 18): the async enqueue rate of the JetStream queue (src/cluster/async-queue.ts), each
 * enqueue counted once the stream has acked it (when a gateway may answer 202), with N enqueues in flight on one
 * connection. Measured on a 3-node nats-server cluster on loopback: the R3 stream (the cluster's default) against an R1
 * stream on the same cluster in the same run (the baseline: no replication). All three NATS servers and this process
 * share this machine's cores, so the figure is a floor for servers on separate machines, not a model of them.
 * Also: the time from SIGKILL of a worker process in the middle of a run to that invocation running on another worker
 * (the target: < ack wait + 1 s).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { AsyncQueue } from '../src/cluster/async-queue.js';
import { connectCluster } from '../src/cluster/connection.js';
import { startNatsCluster } from '../test/helpers/nats-cluster.js';
import type { BenchContext, GroupResult } from './lib/context.js';
import { onCleanup } from './lib/server.js';
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
  return { rows, data };
}
