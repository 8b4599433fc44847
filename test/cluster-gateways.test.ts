/**
 * Several gateways (`serve --cluster --role gateway`, separate processes) on one nats-server share tenants, API keys
 * and functions: what is created or deployed through one is served through the other, a key revoked through one is
 * refused by the other within moments, a delete through one is a 404 at the other, and a restarted gateway keeps all
 * of it (it is the cluster's, not the gateway's).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { networkInterfaces } from 'node:os';
import { describe, it } from 'node:test';
import { jetstream } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { connectCluster } from '../src/cluster/connection.js';
import { WHERE_SUBJECT } from '../src/cluster/invocation-owners.js';
import { rawRequest } from './helpers/raw-request.js';
import { startNode, stop, type Node } from './helpers/cluster-node.js';
import { lifo, natsUnavailable, startNatsCluster } from './helpers/nats-cluster.js';
import { sandboxUnavailableReason } from './helpers/server.js';
import { waitFor } from './helpers/wait.js';

const unavailable = natsUnavailable || ((await sandboxUnavailableReason()) ?? false);
const ECHO = { runtime: 'node', handler: 'handler', code: 'exports.handler = async (event) => "got " + event' };

async function call(node: Node, method: string, path: string, key: string | null, body?: unknown): Promise<{ status: number; json: Record<string, unknown>; node: string | null; text: string }> {
  const response = await fetch(`${node.url}${path}`, {
    method,
    headers: { ...(key === null ? {} : { authorization: `Bearer ${key}` }), ...(body === undefined ? {} : { 'content-type': typeof body === 'string' ? 'text/plain' : 'application/json' }) },
    ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
  });
  const text = await response.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    // a plain answer (a function's output)
  }
  return { status: response.status, json, node: response.headers.get('x-kindling-node'), text };
}

describe('serve --cluster: several gateways', { skip: unavailable }, () => {
  it('two gateways share tenants, keys and functions; a revoked key and a deleted function are gone at both; a restarted gateway keeps them', { timeout: 180_000 }, async (context) => {
    const t = lifo(context);
    const nats = await startNatsCluster(t, { nodes: 1 });
    const natsUrl = nats.urls[0] as string;
    let a = await startNode(t, natsUrl, 'gateway', 'gw-a');
    let b = await startNode(t, natsUrl, 'gateway', 'gw-b');
    const worker = await startNode(t, natsUrl, 'worker', 'wk-1');
    await waitFor(async () => (await fetch(`${a.url}/readyz`)).status === 200 && (await fetch(`${b.url}/readyz`)).status === 200, { timeoutMs: 30_000, what: 'both gateways to see the worker' });

    // A tenant made through A (the first one turns auth on and returns the admin key) is known to B.
    const made = await call(a, 'POST', '/v1/tenants', null, { name: 'acme', quotas: { maxConcurrency: 3 } });
    assert.equal(made.status, 201, made.text);
    const adminKey = String(made.json.adminKey);
    const acmeKey = String(made.json.apiKey);
    await waitFor(async () => (await call(b, 'GET', '/v1/tenant', acmeKey)).status === 200, { timeoutMs: 10_000, what: "acme's key to work at B" });
    assert.equal((await call(b, 'GET', '/v1/tenant', null)).status, 401, 'auth is on at B too: keys exist in the cluster');
    assert.equal((await call(b, 'GET', '/v1/tenants/acme', adminKey)).json.effectiveQuotas !== undefined, true, 'the admin key works at B');

    // Deployed through B, invoked through A: it runs on the worker.
    const deployed = await call(b, 'PUT', '/v1/functions/echo', acmeKey, ECHO);
    assert.equal(deployed.status, 201, deployed.text);
    const invoked = await call(a, 'POST', '/v1/functions/echo/invoke', acmeKey, 'x');
    assert.equal(invoked.status, 200, invoked.text);
    assert.equal(invoked.text, 'got x');
    assert.equal(invoked.node, worker.name);
    // A second version through A: B serves it at once after A's answer reached B's copy.
    assert.equal((await call(a, 'PUT', '/v1/functions/echo', acmeKey, { ...ECHO, code: 'exports.handler = async (event) => "v2 " + event' })).status, 200);
    await waitFor(async () => (await call(b, 'POST', '/v1/functions/echo/invoke', acmeKey, 'y')).text === 'v2 y', { timeoutMs: 10_000, what: 'version 2 through B' });
    const versions = await call(b, 'GET', '/v1/functions/echo/versions', acmeKey);
    assert.deepEqual((versions.json.versions as { version: number }[]).map((v) => v.version), [1, 2]);
    // Another tenant does not see acme's function through either gateway.
    const other = await call(b, 'POST', '/v1/tenants', adminKey, { name: 'other' });
    assert.equal(other.status, 201, other.text);
    assert.equal((await call(a, 'POST', '/v1/functions/echo/invoke', String(other.json.apiKey), 'x')).status, 404);

    // An async invocation accepted by A is read through B (forwarded to A, which holds its record): status, output, logs.
    const accepted = await fetch(`${a.url}/v1/functions/echo/invoke`, { method: 'POST', headers: { authorization: `Bearer ${acmeKey}`, 'x-kindling-async': 'true', 'content-type': 'text/plain' }, body: 'later' });
    assert.equal(accepted.status, 202);
    const invocationId = String(((await accepted.json()) as { invocationId: string }).invocationId);
    await waitFor(async () => (await call(b, 'GET', `/v1/invocations/${invocationId}`, acmeKey)).json.status === 'succeeded', { timeoutMs: 20_000, what: 'the invocation read through B' });
    const viaB = await call(b, 'GET', `/v1/invocations/${invocationId}`, acmeKey);
    assert.equal(viaB.status, 200);
    assert.equal(viaB.json.id, invocationId);
    const output = await fetch(`${b.url}/v1/invocations/${invocationId}/output`, { headers: { authorization: `Bearer ${acmeKey}` } });
    assert.equal(output.status, 200);
    assert.equal(output.headers.get('x-kindling-answered-by'), 'gw-a');
    assert.equal(output.headers.get('x-kindling-status'), 'succeeded');
    assert.equal(await output.text(), 'v2 later');
    const logs = await call(b, 'GET', `/v1/invocations/${invocationId}/logs`, acmeKey);
    assert.equal(logs.status, 200);
    assert.match(logs.text, /event: end/);
    // Not for another tenant, and an unknown id is a 404 from both, soon.
    assert.equal((await call(b, 'GET', `/v1/invocations/${invocationId}`, String(other.json.apiKey))).status, 404);
    const asked = performance.now();
    const unknown = await call(b, 'GET', '/v1/invocations/inv_unknown', acmeKey);
    assert.equal(unknown.status, 404);
    assert.equal((unknown.json.error as { code: string }).code, 'NOT_FOUND');
    // A generous bound: the question waits at most 1 s for the gateways' answers.
    assert.ok(performance.now() - asked < 3_000, `an unknown id answered in ${Math.round(performance.now() - asked)} ms`);
    // A request target in absolute form names another host: the forward goes to the holder all the same (built from
    // the route and the id), never there.
    let trapped = 0;
    const trap = createServer((_request, response) => {
      trapped++;
      response.end('trap');
    });
    await new Promise<void>((resolve) => trap.listen(0, '127.0.0.1', resolve));
    t.after(() => new Promise<void>((resolve) => trap.close(() => resolve())));
    const trapUrl = `http://127.0.0.1:${(trap.address() as AddressInfo).port}`;
    const absolute = await rawRequest(b.url, 'GET', `${trapUrl}/v1/invocations/${invocationId}`, undefined, { authorization: `Bearer ${acmeKey}` });
    assert.equal(absolute.status, 200, absolute.text);
    assert.equal(absolute.headers['x-kindling-answered-by'], 'gw-a');
    // An answer on NATS from no registered gateway (a forged one) is ignored: the caller's key never goes there.
    const forger = await connectCluster([natsUrl]);
    t.after(() => forger.close());
    forger.nc.subscribe(WHERE_SUBJECT, {
      callback: (_error, msg) => {
        msg.respond(JSON.stringify({ nodeId: 'gw-evil', url: trapUrl, view: { id: 'forged' } }));
      },
    });
    await forger.nc.flush();
    assert.equal((await call(b, 'GET', '/v1/invocations/inv_forged', acmeKey)).status, 404);
    assert.equal((await call(b, 'GET', `/v1/invocations/${invocationId}`, acmeKey)).status, 200, 'the real holder still answers');
    assert.equal(trapped, 0, 'nothing reached an address no gateway registered');

    // An Idempotency-Key holds across gateways: the same key through B (and through both at once) is the first invocation.
    const enqueue = async (gateway: Node, key: string): Promise<{ status: number; id: string; replay: string | null }> => {
      const response = await fetch(`${gateway.url}/v1/functions/echo/invoke`, { method: 'POST', headers: { authorization: `Bearer ${acmeKey}`, 'x-kindling-async': 'true', 'idempotency-key': key, 'content-type': 'text/plain' }, body: 'once' });
      return { status: response.status, id: String(((await response.json()) as { invocationId: string }).invocationId), replay: response.headers.get('x-kindling-idempotent-replay') };
    };
    const first = await enqueue(a, 'order-1');
    assert.equal(first.status, 202);
    const again = await enqueue(b, 'order-1');
    assert.equal(again.status, 202);
    assert.equal(again.id, first.id, 'the same key through the other gateway names the first invocation');
    assert.equal(again.replay, 'true');
    assert.notEqual((await enqueue(b, 'order-2')).id, first.id, 'another key is another invocation');
    const racing = await Promise.all(Array.from({ length: 8 }, (_, i) => enqueue(i % 2 === 0 ? a : b, 'order-3')));
    assert.equal(new Set(racing.map((one) => one.id)).size, 1, `one invocation for 8 racing requests: ${racing.map((one) => one.id).join(', ')}`);
    assert.equal(racing.filter((one) => one.replay === null).length, 1, 'exactly one of them created it');

    // A claim whose gateway stopped between claiming the key and storing the invocation (written here as it would
    // be left) is taken over once that gateway answers that it has no such invocation; one by a gateway that does not
    // answer is a retryable 503 (it may hold the invocation).
    const claimsBucket = await new Kvm(jetstream(forger.nc)).open('KINDLING_IDEMPOTENCY');
    const claimKey = (key: string): string => `acme.echo.${createHash('sha256').update(key).digest('hex').slice(0, 40)}`;
    const claimOf = async (key: string): Promise<{ id: string; nodeId?: string } | undefined> => (await claimsBucket.get(claimKey(key)))?.json<{ id: string; nodeId?: string }>();
    await claimsBucket.put(claimKey('order-4'), JSON.stringify({ id: 'inv_never_stored_a', nodeId: 'gw-a' }));
    const overB = await enqueue(b, 'order-4');
    assert.equal(overB.status, 202);
    assert.equal(overB.replay, null, 'a new invocation, not a replay of one that does not exist');
    assert.equal((await claimOf('order-4'))?.id, overB.id, 'the claim now names it');
    assert.equal((await enqueue(a, 'order-4')).id, overB.id, 'and the key names it at every gateway');
    await claimsBucket.put(claimKey('order-5'), JSON.stringify({ id: 'inv_never_stored_b', nodeId: 'gw-b' }));
    const ownOrphan = await enqueue(b, 'order-5');
    assert.equal(ownOrphan.replay, null, "the gateway's own orphaned claim is taken over at once");
    assert.equal((await claimOf('order-5'))?.id, ownOrphan.id);
    await claimsBucket.put(claimKey('order-6'), JSON.stringify({ id: 'inv_somewhere', nodeId: 'gw-silent' }));
    const silent = await fetch(`${a.url}/v1/functions/echo/invoke`, { method: 'POST', headers: { authorization: `Bearer ${acmeKey}`, 'x-kindling-async': 'true', 'idempotency-key': 'order-6' }, body: 'x' });
    assert.equal(silent.status, 503);
    assert.equal(((await silent.json()) as { error: { code: string } }).error.code, 'CLUSTER_UNAVAILABLE');
    // A claim that names another id while this gateway's store has the key (an invocation stored before the claim):
    // the store's invocation is the answer, and the claim is made to name it for the other gateways.
    await claimsBucket.put(claimKey('order-1'), JSON.stringify({ id: 'inv_stale', nodeId: 'gw-a' }));
    assert.equal((await enqueue(a, 'order-1')).id, first.id, "the store's invocation for the key");
    assert.equal((await claimOf('order-1'))?.id, first.id, 'the claim names it again');
    assert.equal((await enqueue(b, 'order-1')).id, first.id);

    // GET /v1/invocations at either gateway lists both gateways' invocations, merged newest first, the same at both.
    const listAt = async (gateway: Node, query = '', key = acmeKey): Promise<string[]> => {
      const listed = await call(gateway, 'GET', `/v1/invocations${query}`, key);
      assert.equal(listed.status, 200, listed.text);
      return (listed.json.invocations as { id: string }[]).map((view) => view.id);
    };
    const atA = await listAt(a);
    const atB = await listAt(b);
    assert.deepEqual(atA, atB, 'both gateways list the same invocations in the same order');
    for (const id of [first.id, overB.id, ownOrphan.id]) assert.ok(atA.includes(id), `${id} (accepted by ${id === first.id ? 'A' : 'B'}) is listed`);
    assert.deepEqual(await listAt(b, '?limit=2'), atA.slice(0, 2), 'a limit takes the newest of all gateways');
    assert.deepEqual(await listAt(b, '?function=echo&limit=1000'), atA, "the filter (acme's only function) passes to every gateway");
    assert.deepEqual(await listAt(b, '?function=nothing'), [], 'and is applied by each');
    assert.deepEqual(await listAt(a, '', String(other.json.apiKey)), [], "another tenant's list holds none of them");

    // Usage metered by either gateway is seen at both (the usage stream): the same totals through A and B.
    const usageAt = async (gateway: Node): Promise<{ invocations: number; cpuMs: number }> => {
      const rows = (await call(gateway, 'GET', '/v1/usage?groupBy=function', acmeKey)).json.rows as { function: string; invocations: number; cpuMs: number }[];
      return rows.find((row) => row.function === 'echo') ?? { invocations: 0, cpuMs: 0 };
    };
    await waitFor(async () => {
      const [atA, atB] = [await usageAt(a), await usageAt(b)];
      return atA.invocations >= 3 && atA.invocations === atB.invocations && atA.cpuMs === atB.cpuMs;
    }, { timeoutMs: 10_000, what: 'the same usage of echo at both gateways' });

    // A key revoked through A is refused by B within moments.
    const second = await call(b, 'POST', '/v1/tenants/acme/keys', adminKey);
    assert.equal(second.status, 201, second.text);
    const revoked = await call(a, 'DELETE', `/v1/tenants/acme/keys/${String(made.json.keyId)}`, adminKey);
    assert.equal(revoked.status, 204, revoked.text);
    await waitFor(async () => (await call(b, 'GET', '/v1/tenant', acmeKey)).status === 401, { timeoutMs: 5_000, what: 'the revoked key refused at B within 5 s' });
    const secondKey = String(second.json.apiKey);
    assert.equal((await call(a, 'GET', '/v1/tenant', secondKey)).status, 200, 'the key made through B works at A');

    // Restarted, B keeps what the cluster has (and takes the change made while it was down).
    await stop(b.child, 'SIGTERM');
    assert.equal((await call(a, 'PUT', '/v1/functions/later', secondKey, ECHO)).status, 201);
    b = await startNode(t, natsUrl, 'gateway', 'gw-b', b.dataDir);
    assert.equal((await call(b, 'GET', '/v1/tenant', acmeKey)).status, 401, 'still revoked after the restart');
    assert.equal((await call(b, 'GET', '/v1/tenant', secondKey)).status, 200);
    const listed = await call(b, 'GET', '/v1/functions', secondKey);
    assert.deepEqual((listed.json.functions as { name: string }[]).map((fn) => fn.name).sort(), ['echo', 'later']);

    // Every gateway restarted (both down at once): the cluster still has it all.
    await stop(a.child, 'SIGTERM');
    await stop(b.child, 'SIGTERM');
    a = await startNode(t, natsUrl, 'gateway', 'gw-a', a.dataDir);
    b = await startNode(t, natsUrl, 'gateway', 'gw-b', b.dataDir);
    for (const gateway of [a, b]) {
      assert.equal((await call(gateway, 'GET', '/v1/tenant', acmeKey)).status, 401, `${gateway.name}: the revoked key stays refused`);
      assert.equal((await call(gateway, 'GET', '/v1/tenant', secondKey)).status, 200, `${gateway.name}: the live key works`);
      assert.equal((await call(gateway, 'GET', '/v1/tenants', adminKey)).status, 200, `${gateway.name}: the admin key works`);
    }
    await waitFor(async () => (await fetch(`${a.url}/readyz`)).status === 200, { timeoutMs: 30_000, what: 'A to see the worker again' });
    assert.equal((await call(a, 'POST', '/v1/functions/later/invoke', secondKey, 'z')).text, 'got z');

    // Deleted through B: a 404 at A.
    assert.equal((await call(b, 'DELETE', '/v1/functions/echo', secondKey)).status, 204);
    await waitFor(async () => (await call(a, 'POST', '/v1/functions/echo/invoke', secondKey, 'x')).status === 404, { timeoutMs: 5_000, what: "B's delete at A" });
  });

  // Gateways on every address advertise an IP address (the host guard takes those; a host name would be refused).
  const external = Object.values(networkInterfaces()).flat().some((address) => address?.family === 'IPv4' && !address.internal);
  it('gateways listening on every address forward invocation reads to each other', { timeout: 180_000, skip: external ? false : 'this machine has no external IPv4 address to advertise' }, async (context) => {
    const t = lifo(context);
    const nats = await startNatsCluster(t, { nodes: 1 });
    const natsUrl = nats.urls[0] as string;
    const adminKey = 'kdl_admin-for-the-every-address-test';
    const env = { KINDLING_ADMIN_KEY: adminKey };
    const a = await startNode(t, natsUrl, 'gateway', 'gw-a', undefined, env, ['--host', '0.0.0.0']);
    const b = await startNode(t, natsUrl, 'gateway', 'gw-b', undefined, env, ['--host', '0.0.0.0']);
    await startNode(t, natsUrl, 'worker', 'wk-1');
    await waitFor(async () => (await fetch(`${a.url}/readyz`)).status === 200 && (await fetch(`${b.url}/readyz`)).status === 200, { timeoutMs: 30_000, what: 'both gateways to see the worker' });
    assert.equal((await call(a, 'PUT', '/v1/functions/echo', adminKey, ECHO)).status, 201);
    const accepted = await fetch(`${a.url}/v1/functions/echo/invoke`, { method: 'POST', headers: { authorization: `Bearer ${adminKey}`, 'x-kindling-async': 'true', 'content-type': 'text/plain' }, body: 'far' });
    assert.equal(accepted.status, 202);
    const id = String(((await accepted.json()) as { invocationId: string }).invocationId);
    await waitFor(async () => (await call(b, 'GET', `/v1/invocations/${id}`, adminKey)).json.status === 'succeeded', { timeoutMs: 20_000, what: 'the invocation read through B' });
    const output = await fetch(`${b.url}/v1/invocations/${id}/output`, { headers: { authorization: `Bearer ${adminKey}` } });
    assert.equal(output.status, 200);
    assert.equal(output.headers.get('x-kindling-answered-by'), 'gw-a');
    assert.equal(await output.text(), 'got far');
  });

  it("a tenant's concurrency quota of 4 and a function's maxConcurrency hold across two gateways", { timeout: 180_000 }, async (context) => {
    const t = lifo(context);
    const nats = await startNatsCluster(t, { nodes: 1 });
    const natsUrl = nats.urls[0] as string;
    const a = await startNode(t, natsUrl, 'gateway', 'gw-a');
    const b = await startNode(t, natsUrl, 'gateway', 'gw-b');
    await startNode(t, natsUrl, 'worker', 'wk-1');
    await waitFor(async () => (await fetch(`${a.url}/readyz`)).status === 200 && (await fetch(`${b.url}/readyz`)).status === 200, { timeoutMs: 30_000, what: 'both gateways to see the worker' });
    const made = await call(a, 'POST', '/v1/tenants', null, { name: 'busy', quotas: { maxConcurrency: 4 } });
    assert.equal(made.status, 201, made.text);
    const key = String(made.json.apiKey);
    // Each call says when it ran (the host's clock: sandboxes share it), so overlaps can be counted afterwards.
    const deployed = await call(a, 'PUT', '/v1/functions/slow', key, {
      runtime: 'node',
      handler: 'handler',
      maxConcurrency: 16,
      code: 'exports.handler = async () => { const start = Date.now(); await new Promise((r) => setTimeout(r, 300)); return JSON.stringify({ start, end: Date.now() }); }',
    });
    assert.equal(deployed.status, 201, deployed.text);
    await waitFor(async () => (await call(b, 'GET', '/v1/functions/slow', key)).status === 200, { timeoutMs: 10_000, what: 'the function at B' });
    const intervals: { start: number; end: number }[] = [];
    let refused = 0;
    await Promise.all(
      Array.from({ length: 40 }, async (_, i) => {
        // Half the clients at each gateway; each retries its call until it ran (429 is the quota saying no).
        for (;;) {
          const response = await call(i % 2 === 0 ? a : b, 'POST', '/v1/functions/slow/invoke', key, 'x');
          if (response.status === 429) {
            assert.equal((response.json.error as { code: string }).code, 'TENANT_CONCURRENCY_LIMIT');
            refused++;
            await new Promise((resolve) => setTimeout(resolve, 20 + Math.random() * 40));
            continue;
          }
          assert.equal(response.status, 200, response.text);
          intervals.push(JSON.parse(response.text) as { start: number; end: number });
          return;
        }
      }),
    );
    const edges = intervals.flatMap((run) => [{ at: run.start, d: 1 }, { at: run.end, d: -1 }]).sort((x, y) => x.at - y.at || x.d - y.d);
    let running = 0;
    let most = 0;
    for (const edge of edges) most = Math.max(most, (running += edge.d));
    assert.equal(intervals.length, 40);
    assert.ok(most <= 4, `at most 4 ran at once across both gateways, saw ${most}`);
    assert.ok(most >= 2, `calls did run side by side (${most})`);
    assert.ok(refused > 0, 'the quota refused calls beyond it');

    // A function's own maxConcurrency holds across the gateways too: with no queue, of two calls at once (one at each)
    // one runs and the other is refused; with a queue, calls wait for the slot whichever gateway holds it.
    const timed = (ms: number): string => `exports.handler = async () => { const start = Date.now(); await new Promise((r) => setTimeout(r, ${ms})); return JSON.stringify({ start, end: Date.now() }); }`;
    for (const [name, spec] of [
      ['single', { runtime: 'node', handler: 'handler', maxConcurrency: 1, maxQueued: 0, code: timed(1_000) }],
      ['serial', { runtime: 'node', handler: 'handler', maxConcurrency: 1, maxQueued: 4, code: timed(200) }],
    ] as const) {
      assert.equal((await call(a, 'PUT', `/v1/functions/${name}`, key, spec)).status, 201);
      await waitFor(async () => (await call(b, 'GET', `/v1/functions/${name}`, key)).status === 200, { timeoutMs: 10_000, what: `${name} at B` });
    }
    const pair = await Promise.all([a, b].map((gateway) => call(gateway, 'POST', '/v1/functions/single/invoke', key, 'x')));
    assert.deepEqual(pair.map((response) => response.status).sort(), [200, 429], pair.map((response) => response.text).join(' | '));
    const refusal = pair.find((response) => response.status === 429)!;
    assert.equal((refusal.json.error as { code: string }).code, 'TOO_MANY_REQUESTS');
    assert.match((refusal.json.error as { message: string }).message, /across the cluster's gateways/);
    const serial = await Promise.all(Array.from({ length: 4 }, (_, i) => call(i % 2 === 0 ? a : b, 'POST', '/v1/functions/serial/invoke', key, 'x')));
    assert.deepEqual(serial.map((response) => response.status), [200, 200, 200, 200], serial.map((response) => response.text).join(' | '));
    const runs = serial.map((response) => JSON.parse(response.text) as { start: number; end: number }).sort((x, y) => x.start - y.start);
    for (let i = 1; i < runs.length; i++) assert.ok(runs[i]!.start >= runs[i - 1]!.end, `the calls of a function with maxConcurrency 1 never overlap: ${JSON.stringify(runs)}`);
  });
});
