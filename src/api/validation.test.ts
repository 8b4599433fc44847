/**
 * Route-level tests of request validation (through inject(), no socket): malformed JSON, schema failures and unknown
 * fields on every route that takes a JSON body, limits and query values out of range, bodies too large or of the wrong
 * type. Each answer names what is wrong (the field, the range) in the stable error shape, and no service runs.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { buildHarness, type Harness } from './test-support.js';
import { KindlingError } from '../core/errors.js';
import type { SandboxService } from '../orchestrator/sandboxes.js';

interface ErrorAnswer {
  error: { code: string; message: string; details?: Record<string, unknown> };
}
const errorOf = (response: LightMyRequestResponse): ErrorAnswer['error'] => (response.json() as ErrorAnswer).error;

/** Every route that takes a JSON body, with a body it accepts. */
const JSON_ROUTES: { method: 'PUT' | 'POST' | 'PATCH'; url: string; valid: Record<string, unknown> }[] = [
  { method: 'PUT', url: '/v1/functions/fn', valid: { image: 'kindling/base', command: ['cat'] } },
  { method: 'POST', url: '/v1/execute', valid: { image: 'kindling/base', command: ['true'] } },
  { method: 'POST', url: '/v1/tenants', valid: { name: 'gamma' } },
  { method: 'PATCH', url: '/v1/tenants/alpha', valid: { quotas: { maxConcurrency: 3 } } },
];

/** A field of the wrong type on each route; `field` is the path the answer names. */
const WRONG_TYPES: { method: 'PUT' | 'POST' | 'PATCH'; url: string; body: unknown; field: string }[] = [
  { method: 'PUT', url: '/v1/functions/fn', body: { image: 'kindling/base', command: 'cat' }, field: 'command' },
  { method: 'PUT', url: '/v1/functions/fn', body: { runtime: 'python', code: 'x', memoryMb: '256' }, field: 'memoryMb' },
  { method: 'POST', url: '/v1/execute', body: { runtime: 'python', code: 1 }, field: 'code' },
  { method: 'POST', url: '/v1/execute', body: { image: 'kindling/base', command: ['true'], timeoutMs: '5000' }, field: 'timeoutMs' },
  { method: 'POST', url: '/v1/execute', body: { image: 'kindling/base', command: ['true'], env: { A: 1 } }, field: 'env.A' },
  { method: 'POST', url: '/v1/execute', body: ['not', 'an', 'object'], field: 'body' },
  { method: 'POST', url: '/v1/tenants', body: { name: 5 }, field: 'name' },
  { method: 'PATCH', url: '/v1/tenants/alpha', body: { quotas: { maxConcurrency: 'many' } }, field: 'quotas.maxConcurrency' },
];

describe('request validation (inject)', () => {
  let h: Harness;
  before(async () => {
    h = await buildHarness({ alphaQuotas: { maxMemoryMb: 512 } });
  });
  after(() => h.close());

  it('accepts the valid bodies these tests vary (so each refusal below is about the change)', async () => {
    for (const route of JSON_ROUTES) {
      const response = await h.app.inject({ method: route.method, url: route.url, headers: h.headers(), payload: route.valid });
      assert.ok(response.statusCode >= 200 && response.statusCode < 300, `${route.method} ${route.url}: ${response.statusCode} ${response.body}`);
    }
  });

  it('answers malformed JSON with 400 INVALID_JSON on every JSON route, before any service', async () => {
    h.calls.length = 0;
    for (const route of JSON_ROUTES) {
      for (const payload of ['{"image": "kindling/base",', "{'single': 'quotes'}", '{"a":1}}']) {
        const response = await h.app.inject({ method: route.method, url: route.url, headers: h.headers(undefined, { 'content-type': 'application/json' }), payload });
        assert.equal(response.statusCode, 400, `${route.url} ${payload}: ${response.body}`);
        assert.deepEqual(errorOf(response), { code: 'INVALID_JSON', message: 'the request body is not valid JSON' });
      }
      const empty = await h.app.inject({ method: route.method, url: route.url, headers: h.headers(undefined, { 'content-type': 'application/json' }), payload: '' });
      assert.equal(empty.statusCode, 400, route.url);
      assert.deepEqual(errorOf(empty), { code: 'INVALID_JSON', message: 'the request body is empty; send a JSON object' });
    }
    assert.deepEqual(h.calls, []);
  });

  it('answers a field of the wrong type with 400 VALIDATION_FAILED naming the field (no coercion)', async () => {
    h.calls.length = 0;
    for (const { method, url, body, field } of WRONG_TYPES) {
      const response = await h.app.inject({ method, url, headers: h.headers(), payload: body as object });
      assert.equal(response.statusCode, 400, `${url} ${JSON.stringify(body)}: ${response.body}`);
      const error = errorOf(response);
      assert.equal(error.code, 'VALIDATION_FAILED');
      assert.deepEqual(error.details, { field }, `${url} ${JSON.stringify(body)}`);
      assert.match(error.message, new RegExp(`^${field.replace('.', '\\.')}: .+; see GET /openapi.json for the schema$`));
    }
    assert.deepEqual(h.calls, []);
  });

  it('answers a missing required field with 400 VALIDATION_FAILED', async () => {
    for (const [url, method, body] of [['/v1/tenants', 'POST', { quotas: {} }], ['/v1/tenants/alpha', 'PATCH', {}]] as const) {
      const response = await h.app.inject({ method, url, headers: h.headers(), payload: body });
      assert.equal(response.statusCode, 400, response.body);
      assert.equal(errorOf(response).code, 'VALIDATION_FAILED');
      assert.match(errorOf(response).message, /required property '(name|quotas)'/);
    }
  });

  it('answers an unknown field with 400 VALIDATION_FAILED naming it, on every JSON route and nested', async () => {
    for (const route of JSON_ROUTES) {
      const response = await h.app.inject({ method: route.method, url: route.url, headers: h.headers(), payload: { ...route.valid, bogusField: 1 } });
      assert.equal(response.statusCode, 400, `${route.url}: ${response.body}`);
      assert.equal(errorOf(response).code, 'VALIDATION_FAILED');
      assert.match(errorOf(response).message, /^body: "bogusField" is not a known field/);
    }
    const nested = await h.app.inject({ method: 'PATCH', url: '/v1/tenants/alpha', headers: h.headers(), payload: { quotas: { maxConcurency: 3 } } });
    assert.equal(nested.statusCode, 400);
    assert.match(errorOf(nested).message, /^quotas: "maxConcurency" is not a known field/);
    assert.deepEqual(errorOf(nested).details, { field: 'quotas' });
  });

  it('answers limits out of range with 400 LIMIT_OUT_OF_RANGE and the range, and above a tenant cap with TENANT_LIMIT_EXCEEDED', async () => {
    const memory = await h.app.inject({ method: 'POST', url: '/v1/execute', headers: h.headers(), payload: { image: 'kindling/base', command: ['true'], memoryMb: 100_000 } });
    assert.equal(memory.statusCode, 400, memory.body);
    assert.deepEqual(errorOf(memory), { code: 'LIMIT_OUT_OF_RANGE', message: 'memoryMb must be between 16 and 16384 MiB, got 100000', details: { field: 'memoryMb', min: 16, max: 16384 } });
    const capped = await h.app.inject({ method: 'POST', url: '/v1/execute', headers: h.headers(h.alphaKey), payload: { image: 'kindling/base', command: ['true'], memoryMb: 1024 } });
    assert.equal(capped.statusCode, 400, capped.body);
    assert.equal(errorOf(capped).code, 'TENANT_LIMIT_EXCEEDED');
    assert.deepEqual(errorOf(capped).details, { field: 'memoryMb', cap: 512, quota: 'maxMemoryMb' });
    const quota = await h.app.inject({ method: 'POST', url: '/v1/tenants', headers: h.headers(), payload: { name: 'delta', quotas: { maxConcurrency: 0 } } });
    assert.equal(quota.statusCode, 400, quota.body);
    assert.equal(errorOf(quota).code, 'LIMIT_OUT_OF_RANGE');
    assert.deepEqual(errorOf(quota).details, { field: 'quotas.maxConcurrency', min: 1, max: 100_000 });
    assert.equal(h.tenants.exists('delta'), false);
  });

  it('answers query values out of range with the field named', async () => {
    h.functions.set('default/fn', { style: 'command', version: 1, spec: { image: 'kindling/base', command: ['cat'] } });
    const cases: [string, string, string][] = [
      ['/v1/invocations?limit=0', 'LIMIT_OUT_OF_RANGE', 'limit'],
      ['/v1/invocations?limit=1001', 'LIMIT_OUT_OF_RANGE', 'limit'],
      ['/v1/invocations?limit=2.5', 'LIMIT_OUT_OF_RANGE', 'limit'],
      ['/v1/invocations?status=done', 'VALIDATION_FAILED', 'status'],
      ['/v1/invocations?since=yesterday', 'VALIDATION_FAILED', 'since'],
      ['/v1/functions/fn/logs?tail=1001', 'LIMIT_OUT_OF_RANGE', 'tail'],
      ['/v1/usage?groupBy=week', 'VALIDATION_FAILED', 'groupBy'],
      ['/v1/usage?from=2026-02-01&to=2026-01-01', 'VALIDATION_FAILED', 'from'],
      ['/v1/usage/invocations?limit=0', 'VALIDATION_FAILED', 'limit'],
      ['/v1/usage/timeseries?minutes=1441', 'VALIDATION_FAILED', 'minutes'],
      ['/v1/usage/timeseries?bucketSeconds=x', 'VALIDATION_FAILED', 'bucketSeconds'],
    ];
    for (const [url, code, field] of cases) {
      const response = await h.app.inject({ method: 'GET', url, headers: h.headers() });
      assert.equal(response.statusCode, 400, `${url}: ${response.body}`);
      assert.equal(errorOf(response).code, code, url);
      assert.equal(errorOf(response).details?.field, field, url);
    }
    // The edges of the ranges pass.
    for (const url of ['/v1/invocations?limit=1000', '/v1/usage/invocations?limit=1000', '/v1/usage/timeseries?minutes=1440&bucketSeconds=3600']) {
      assert.equal((await h.app.inject({ method: 'GET', url, headers: h.headers() })).statusCode, 200, url);
    }
  });

  it('answers a JSON body over --max-body-bytes with 413 PAYLOAD_TOO_LARGE naming the flag', async () => {
    h.calls.length = 0;
    const response = await h.app.inject({ method: 'POST', url: '/v1/execute', headers: h.headers(), payload: { image: 'kindling/base', command: ['cat'], stdin: 'x'.repeat(70 * 1024) } });
    assert.equal(response.statusCode, 413, response.body);
    assert.equal(errorOf(response).code, 'PAYLOAD_TOO_LARGE');
    assert.match(errorOf(response).message, /limit of 65536 bytes.*--max-body-bytes/);
    assert.deepEqual(h.calls, []);
  });

  it('answers a body of a type no parser takes with 415 UNSUPPORTED_MEDIA_TYPE', async () => {
    for (const route of JSON_ROUTES) {
      for (const type of ['application/xml', 'application/x-www-form-urlencoded', 'text/plain']) {
        const response = await h.app.inject({ method: route.method, url: route.url, headers: h.headers(undefined, { 'content-type': type }), payload: JSON.stringify(route.valid) });
        assert.equal(response.statusCode, 415, `${route.url} ${type}: ${response.body}`);
        assert.deepEqual(errorOf(response), { code: 'UNSUPPORTED_MEDIA_TYPE', message: 'unsupported Content-Type; send application/json' });
      }
    }
  });

  it('ignores "Content-Type: application/json" on a DELETE or GET without a body', async () => {
    h.functions.set('default/doomed', { style: 'command', version: 1, spec: { image: 'kindling/base', command: ['cat'] } });
    const response = await h.app.inject({ method: 'DELETE', url: '/v1/functions/doomed', headers: h.headers(undefined, { 'content-type': 'application/json' }) });
    assert.equal(response.statusCode, 204, response.body);
    assert.equal(h.functions.has('default/doomed'), false);
  });

  it("answers a path parameter over the router's length (100) with 400 MALFORMED_REQUEST, with or without a key", async () => {
    for (const key of [undefined, null]) {
      const response = await h.app.inject({ method: 'GET', url: `/v1/functions/${'a'.repeat(101)}`, headers: h.headers(key) });
      assert.equal(response.statusCode, 400, response.body);
      assert.equal(errorOf(response).code, 'MALFORMED_REQUEST');
      assert.match(errorOf(response).message, /exceeding the max param length/);
    }
    const longest = await h.app.inject({ method: 'GET', url: `/v1/functions/${'a'.repeat(100)}`, headers: h.headers() });
    assert.equal(errorOf(longest).code, 'FUNCTION_NOT_FOUND');
  });
});

describe('sandbox route validation (inject, a fake sandbox service)', () => {
  let h: Harness;
  const forkCounts: number[] = [];
  before(async () => {
    // The fake refuses counts like the real service does (its cap check is what the route must reach).
    const sandboxes = {
      list: () => [],
      fork: async (_tenant: string, _id: string, count: number) => {
        forkCounts.push(count);
        throw new KindlingError('LIMIT_OUT_OF_RANGE', "count must be a whole number from 1 to 10 (the tenant's sandbox quota maxSandboxes)", { details: { field: 'count', min: 1, max: 10 } });
      },
    } as unknown as SandboxService;
    h = await buildHarness({ api: { sandboxes } });
  });
  after(async () => {
    await h.close();
  });

  it('names the allowed values of an enum-like query parameter', async () => {
    const response = await h.app.inject({ method: 'GET', url: '/v1/sandboxes?state=bogus', headers: h.headers() });
    assert.equal(response.statusCode, 400, response.body);
    assert.equal(errorOf(response).code, 'VALIDATION_FAILED');
    assert.match(errorOf(response).message, /^state: must be one of running, paused, hibernated, stopped;/);
  });

  it('calls an unknown query parameter a query field, not a body field', async () => {
    const response = await h.app.inject({ method: 'GET', url: '/v1/sandboxes?x=1', headers: h.headers() });
    assert.equal(response.statusCode, 400, response.body);
    assert.match(errorOf(response).message, /^query: "x" is not a known field/);
    assert.equal(errorOf(response).details?.field, 'query');
  });

  it('lets any fork count above the cap reach the tenant-cap check (one code: LIMIT_OUT_OF_RANGE)', async () => {
    for (const count of [11, 1000, 10000]) {
      const response = await h.app.inject({ method: 'POST', url: '/v1/sandboxes/sb_x/fork', headers: h.headers(), payload: { count } });
      assert.equal(response.statusCode, 400, response.body);
      assert.equal(errorOf(response).code, 'LIMIT_OUT_OF_RANGE', `count ${count}: ${response.body}`);
    }
    assert.deepEqual(forkCounts, [11, 1000, 10000]);
    const zero = await h.app.inject({ method: 'POST', url: '/v1/sandboxes/sb_x/fork', headers: h.headers(), payload: { count: 0 } });
    assert.equal(errorOf(zero).code, 'VALIDATION_FAILED');
  });
});
