/**
 * Several gateways (`serve --cluster --role gateway`, separate processes) on one nats-server share tenants, API keys
 * and functions: what is created or deployed through one is served through the other, a key revoked through one is
 * refused by the other within moments, a delete through one is a 404 at the other, and a restarted gateway keeps all
 * of it (it is the cluster's, not the gateway's).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
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
    const a = await startNode(t, natsUrl, 'gateway', 'gw-a');
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

    // A key revoked through A is refused by B within moments.
    const second = await call(b, 'POST', '/v1/tenants/acme/keys', adminKey);
    assert.equal(second.status, 201, second.text);
    const revoked = await call(a, 'DELETE', `/v1/tenants/acme/keys/${String(made.json.keyId)}`, adminKey);
    assert.equal(revoked.status, 204, revoked.text);
    const revokedAt = performance.now();
    await waitFor(async () => (await call(b, 'GET', '/v1/tenant', acmeKey)).status === 401, { timeoutMs: 5_000, what: 'the revoked key refused at B' });
    assert.ok(performance.now() - revokedAt < 5_000);
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

    // Deleted through B: a 404 at A.
    assert.equal((await call(b, 'DELETE', '/v1/functions/echo', secondKey)).status, 204);
    await waitFor(async () => (await call(a, 'POST', '/v1/functions/echo/invoke', secondKey, 'x')).status === 404, { timeoutMs: 5_000, what: "B's delete at A" });
  });
});
