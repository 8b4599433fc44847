/**
 * Route-level tests of who may do what (through inject(), no socket): API keys, admin-only routes, acting as another
 * tenant, the metrics token, the tenant's rate and payload quotas, and the Host/Origin guard that runs before all of it.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { ADMIN_KEY, HOST, buildHarness, type Harness } from './test-support.js';

const errorOf = (response: LightMyRequestResponse): { code: string; message: string } => (response.json() as { error: { code: string; message: string } }).error;

function assertError(response: LightMyRequestResponse, status: number, code: string, message?: RegExp): void {
  assert.equal(response.statusCode, status, response.body);
  assert.match(response.headers['content-type'] as string, /^application\/json/);
  const body = response.json() as { error: { code: string; message: string }; requestId: string };
  assert.equal(body.error.code, code);
  assert.equal(body.requestId, response.headers['x-request-id']);
  if (message) assert.match(body.error.message, message);
}

/** Every admin-only route, with a body where it takes one. */
const ADMIN_ROUTES: { method: 'GET' | 'POST' | 'PATCH' | 'DELETE'; url: string; payload?: object }[] = [
  { method: 'POST', url: '/v1/tenants', payload: { name: 'beta' } },
  { method: 'GET', url: '/v1/tenants' },
  { method: 'GET', url: '/v1/tenants/alpha' },
  { method: 'PATCH', url: '/v1/tenants/alpha', payload: { quotas: { maxConcurrency: 5 } } },
  { method: 'DELETE', url: '/v1/tenants/alpha' },
  { method: 'POST', url: '/v1/tenants/alpha/keys' },
  { method: 'GET', url: '/v1/tenants/alpha/keys' },
  { method: 'DELETE', url: '/v1/tenants/alpha/keys/key_x' },
];

describe('API keys (inject)', () => {
  let h: Harness;
  before(async () => {
    h = await buildHarness();
  });
  after(() => h.close());

  it('answers 401 UNAUTHORIZED without a key, on every /v1 route and on unknown ones (probing reveals nothing)', async () => {
    for (const url of ['/v1/functions', '/v1/tenant', '/v1/invocations', '/v1/no-such-route', '/v1/functions/%66n']) {
      const response = await h.app.inject({ method: 'GET', url, headers: h.headers(null) });
      assertError(response, 401, 'UNAUTHORIZED', /needs an API key.*Authorization: Bearer KEY/);
    }
    const post = await h.app.inject({ method: 'POST', url: '/v1/execute', headers: h.headers(null), payload: { runtime: 'python', code: 'print(1)' } });
    assertError(post, 401, 'UNAUTHORIZED');
    assert.equal(h.calls.length, 0, 'no service was asked');
  });

  it('answers 401 for an unknown key, a malformed Authorization header and a key in the wrong scheme', async () => {
    for (const authorization of ['Bearer kdl_not-a-key', 'Bearer', 'Basic YWRtaW46eA==', `Token ${ADMIN_KEY}`, `Bearer ${ADMIN_KEY} extra`]) {
      const response = await h.app.inject({ method: 'GET', url: '/v1/functions', headers: { host: HOST, authorization } });
      assert.equal(response.statusCode, 401, authorization);
      assert.equal(errorOf(response).code, 'UNAUTHORIZED');
    }
    const unknown = await h.app.inject({ method: 'GET', url: '/v1/functions', headers: h.headers('kdl_not-a-key') });
    assert.match(errorOf(unknown).message, /not valid \(unknown or revoked\)/);
  });

  it('lets the public routes answer without a key', async () => {
    for (const url of ['/healthz', '/readyz', '/openapi.json']) {
      const response = await h.app.inject({ method: 'GET', url, headers: h.headers(null) });
      assert.equal(response.statusCode, 200, `${url}: ${response.body.slice(0, 200)}`);
    }
  });

  it('refuses a revoked key on the very next request', async () => {
    const made = await h.app.inject({ method: 'POST', url: '/v1/tenants/alpha/keys', headers: h.headers() });
    assert.equal(made.statusCode, 201, made.body);
    const { apiKey, id } = made.json() as { apiKey: string; id: string };
    const before = await h.app.inject({ method: 'GET', url: '/v1/tenant', headers: h.headers(apiKey) });
    assert.equal(before.statusCode, 200, before.body);
    assert.equal((before.json() as { name: string }).name, 'alpha');
    const revoked = await h.app.inject({ method: 'DELETE', url: `/v1/tenants/alpha/keys/${id}`, headers: h.headers() });
    assert.equal(revoked.statusCode, 204, revoked.body);
    const afterRevoke = await h.app.inject({ method: 'GET', url: '/v1/tenant', headers: h.headers(apiKey) });
    assertError(afterRevoke, 401, 'UNAUTHORIZED', /unknown or revoked/);
    // The tenant's other key still works.
    assert.equal((await h.app.inject({ method: 'GET', url: '/v1/tenant', headers: h.headers(h.alphaKey) })).statusCode, 200);
  });

  it('answers 403 FORBIDDEN to a tenant key on every admin-only route, and changes nothing', async () => {
    for (const route of ADMIN_ROUTES) {
      const response = await h.app.inject({ method: route.method, url: route.url, headers: h.headers(h.alphaKey), ...(route.payload ? { payload: route.payload } : {}) });
      assertError(response, 403, 'FORBIDDEN', /needs the admin key.*"alpha"/);
    }
    assert.equal(h.tenants.exists('beta'), false);
    assert.equal(h.tenants.exists('alpha'), true);
    assert.equal(h.tenants.get('alpha').quotas.maxConcurrency ?? null, null);
  });

  it('lets the admin act as another tenant, and nobody else', async () => {
    const asAlpha = await h.app.inject({ method: 'GET', url: '/v1/tenant', headers: h.headers(ADMIN_KEY, { 'x-kindling-tenant': 'alpha' }) });
    assert.equal(asAlpha.statusCode, 200, asAlpha.body);
    assert.equal((asAlpha.json() as { name: string; admin: boolean }).name, 'alpha');
    const tenantKey = await h.app.inject({ method: 'GET', url: '/v1/tenant', headers: h.headers(h.alphaKey, { 'x-kindling-tenant': 'default' }) });
    assertError(tenantKey, 403, 'FORBIDDEN', /only the admin key may act as another tenant/);
    const unknown = await h.app.inject({ method: 'GET', url: '/v1/tenant', headers: h.headers(ADMIN_KEY, { 'x-kindling-tenant': 'nobody' }) });
    assertError(unknown, 404, 'TENANT_NOT_FOUND', /"nobody"/);
  });

  it("scopes a tenant key to its own tenant's functions", async () => {
    h.functions.set('default/only-admin', { style: 'command', version: 1, spec: { image: 'kindling/base', command: ['cat'] } });
    const other = await h.app.inject({ method: 'GET', url: '/v1/functions/only-admin', headers: h.headers(h.alphaKey) });
    assertError(other, 404, 'FUNCTION_NOT_FOUND');
    const own = await h.app.inject({ method: 'GET', url: '/v1/functions/only-admin', headers: h.headers() });
    assert.equal(own.statusCode, 200, own.body);
  });
});

describe('GET /metrics (inject)', () => {
  it('needs the --metrics-token or the admin key when set; a tenant key does not open it', async () => {
    const h = await buildHarness({ api: { metricsToken: 'scrape-token' } });
    try {
      for (const key of [null, 'wrong-token', h.alphaKey]) {
        const response = await h.app.inject({ method: 'GET', url: '/metrics', headers: h.headers(key) });
        assertError(response, 401, 'UNAUTHORIZED', /--metrics-token or the admin key/);
      }
      for (const key of ['scrape-token', ADMIN_KEY]) {
        const response = await h.app.inject({ method: 'GET', url: '/metrics', headers: h.headers(key) });
        assert.equal(response.statusCode, 200, response.body);
        assert.match(response.headers['content-type'] as string, /^text\/plain/);
        assert.match(response.body, /^kindling_fake 1$/m);
      }
    } finally {
      await h.close();
    }
  });

  it('needs the admin key when the server has keys but no token, and is public in open local mode', async () => {
    const keyed = await buildHarness();
    try {
      assertError(await keyed.app.inject({ method: 'GET', url: '/metrics', headers: keyed.headers(null) }), 401, 'UNAUTHORIZED');
      assert.equal((await keyed.app.inject({ method: 'GET', url: '/metrics', headers: keyed.headers(ADMIN_KEY) })).statusCode, 200);
    } finally {
      await keyed.close();
    }
    const open = await buildHarness({ auth: false });
    try {
      const response = await open.app.inject({ method: 'GET', url: '/metrics', headers: open.headers(null) });
      assert.equal(response.statusCode, 200, response.body);
      // ... and so is everything else: the principal is the admin of `default`.
      const self = await open.app.inject({ method: 'GET', url: '/v1/tenant', headers: open.headers(null) });
      assert.equal(self.statusCode, 200, self.body);
      assert.deepEqual([(self.json() as { name: string }).name, (self.json() as { admin: boolean }).admin, (self.json() as { authEnabled: boolean }).authEnabled], ['default', true, false]);
    } finally {
      await open.close();
    }
  });
});

describe('tenant quotas checked by the gateway (inject)', () => {
  it('answers 429 TENANT_RATE_LIMITED with Retry-After once the bucket is empty', async () => {
    const h = await buildHarness({ alphaQuotas: { requestsPerSecond: 0.01, burst: 2 } });
    try {
      for (let i = 0; i < 2; i++) assert.equal((await h.app.inject({ method: 'GET', url: '/v1/functions', headers: h.headers(h.alphaKey) })).statusCode, 200);
      const limited = await h.app.inject({ method: 'GET', url: '/v1/functions', headers: h.headers(h.alphaKey) });
      assertError(limited, 429, 'TENANT_RATE_LIMITED', /over its request rate/);
      const retryAfter = Number(limited.headers['retry-after']);
      assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 100, `retry-after ${limited.headers['retry-after']}`);
      // Other tenants are not affected.
      assert.equal((await h.app.inject({ method: 'GET', url: '/v1/functions', headers: h.headers() })).statusCode, 200);
    } finally {
      await h.close();
    }
  });

  it("answers 413 before reading a body declared larger than the tenant's maxPayloadBytes", async () => {
    const h = await buildHarness({ alphaQuotas: { maxPayloadBytes: 100 } });
    try {
      const big = { image: 'kindling/base', command: ['cat'], stdin: 'x'.repeat(200) };
      const refused = await h.app.inject({ method: 'POST', url: '/v1/execute', headers: h.headers(h.alphaKey), payload: big });
      assertError(refused, 413, 'PAYLOAD_TOO_LARGE', /tenant "alpha" may send \(100 bytes/);
      assert.deepEqual((refused.json() as { error: { details: unknown } }).error.details, { quota: 'maxPayloadBytes', cap: 100 });
      assert.equal(h.calls.length, 0);
      // The admin's tenant has no such quota.
      assert.equal((await h.app.inject({ method: 'POST', url: '/v1/execute', headers: h.headers(), payload: big })).statusCode, 200);
    } finally {
      await h.close();
    }
  });
});

describe('Host and Origin guard (inject)', () => {
  let h: Harness;
  before(async () => {
    h = await buildHarness({ api: { allowedHosts: [{ name: 'kindling.example' }] } });
  });
  after(() => h.close());

  it('answers 421 HOST_NOT_ALLOWED to a name it does not serve, before auth', async () => {
    for (const host of ['rebind.evil.example', 'rebind.evil.example:3000', 'kindling.example.evil']) {
      for (const key of [null, ADMIN_KEY]) {
        const response = await h.app.inject({ method: 'GET', url: '/v1/functions', headers: { host, ...(key ? { authorization: `Bearer ${key}` } : {}) } });
        assertError(response, 421, 'HOST_NOT_ALLOWED');
      }
    }
    // Public routes too: a rebinding page learns nothing.
    assertError(await h.app.inject({ method: 'GET', url: '/healthz', headers: { host: 'rebind.evil.example' } }), 421, 'HOST_NOT_ALLOWED');
  });

  it('answers to IP addresses, localhost and the allowed names', async () => {
    for (const host of ['127.0.0.1:3000', 'localhost', '[::1]:8080', 'kindling.example', 'KINDLING.example:443']) {
      const response = await h.app.inject({ method: 'GET', url: '/v1/functions', headers: { host, authorization: `Bearer ${ADMIN_KEY}` } });
      assert.equal(response.statusCode, 200, `${host}: ${response.body}`);
    }
  });

  it('answers 403 FORBIDDEN_ORIGIN to a state-changing request from a page of another origin, even with a key', async () => {
    h.calls.length = 0;
    for (const method of ['POST', 'PUT', 'PATCH', 'DELETE'] as const) {
      const response = await h.app.inject({ method, url: '/v1/functions/f', headers: h.headers(ADMIN_KEY, { origin: 'http://evil.example' }), payload: {} });
      assertError(response, 403, 'FORBIDDEN_ORIGIN');
    }
    const upgrade = await h.app.inject({ method: 'GET', url: '/v1/execute/ws', headers: h.headers(ADMIN_KEY, { origin: 'http://evil.example', connection: 'upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' }) });
    assertError(upgrade, 403, 'FORBIDDEN_ORIGIN');
    assert.equal(h.calls.length, 0);
  });

  it("lets a GET from another origin through to auth, and a POST from the server's own origin or an allowed one", async () => {
    const read = await h.app.inject({ method: 'GET', url: '/v1/functions', headers: h.headers(null, { origin: 'http://evil.example' }) });
    assertError(read, 401, 'UNAUTHORIZED');
    for (const origin of [`http://${HOST}`, 'https://kindling.example']) {
      const response = await h.app.inject({ method: 'POST', url: '/v1/execute', headers: h.headers(ADMIN_KEY, { origin }), payload: { image: 'kindling/base', command: ['true'] } });
      assert.equal(response.statusCode, 200, `${origin}: ${response.body}`);
    }
  });

  it('answers 401 to a WebSocket upgrade without a key, before any execution', async () => {
    h.calls.length = 0;
    const response = await h.app.inject({ method: 'GET', url: '/v1/execute/ws', headers: h.headers(null, { connection: 'upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' }) });
    assertError(response, 401, 'UNAUTHORIZED');
    assert.equal(h.calls.length, 0);
  });
});
