/**
 * The durable async queue against real nats-server processes: dedupe of retried enqueues, exactly-once outcomes,
 * redelivery after a worker dies (SIGKILL of a child process), progress signals keeping a long run, max deliveries,
 * and a stream leader killed with SIGKILL during 500 enqueues.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { jetstream } from '@nats-io/jetstream';
import { AsyncQueue, type QueueWorker, type RecordedOutcome } from '../src/cluster/async-queue.js';
import { connectCluster, type ClusterConnection } from '../src/cluster/connection.js';
import { uniqueQueueNames } from './helpers/cluster-names.js';
import { lifo, startNatsCluster, type NatsCluster, natsUnavailable } from './helpers/nats-cluster.js';
import { retryUntil, waitFor } from './helpers/wait.js';

const CHILD = fileURLToPath(new URL('./helpers/cluster-worker-child.js', import.meta.url));

type Owner = { after(fn: () => Promise<void>): void };

async function connected(t: Owner, cluster: NatsCluster): Promise<ClusterConnection> {
  const conn = await connectCluster(cluster.urls, { reconnectBaseMs: 20, reconnectMaxMs: 500 });
  t.after(() => conn.close());
  return conn;
}

/** A fresh one-node server and a connection to it, both stopped after the test (hooks run last-registered first). */
async function oneServer(t: Owner): Promise<{ cluster: NatsCluster; conn: ClusterConnection }> {
  const cluster = await startNatsCluster(t, { nodes: 1 });
  return { cluster, conn: await connected(t, cluster) };
}

function closing(t: Owner, worker: QueueWorker): QueueWorker {
  t.after(() => worker.destroy());
  return worker;
}

describe('async queue on one NATS server', { skip: natsUnavailable }, () => {
  it('stores a retried enqueue once, runs it once and records its outcome once', async (context) => {
    const t = lifo(context);
    const { conn } = await oneServer(t);
    const queue = await AsyncQueue.open(conn.nc, { names: uniqueQueueNames() });
    assert.equal(queue.replicas, 1);
    const first = await queue.enqueue('inv-1', 'tenant-a', { fn: 'f' });
    const again = await queue.enqueue('inv-1', 'tenant-a', { fn: 'f' });
    assert.equal(first.duplicate, false);
    assert.equal(again.duplicate, true);
    assert.equal(again.seq, first.seq);
    assert.equal((await queue.status()).messages, 1);
    const runs: string[] = [];
    const worker = closing(t, await queue.work(async (job) => (runs.push(job.id), { status: 'succeeded', result: { echoed: job.data } }), { node: 'w1' }));
    await waitFor(async () => (await queue.outcome('inv-1')) !== null, { what: 'the outcome' });
    const outcome = (await queue.outcome('inv-1')) as RecordedOutcome;
    assert.deepEqual([outcome.status, outcome.node, outcome.deliveries, outcome.tenant, outcome.result], ['succeeded', 'w1', 1, 'tenant-a', { echoed: { fn: 'f' } }]);
    await waitFor(async () => (await queue.status()).messages === 0, { what: 'the acked message to leave the work queue' });
    assert.deepEqual(runs, ['inv-1']);
    assert.equal(worker.stats().acked, 1);
  });

  it('keeps the first outcome: a second record of the same invocation is dropped', async (context) => {
    const t = lifo(context);
    const { conn } = await oneServer(t);
    const queue = await AsyncQueue.open(conn.nc, { names: uniqueQueueNames() });
    const base = { id: 'inv-2', tenant: 't', deliveries: 1, finishedAt: new Date().toISOString() };
    assert.equal(await queue.record({ ...base, node: 'a', status: 'succeeded' }), true);
    assert.equal(await queue.record({ ...base, node: 'b', status: 'failed', reason: 'late duplicate' }), false);
    assert.equal((await queue.outcome('inv-2'))?.node, 'a');
  });

  it('refuses ids and tenants that are not subject tokens', async (context) => {
    const t = lifo(context);
    const { conn } = await oneServer(t);
    const queue = await AsyncQueue.open(conn.nc, { names: uniqueQueueNames() });
    await assert.rejects(queue.enqueue('a.b', 't', null), /invocation id "a.b" must be/);
    await assert.rejects(queue.enqueue('ok', 'x.>', null), /tenant "x.>" must be/);
  });

  it('redelivers the run of a worker killed with SIGKILL after the ack wait and records its outcome once', async (context) => {
    const t = lifo(context);
    const { cluster, conn } = await oneServer(t);
    const names = uniqueQueueNames();
    const ackWaitMs = 1_500;
    const queue = await AsyncQueue.open(conn.nc, { names, ackWaitMs, maxDeliveries: 3, replicas: 1 });
    const child = spawn(process.execPath, [CHILD, JSON.stringify({ urls: cluster.urls, names, ackWaitMs, maxDeliveries: 3, node: 'child' })], { stdio: ['ignore', 'pipe', 'inherit'] });
    t.after(async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });
    const lines = createInterface({ input: child.stdout });
    const seen: string[] = [];
    lines.on('line', (line) => seen.push(line));
    await waitFor(() => seen.includes('ready'), { what: 'the child worker' });
    await queue.enqueue('inv-crash', 'tenant-a', {});
    await waitFor(() => seen.includes('running inv-crash 1'), { what: 'the child to start the run' });
    const exited = once(child, 'exit');
    child.kill('SIGKILL');
    await exited;
    const killedAt = performance.now();

    const runs: number[] = [];
    closing(t, await queue.work(async (_job, { deliveries }) => (runs.push(deliveries), { status: 'succeeded' }), { node: 'survivor', fetchExpiresMs: 1_000 }));
    await waitFor(async () => (await queue.outcome('inv-crash')) !== null, { what: 'the redelivered run to be recorded' });
    const tookMs = performance.now() - killedAt;
    const outcome = (await queue.outcome('inv-crash')) as RecordedOutcome;
    assert.deepEqual([outcome.node, outcome.deliveries, outcome.status], ['survivor', 2, 'succeeded']);
    assert.deepEqual(runs, [2]);
    // Not before the ack wait (the server waits for the dead worker), and not much after it.
    assert.ok(tookMs < ackWaitMs + 15_000, `redelivered after ${tookMs.toFixed(0)} ms`);
    await waitFor(async () => (await queue.status()).messages === 0, { what: 'the work queue to empty' });
  });

  it('progress signals keep a run three times the ack wait from being redelivered', async (context) => {
    const t = lifo(context);
    const { conn } = await oneServer(t);
    const ackWaitMs = 1_000;
    const queue = await AsyncQueue.open(conn.nc, { names: uniqueQueueNames(), ackWaitMs });
    const starts: Array<{ node: string; deliveries: number }> = [];
    const handler = (node: string) => async (_job: unknown, { deliveries }: { deliveries: number }) => {
      starts.push({ node, deliveries });
      await sleep(3 * ackWaitMs);
      return { status: 'succeeded' as const };
    };
    // Two workers: a redelivery would go to whichever is free.
    closing(t, await queue.work(handler('a'), { node: 'a', fetchExpiresMs: 1_000 }));
    closing(t, await queue.work(handler('b'), { node: 'b', fetchExpiresMs: 1_000 }));
    await queue.enqueue('inv-long', 't', {});
    await waitFor(async () => (await queue.outcome('inv-long')) !== null, { what: 'the long run to be recorded' });
    assert.equal(starts.length, 1, `started ${JSON.stringify(starts)}`);
    assert.equal((await queue.outcome('inv-long'))?.deliveries, 1);
    assert.equal((await queue.status()).redelivered, 0);
  });

  it('runs at most maxInFlight invocations at once per worker', async (context) => {
    const t = lifo(context);
    const { conn } = await oneServer(t);
    const queue = await AsyncQueue.open(conn.nc, { names: uniqueQueueNames() });
    let running = 0;
    let peak = 0;
    const gates: Array<() => void> = [];
    const worker = closing(
      t,
      await queue.work(
        async (_job, { signal }) => {
          peak = Math.max(peak, ++running);
          await new Promise<void>((resolve) => (gates.push(resolve), signal.addEventListener('abort', () => resolve())));
          running--;
          return { status: 'succeeded' };
        },
        { node: 'w', maxInFlight: 2 },
      ),
    );
    for (let i = 0; i < 6; i++) await queue.enqueue(`inv-${i}`, 't', {});
    for (let done = 0; done < 6; done++) {
      await waitFor(() => gates.length > 0, { what: `run ${done + 1}` });
      // While two run, the other messages stay undelivered (pending), not buffered in the worker.
      if (done === 0) {
        await waitFor(() => running === 2, { what: 'two runs' });
        const status = await queue.status();
        assert.deepEqual([status.ackPending, status.pending], [2, 4]);
      }
      gates.shift()?.();
    }
    await waitFor(() => worker.stats().acked === 6, { what: 'six acks' });
    assert.equal(peak, 2);
  });

  it('close() lets the run in flight finish and ack, and runs nothing that arrives while it closes', async (context) => {
    const t = lifo(context);
    const { conn } = await oneServer(t);
    const queue = await AsyncQueue.open(conn.nc, { names: uniqueQueueNames() });
    const started: string[] = [];
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => (release = resolve));
    const worker = closing(
      t,
      await queue.work(
        async (job, { signal }) => {
          started.push(job.id);
          await Promise.race([gate, new Promise((resolve) => signal.addEventListener('abort', resolve))]);
          return { status: 'succeeded' };
        },
        { node: 'draining', maxInFlight: 4, fetchExpiresMs: 5_000 },
      ),
    );
    await queue.enqueue('inv-a', 't', {});
    await waitFor(() => started.includes('inv-a'), { what: 'the first run' });
    const closed = worker.close();
    await queue.enqueue('inv-b', 't', {});
    release();
    await closed;
    assert.equal((await queue.outcome('inv-a'))?.status, 'succeeded');
    assert.deepEqual(started, ['inv-a']);
    assert.equal(worker.stats().acked, 1);
    // inv-b waits for another worker: undelivered, or handed back by the closing one.
    await waitFor(async () => {
      const status = await queue.status();
      return status.messages === 1 && status.ackPending === 0;
    }, { what: 'inv-b to be left pending' });
    assert.equal(await queue.outcome('inv-b'), null);
  });

  it('records an outcome over the size limit as failed, saying so, and drops a message that is not an invocation', async (context) => {
    const t = lifo(context);
    const { conn } = await oneServer(t);
    const names = uniqueQueueNames();
    const queue = await AsyncQueue.open(conn.nc, { names, maxMessageBytes: 4_096 });
    const runs: string[] = [];
    closing(t, await queue.work(async (job) => (runs.push(job.id), { status: 'succeeded', result: 'x'.repeat(10_000) }), { node: 'w' }));
    // Someone else's message on the queue's subject: it must not be redelivered forever.
    await jetstream(conn.nc).publish(`${names.subjectPrefix}.tenant-a`, JSON.stringify({ hello: 'world' }));
    await queue.enqueue('inv-big', 'tenant-a', {});
    await waitFor(async () => (await queue.outcome('inv-big')) !== null, { what: 'the outcome' });
    const outcome = (await queue.outcome('inv-big')) as RecordedOutcome;
    assert.equal(outcome.status, 'failed');
    assert.match(outcome.reason ?? '', /over the record's limit of 4096 bytes/);
    assert.equal(outcome.result, undefined);
    await waitFor(async () => (await queue.status()).messages === 0, { what: 'both messages to leave the work queue' });
    assert.deepEqual(runs, ['inv-big']);
  });

  it('records failed with the reason when every allowed delivery dies without an outcome', async (context) => {
    const t = lifo(context);
    const { conn } = await oneServer(t);
    const queue = await AsyncQueue.open(conn.nc, { names: uniqueQueueNames(), ackWaitMs: 500, maxDeliveries: 2 });
    const starts: number[] = [];
    // A run that hangs without progress signals: to the server it looks like a dead worker.
    closing(
      t,
      await queue.work(
        async (_job, { deliveries, signal }) => {
          starts.push(deliveries);
          await new Promise((resolve) => signal.addEventListener('abort', resolve));
          throw new Error('destroyed');
        },
        { node: 'stuck', progressIntervalMs: 0, fetchExpiresMs: 1_000, maxInFlight: 4 },
      ),
    );
    await queue.enqueue('inv-poison', 't', {});
    await waitFor(async () => (await queue.outcome('inv-poison')) !== null, { what: 'the failed outcome' });
    const outcome = (await queue.outcome('inv-poison')) as RecordedOutcome;
    assert.equal(outcome.status, 'failed');
    assert.equal(outcome.deliveries, 3);
    assert.match(outcome.reason ?? '', /no outcome after 2 deliveries/);
    assert.deepEqual(starts, [1, 2]);
    await waitFor(async () => (await queue.status()).messages === 0, { what: 'the work queue to empty' });
  });

  it('records failed with the last error when the handler cannot run it maxDeliveries times', async (context) => {
    const t = lifo(context);
    const { conn } = await oneServer(t);
    const queue = await AsyncQueue.open(conn.nc, { names: uniqueQueueNames(), maxDeliveries: 3 });
    let calls = 0;
    closing(
      t,
      await queue.work(
        async () => {
          calls++;
          throw new Error(`no executor (try ${calls})`);
        },
        { node: 'w', retryDelayMs: 50, fetchExpiresMs: 1_000 },
      ),
    );
    await queue.enqueue('inv-broken', 't', {});
    await waitFor(async () => (await queue.outcome('inv-broken')) !== null, { what: 'the failed outcome' });
    const outcome = (await queue.outcome('inv-broken')) as RecordedOutcome;
    assert.equal(outcome.status, 'failed');
    assert.match(outcome.reason ?? '', /could not run after 3 deliveries; last error: no executor \(try 3\)/);
    assert.equal(calls, 3);
  });
});

describe('async queue on a 3-node cluster', { skip: natsUnavailable }, () => {
  it('loses nothing and stores nothing twice when the stream leader is killed with SIGKILL during 500 enqueues', async (context) => {
    const t = lifo(context);
    const cluster = await startNatsCluster(t, { nodes: 3 });
    const conn = await connected(t, cluster);
    const names = uniqueQueueNames();
    const warnings: string[] = [];
    const logger = { info: () => {}, warn: (obj: object, msg: string) => warnings.push(`${msg} ${JSON.stringify(obj, (k, v) => (k === 'err' ? String(v) : v))}`) };
    const queue = await AsyncQueue.open(conn.nc, { names, enqueueRetryMs: 60_000, logger });
    assert.equal(queue.replicas, 3);
    const leader = await cluster.streamLeader(names.stream);

    const total = 500;
    const accepted = new Set<string>();
    const duplicates: string[] = [];
    let next = 0;
    let killed = false;
    const producer = async (): Promise<void> => {
      while (next < total) {
        const id = `inv-${next++}`;
        const result = await queue.enqueue(id, `tenant-${next % 3}`, { n: id });
        if (result.duplicate) duplicates.push(id);
        accepted.add(id);
        if (!killed && accepted.size >= 100) {
          killed = true;
          await cluster.kill(leader, 'SIGKILL');
        }
      }
    };
    await Promise.all(Array.from({ length: 16 }, producer));
    // Reads below retry: JetStream API calls time out while the streams elect leaders; that is not what is tested.
    assert.equal(accepted.size, total);
    const newLeader = await cluster.streamLeader(names.stream, 60_000);
    assert.notEqual(newLeader, leader);
    // A retried publish whose first ack was lost shows as a duplicate, never as a second message.
    assert.equal((await retryUntil(() => queue.status())).messages, total, `duplicates acknowledged: ${duplicates.length}`);

    const runs = new Map<string, number>();
    const worker = closing(t, await queue.work(async (job) => (runs.set(job.id, (runs.get(job.id) ?? 0) + 1), { status: 'succeeded' }), { node: 'w', maxInFlight: 64 }));
    await waitFor(async () => (await queue.status().catch(() => null))?.messages === 0, { what: 'every invocation to be acked', timeoutMs: 120_000 });
    assert.equal(runs.size, total);
    const twice = [...runs].filter(([, count]) => count !== 1);
    assert.equal(twice.length, 0, `${twice.length} ran more than once, e.g. ${twice.slice(0, 3).join(' ')}; stats ${JSON.stringify(worker.stats())}, status ${JSON.stringify(await queue.status().catch(String))}; warnings: ${warnings.slice(0, 5).join('\n')}`);
    for (const id of accepted) assert.equal((await retryUntil(() => queue.outcome(id)))?.status, 'succeeded', id);
    assert.equal(worker.stats().acked, total);
    assert.equal((await retryUntil(() => queue.status())).redelivered, 0);
  });
});
