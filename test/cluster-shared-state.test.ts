/**
 * The cluster's shared control state (src/cluster/shared-state.ts) against a real nats-server: the writes'
 * conformance suite that the single server's SQLite passes too, then what only several gateways have: a change made
 * through one gateway's copy reaches the other's, racing deploys through two gateways get distinct numbers and leave
 * both copies the same, a gateway that joins takes the cluster's state (the first one gives it its own), and a write
 * NATS cannot take is refused with a retryable error, not lost.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { jetstream } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { connectCluster, type ClusterConnection } from '../src/cluster/connection.js';
import { SharedState, type SharedStateChange, type SharedStateOptions } from '../src/cluster/shared-state.js';
import { KindlingError } from '../src/core/errors.js';
import { SqliteStore } from '../src/store/sqlite.js';
import type { FunctionSpec } from '../src/store/store.js';
import { SqliteTenantStore } from '../src/store/tenants-sqlite.js';
import { writesConformance } from '../src/store/writes-conformance.js';
import { lifo, natsUnavailable, startNatsCluster, type CleanupOwner, type NatsCluster } from './helpers/nats-cluster.js';
import { waitFor } from './helpers/wait.js';

const spec = (n: number): FunctionSpec => ({ runtime: 'node20', handler: 'handler', code: `exports.handler = async () => ${n}` });
const uniqueBucket = (): string => `T_STATE_${Math.random().toString(36).slice(2, 10)}`;

interface Gateway {
  state: SharedState;
  tenants: SqliteTenantStore;
  functions: SqliteStore;
  changes: SharedStateChange[];
  seeded: boolean;
}

/** One gateway's copy: its own (in-memory) stores and connection, on the shared bucket. */
async function gateway(
  t: CleanupOwner,
  urls: string[],
  bucket: string,
  prepare: (stores: { tenants: SqliteTenantStore; functions: SqliteStore }) => void = () => {},
  nodeId?: string,
  options: Pick<SharedStateOptions, 'retainedCheckMs'> = {},
): Promise<Gateway> {
  const connection: ClusterConnection = await connectCluster(urls);
  t.after(() => connection.close());
  const tenants = new SqliteTenantStore(':memory:');
  const functions = new SqliteStore(':memory:');
  t.after(async () => {
    tenants.close();
    functions.close();
  });
  prepare({ tenants, functions });
  const changes: SharedStateChange[] = [];
  const { state, report } = await SharedState.join(connection.nc, { tenants, functions }, { bucket, maxBytes: 64 * 1024 ** 2, ...(nodeId === undefined ? {} : { nodeId }), onChange: (change) => changes.push(change), applyTimeoutMs: 10_000, ...options });
  t.after(async () => state.close());
  return { state, tenants, functions, changes, seeded: report.seeded };
}

describe('cluster shared state', { skip: natsUnavailable }, () => {
  let nats: NatsCluster;
  const hooks: Array<() => Promise<void>> = [];
  before(async () => {
    nats = await startNatsCluster(lifo({ after: async (fn) => void hooks.push(fn) }), { nodes: 1 });
  });
  after(async () => {
    for (const hook of hooks.reverse()) await hook();
  });

  describe('conformance (the suite the single server passes)', () => {
    writesConformance(async () => {
      const cleanups: Array<() => Promise<void>> = [];
      const g = await gateway({ after: async (fn) => void cleanups.push(fn) }, nats.urls, uniqueBucket());
      return {
        writes: g.state,
        tenants: g.tenants,
        functions: g.functions,
        close: async () => {
          for (const cleanup of cleanups.reverse()) await cleanup();
        },
      };
    });
  });

  it("a change through one gateway reaches the other's copy, which is told (so it can refresh its caches)", { timeout: 60_000 }, async (context) => {
    const t = lifo(context);
    const bucket = uniqueBucket();
    const a = await gateway(t, nats.urls, bucket);
    const b = await gateway(t, nats.urls, bucket);
    await a.state.insertTenant('acme', { maxConcurrency: 4 }, 1_000);
    await a.state.insertKey({ id: 'key_1', tenant: 'acme', hash: 'h1', prefix: 'kdl_1', isAdmin: false, createdAtMs: 1_000 });
    await a.state.putFunction('acme', 'echo', spec(1), 1_000);
    await waitFor(() => b.functions.getFunction('acme', 'echo') !== null && b.tenants.activeKeys().some((key) => key.id === 'key_1'), { what: "A's tenant, key and function at B" });
    assert.deepEqual(b.functions.getVersion('acme', 'echo')?.spec, spec(1));
    assert.equal(b.tenants.getTenant('acme')?.quotas.maxConcurrency, 4);
    assert.ok(b.changes.some((change) => change.kind === 'key' && change.tenant === 'acme'), 'B was told of the key');
    // B revokes, A follows; B deletes the function, A follows.
    assert.equal(await b.state.revokeKey('acme', 'key_1', 2_000), true);
    await waitFor(() => a.tenants.activeKeys().length === 0, { what: "B's revocation at A" });
    assert.equal(await b.state.deleteFunction('acme', 'echo'), true);
    await waitFor(() => a.functions.getFunction('acme', 'echo') === null, { what: "B's delete at A" });
    assert.ok(a.changes.some((change) => change.kind === 'function' && change.deleted && change.name === 'echo'));
    assert.deepEqual(a.functions.listVersions('acme', 'echo'), []);
    // A version larger than one NATS message is refused as too large (not as an outage), and nothing is stored.
    await assert.rejects(a.state.putFunction('acme', 'big', { ...spec(1), code: 'x'.repeat(1_100_000) }, 3_000), (error: unknown) => error instanceof KindlingError && error.code === 'PAYLOAD_TOO_LARGE');
    assert.equal(a.functions.getFunction('acme', 'big'), null);
  });

  it('deploys racing through two gateways get distinct numbers, and both copies end the same', { timeout: 60_000 }, async (context) => {
    const t = lifo(context);
    const bucket = uniqueBucket();
    const a = await gateway(t, nats.urls, bucket);
    const b = await gateway(t, nats.urls, bucket);
    const results = await Promise.all(Array.from({ length: 16 }, (_, i) => (i % 2 === 0 ? a : b).state.putFunction('acme', 'race', spec(i), 1_000 + i)));
    const numbers = results.map((result) => result.version.version).sort((x, y) => x - y);
    assert.deepEqual(numbers, Array.from({ length: 16 }, (_, i) => i + 1), 'every deploy got its own number');
    assert.equal(results.filter((result) => result.created).length >= 1, true);
    await waitFor(() => a.functions.listVersions('acme', 'race').length === 16 && b.functions.listVersions('acme', 'race').length === 16, { what: 'all 16 versions in both copies' });
    await waitFor(() => a.functions.getFunction('acme', 'race')?.latestVersion === 16 && b.functions.getFunction('acme', 'race')?.latestVersion === 16, { what: 'the latest version 16 in both copies' });
    const codeOf = (g: Gateway) => g.functions.listVersions('acme', 'race').map((version) => [version.version, version.spec.code]);
    assert.deepEqual(codeOf(a), codeOf(b), 'each number holds the same code in both copies');
  });

  it('quota updates racing through two gateways are merged, none lost', { timeout: 60_000 }, async (context) => {
    const t = lifo(context);
    const bucket = uniqueBucket();
    const a = await gateway(t, nats.urls, bucket);
    const b = await gateway(t, nats.urls, bucket);
    await a.state.insertTenant('acme', { maxMemoryMb: 256 }, 1_000);
    await waitFor(() => b.tenants.getTenant('acme') !== null, { what: 'acme at B' });
    // Each update adds one to the quota it reads: a merge made outside the compare-and-set would lose some.
    const bump = (g: Gateway) => g.state.updateQuotas('acme', (current) => ({ ...current, maxConcurrency: (current.maxConcurrency ?? 0) + 1 }));
    await Promise.all(Array.from({ length: 20 }, (_, i) => bump(i % 2 === 0 ? a : b)));
    await waitFor(() => a.tenants.getTenant('acme')?.quotas.maxConcurrency === 20 && b.tenants.getTenant('acme')?.quotas.maxConcurrency === 20, { what: 'all 20 updates in both copies' });
    assert.equal(b.tenants.getTenant('acme')?.quotas.maxMemoryMb, 256, 'the other field is kept');
  });

  it('a deploy through one gateway racing a delete through another leaves both copies with the deployed version', { timeout: 60_000 }, async (context) => {
    const t = lifo(context);
    const bucket = uniqueBucket();
    const a = await gateway(t, nats.urls, bucket);
    const b = await gateway(t, nats.urls, bucket);
    await a.state.putFunction('acme', 'race', spec(1), 1_000);
    await waitFor(() => b.functions.getVersion('acme', 'race')?.version === 1, { what: 'version 1 at B' });
    // The interleaving, written to the bucket step by step: B's deploy creates version 2; A's delete removes the
    // record (its versions listed before version 2 existed); B's deploy then writes the record naming version 2.
    const connection = await connectCluster(nats.urls);
    t.after(() => connection.close());
    const kv = await new Kvm(jetstream(connection.nc)).open(bucket);
    await kv.create('v.acme.race.2', JSON.stringify({ tenant: 'acme', name: 'race', version: 2, spec: spec(2), createdAtMs: 2_000 }));
    await kv.delete('v.acme.race.1');
    await kv.delete('f.acme.race');
    await kv.put('f.acme.race', JSON.stringify({ tenant: 'acme', name: 'race', latestVersion: 2, createdAtMs: 2_000, updatedAtMs: 2_000 }));
    for (const g of [a, b]) {
      await waitFor(() => g.functions.getVersion('acme', 'race')?.spec.code === spec(2).code, { what: 'version 2 served by each copy' });
    }
    assert.deepEqual(a.functions.listVersions('acme', 'race').map((version) => version.version), [2]);
  });

  it("a version pruned through one gateway stays at another while that gateway's queued invocation needs it", { timeout: 60_000 }, async (context) => {
    const t = lifo(context);
    const bucket = uniqueBucket();
    const a = await gateway(t, nats.urls, bucket);
    const b = await gateway(t, nats.urls, bucket, () => {}, undefined, { retainedCheckMs: 100 });
    await a.state.putFunction('acme', 'f', spec(1), 1_000);
    await waitFor(() => b.functions.getVersion('acme', 'f', 1) !== null, { what: 'version 1 at B' });
    b.functions.insertInvocation({ id: 'inv_b1', tenant: 'acme', functionName: 'f', version: 1, payload: Buffer.from('x'), idempotencyKey: null, callbackUrl: null, createdAtMs: 1_500, traceparent: null });
    // A deploys version 2 keeping one version: it prunes version 1 (A has no invocation of it).
    const { pruned } = await a.state.putFunction('acme', 'f', spec(2), 2_000, { keep: 1 });
    assert.deepEqual(pruned, [1]);
    assert.equal(a.functions.getVersion('acme', 'f', 1), null);
    await waitFor(() => b.functions.getFunction('acme', 'f')?.latestVersion === 2, { what: 'version 2 at B' });
    assert.notEqual(b.functions.getVersion('acme', 'f', 1), null, "B keeps version 1 for its queued invocation");
    b.functions.claimNextInvocation(2_100);
    b.functions.finishInvocation('inv_b1', { status: 'succeeded', exitCode: 0, stdout: Buffer.from('ok'), stderr: Buffer.alloc(0), durationMs: 1, coldStart: false, timedOut: false, error: null, finishedAtMs: 2_200 });
    await waitFor(() => b.functions.getVersion('acme', 'f', 1) === null, { what: 'version 1 to go from B once its invocation is done' });
  });

  it("a gateway that was down while another pruned a version its queued invocation needs keeps that version", { timeout: 60_000 }, async (context) => {
    const t = lifo(context);
    const bucket = uniqueBucket();
    const a = await gateway(t, nats.urls, bucket);
    const b = await gateway(t, nats.urls, bucket, () => {}, 'gw-b', { retainedCheckMs: 100 });
    await a.state.putFunction('acme', 'f', spec(1), 1_000);
    await waitFor(() => b.functions.getVersion('acme', 'f', 1) !== null, { what: 'version 1 at B' });
    b.functions.insertInvocation({ id: 'inv_b2', tenant: 'acme', functionName: 'f', version: 1, payload: Buffer.from('x'), idempotencyKey: null, callbackUrl: null, createdAtMs: 1_500, traceparent: null });
    b.state.close();
    // While B is away, A deploys version 2 keeping one: version 1 leaves the bucket.
    assert.deepEqual((await a.state.putFunction('acme', 'f', spec(2), 2_000, { keep: 1 })).pruned, [1]);
    // B joins again on its stores: it takes the cluster's functions, but keeps version 1 for its queued invocation.
    const connection = await connectCluster(nats.urls);
    t.after(() => connection.close());
    const { state } = await SharedState.join(connection.nc, { tenants: b.tenants, functions: b.functions }, { bucket, maxBytes: 64 * 1024 ** 2, nodeId: 'gw-b', retainedCheckMs: 100 });
    t.after(async () => state.close());
    assert.equal(b.functions.getFunction('acme', 'f')?.latestVersion, 2);
    assert.notEqual(b.functions.getVersion('acme', 'f', 1), null, 'version 1 kept for the queued invocation');
    b.functions.claimNextInvocation(2_100);
    b.functions.finishInvocation('inv_b2', { status: 'succeeded', exitCode: 0, stdout: Buffer.from('ok'), stderr: Buffer.alloc(0), durationMs: 1, coldStart: false, timedOut: false, error: null, finishedAtMs: 2_200 });
    await waitFor(() => b.functions.getVersion('acme', 'f', 1) === null, { what: 'version 1 to go once its invocation is done' });
  });

  it("the first gateway gives the cluster its own state; a later one's own state is replaced by the cluster's", { timeout: 60_000 }, async (context) => {
    const t = lifo(context);
    const bucket = uniqueBucket();
    const first = await gateway(t, nats.urls, bucket, ({ tenants, functions }) => {
      tenants.insertTenant('old-tenant', { maxMemoryMb: 256 }, 500);
      tenants.insertKey({ id: 'key_old', tenant: 'old-tenant', hash: 'h-old', prefix: 'kdl_o', isAdmin: false, createdAtMs: 500 });
      functions.putFunction('old-tenant', 'kept', spec(1), 500);
      functions.putFunction('old-tenant', 'kept', spec(2), 600);
    });
    assert.equal(first.seeded, true);
    const later = await gateway(t, nats.urls, bucket, ({ tenants, functions }) => {
      tenants.insertTenant('stray', {}, 700);
      functions.putFunction('stray', 'gone', spec(1), 700);
    });
    assert.equal(later.seeded, false);
    assert.equal(later.tenants.getTenant('stray'), null, "the later gateway's own tenant is not the cluster's");
    assert.equal(later.functions.getFunction('stray', 'gone'), null);
    assert.equal(later.functions.storageUsage('stray').functionVersions, 0, 'its storage counts follow');
    assert.deepEqual(later.tenants.getTenant('old-tenant')?.quotas, { maxMemoryMb: 256 });
    assert.deepEqual(later.tenants.activeKeys().map((key) => key.id), ['key_old']);
    assert.deepEqual(later.functions.listVersions('old-tenant', 'kept').map((version) => version.version), [1, 2]);
    assert.equal(later.functions.getFunction('old-tenant', 'kept')?.latestVersion, 2);
    assert.ok(later.tenants.getTenant('default'), 'every copy has the default tenant');
    // The next deploy continues the numbering the first gateway had.
    assert.equal((await later.state.putFunction('old-tenant', 'kept', spec(3), 800)).version.version, 3);
  });

  it('a first copy that stopped half-way is made again by the same node; another gateway waits for it, never takes half', { timeout: 90_000 }, async (context) => {
    const t = lifo(context);
    const bucket = uniqueBucket();
    // What a first gateway's start that failed in the middle of its copy leaves: the marker, not complete, and part.
    const connection = await connectCluster(nats.urls);
    t.after(() => connection.close());
    const kv = await new Kvm(jetstream(connection.nc)).create(bucket, { history: 1, max_bytes: 64 * 1024 ** 2 });
    await kv.put('s.seeded', JSON.stringify({ complete: false, nodeId: 'gw-first', atMs: Date.now() }));
    await kv.put('t.half', JSON.stringify({ name: 'half', quotas: {}, createdAtMs: 1, deletedAtMs: null }));
    // Another gateway starting now waits for the copy to complete instead of taking half of it.
    let joinedAtMs = 0;
    const waiting = gateway(t, nats.urls, bucket, () => {}, 'gw-later').then((joined) => {
      joinedAtMs = Date.now();
      return joined;
    });
    const first = await gateway(t, nats.urls, bucket, ({ tenants, functions }) => {
      tenants.insertTenant('half', {}, 1);
      tenants.insertTenant('rest', { maxMemoryMb: 128 }, 2);
      functions.putFunction('rest', 'fn', spec(1), 2);
    }, 'gw-first');
    assert.equal(first.seeded, true, 'the same node copies again');
    const later = await waiting;
    const marker = await kv.get('s.seeded');
    assert.equal(marker?.json<{ complete: boolean }>().complete, true);
    assert.ok(joinedAtMs >= marker!.created.getTime(), 'the later gateway joined only once the copy was complete');
    assert.equal(later.seeded, false);
    assert.deepEqual(later.tenants.getTenant('rest')?.quotas, { maxMemoryMb: 128 });
    assert.equal(later.functions.getFunction('rest', 'fn')?.latestVersion, 1, 'it holds the whole copy');
  });

  it('a write NATS cannot take is refused with 503 CLUSTER_UNAVAILABLE; the copy keeps answering reads', { timeout: 60_000 }, async (context) => {
    const t = lifo(context);
    const own = await startNatsCluster(t, { nodes: 1 });
    const a = await gateway(t, own.urls, uniqueBucket());
    await a.state.putFunction('acme', 'echo', spec(1), 1_000);
    await own.kill(0);
    await assert.rejects(a.state.putFunction('acme', 'echo', spec(2), 2_000), (error: unknown) => error instanceof KindlingError && error.code === 'CLUSTER_UNAVAILABLE' && error.statusCode === 503);
    assert.equal(a.functions.getFunction('acme', 'echo')?.latestVersion, 1, 'reads answer from the copy');
  });
});
