/**
 * Route-level tests of the one place errors become HTTP answers (through inject(), no socket): every code of the
 * registry answers its documented status (docs/api.md) with the body {error:{code,message,details?},requestId},
 * Retry-After on 429 and 503, and anything unexpected is a 500 INTERNAL that shows nothing of its cause.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ERROR_CODES, KindlingError, type ErrorCode } from '../core/errors.js';
import { HOST, buildHarness, type Harness } from './test-support.js';

/** The status docs/api.md gives each error code: its list reads `CODE`, `CODE` (STATUS ...), `CODE` (STATUS), ... */
function documentedStatuses(): Map<string, number> {
  const api = readFileSync(fileURLToPath(new URL('../../../docs/api.md', import.meta.url)), 'utf8');
  const start = api.indexOf('Errors are `{"error"');
  assert.ok(start >= 0, 'the error list of docs/api.md');
  const list = api.slice(start, api.indexOf('\n\n', start));
  const statuses = new Map<string, number>();
  let pending: string[] = [];
  for (const match of list.matchAll(/`([A-Z][A-Z_]+)`|\((\d{3})\b/g)) {
    if (match[1] !== undefined) pending.push(match[1]);
    else {
      for (const code of pending) statuses.set(code, Number(match[2]));
      pending = [];
    }
  }
  return statuses;
}

interface ErrorAnswer {
  error: { code: string; message: string; details?: Record<string, unknown> };
  requestId: string;
}

describe('error mapping (inject)', () => {
  let h: Harness;
  before(async () => {
    h = await buildHarness();
  });
  after(() => h.close());

  /** GET /v1/functions with the service failing with `error`. */
  const failWith = async (error: unknown) => {
    h.failNext(error);
    return h.app.inject({ method: 'GET', url: '/v1/functions', headers: h.headers() });
  };

  it('answers every code of the registry with its documented status and the contract body', async () => {
    const documented = documentedStatuses();
    for (const [code, definition] of Object.entries(ERROR_CODES) as [ErrorCode, { statusCode: number }][]) {
      assert.equal(documented.get(code), definition.statusCode, `docs/api.md gives ${code} the status ${documented.get(code)}, the registry ${definition.statusCode}`);
      h.httpErrors.length = 0;
      const response = await failWith(new KindlingError(code, `the message of ${code}`));
      assert.equal(response.statusCode, definition.statusCode, code);
      assert.match(response.headers['content-type'] as string, /^application\/json/, code);
      const body = response.json() as ErrorAnswer;
      assert.deepEqual(body, { error: { code, message: `the message of ${code}` }, requestId: response.headers['x-request-id'] }, code);
      const retryAfter = response.headers['retry-after'];
      if (definition.statusCode === 429 || definition.statusCode === 503) assert.ok(Number(retryAfter) >= 1, `${code}: Retry-After ${retryAfter}`);
      else assert.equal(retryAfter, undefined, code);
      assert.deepEqual(h.httpErrors, [`${code} ${definition.statusCode}`], code);
    }
  });

  it("sends the thrower's Retry-After and details as they are", async () => {
    const response = await failWith(new KindlingError('TENANT_CONCURRENCY_LIMIT', 'busy', { retryAfterSeconds: 7, details: { maxConcurrency: 2 } }));
    assert.equal(response.statusCode, 429);
    assert.equal(response.headers['retry-after'], '7');
    assert.deepEqual((response.json() as ErrorAnswer).error, { code: 'TENANT_CONCURRENCY_LIMIT', message: 'busy', details: { maxConcurrency: 2 } });
    const conflict = await failWith(new KindlingError('INVOCATION_NOT_FINISHED', 'running', { retryAfterSeconds: 1 }));
    assert.equal(conflict.statusCode, 409);
    assert.equal(conflict.headers['retry-after'], '1', 'a retryable 409 carries the time its thrower named');
  });

  it('answers an unexpected error with 500 INTERNAL and nothing of its cause', async () => {
    for (const thrown of [new Error('SQLITE_CORRUPT at /var/lib/kindling/secret.db'), new TypeError("Cannot read properties of undefined (reading 'secret')"), 'a string /var/lib/kindling/secret', { code: 'ECONNREFUSED', message: 'connect 10.0.0.1 secret' }]) {
      const response = await failWith(thrown);
      assert.equal(response.statusCode, 500);
      const body = response.json() as ErrorAnswer;
      assert.equal(body.error.code, 'INTERNAL');
      assert.match(body.error.message, /unexpected error.*request id/);
      assert.equal(body.error.details, undefined);
      assert.doesNotMatch(response.body, /secret|SQLITE|stack|10\.0\.0\.1/i);
      assert.equal(response.headers['retry-after'], undefined);
    }
  });

  it('answers a full disk with 507 STORAGE_FULL and Retry-After, whether errno, SQLite or wrapped', async () => {
    const enospc = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    const sqlite = Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
    const wrapped = new KindlingError('EXECUTOR_FAILED', 'the sandbox failed', { cause: enospc });
    for (const thrown of [enospc, sqlite, wrapped]) {
      const response = await failWith(thrown);
      assert.equal(response.statusCode, 507);
      assert.equal((response.json() as ErrorAnswer).error.code, 'STORAGE_FULL');
      assert.equal(response.headers['retry-after'], '30');
      assert.doesNotMatch(response.body, /ENOSPC|SQLITE/);
    }
  });

  it('answers an unknown route with 404 ROUTE_NOT_FOUND naming it (without its query)', async () => {
    const response = await h.app.inject({ method: 'GET', url: '/v1/nothing/here?token=abc', headers: h.headers() });
    assert.equal(response.statusCode, 404);
    const body = response.json() as ErrorAnswer;
    assert.equal(body.error.code, 'ROUTE_NOT_FOUND');
    assert.match(body.error.message, /no route GET \/v1\/nothing\/here; see GET \/openapi.json/);
    assert.doesNotMatch(body.error.message, /token/);
    const method = await h.app.inject({ method: 'PATCH', url: '/v1/functions', headers: h.headers(), payload: {} });
    assert.equal(method.statusCode, 404);
    assert.equal((method.json() as ErrorAnswer).error.code, 'ROUTE_NOT_FOUND');
  });

  it('answers a URL that is not valid percent-encoding with 400 MALFORMED_REQUEST', async () => {
    const response = await h.app.inject({ method: 'GET', url: '/v1/functions/%E0%A4%A', headers: h.headers() });
    assert.equal(response.statusCode, 400);
    assert.deepEqual((response.json() as ErrorAnswer).error, { code: 'MALFORMED_REQUEST', message: 'the URL is not valid percent-encoded UTF-8' });
  });

  it("keeps a client's well-formed x-request-id, replaces any other, and puts the id in the body", async () => {
    const kept = await h.app.inject({ method: 'GET', url: '/v1/functions/nope', headers: h.headers(undefined, { 'x-request-id': 'client-42.a_b' }) });
    assert.equal(kept.headers['x-request-id'], 'client-42.a_b');
    assert.equal((kept.json() as ErrorAnswer).requestId, 'client-42.a_b');
    for (const given of ['has space', 'x'.repeat(129), 'semi;colon']) {
      const replaced = await h.app.inject({ method: 'GET', url: '/v1/functions/nope', headers: h.headers(undefined, { 'x-request-id': given }) });
      const id = replaced.headers['x-request-id'] as string;
      assert.notEqual(id, given);
      assert.match(id, /^req_/);
      assert.equal((replaced.json() as ErrorAnswer).requestId, id);
    }
  });

  it('answers errors in the same shape on public routes and before auth', async () => {
    const response = await h.app.inject({ method: 'GET', url: '/healthz', headers: { host: 'evil.example' } });
    assert.equal(response.statusCode, 421);
    assert.equal((response.json() as ErrorAnswer).requestId, response.headers['x-request-id']);
    assert.ok(response.headers.traceparent, 'the trace header is on error answers too');
    const ok = await h.app.inject({ method: 'GET', url: '/healthz', headers: { host: HOST } });
    assert.deepEqual(ok.json(), { status: 'ok' });
  });
});
