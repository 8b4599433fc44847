/**
 * Cluster foundation (issue 18): the async enqueue rate of the JetStream queue (src/cluster/async-queue.ts), each
 * enqueue counted once the stream has acked it (when a gateway may answer 202), with N enqueues in flight on one
 * connection. Measured on a 3-node nats-server cluster on loopback: the R3 stream (the cluster's default) against an R1
 * stream on the same cluster in the same run (the baseline: no replication). All three NATS servers and this process
 * share this machine's cores, so the figure is a floor for servers on separate machines, not a model of them.
 */
import { randomBytes } from 'node:crypto';
import { AsyncQueue } from '../src/cluster/async-queue.js';
import { connectCluster } from '../src/cluster/connection.js';
import { startNatsCluster } from '../test/helpers/nats-cluster.js';
import type { BenchContext, GroupResult } from './lib/context.js';
import { onCleanup } from './lib/server.js';
import type { Row } from './lib/table.js';

const TARGET_PER_SECOND = 3_000;

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
  const open = (replicas: number) => AsyncQueue.open(conn.nc, { replicas, names: { stream: `BENCH_R${replicas}_${tag}`, subjectPrefix: `bench${tag}.r${replicas}`, consumer: 'w', outcomesBucket: `BENCH_OUT_R${replicas}_${tag}` } });
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
  const status = await r3.status();
  data['cluster.r3.stored'] = status.messages;
  return { rows, data };
}
