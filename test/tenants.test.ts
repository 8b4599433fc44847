/**
 * Tenants, API keys and quotas against real servers on the sandbox executor: the admin key (generated and shown once,
 * stored hashed; from the environment; open local mode until the first tenant), principals and admin-only routes,
 * revocation, isolation of functions, invocations, logs, usage and pools (404, never 403, for another tenant's
 * names), per-tenant quotas (concurrency, a refilling token bucket, caps on limits, payload size).
 */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { WebSocket } from 'ws';
import { sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const sandboxMissing = await sandboxUnavailableReason();

interface Answer {
  status: number;
  headers: Headers;
  body: Record<string, unknown> & { error?: { code: string; message: string } };
  text: string;
}

/**
 * A sync execution of the tenant that holds one of its slots until `release()`: `cat` reads the streamed request body
 * until the client ends it. (A `sleep N` held the slot for a guessed time the rest of the test had to fit in.)
 */
function holdSlot(url: string, key: string): { release: () => Promise<number> } {
  const target = new URL('/v1/execute', url);
  const spec = { image: 'kindling/base', command: ['sh', '-c', 'cat >/dev/null'], timeoutMs: 300_000 };
  const req = httpRequest({
    host: target.hostname,
    port: target.port,
    path: target.pathname,
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/octet-stream', 'x-kindling-spec': JSON.stringify(spec) },
  });
  const answered = new Promise<number>((resolve, reject) => {
    req.on('response', (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
  answered.catch(() => undefined); // awaited by release()
  req.write('held');
  return {
    release: () => {
      req.end();
      return answered;
    },
  };
}

async function call(url: string, key: string | null, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Answer> {
  const response = await fetch(url + path, {
    method,
    headers: {
      ...(key ? { authorization: `Bearer ${key}` } : {}),
      ...(body === undefined || typeof body === 'string' ? {} : { 'content-type': 'application/json' }),
      ...headers,
    },
    ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
  });
  const text = await response.text();
  let parsed: Answer['body'] = {};
  try {
    parsed = JSON.parse(text) as Answer['body'];
  } catch {
    // raw output
  }
  return { status: response.status, headers: response.headers, body: parsed, text };
}

/** Every byte the server keeps in its data dir (the db, its WAL, anything else), to look for secrets in. */
async function dataDirBytes(dir: string): Promise<Buffer> {
  const files = await readdir(dir, { recursive: true, withFileTypes: true });
  const chunks = await Promise.all(files.filter((file) => file.isFile()).map((file) => readFile(join(file.parentPath, file.name)).catch(() => Buffer.alloc(0))));
  return Buffer.concat(chunks);
}

const ECHO = (text: string) => ({ image: 'kindling/base', command: ['sh', '-c', `cat >/dev/null; echo ${text}`] });

describe('admin key and auth modes', { skip: sandboxMissing ?? false }, () => {
  it('open local mode until the first tenant: that creation returns the admin key once, then auth is on and stays on after a restart', async () => {
    let server: TestServer | null = await startTestServer({ executor: 'sandbox' });
    const dataDir = server.dataDir;
    try {
      // No keys, loopback: anonymous requests act as the admin of `default`.
      const me = await call(server.url, null, 'GET', '/v1/tenant');
      assert.equal(me.status, 200);
      assert.equal(me.body.name, 'default');
      assert.equal(me.body.admin, true);
      assert.equal(me.body.authEnabled, false);
      const created = await call(server.url, null, 'POST', '/v1/tenants', { name: 'acme' });
      assert.equal(created.status, 201, created.text);
      const adminKey = created.body.adminKey as string;
      const acmeKey = created.body.apiKey as string;
      assert.match(adminKey, /^kdl_[A-Za-z0-9_-]{43}$/, 'kdl_ + 32 random bytes, base64url');
      assert.match(acmeKey, /^kdl_[A-Za-z0-9_-]{43}$/);
      assert.notEqual(adminKey, acmeKey);
      // Auth is on now: anonymous gets 401, the keys work.
      assert.equal((await call(server.url, null, 'GET', '/v1/functions')).status, 401);
      assert.equal((await call(server.url, adminKey, 'GET', '/v1/tenants')).status, 200);
      const acme = await call(server.url, acmeKey, 'GET', '/v1/tenant');
      assert.equal(acme.body.name, 'acme');
      assert.equal(acme.body.admin, false);
      // A second creation does not hand out the admin key again.
      const second = await call(server.url, adminKey, 'POST', '/v1/tenants', { name: 'globex' });
      assert.equal(second.status, 201);
      assert.equal(second.body.adminKey, undefined);
      // Stored hashed: no key is anywhere in the data dir, its sha256 is.
      const bytes = await dataDirBytes(dataDir);
      for (const key of [adminKey, acmeKey, second.body.apiKey as string]) {
        assert.equal(bytes.includes(key), false, 'the key itself is never stored');
        assert.equal(bytes.includes(key.slice(4)), false, 'nor its random part');
      }
      const { createHash } = await import('node:crypto');
      assert.ok(bytes.includes(createHash('sha256').update(acmeKey).digest('hex')), 'its sha256 is');

      // A restart with stored keys keeps auth on.
      await server.close();
      server = await startTestServer({ executor: 'sandbox', dataDir });
      assert.equal((await call(server.url, null, 'GET', '/v1/functions')).status, 401);
      assert.equal((await call(server.url, acmeKey, 'GET', '/v1/functions')).status, 200);
      assert.equal((await call(server.url, adminKey, 'GET', '/v1/tenants')).status, 200);

      // The only admin key cannot be revoked (nothing could make another one); with a second one it can. /metrics
      // names every tenant's functions: with auth on it needs the admin key.
      const keys = (await call(server.url, adminKey, 'GET', '/v1/tenants/default/keys')).body.keys as { id: string; admin: boolean; revokedAt: string | null }[];
      const adminId = keys.find((key) => key.admin && key.revokedAt === null)!.id;
      const refused = await call(server.url, adminKey, 'DELETE', `/v1/tenants/default/keys/${adminId}`);
      assert.equal(refused.status, 409);
      assert.equal(refused.body.error?.code, 'LAST_ADMIN_KEY');
      assert.match(refused.body.error!.message, /KINDLING_ADMIN_KEY/);
      assert.equal((await call(server.url, adminKey, 'GET', '/v1/tenants')).status, 200, 'the admin key still works');
      assert.equal((await call(server.url, null, 'GET', '/metrics')).status, 401);
      assert.equal((await call(server.url, acmeKey, 'GET', '/metrics')).status, 401, 'a tenant key does not read every tenant\'s metrics');
      assert.equal((await call(server.url, adminKey, 'GET', '/metrics')).status, 200);
    } finally {
      await server?.stop();
    }
  });

  it('a non-loopback first start generates the admin key, shown once (not again after a restart)', async () => {
    const shown: string[] = [];
    let server: TestServer | null = await startTestServer({ executor: 'sandbox', host: '0.0.0.0', announceAdminKey: (key) => shown.push(key) });
    const dataDir = server.dataDir;
    try {
      assert.equal(shown.length, 1);
      const url = server.url.replace('0.0.0.0', '127.0.0.1');
      assert.equal((await call(url, null, 'GET', '/v1/tenant')).status, 401);
      const me = await call(url, shown[0]!, 'GET', '/v1/tenant');
      assert.equal(me.body.admin, true);
      assert.equal((await dataDirBytes(dataDir)).includes(shown[0]!), false);
      await server.close();
      server = await startTestServer({ executor: 'sandbox', host: '0.0.0.0', dataDir, announceAdminKey: (key) => shown.push(key) });
      assert.equal(shown.length, 1, 'a restart with a stored key makes no new one');
      assert.equal((await call(server.url.replace('0.0.0.0', '127.0.0.1'), shown[0]!, 'GET', '/v1/tenants')).status, 200);
    } finally {
      await server?.stop();
    }
  });

  it('KINDLING_ADMIN_KEY is the admin key from the start; it can act as another tenant with x-kindling-tenant', async () => {
    const server = await startTestServer({ executor: 'sandbox', adminKey: 'env-admin-key-0123456789' });
    try {
      assert.equal((await call(server.url, null, 'POST', '/v1/tenants', { name: 'x' })).status, 401);
      const created = await call(server.url, 'env-admin-key-0123456789', 'POST', '/v1/tenants', { name: 'acme' });
      assert.equal(created.status, 201);
      assert.equal(created.body.adminKey, undefined, 'the admin key exists already');
      const as = await call(server.url, 'env-admin-key-0123456789', 'GET', '/v1/tenant', undefined, { 'x-kindling-tenant': 'acme' });
      assert.equal(as.body.name, 'acme');
      assert.equal(as.body.admin, true);
      const missing = await call(server.url, 'env-admin-key-0123456789', 'GET', '/v1/functions', undefined, { 'x-kindling-tenant': 'nope' });
      assert.equal(missing.status, 404);
      assert.equal(missing.body.error?.code, 'TENANT_NOT_FOUND');
      // A tenant key may not act as another tenant.
      const forbidden = await call(server.url, created.body.apiKey as string, 'GET', '/v1/functions', undefined, { 'x-kindling-tenant': 'default' });
      assert.equal(forbidden.status, 403);
      assert.equal(forbidden.body.error?.code, 'FORBIDDEN');
    } finally {
      await server.stop();
    }
  });
});

describe('tenants: admin routes, keys, isolation, quotas (sandbox executor)', { skip: sandboxMissing ?? false }, () => {
  let server: TestServer;
  const ADMIN = 'tenants-test-admin-key-0123456789';
  let keyA = '';
  let keyB = '';
  before(async () => {
    server = await startTestServer({ executor: 'sandbox', adminKey: ADMIN });
    keyA = (await call(server.url, ADMIN, 'POST', '/v1/tenants', { name: 'alpha' })).body.apiKey as string;
    keyB = (await call(server.url, ADMIN, 'POST', '/v1/tenants', { name: 'beta' })).body.apiKey as string;
  });
  after(async () => {
    await server.stop();
  });
  /** A tenant of this test's own (no test relies on what another test made): its name and key. */
  let tenantCount = 0;
  const newTenant = async (prefix: string, quotas?: Record<string, number>): Promise<{ name: string; key: string }> => {
    const name = `${prefix}-${++tenantCount}`;
    const made = await call(server.url, ADMIN, 'POST', '/v1/tenants', { name, ...(quotas ? { quotas } : {}) });
    assert.equal(made.status, 201, made.text);
    return { name, key: made.body.apiKey as string };
  };

  it('admin-only routes answer 403 FORBIDDEN to a tenant key', async () => {
    for (const [method, path, body] of [
      ['GET', '/v1/tenants'],
      ['POST', '/v1/tenants', { name: 'evil' }],
      ['GET', '/v1/tenants/alpha'],
      ['PATCH', '/v1/tenants/alpha', { quotas: { maxConcurrency: 100 } }],
      ['DELETE', '/v1/tenants/beta'],
      ['POST', '/v1/tenants/alpha/keys'],
      ['GET', '/v1/tenants/alpha/keys'],
    ] as [string, string, unknown?][]) {
      const answer = await call(server.url, keyA, method, path, body);
      assert.equal(answer.status, 403, `${method} ${path}: ${answer.text}`);
      assert.equal(answer.body.error?.code, 'FORBIDDEN');
    }
    assert.equal((await call(server.url, ADMIN, 'GET', '/v1/tenants/beta')).status, 200, 'beta is still there');
  });

  it('validates tenants: names, reserved default, duplicates, unknown quotas', async () => {
    assert.equal((await call(server.url, ADMIN, 'POST', '/v1/tenants', { name: 'Bad Name' })).body.error?.code, 'VALIDATION_FAILED');
    assert.equal((await call(server.url, ADMIN, 'POST', '/v1/tenants', { name: 'default' })).status, 409);
    assert.equal((await call(server.url, ADMIN, 'POST', '/v1/tenants', { name: 'alpha' })).body.error?.code, 'TENANT_EXISTS');
    assert.equal((await call(server.url, ADMIN, 'POST', '/v1/tenants', { name: 'q', quotas: { maxConcurrency: 0 } })).body.error?.code, 'LIMIT_OUT_OF_RANGE');
    assert.equal((await call(server.url, ADMIN, 'POST', '/v1/tenants', { name: 'q', quotas: { cores: 1 } })).status, 400);
    assert.equal((await call(server.url, ADMIN, 'DELETE', '/v1/tenants/default')).status, 400);
    assert.equal((await call(server.url, ADMIN, 'DELETE', '/v1/tenants/nobody')).body.error?.code, 'TENANT_NOT_FOUND');
    const names = ((await call(server.url, ADMIN, 'GET', '/v1/tenants')).body.tenants as { name: string }[]).map((t) => t.name);
    assert.ok(['alpha', 'beta', 'default'].every((name) => names.includes(name)), names.join(','));
    assert.deepEqual(names, [...names].sort(), 'listed by name');
    assert.ok(!names.includes('q'), 'no refused tenant was made');
  });

  it('keys: a second key works, listings never show a key, a revoked key gets 401 on the very next request', async () => {
    const { name, key: first } = await newTenant('keys');
    const made = await call(server.url, ADMIN, 'POST', `/v1/tenants/${name}/keys`);
    assert.equal(made.status, 201);
    const second = made.body.apiKey as string;
    assert.equal((await call(server.url, second, 'GET', '/v1/tenant')).body.name, name);
    const keys = await call(server.url, ADMIN, 'GET', `/v1/tenants/${name}/keys`);
    const listed = keys.body.keys as { id: string; prefix: string; revokedAt: string | null }[];
    assert.equal(listed.length, 2);
    assert.ok(!keys.text.includes(second) && !keys.text.includes(first), 'a listing never carries a key');
    assert.ok(listed.some((key) => second.startsWith(key.prefix) && key.id === made.body.id));
    assert.equal((await call(server.url, ADMIN, 'DELETE', `/v1/tenants/${name}/keys/${made.body.id as string}`)).status, 204);
    const revoked = await call(server.url, second, 'GET', '/v1/tenant');
    assert.equal(revoked.status, 401);
    assert.equal(revoked.body.error?.code, 'UNAUTHORIZED');
    assert.equal((await call(server.url, first, 'GET', '/v1/tenant')).status, 200, 'the other key of the tenant still works');
    assert.equal((await call(server.url, ADMIN, 'DELETE', `/v1/tenants/${name}/keys/${made.body.id as string}`)).status, 404, 'revoking twice');
    assert.ok(((await call(server.url, ADMIN, 'GET', `/v1/tenants/${name}/keys`)).body.keys as { revokedAt: string | null }[]).some((key) => key.revokedAt !== null));
  });

  it('two tenants both own `hello`; neither sees, invokes, deletes or reads the logs of the other\'s things (404)', async () => {
    const { key: keyA } = await newTenant('iso-a');
    const { key: keyB } = await newTenant('iso-b');
    assert.equal((await call(server.url, keyA, 'PUT', '/v1/functions/hello', ECHO('from-alpha'))).status, 201);
    assert.equal((await call(server.url, keyB, 'PUT', '/v1/functions/hello', ECHO('from-beta'))).status, 201, 'a name per tenant: beta creates its own');
    assert.equal((await call(server.url, keyB, 'PUT', '/v1/functions/secret', ECHO('beta-secret'))).status, 201);
    assert.equal((await call(server.url, keyA, 'POST', '/v1/functions/hello/invoke', 'x')).text, 'from-alpha\n');
    assert.equal((await call(server.url, keyB, 'POST', '/v1/functions/hello/invoke', 'x')).text, 'from-beta\n');
    const listA = await call(server.url, keyA, 'GET', '/v1/functions');
    assert.deepEqual((listA.body.functions as { name: string }[]).map((f) => f.name), ['hello']);

    for (const [method, path] of [
      ['GET', '/v1/functions/secret'],
      ['POST', '/v1/functions/secret/invoke'],
      ['DELETE', '/v1/functions/secret'],
      ['GET', '/v1/functions/secret/logs'],
    ]) {
      const answer = await call(server.url, keyA, method!, path!, method === 'POST' ? 'x' : undefined);
      assert.equal(answer.status, 404, `${method} ${path}: ${answer.status}`);
      assert.equal(answer.body.error?.code, 'FUNCTION_NOT_FOUND');
    }
    const asyncAnswer = await call(server.url, keyA, 'POST', '/v1/functions/secret/invoke', 'x', { 'x-kindling-async': 'true' });
    assert.equal(asyncAnswer.status, 404);

    // Beta's async invocation: invisible to alpha.
    const queued = await call(server.url, keyB, 'POST', '/v1/functions/secret/invoke', 'x', { 'x-kindling-async': 'true' });
    assert.equal(queued.status, 202);
    const id = queued.body.invocationId as string;
    await waitFor(async () => (await call(server.url, keyB, 'GET', `/v1/invocations/${id}`)).body.status === 'succeeded', 30_000, 'beta\'s invocation');
    assert.equal((await call(server.url, keyB, 'GET', `/v1/invocations/${id}/output`)).text, 'beta-secret\n');
    for (const path of [`/v1/invocations/${id}`, `/v1/invocations/${id}/output`, `/v1/invocations/${id}/logs`]) {
      const answer = await call(server.url, keyA, 'GET', path);
      assert.equal(answer.status, 404, `${path}: ${answer.status}`);
      assert.equal(answer.body.error?.code, 'NOT_FOUND');
    }
    // Each lists only its own invocations (sync ones are recorded too): alpha its one call of its `hello`; beta its
    // `hello` call and the async `secret`.
    const listed = (await call(server.url, keyA, 'GET', '/v1/invocations')).body.invocations as { id: string; function: string; mode: string }[];
    assert.deepEqual(listed.map((i) => [i.function, i.mode]), [['hello', 'sync']]);
    const listedB = (await call(server.url, keyB, 'GET', '/v1/invocations')).body.invocations as { id: string; function: string; mode: string }[];
    assert.deepEqual(listedB.map((i) => [i.function, i.mode]).sort(), [['hello', 'sync'], ['secret', 'async']]);
    assert.ok(listedB.some((i) => i.id === id));
    // Alpha's sync record is not beta's either.
    const alphaCall = listed[0]!.id;
    assert.equal((await call(server.url, keyB, 'GET', `/v1/invocations/${alphaCall}`)).status, 404);
    // The function still exists for beta.
    assert.equal((await call(server.url, keyB, 'GET', '/v1/functions/secret')).status, 200);
  });

  it('usage records carry the real tenant: a tenant sees only its own, the admin all or one', async () => {
    const a = await newTenant('use-a');
    const b = await newTenant('use-b');
    assert.equal((await call(server.url, a.key, 'PUT', '/v1/functions/mine', ECHO('a'))).status, 201);
    assert.equal((await call(server.url, b.key, 'PUT', '/v1/functions/secret', ECHO('b'))).status, 201);
    assert.equal((await call(server.url, a.key, 'POST', '/v1/functions/mine/invoke', 'x')).text, 'a\n');
    assert.equal((await call(server.url, b.key, 'POST', '/v1/functions/secret/invoke', 'x')).text, 'b\n');
    await waitFor(async () => {
      const rows = (await call(server.url, ADMIN, 'GET', '/v1/usage')).body.rows as { tenant: string }[];
      return rows.some((row) => row.tenant === a.name) && rows.some((row) => row.tenant === b.name);
    }, 10_000, 'usage rows of both tenants');
    const mine = (await call(server.url, a.key, 'GET', '/v1/usage')).body.rows as { tenant: string; function: string }[];
    assert.ok(mine.length > 0);
    assert.ok(mine.every((row) => row.tenant === a.name), JSON.stringify(mine));
    assert.ok(!mine.some((row) => row.function === 'secret'));
    assert.equal((await call(server.url, a.key, 'GET', `/v1/usage?tenant=${b.name}`)).status, 404);
    const recent = (await call(server.url, a.key, 'GET', '/v1/usage/invocations')).body.invocations as { tenant: string }[];
    assert.ok(recent.length > 0 && recent.every((record) => record.tenant === a.name));
    const theirs = (await call(server.url, ADMIN, 'GET', `/v1/usage?tenant=${b.name}`)).body.rows as { tenant: string }[];
    assert.ok(theirs.length > 0 && theirs.every((row) => row.tenant === b.name));
  });

  it('a tenant following its function\'s logs never sees the other tenant\'s invocations of the same name', async () => {
    const { key: keyA } = await newTenant('logs-a');
    const { key: keyB } = await newTenant('logs-b');
    assert.equal((await call(server.url, keyA, 'PUT', '/v1/functions/hello', ECHO('from-alpha'))).status, 201);
    assert.equal((await call(server.url, keyB, 'PUT', '/v1/functions/hello', ECHO('from-beta'))).status, 201);
    const abort = new AbortController();
    const response = await fetch(`${server.url}/v1/functions/hello/logs?follow=true&tail=0`, { headers: { authorization: `Bearer ${keyA}` }, signal: abort.signal });
    assert.equal(response.status, 200);
    const reader = response.body!.getReader();
    let seen = '';
    const reading = (async () => {
      for (;;) {
        const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true }));
        if (done) return;
        seen += Buffer.from(value!).toString('utf8');
      }
    })();
    const beta = await call(server.url, keyB, 'POST', '/v1/functions/hello/invoke', 'x');
    const alpha = await call(server.url, keyA, 'POST', '/v1/functions/hello/invoke', 'x');
    const alphaId = alpha.headers.get('x-kindling-invocation-id')!;
    await waitFor(async () => seen.includes(alphaId), 10_000, 'alpha\'s own invocation in its log stream');
    abort.abort();
    await reading;
    assert.ok(!seen.includes(beta.headers.get('x-kindling-invocation-id')!), 'beta\'s invocation is not in alpha\'s stream');
    assert.ok(!seen.includes('from-beta'));
  });

  it('warm pools: a tenant sees only its own', async () => {
    const handler = { runtime: 'node', code: 'export const handler = (b) => "h:" + b;', handler: 'handler' };
    assert.equal((await call(server.url, keyA, 'PUT', '/v1/functions/warm', handler)).status, 201);
    assert.equal((await call(server.url, keyB, 'PUT', '/v1/functions/warm', handler)).status, 201);
    assert.equal((await call(server.url, keyA, 'POST', '/v1/functions/warm/invoke', 'a')).text, 'h:a');
    assert.equal((await call(server.url, keyB, 'POST', '/v1/functions/warm/invoke', 'b')).text, 'h:b');
    const pools = (await call(server.url, keyA, 'GET', '/v1/pools')).body as { pools: { tenant: string; function: string }[]; capacity?: unknown };
    assert.ok(pools.pools.length > 0);
    assert.ok(pools.pools.every((pool) => pool.tenant === 'alpha'), JSON.stringify(pools));
    assert.equal(pools.capacity, undefined, 'the shared capacity is the admin\'s to see');
    // Two pools exist on the server: one per tenant, never shared.
    assert.equal(server.handlers.poolSizes().filter((pool) => pool.function === 'warm').length, 2);
  });

  it('concurrency quota: one execution at a time for the tenant, the next gets 429 with Retry-After, others are unaffected', async () => {
    const made = await call(server.url, ADMIN, 'POST', '/v1/tenants', { name: 'gamma', quotas: { maxConcurrency: 1 } });
    const key = made.body.apiKey as string;
    assert.equal((made.body.effectiveQuotas as { maxConcurrency: number }).maxConcurrency, 1);
    const slow = holdSlot(server.url, key);
    await waitFor(async () => ((await call(server.url, key, 'GET', '/v1/tenant')).body.running as number) === 1, 30_000, 'the slow execution to run');
    const refused = await call(server.url, key, 'POST', '/v1/execute', { image: 'kindling/base', command: ['true'] });
    assert.equal(refused.status, 429, refused.text);
    assert.equal(refused.body.error?.code, 'TENANT_CONCURRENCY_LIMIT');
    assert.ok(Number(refused.headers.get('retry-after')) >= 1);
    // Function invocations count too.
    assert.equal((await call(server.url, key, 'PUT', '/v1/functions/f', ECHO('f'))).status, 201);
    assert.equal((await call(server.url, key, 'POST', '/v1/functions/f/invoke', 'x')).body.error?.code, 'TENANT_CONCURRENCY_LIMIT');
    // Another tenant is not limited by gamma's quota.
    assert.equal((await call(server.url, keyA, 'POST', '/v1/execute', { image: 'kindling/base', command: ['true'] })).status, 200);
    assert.equal(await slow.release(), 200);
    assert.equal((await call(server.url, key, 'POST', '/v1/execute', { image: 'kindling/base', command: ['true'] })).status, 200, 'the slot came back');
    // Async invocations wait for a slot instead of failing.
    const queued = await call(server.url, key, 'POST', '/v1/functions/f/invoke', 'x', { 'x-kindling-async': 'true' });
    const slow2 = call(server.url, key, 'POST', '/v1/execute', { image: 'kindling/base', command: ['sleep', '1'] });
    await waitFor(async () => (await call(server.url, key, 'GET', `/v1/invocations/${queued.body.invocationId as string}`)).body.status === 'succeeded', 30_000, 'the queued invocation');
    await slow2;
  });

  it("calls waiting for a slot of their function hold none of the tenant's quota: its other functions still run", async () => {
    const { key } = await newTenant('iota', { maxConcurrency: 2 });
    // A handler function that runs one call at a time; each call waits the milliseconds its body names.
    const single = { runtime: 'node', handler: 'handler', maxConcurrency: 1, code: 'exports.handler = async (ms) => { await new Promise((r) => setTimeout(r, Number(ms))); return "slept " + ms; };' };
    assert.equal((await call(server.url, key, 'PUT', '/v1/functions/single', single)).status, 201);
    assert.equal((await call(server.url, key, 'PUT', '/v1/functions/other', ECHO('other'))).status, 201);
    const first = call(server.url, key, 'POST', '/v1/functions/single/invoke', '8000');
    await waitFor(async () => ((await call(server.url, key, 'GET', '/v1/tenant')).body.running as number) === 1, 30_000, 'the first call to run');
    const second = call(server.url, key, 'POST', '/v1/functions/single/invoke', '10');
    type Pools = { pools: { function: string; waiting: number }[] };
    await waitFor(async () => ((await call(server.url, key, 'GET', '/v1/pools')).body as unknown as Pools).pools.find((pool) => pool.function === 'single')?.waiting === 1, 30_000, 'the second call to wait for the function');
    assert.equal((await call(server.url, key, 'GET', '/v1/tenant')).body.running, 1, 'the waiting call holds no slot of the tenant');
    // Its second slot is free for another function (a 429 TENANT_CONCURRENCY_LIMIT when the waiting call held it).
    const other = await call(server.url, key, 'POST', '/v1/functions/other/invoke', 'x');
    assert.equal(other.status, 200, other.text);
    assert.deepEqual([(await first).text, (await second).text], ['slept 8000', 'slept 10']);
  });

  it('async invocations of a tenant at its concurrency quota wait without holding up other tenants\' invocations', async () => {
    const made = await call(server.url, ADMIN, 'POST', '/v1/tenants', { name: 'eta', quotas: { maxConcurrency: 1 } });
    const key = made.body.apiKey as string;
    assert.equal((await call(server.url, key, 'PUT', '/v1/functions/f', ECHO('eta'))).status, 201);
    const { key: keyA } = await newTenant('eta-other');
    assert.equal((await call(server.url, keyA, 'PUT', '/v1/functions/hello', ECHO('from-other'))).status, 201);
    // eta's only slot is taken by a sync execution until the test releases it.
    const slow = holdSlot(server.url, key);
    await waitFor(async () => ((await call(server.url, key, 'GET', '/v1/tenant')).body.running as number) === 1, 30_000, 'eta\'s slow execution');
    const blocked = await call(server.url, key, 'POST', '/v1/functions/f/invoke', 'x', { 'x-kindling-async': 'true' });
    const other = await call(server.url, keyA, 'POST', '/v1/functions/hello/invoke', 'x', { 'x-kindling-async': 'true' });
    // alpha's invocation, queued after eta's, finishes while eta's still waits for its slot.
    await waitFor(async () => (await call(server.url, keyA, 'GET', `/v1/invocations/${other.body.invocationId as string}`)).body.status === 'succeeded', 30_000, 'alpha\'s invocation to pass eta\'s');
    assert.equal((await call(server.url, key, 'GET', `/v1/invocations/${blocked.body.invocationId as string}`)).body.status, 'queued');
    assert.equal(await slow.release(), 200);
    await waitFor(async () => (await call(server.url, key, 'GET', `/v1/invocations/${blocked.body.invocationId as string}`)).body.status === 'succeeded', 30_000, 'eta\'s invocation once its slot is free');
    assert.equal((await call(server.url, key, 'GET', `/v1/invocations/${blocked.body.invocationId as string}/output`)).text, 'eta\n');
  });

  it('rate quota: a token bucket that refills — over the burst 429 with Retry-After, after waiting requests pass again', async () => {
    // A token every 5 s: the requests after the burst are refused unless five requests took 5 s (at 2/s, as this test
    // had, half a second of load let the bucket refill and no request was refused).
    const made = await call(server.url, ADMIN, 'POST', '/v1/tenants', { name: 'delta', quotas: { requestsPerSecond: 0.2, burst: 3 } });
    const key = made.body.apiKey as string;
    const statuses: number[] = [];
    let limited: Answer | null = null;
    for (let i = 0; i < 5; i++) {
      const answer = await call(server.url, key, 'GET', '/v1/functions');
      statuses.push(answer.status);
      if (answer.status === 429) limited = answer;
    }
    assert.deepEqual(statuses.slice(0, 3), [200, 200, 200], `the burst passes: ${statuses.join(',')}`);
    assert.ok(limited, `over the burst: ${statuses.join(',')}`);
    assert.equal(limited.body.error?.code, 'TENANT_RATE_LIMITED');
    const retryAfter = Number(limited.headers.get('retry-after'));
    assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 5, `0.2/s: the next token in at most 5 s, in whole seconds: ${retryAfter}`);
    // Other tenants have their own bucket.
    assert.equal((await call(server.url, keyA, 'GET', '/v1/functions')).status, 200);
    // Waiting as long as the server said is enough.
    await sleep(retryAfter * 1000);
    assert.equal((await call(server.url, key, 'GET', '/v1/functions')).status, 200, 'refilled after waiting');
    // An admin can raise the rate; it applies at once.
    const raised = await call(server.url, ADMIN, 'PATCH', '/v1/tenants/delta', { quotas: { requestsPerSecond: 1000, burst: 1000 } });
    assert.ok(raised.status < 300, raised.text);
    for (let i = 0; i < 10; i++) assert.equal((await call(server.url, key, 'GET', '/v1/functions')).status, 200);
  });

  it('warm sandboxes count against the concurrency quota: minWarm summed over the tenant\'s functions', async () => {
    const made = await call(server.url, ADMIN, 'POST', '/v1/tenants', { name: 'warmcap', quotas: { maxConcurrency: 3 } });
    const key = made.body.apiKey as string;
    const spec = (minWarm: number) => ({ runtime: 'node', code: 'export const h = (b) => b;', handler: 'h', minWarm, maxConcurrency: 8 });
    const tooMany = await call(server.url, key, 'PUT', '/v1/functions/hog', spec(8));
    assert.equal(tooMany.status, 400);
    assert.equal(tooMany.body.error?.code, 'TENANT_LIMIT_EXCEEDED');
    assert.match(tooMany.body.error!.message, /concurrency quota 3/);
    assert.equal((await call(server.url, key, 'PUT', '/v1/functions/one', spec(2))).status, 201);
    const second = await call(server.url, key, 'PUT', '/v1/functions/two', spec(2));
    assert.equal(second.status, 400, 'two functions together would keep 4 warm');
    assert.match(second.body.error!.message, /other functions keep 2/);
    assert.equal((await call(server.url, key, 'PUT', '/v1/functions/two', spec(1))).status, 201);
    // Redeploying a function replaces its own share.
    assert.equal((await call(server.url, key, 'PUT', '/v1/functions/one', spec(2))).status, 200);
    // A DELETE with "Content-Type: application/json" and no body is fine (some clients always send the header).
    const deleted = await fetch(`${server.url}/v1/functions/two`, { method: 'DELETE', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' } });
    assert.equal(deleted.status, 204);
  });

  it('caps on limits: a request above the tenant cap is 400 naming the cap; defaults are lowered to the cap', async () => {
    const made = await call(server.url, ADMIN, 'POST', '/v1/tenants', { name: 'epsilon', quotas: { maxMemoryMb: 128, maxTimeoutMs: 2000, maxPayloadBytes: 1000 } });
    const key = made.body.apiKey as string;
    const memory = await call(server.url, key, 'POST', '/v1/execute', { image: 'kindling/base', command: ['true'], memoryMb: 256 });
    assert.equal(memory.status, 400);
    assert.equal(memory.body.error?.code, 'TENANT_LIMIT_EXCEEDED');
    assert.match(memory.body.error!.message, /cap of 128 MiB \(quota maxMemoryMb\)/);
    const timeout = await call(server.url, key, 'POST', '/v1/execute', { image: 'kindling/base', command: ['true'], timeoutMs: 5000 });
    assert.equal(timeout.body.error?.code, 'TENANT_LIMIT_EXCEEDED');
    assert.match(timeout.body.error!.message, /maxTimeoutMs/);
    // Deploys are checked against the caps too.
    assert.equal((await call(server.url, key, 'PUT', '/v1/functions/big', { ...ECHO('x'), memoryMb: 512 })).body.error?.code, 'TENANT_LIMIT_EXCEEDED');
    // Without a timeoutMs the default (30 s) is lowered to the cap: a 5 s sleep is killed at 2 s.
    const started = Date.now();
    const capped = await call(server.url, key, 'POST', '/v1/execute', { image: 'kindling/base', command: ['sleep', '5'] });
    assert.equal(capped.status, 200);
    assert.equal(capped.body.timedOut, true);
    assert.ok(Date.now() - started < 4500, 'killed at the 2 s cap');
    // Under the cap: fine.
    assert.equal((await call(server.url, key, 'POST', '/v1/execute', { image: 'kindling/base', command: ['true'], memoryMb: 64 })).status, 200);
    // Payload cap: 413 naming the quota.
    const payload = await call(server.url, key, 'POST', '/v1/execute', { image: 'kindling/base', command: ['cat'], stdin: 'x'.repeat(2000) });
    assert.equal(payload.status, 413);
    assert.match(payload.body.error!.message, /maxPayloadBytes/);
    // Chunked (no Content-Length): counted as it is read.
    const chunks = [Buffer.from(JSON.stringify({ image: 'kindling/base', command: ['cat'], stdin: 'y'.repeat(2000) }))];
    const chunked = await fetch(`${server.url}/v1/execute`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: new ReadableStream({ pull(controller) { const next = chunks.shift(); if (next) controller.enqueue(next); else controller.close(); } }),
      duplex: 'half',
    } as RequestInit);
    const chunkedBody = (await chunked.json()) as { error: { code: string; message: string } };
    assert.equal(chunked.status, 413, JSON.stringify(chunkedBody));
    assert.match(chunkedBody.error.message, /maxPayloadBytes/);
    // Under the cap, chunked or not: fine.
    assert.equal((await call(server.url, key, 'POST', '/v1/execute', { image: 'kindling/base', command: ['cat'], stdin: 'z'.repeat(100) })).body.stdout, 'z'.repeat(100));
  });

  it('handler functions get the tenant caps too: open files, and a default timeout lowered to the cap', async () => {
    const made = await call(server.url, ADMIN, 'POST', '/v1/tenants', { name: 'iota', quotas: { maxOpenFiles: 256, maxTimeoutMs: 1500 } });
    const key = made.body.apiKey as string;
    const code = 'import resource, time\ndef handler(body):\n    if body == b"sleep":\n        time.sleep(5)\n    return " ".join(map(str, resource.getrlimit(resource.RLIMIT_NOFILE)))\n';
    assert.equal((await call(server.url, key, 'PUT', '/v1/functions/limits', { runtime: 'python', code, handler: 'handler' })).status, 201);
    assert.equal((await call(server.url, key, 'POST', '/v1/functions/limits/invoke', 'x')).text, '256 256');
    const started = Date.now();
    const slow = await call(server.url, key, 'POST', '/v1/functions/limits/invoke', 'sleep');
    assert.equal(slow.headers.get('x-kindling-timed-out'), 'true', slow.text);
    assert.ok(Date.now() - started < 4500, 'killed at the 1.5 s cap, not the 30 s default');
    // Another tenant's handler keeps the server default.
    assert.equal((await call(server.url, keyA, 'PUT', '/v1/functions/limits', { runtime: 'python', code, handler: 'handler' })).status, 201);
    assert.equal((await call(server.url, keyA, 'POST', '/v1/functions/limits/invoke', 'x')).text, '1024 1024');
  });

  it('WebSocket executions carry the tenant: its quota on stdin bytes and its concurrency slot apply', async () => {
    const made = await call(server.url, ADMIN, 'POST', '/v1/tenants', { name: 'theta', quotas: { maxPayloadBytes: 1000, maxConcurrency: 1 } });
    const key = made.body.apiKey as string;
    const run = (stdin: Buffer | null, command: string[]): Promise<{ messages: { type: string; error?: { code: string } }[]; code: number }> =>
      new Promise((resolve, reject) => {
        const socket = new WebSocket(`${server.url.replace(/^http/, 'ws')}/v1/execute/ws`, { headers: { authorization: `Bearer ${key}` } });
        const messages: { type: string; error?: { code: string } }[] = [];
        socket.on('open', () => {
          socket.send(JSON.stringify({ image: 'kindling/base', command }));
          if (stdin) socket.send(stdin);
        });
        socket.on('message', (data) => messages.push(JSON.parse(String(data)) as { type: string }));
        socket.on('close', (code) => resolve({ messages, code }));
        socket.on('error', reject);
      });
    const tooMuch = await run(Buffer.alloc(2000, 1), ['sh', '-c', 'sleep 5']);
    assert.equal(tooMuch.messages.find((m) => m.type === 'error')?.error?.code, 'PAYLOAD_TOO_LARGE');
    assert.equal(tooMuch.code, 1009);
    const slow = call(server.url, key, 'POST', '/v1/execute', { image: 'kindling/base', command: ['sleep', '3'] });
    await waitFor(async () => ((await call(server.url, key, 'GET', '/v1/tenant')).body.running as number) === 1, 10_000, 'theta\'s slow execution');
    const refused = await run(null, ['true']);
    assert.equal(refused.messages.find((m) => m.type === 'error')?.error?.code, 'TENANT_CONCURRENCY_LIMIT');
    await slow;
  });

  it('deleting a tenant revokes its keys, removes its functions; the name is not reused', async () => {
    const made = await call(server.url, ADMIN, 'POST', '/v1/tenants', { name: 'zeta' });
    const key = made.body.apiKey as string;
    const { key: keyA } = await newTenant('zeta-other');
    assert.equal((await call(server.url, keyA, 'PUT', '/v1/functions/hello', ECHO('from-alpha'))).status, 201);
    assert.equal((await call(server.url, key, 'PUT', '/v1/functions/hello', ECHO('z'))).status, 201);
    assert.equal((await call(server.url, ADMIN, 'DELETE', '/v1/tenants/zeta')).status, 204);
    assert.equal((await call(server.url, key, 'GET', '/v1/functions')).status, 401);
    assert.equal((await call(server.url, ADMIN, 'GET', '/v1/functions/hello', undefined, { 'x-kindling-tenant': 'zeta' })).status, 404);
    assert.equal((await call(server.url, ADMIN, 'POST', '/v1/tenants', { name: 'zeta' })).body.error?.code, 'TENANT_EXISTS');
    assert.equal((await call(server.url, keyA, 'POST', '/v1/functions/hello/invoke', 'x')).text, 'from-alpha\n', 'other tenants keep theirs');
  });
});
