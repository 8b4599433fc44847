/** `kindling cluster status` against a real nats-server: workers from the registry, the queue's counts, errors. */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { AsyncQueue } from '../src/cluster/async-queue.js';
import type { ClusterStatus } from '../src/cli/cluster.js';
import { connectCluster } from '../src/cluster/connection.js';
import { Registry } from '../src/cluster/registry.js';
import { lifo, startNatsCluster, natsUnavailable } from './helpers/nats-cluster.js';

const execFileAsync = promisify(execFile);
const CLI = new URL('../../bin/kindling.js', import.meta.url).pathname;
const kindling = (args: string[]) => execFileAsync(process.execPath, [CLI, ...args], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } });

describe('kindling cluster status', { skip: natsUnavailable }, () => {
  it('shows the registered workers and the queue pending and ack-pending counts', async (context) => {
    const t = lifo(context);
    const cluster = await startNatsCluster(t, { nodes: 1 });
    const url = cluster.urls[0] as string;

    // Before anything is created: it says so instead of creating streams.
    const empty = await kindling(['cluster', 'status', '--cluster', url]);
    assert.match(empty.stdout, /Workers: none has registered yet/);
    assert.match(empty.stdout, /Async queue: not created yet/);

    const conn = await connectCluster(cluster.urls);
    t.after(() => conn.close());
    const registry = await Registry.open(conn.nc, { ttlMs: 60_000 });
    for (const [nodeId, inFlight, warm] of [['w1', 2, ['fn-a@1']], ['w2', 0, []]] as const) {
      const heartbeat = await registry.heartbeat(() => ({ nodeId, role: 'worker', capacity: 8, inFlight, warm: [...warm], startedAt: new Date().toISOString() }));
      t.after(() => heartbeat.stop({ deregister: true }));
    }
    const queue = await AsyncQueue.open(conn.nc, { ackWaitMs: 60_000 });
    for (let i = 0; i < 5; i++) await queue.enqueue(`inv-${i}`, 'tenant-a', {});
    // One delivered and never acked: it shows as ack pending.
    let release: () => void = () => {};
    const started = new Promise<void>((resolve) => {
      void queue
        .work(
          async () => {
            resolve();
            await new Promise<void>((done) => (release = done));
            return { status: 'succeeded' };
          },
          { node: 'w1', maxInFlight: 1 },
        )
        .then((worker) => t.after(async () => (release(), await worker.close())));
    });
    await started;

    const { stdout } = await kindling(['cluster', 'status', '--cluster', url, '--json']);
    const status = JSON.parse(stdout) as ClusterStatus;
    assert.deepEqual(status.workers?.map((w) => [w.nodeId, w.role, w.capacity, w.inFlight, w.warm]), [['w1', 'worker', 8, 2, ['fn-a@1']], ['w2', 'worker', 8, 0, []]]);
    assert.deepEqual([status.queue?.stream, status.queue?.pending, status.queue?.ackPending, status.queue?.replicas], ['KINDLING_INVOCATIONS', 4, 1, 1]);

    const text = (await kindling(['cluster', 'status', '--cluster', url])).stdout;
    assert.match(text, /Workers: 2/);
    assert.match(text, /^w1\s+worker\s+8\s+2\s+\d+ s ago\s+fn-a@1$/m);
    assert.match(text, /Async queue KINDLING_INVOCATIONS \(R1\): 4 pending, 1 ack pending/);
  });

  it('fails with exit code 2 and a message saying how to fix a bad URL or an unreachable server', async () => {
    await assert.rejects(kindling(['cluster', 'status', '--cluster', 'http://h:1']), (error: { code: number; stderr: string }) => error.code === 2 && /use nats:\/\/ \(or tls:\/\/ to require TLS\)/.test(error.stderr));
    await assert.rejects(kindling(['cluster', 'status', '--cluster', 'nats://127.0.0.1:1']), (error: { code: number; stderr: string }) => error.code === 2 && /could not connect to NATS at nats:\/\/127\.0\.0\.1:1/.test(error.stderr));
  });
});
