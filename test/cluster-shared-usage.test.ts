/**
 * Usage records across gateways (src/cluster/shared-usage.ts) against a real nats-server: what each gateway meters
 * reaches every gateway's store once (its own records read back are not counted twice), a gateway that was away
 * resumes where it stopped, and records metered while NATS is down are published once it is back.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { connectCluster } from '../src/cluster/connection.js';
import { SharedUsage } from '../src/cluster/shared-usage.js';
import { SqliteUsageStore } from '../src/store/usage-sqlite.js';
import type { UsageRecord } from '../src/store/usage.js';
import { lifo, natsUnavailable, startNatsCluster, type CleanupOwner } from './helpers/nats-cluster.js';
import { waitFor } from './helpers/wait.js';

const record = (id: string, fn: string, cpuMs: number): UsageRecord => ({
  id,
  tenant: 'acme',
  function: fn,
  executor: 'sandbox',
  atMs: Date.now(),
  status: 'succeeded',
  coldStart: false,
  durationMs: 10,
  cpuMs,
  memoryPeakBytes: 1024,
  memoryMb: 256,
  bytesIn: 1,
  bytesOut: 2,
  traceId: null,
});

/** A gateway's metering: its store, and what it publishes (as server.ts wires them). */
async function gateway(t: CleanupOwner, urls: string[], nodeId: string, stream: string, store = new SqliteUsageStore(':memory:')) {
  const connection = await connectCluster(urls);
  t.after(() => connection.close());
  const shared = await SharedUsage.join(connection.nc, store, { nodeId, stream, maxBytes: 64 * 1024 ** 2 });
  t.after(() => shared.close());
  return {
    store,
    shared,
    meter: (one: UsageRecord) => {
      store.record(one);
      shared.publish(one);
    },
  };
}

const totals = (store: SqliteUsageStore): { invocations: number; cpuMs: number } => {
  const rows = store.summarize({ fromMs: 0, toMs: Date.now() + 60_000, groupBy: 'function', tenant: 'acme' });
  return { invocations: rows.reduce((sum, row) => sum + row.invocations, 0), cpuMs: rows.reduce((sum, row) => sum + row.cpuMs, 0) };
};

const streamName = (): string => `T_USAGE_${Math.random().toString(36).slice(2, 10)}`;

describe('usage shared by gateways', { skip: natsUnavailable }, () => {
  it("every gateway's store gets every gateway's records, once; a gateway that was away resumes where it stopped", { timeout: 60_000 }, async (context) => {
    const t = lifo(context);
    const nats = await startNatsCluster(t, { nodes: 1 });
    const stream = streamName();
    const a = await gateway(t, nats.urls, 'gw-a', stream);
    const bStore = new SqliteUsageStore(':memory:');
    t.after(async () => bStore.close());
    let b = await gateway(t, nats.urls, 'gw-b', stream, bStore);
    for (let i = 0; i < 1_000; i++) a.meter(record(`inv_a${i}`, 'f', 1));
    for (let i = 0; i < 500; i++) b.meter(record(`inv_b${i}`, 'g', 2));
    await waitFor(() => totals(a.store).invocations === 1_500 && totals(bStore).invocations === 1_500, { what: 'all 1,500 records at both' });
    assert.deepEqual(totals(a.store), { invocations: 1_500, cpuMs: 2_000 }, "A's own records are not counted twice");
    assert.deepEqual(totals(bStore), { invocations: 1_500, cpuMs: 2_000 });
    // B goes away; A meters 200 more; B comes back on its store and applies exactly those.
    await b.shared.close();
    for (let i = 0; i < 200; i++) a.meter(record(`inv_later${i}`, 'f', 1));
    await a.shared.flushed();
    assert.equal(totals(bStore).invocations, 1_500, 'nothing applied while away');
    b = await gateway(t, nats.urls, 'gw-b', stream, bStore);
    await waitFor(() => totals(bStore).invocations === 1_700, { what: "B to catch up on A's 200" });
    assert.deepEqual(totals(bStore), totals(a.store));
  });

  it('records metered while NATS is down are published once it is back: nothing lost', { timeout: 90_000 }, async (context) => {
    const t = lifo(context);
    const nats = await startNatsCluster(t, { nodes: 1 });
    const stream = streamName();
    const a = await gateway(t, nats.urls, 'gw-a', stream);
    const b = await gateway(t, nats.urls, 'gw-b', stream);
    a.meter(record('inv_before', 'f', 1));
    await waitFor(() => totals(b.store).invocations === 1, { what: 'the first record at B' });
    await nats.kill(0);
    for (let i = 0; i < 50; i++) a.meter(record(`inv_down${i}`, 'f', 1));
    assert.equal(totals(a.store).invocations, 51, "A's own store has them at once");
    await nats.restart(0);
    await waitFor(() => totals(b.store).invocations === 51, { timeoutMs: 60_000, what: 'the records metered while NATS was down at B' });
    assert.equal(a.shared.droppedRecords, 0);
  });
});
