/**
 * Tenant concurrency slots shared by gateways (src/cluster/tenant-slots.ts) against a real nats-server: two gateways'
 * slot sets on one bucket never hand out more than the quota together, a slot given back is taken by the other
 * gateway, a holder's slots stay held while it lives and come free after the lease once it is gone, and with NATS down
 * a take is refused as retryable.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { connectCluster } from '../src/cluster/connection.js';
import { TenantSlots } from '../src/cluster/tenant-slots.js';
import { KindlingError } from '../src/core/errors.js';
import { lifo, natsUnavailable, startNatsCluster, type CleanupOwner } from './helpers/nats-cluster.js';
import { waitFor } from './helpers/wait.js';

const codeOf = (error: unknown): string => (error instanceof KindlingError ? error.code : String(error));

async function slotsOn(t: CleanupOwner, urls: string[], bucket: string, leaseMs = 30_000, nodeId?: string): Promise<TenantSlots> {
  const connection = await connectCluster(urls);
  t.after(() => connection.close());
  const slots = await TenantSlots.open(connection.nc, { bucket, leaseMs, ...(nodeId === undefined ? {} : { nodeId }) });
  t.after(async () => slots.close());
  return slots;
}

const bucketName = (): string => `T_SLOTS_${Math.random().toString(36).slice(2, 10)}`;

describe('tenant slots shared by gateways', { skip: natsUnavailable }, () => {
  it('two gateways never hand out more than the quota together; a slot given back is taken by the other', { timeout: 60_000 }, async (context) => {
    const t = lifo(context);
    const nats = await startNatsCluster(t, { nodes: 1 });
    const bucket = bucketName();
    const a = await slotsOn(t, nats.urls, bucket);
    const b = await slotsOn(t, nats.urls, bucket);
    // 40 takes at once, half through each gateway, for a quota of 4.
    const outcomes = await Promise.allSettled(Array.from({ length: 40 }, (_, i) => (i % 2 === 0 ? a : b).acquire('acme', 4)));
    const taken = outcomes.flatMap((outcome) => (outcome.status === 'fulfilled' ? [outcome.value] : []));
    const refused = outcomes.flatMap((outcome) => (outcome.status === 'rejected' ? [codeOf(outcome.reason)] : []));
    assert.equal(taken.length, 4, `exactly the quota taken (refused: ${[...new Set(refused)].join(', ')})`);
    assert.deepEqual([...new Set(refused)], ['TENANT_CONCURRENCY_LIMIT']);
    assert.equal(a.heldCount + b.heldCount, 4);
    // Another tenant's quota is its own.
    const other = await a.acquire('other', 1);
    await assert.rejects(b.acquire('other', 1), (error: unknown) => codeOf(error) === 'TENANT_CONCURRENCY_LIMIT');
    other();
    // One given back (by whichever gateway held it): the other gateway can take it, and only it.
    taken[0]!();
    taken[0]!(); // a second release is ignored
    const again = await waitForTake(a.heldCount > 0 ? b : a, 'acme', 4);
    await assert.rejects(a.acquire('acme', 4), (error: unknown) => codeOf(error) === 'TENANT_CONCURRENCY_LIMIT');
    for (const release of [again, ...taken.slice(1)]) release();
    await waitFor(() => a.heldCount + b.heldCount === 0, { what: 'every slot given back' });
  });

  it("a wait for a function's slot is woken when another gateway gives one back; a wait of 0 or an abort ends it", { timeout: 60_000 }, async (context) => {
    const t = lifo(context);
    const nats = await startNatsCluster(t, { nodes: 1 });
    const bucket = bucketName();
    const a = await slotsOn(t, nats.urls, bucket);
    const b = await slotsOn(t, nats.urls, bucket);
    const held = await a.acquireWaiting('fn.acme.single', 1, { waitMs: 0 });
    assert.ok(held, 'a free slot is taken at once');
    assert.equal(await b.acquireWaiting('fn.acme.single', 1, { waitMs: 0 }), null, 'no wait: refused at once');
    const aborted = new AbortController();
    const abortedWait = b.acquireWaiting('fn.acme.single', 1, { waitMs: 20_000, signal: aborted.signal });
    aborted.abort();
    assert.equal(await abortedWait, null, 'an aborted wait ends without a slot');
    // A wait at B, then the slot given back at A: B has it long before its 20 s are up.
    const startedMs = Date.now();
    const waiting = b.acquireWaiting('fn.acme.single', 1, { waitMs: 20_000 });
    await new Promise((resolve) => setTimeout(resolve, 300));
    held();
    const taken = await waiting;
    assert.ok(taken, 'B took the slot given back');
    assert.ok(Date.now() - startedMs < 5_000, `woken when the slot came free (${Date.now() - startedMs} ms)`);
    assert.equal(await a.acquireWaiting('fn.acme.single', 1, { waitMs: 0 }), null, 'and holds it');
    assert.ok(await a.acquireWaiting('fn.acme.other', 1, { waitMs: 0 }), "another function's slots are its own");
    taken();
  });

  it('a gateway knows whether other gateways are there (a lone one shares no function limits)', { timeout: 60_000 }, async (context) => {
    const t = lifo(context);
    const nats = await startNatsCluster(t, { nodes: 1 });
    const bucket = bucketName();
    const a = await slotsOn(t, nats.urls, bucket, 30_000, 'gw-a');
    await a.announce();
    assert.equal(a.othersPresent(), false, 'alone');
    const b = await slotsOn(t, nats.urls, bucket, 30_000, 'gw-b');
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(a.othersPresent(), false, 'a gateway is counted only once it announces itself (it answers questions)');
    await b.announce();
    await waitFor(() => a.othersPresent() && b.othersPresent(), { what: 'each to see the other' });
    // Two processes given one node id by mistake count as two.
    const twin = await slotsOn(t, nats.urls, bucket, 30_000, 'gw-b');
    await twin.announce();
    await waitFor(() => a.othersCount() === 2 && b.othersCount() === 2, { what: 'the twin counted as another gateway' });
    twin.close();
    b.close();
    await waitFor(() => !a.othersPresent(), { what: 'A to see B gone once it closed' });
  });

  it("a live holder keeps its slots past the lease; a dead one's come free after it", { timeout: 60_000 }, async (context) => {
    const t = lifo(context);
    const nats = await startNatsCluster(t, { nodes: 1 });
    const bucket = bucketName();
    const leaseMs = 3_000;
    const holder = await slotsOn(t, nats.urls, bucket, leaseMs);
    const other = await slotsOn(t, nats.urls, bucket, leaseMs);
    await holder.acquire('acme', 2);
    await holder.acquire('acme', 2);
    const since = performance.now();
    await waitFor(() => performance.now() - since > 3 * leaseMs, { what: 'three leases', timeoutMs: 30_000 });
    await assert.rejects(other.acquire('acme', 2), (error: unknown) => codeOf(error) === 'TENANT_CONCURRENCY_LIMIT', 'still held: the holder refreshes its leases');
    // The holder stops (a gateway that died): no refresh, no release.
    holder.close();
    const stopped = performance.now();
    const release = await waitForTake(other, 'acme', 2, 30_000);
    const freedAfterMs = performance.now() - stopped;
    assert.ok(freedAfterMs < 3 * leaseMs + 2_000, `freed after ${Math.round(freedAfterMs)} ms`);
    release();
  });

  it('with NATS down a take is refused as 503 CLUSTER_UNAVAILABLE, retryable', { timeout: 60_000 }, async (context) => {
    const t = lifo(context);
    const nats = await startNatsCluster(t, { nodes: 1 });
    const slots = await slotsOn(t, nats.urls, bucketName());
    await nats.kill(0);
    await assert.rejects(slots.acquire('acme', 4), (error: unknown) => error instanceof KindlingError && error.code === 'CLUSTER_UNAVAILABLE' && error.statusCode === 503 && error.retryable);
  });
});

/** Retries a take until one succeeds (the other gateway's view learns of a freed slot through its watch). */
async function waitForTake(slots: TenantSlots, tenant: string, max: number, timeoutMs = 10_000): Promise<() => void> {
  let release: (() => void) | null = null;
  await waitFor(
    async () => {
      try {
        release = await slots.acquire(tenant, max);
        return true;
      } catch (error) {
        if (codeOf(error) !== 'TENANT_CONCURRENCY_LIMIT') throw error;
        return false;
      }
    },
    { timeoutMs, intervalMs: 50, what: 'a slot to come free' },
  );
  return release!;
}
