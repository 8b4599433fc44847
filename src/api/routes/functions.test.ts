/**
 * Route-level tests of the function and invocation routes (through inject(), with fakes of the services): statuses of
 * deploy/delete, what POST /v1/functions/NAME/invoke refuses before anything runs, the raw answers
 * (application/octet-stream), the async 202, and the OpenAPI document.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { buildHarness, type Harness } from '../test-support.js';

const errorOf = (response: LightMyRequestResponse): { code: string; message: string } => (response.json() as { error: { code: string; message: string } }).error;
const methods = (h: Harness): string[] => h.calls.map((call) => call.method);

describe('function routes (inject)', () => {
  let h: Harness;
  before(async () => {
    h = await buildHarness();
    h.functions.set('default/hello', { style: 'handler', version: 3, spec: { runtime: 'python', code: 'def handler(b): return b', handler: 'handler' } });
    h.functions.set('default/cat', { style: 'command', version: 1, spec: { image: 'kindling/base', command: ['cat'] } });
  });
  after(() => h.close());

  it('answers 201 to the first deploy, 200 to the next, 204 to a delete, then 404', async () => {
    const spec = { image: 'kindling/base', command: ['wc', '-c'] };
    const first = await h.app.inject({ method: 'PUT', url: '/v1/functions/wc', headers: h.headers(), payload: spec });
    assert.equal(first.statusCode, 201, first.body);
    assert.deepEqual((({ name, version, style }) => ({ name, version, style }))(first.json() as Record<string, unknown>), { name: 'wc', version: 1, style: 'command' });
    const second = await h.app.inject({ method: 'PUT', url: '/v1/functions/wc', headers: h.headers(), payload: spec });
    assert.equal(second.statusCode, 200, second.body);
    assert.equal((second.json() as { version: number }).version, 2);
    const deleted = await h.app.inject({ method: 'DELETE', url: '/v1/functions/wc', headers: h.headers() });
    assert.equal(deleted.statusCode, 204);
    assert.equal(deleted.body, '');
    const gone = await h.app.inject({ method: 'GET', url: '/v1/functions/wc', headers: h.headers() });
    assert.equal(gone.statusCode, 404);
    assert.equal(errorOf(gone).code, 'FUNCTION_NOT_FOUND');
  });

  it('answers a handler invocation with the raw bytes as application/octet-stream and the x-kindling-* headers', async () => {
    const response = await h.app.inject({ method: 'POST', url: '/v1/functions/hello/invoke', headers: h.headers(undefined, { 'content-type': 'application/json' }), payload: '{"not":"parsed"' });
    assert.equal(response.statusCode, 200, response.body);
    assert.equal(response.headers['content-type'], 'application/octet-stream');
    assert.equal(response.body, 'echo:{"not":"parsed"', 'the body goes in unparsed, whatever its content type');
    assert.equal(response.headers['x-kindling-invocation-id'], 'inv_fake');
    assert.equal(response.headers['x-kindling-function-version'], '3');
    assert.equal(response.headers['x-kindling-exit-code'], '0');
    assert.equal(response.headers['x-kindling-timed-out'], undefined);
  });

  it('answers 404 FUNCTION_NOT_FOUND for an unknown function before running or storing anything', async () => {
    h.calls.length = 0;
    for (const extra of [{}, { 'x-kindling-async': 'true' }] as Record<string, string>[]) {
      const response = await h.app.inject({ method: 'POST', url: '/v1/functions/nope/invoke', headers: h.headers(undefined, extra), payload: 'input' });
      assert.equal(response.statusCode, 404, response.body);
      assert.equal(errorOf(response).code, 'FUNCTION_NOT_FOUND');
    }
    const otherTenant = await h.app.inject({ method: 'POST', url: '/v1/functions/hello/invoke', headers: h.headers(h.alphaKey), payload: 'input' });
    assert.equal(otherTenant.statusCode, 404);
    assert.deepEqual(methods(h), []);
  });

  it('answers 413 to a body declared over its limit before running or storing anything', async () => {
    h.calls.length = 0;
    const cases: [string, Record<string, string>, number, RegExp][] = [
      ['hello', {}, 70 * 1024, /--max-body-bytes/],
      ['cat', { 'x-kindling-async': 'true' }, 70 * 1024, /--max-body-bytes/],
      ['cat', {}, 300 * 1024, /--max-stream-bytes/],
    ];
    for (const [name, extra, bytes, flag] of cases) {
      const response = await h.app.inject({ method: 'POST', url: `/v1/functions/${name}/invoke`, headers: h.headers(undefined, extra), payload: Buffer.alloc(bytes) });
      assert.equal(response.statusCode, 413, `${name} ${JSON.stringify(extra)}: ${response.body}`);
      assert.equal(errorOf(response).code, 'PAYLOAD_TOO_LARGE');
      assert.match(errorOf(response).message, flag);
    }
    assert.deepEqual(methods(h), []);
  });

  it('answers an async invocation with 202, its id and where to find it', async () => {
    h.calls.length = 0;
    const response = await h.app.inject({ method: 'POST', url: '/v1/functions/cat/invoke', headers: h.headers(undefined, { 'x-kindling-async': 'true', 'idempotency-key': 'k1' }), payload: 'queued input' });
    assert.equal(response.statusCode, 202, response.body);
    const body = response.json() as { invocationId: string; status: string; created: boolean };
    assert.equal(body.status, 'queued');
    assert.equal(body.created, true);
    assert.equal(response.headers.location, `/v1/invocations/${body.invocationId}`);
    assert.equal(response.headers['x-kindling-invocation-id'], body.invocationId);
    assert.deepEqual(methods(h), ['checkQueuedPayload', 'enqueue']);
    const enqueued = h.calls[1]!.args[0] as { payload: Buffer; idempotencyKey: string };
    assert.equal(enqueued.payload.toString(), 'queued input');
    assert.equal(enqueued.idempotencyKey, 'k1');
  });

  it("answers an invocation's output as application/octet-stream once finished, 409 with Retry-After before", async () => {
    const queued = await h.app.inject({ method: 'POST', url: '/v1/functions/cat/invoke', headers: h.headers(undefined, { 'x-kindling-async': 'true' }), payload: 'x' });
    const id = (queued.json() as { invocationId: string }).invocationId;
    const early = await h.app.inject({ method: 'GET', url: `/v1/invocations/${id}/output`, headers: h.headers() });
    assert.equal(early.statusCode, 409, early.body);
    assert.equal(errorOf(early).code, 'INVOCATION_NOT_FINISHED');
    assert.equal(early.headers['retry-after'], '1');
    h.records.set(id, { ...h.records.get(id)!, status: 'succeeded', exitCode: 0, durationMs: 4 });
    h.outputs.set(id, Buffer.from([1, 2, 3]));
    const done = await h.app.inject({ method: 'GET', url: `/v1/invocations/${id}/output`, headers: h.headers() });
    assert.equal(done.statusCode, 200, done.body);
    assert.equal(done.headers['content-type'], 'application/octet-stream');
    assert.deepEqual(done.rawPayload, Buffer.from([1, 2, 3]));
    assert.equal(done.headers['x-kindling-status'], 'succeeded');
    assert.equal(done.headers['x-kindling-exit-code'], '0');
    const logs = await h.app.inject({ method: 'GET', url: `/v1/invocations/${id}/logs`, headers: h.headers() });
    assert.match(logs.headers['content-type'] as string, /^text\/event-stream/);
    assert.match(logs.body, /event: stdout\ndata: \{"invocationId":"[^"]+","text":"\\u0001\\u0002\\u0003"\}\n\n/);
    assert.match(logs.body, /event: end\n/);
    const otherTenant = await h.app.inject({ method: 'GET', url: `/v1/invocations/${id}/output`, headers: h.headers(h.alphaKey) });
    assert.equal(otherTenant.statusCode, 404);
  });

  it('answers usage as JSON or, with Accept: text/csv, as CSV', async () => {
    const json = await h.app.inject({ method: 'GET', url: '/v1/usage', headers: h.headers() });
    assert.equal(json.statusCode, 200, json.body);
    assert.match(json.headers['content-type'] as string, /^application\/json/);
    assert.equal((json.json() as { totals: { invocations: number } }).totals.invocations, 2);
    const csv = await h.app.inject({ method: 'GET', url: '/v1/usage', headers: h.headers(undefined, { accept: 'text/csv' }) });
    assert.match(csv.headers['content-type'] as string, /^text\/csv/);
    assert.equal(csv.body, 'tenant,function,invocations,cpuMs,gbSeconds,bytesIn,bytesOut,storageGbHours\nalpha,fn,2,10,0.5,3,4,0\n');
  });

  it('serves the OpenAPI document as JSON without a key, with its routes and the raw invoke body', async () => {
    const response = await h.app.inject({ method: 'GET', url: '/openapi.json', headers: h.headers(null) });
    assert.equal(response.statusCode, 200);
    assert.match(response.headers['content-type'] as string, /^application\/json/);
    const document = response.json() as { openapi: string; info: { version: string }; paths: Record<string, Record<string, unknown>> };
    assert.equal(document.openapi, '3.0.3');
    assert.equal(document.info.version, 'test');
    for (const [path, method] of [['/v1/execute', 'post'], ['/v1/execute/ws', 'get'], ['/v1/functions/{name}/invoke', 'post'], ['/v1/tenants', 'post'], ['/v1/usage', 'get']]) {
      assert.ok(document.paths[path!]?.[method!], `${method} ${path}`);
    }
    assert.equal(document.paths['/metrics'], undefined, 'hidden routes stay out');
    const invoke = document.paths['/v1/functions/{name}/invoke']!.post as { requestBody: { content: Record<string, unknown> } };
    assert.deepEqual(Object.keys(invoke.requestBody.content), ['application/octet-stream']);
  });
});
