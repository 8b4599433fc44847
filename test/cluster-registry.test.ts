/** The worker registry against a real nats-server: heartbeats, expiry after the TTL, deregistration on drain. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { jetstream } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { connectCluster } from '../src/cluster/connection.js';
import { Registry, type WorkerState } from '../src/cluster/registry.js';
import { lifo, startNatsCluster, natsUnavailable } from './helpers/nats-cluster.js';
import { waitFor } from './helpers/wait.js';

const state = (nodeId: string, inFlight = 0): WorkerState => ({ nodeId, role: 'worker', capacity: 8, inFlight, warm: ['fn@1'], startedAt: new Date().toISOString() });

async function setUp(owner: { after(fn: () => Promise<void>): void }, ttlMs: number) {
  const t = lifo(owner);
  const cluster = await startNatsCluster(t, { nodes: 1 });
  const conn = await connectCluster(cluster.urls);
  t.after(() => conn.close());
  const bucket = `T_REG_${Math.random().toString(36).slice(2, 10)}`;
  const registry = await Registry.open(conn.nc, { bucket, ttlMs });
  const view = await registry.watch();
  t.after(async () => view.close());
  return { registry, view, t, conn, bucket };
}

describe('worker registry', { skip: natsUnavailable }, () => {
  it('an entry appears with a heartbeat, follows updates, and disappears after the TTL once heartbeats stop', async (t) => {
    const ttlMs = 2_000;
    const { registry, view, t: owner } = await setUp(t, ttlMs);
    let inFlight = 0;
    const heartbeat = await registry.heartbeat(() => state('w1', inFlight), { intervalMs: 200 });
    owner.after(() => heartbeat.stop());
    await waitFor(() => view.workers().some((w) => w.nodeId === 'w1'), { what: 'the heartbeat in the view' });
    assert.deepEqual((await registry.list()).map((w) => [w.nodeId, w.capacity, w.warm]), [['w1', 8, ['fn@1']]]);
    inFlight = 3;
    await waitFor(() => view.workers()[0]?.inFlight === 3, { what: 'a later heartbeat with the new load' });
    // Heartbeats that keep coming keep it there past the TTL.
    const alive = performance.now();
    await waitFor(() => performance.now() - alive > 2 * ttlMs, { what: 'two TTLs' });
    assert.equal(view.workers().length, 1);
    // A worker that dies says nothing: its entry must go by itself.
    await heartbeat.stop({ deregister: false });
    const stoppedAt = performance.now();
    await waitFor(() => view.workers().length === 0, { what: 'the entry to leave the view', timeoutMs: 30_000 });
    await waitFor(async () => (await registry.list()).length === 0, { what: 'the server to expire the key', timeoutMs: 30_000 });
    const goneAfterMs = performance.now() - stoppedAt;
    assert.ok(goneAfterMs >= ttlMs - 500, `gone after ${goneAfterMs.toFixed(0)} ms, before the TTL`);
  });

  it('a drained worker deletes its key: it leaves the view at once', async (t) => {
    const { registry, view, t: owner } = await setUp(t, 60_000);
    const heartbeat = await registry.heartbeat(() => state('w2'));
    await registry.heartbeat(() => state('w3')).then((other) => owner.after(() => other.stop()));
    await waitFor(() => view.workers().length === 2, { what: 'two workers in the view' });
    await heartbeat.stop({ deregister: true });
    await waitFor(() => view.workers().length === 1, { what: 'the drained worker to leave the view', timeoutMs: 5_000 });
    assert.deepEqual((await registry.list()).map((w) => w.nodeId), ['w3']);
  });

  it('a foreign entry in the bucket (not a worker) is left out of the list and the view', async (t) => {
    const { registry, view, t: owner, conn, bucket } = await setUp(t, 60_000);
    const heartbeat = await registry.heartbeat(() => state('w4'));
    owner.after(() => heartbeat.stop());
    const kv = await new Kvm(jetstream(conn.nc)).open(bucket);
    await kv.put('junk', 'not json');
    await waitFor(() => view.workers().some((w) => w.nodeId === 'w4'), { what: 'the worker in the view' });
    assert.deepEqual((await registry.list()).map((w) => w.nodeId), ['w4']);
    assert.deepEqual(view.workers().map((w) => w.nodeId), ['w4']);
  });

  it('two processes heartbeating one node id: the one overwritten stops and is told; an entry deleted under a worker is written again', async (t) => {
    const { registry, view, t: owner, conn, bucket } = await setUp(t, 60_000);
    const conflicts: { instance?: string }[] = [];
    const first = await registry.heartbeat(() => state('twin'), { intervalMs: 100, onConflict: (other) => conflicts.push(other) });
    owner.after(() => first.stop());
    // Before the second writes, the first's own beats (compare-and-set on its last revision) are not conflicts.
    const kv = await new Kvm(jetstream(conn.nc)).open(bucket);
    await waitFor(async () => ((await kv.get('twin'))?.revision ?? 0) >= 3, { what: 'three beats of the first instance' });
    assert.equal(conflicts.length, 0);
    const second = await registry.heartbeat(() => ({ ...state('twin'), capacity: 2 }), { intervalMs: 100 });
    owner.after(() => second.stop());
    await waitFor(() => conflicts.length === 1, { what: 'the first heartbeat to notice the other instance' });
    assert.equal(conflicts[0]?.instance, second.instance);
    assert.notEqual(first.instance, second.instance);
    // The first stopped: the second keeps the entry, and the first's drain does not delete it.
    await first.stop({ deregister: true });
    await waitFor(() => view.workers().find((w) => w.nodeId === 'twin')?.capacity === 2, { what: 'the second instance in the view' });
    assert.deepEqual((await registry.list()).map((w) => [w.nodeId, w.instance]), [['twin', second.instance]]);
    // An entry removed under a live worker (expired while it was cut off) is simply written again: not a conflict.
    await kv.delete('twin');
    await waitFor(async () => (await registry.list()).some((w) => w.instance === second.instance), { what: 'the second instance to write its entry again' });
  });

  it('an entry that expired under a worker cut off for longer than the TTL is written again, not taken for a conflict', async (t) => {
    const { registry, t: owner } = await setUp(t, 2_000);
    const conflicts: unknown[] = [];
    // Beats only when told: as a worker whose NATS was gone for longer than the TTL.
    const heartbeat = await registry.heartbeat(() => state('sleeper'), { intervalMs: 600_000, onConflict: (other) => conflicts.push(other) });
    owner.after(() => heartbeat.stop());
    await heartbeat.beat();
    await waitFor(async () => (await registry.list()).length === 0, { what: 'the entry to expire', timeoutMs: 30_000 });
    await heartbeat.beat();
    assert.deepEqual((await registry.list()).map((w) => [w.nodeId, w.instance]), [['sleeper', heartbeat.instance]]);
    await heartbeat.beat();
    assert.deepEqual(conflicts, []);
  });

  it('refuses a node id that is not a key token', async (t) => {
    const { registry } = await setUp(t, 5_000);
    await assert.rejects(registry.heartbeat(() => state('a.b')), /node id "a.b" must be/);
  });
});
