/**
 * Route-level tests of POST /v1/execute (through inject(), with a fake execution service): what is refused before a
 * run starts (content types, the raw spec header, Accept combinations) and which form the answer takes (JSON, SSE,
 * raw stdout with trailers).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { LightMyRequestResponse } from 'fastify';
import { KindlingError } from '../../core/errors.js';
import { buildHarness, executionResult, type Harness } from '../test-support.js';

const errorOf = (response: LightMyRequestResponse): { code: string; message: string } => (response.json() as { error: { code: string; message: string } }).error;
const SPEC = JSON.stringify({ image: 'kindling/base', command: ['cat'] });

/** The events of an SSE body: [event, data] pairs. */
function sseEvents(body: string): [string, string][] {
  return body
    .split('\n\n')
    .filter((block) => block.startsWith('event:'))
    .map((block) => {
      const lines = block.split('\n');
      return [lines[0]!.slice('event: '.length), lines.filter((line) => line.startsWith('data: ')).map((line) => line.slice(6)).join('\n')];
    });
}

describe('POST /v1/execute (inject)', () => {
  let h: Harness;
  before(async () => {
    h = await buildHarness();
  });
  after(() => h.close());

  it('answers JSON by default: the result, its id in x-kindling-execution-id', async () => {
    const response = await h.app.inject({ method: 'POST', url: '/v1/execute', headers: h.headers(), payload: { image: 'kindling/base', command: ['cat'], stdin: 'hello' } });
    assert.equal(response.statusCode, 200, response.body);
    assert.match(response.headers['content-type'] as string, /^application\/json/);
    assert.equal(response.headers['x-kindling-execution-id'], 'exec_fake');
    const result = response.json() as { id: string; stdout: string; exitCode: number; timings: unknown };
    assert.deepEqual([result.id, result.stdout, result.exitCode], ['exec_fake', 'hello', 0]);
    assert.deepEqual(result.timings, { queuedMs: 0, startMs: 1, runMs: 2 });
  });

  it('answers a non-zero exit, a timeout and an OOM kill as a 200 result', async () => {
    const failed = await buildHarness({ execute: async () => executionResult({ exitCode: 137, signal: 'SIGKILL', timedOut: true, oomKilled: true }) });
    try {
      const response = await failed.app.inject({ method: 'POST', url: '/v1/execute', headers: failed.headers(), payload: { runtime: 'python', code: 'x' } });
      assert.equal(response.statusCode, 200, response.body);
      assert.deepEqual((({ exitCode, signal, timedOut, oomKilled }) => ({ exitCode, signal, timedOut, oomKilled }))(response.json() as Record<string, unknown>), { exitCode: 137, signal: 'SIGKILL', timedOut: true, oomKilled: true });
    } finally {
      await failed.close();
    }
  });

  it('streams SSE with Accept: text/event-stream: stdout events, then exit with the result', async () => {
    const response = await h.app.inject({ method: 'POST', url: '/v1/execute', headers: h.headers(undefined, { accept: 'text/event-stream' }), payload: { image: 'kindling/base', command: ['cat'], stdin: 'line' } });
    assert.equal(response.statusCode, 200);
    assert.match(response.headers['content-type'] as string, /^text\/event-stream/);
    assert.equal(response.headers['x-kindling-execution-id'], 'exec_fake');
    assert.equal(response.headers['x-request-id'] !== undefined, true);
    const events = sseEvents(response.body);
    assert.deepEqual(events.map(([event]) => event), ['stdout', 'exit']);
    assert.equal(events[0]![1], 'line');
    assert.equal((JSON.parse(events[1]![1]) as { exitCode: number }).exitCode, 0);
  });

  it('answers an error before the run starts as an ordinary JSON error, also when SSE was asked for', async () => {
    const response = await h.app.inject({ method: 'POST', url: '/v1/execute', headers: h.headers(undefined, { accept: 'text/event-stream' }), payload: { image: 'no/such-image', command: ['true'] } });
    assert.equal(response.statusCode, 400, response.body);
    assert.match(response.headers['content-type'] as string, /^application\/json/);
    assert.equal(errorOf(response).code, 'UNKNOWN_IMAGE');
  });

  it('sends a failure after the stream started as an error event, hiding an unexpected cause', async () => {
    const broken = await buildHarness({
      execute: async (_request, options) => {
        options.onStarted?.('exec_broken', { executor: 'sandbox', coldStart: false });
        options.onOutput?.('stderr', 'partial');
        throw new Error('socket /run/secret hung up');
      },
    });
    try {
      const response = await broken.app.inject({ method: 'POST', url: '/v1/execute', headers: broken.headers(undefined, { accept: 'text/event-stream' }), payload: { image: 'kindling/base', command: ['true'] } });
      assert.equal(response.statusCode, 200);
      const events = sseEvents(response.body);
      assert.deepEqual(events.map(([event]) => event), ['stderr', 'error']);
      const error = JSON.parse(events[1]![1]) as { error: { code: string }; requestId: string };
      assert.equal(error.error.code, 'INTERNAL');
      assert.equal(error.requestId, response.headers['x-request-id']);
      assert.doesNotMatch(response.body, /secret/);
    } finally {
      await broken.close();
    }
  });

  it('takes a raw body as stdin with the spec in x-kindling-spec, and answers JSON or raw stdout with trailers', async () => {
    const json = await h.app.inject({ method: 'POST', url: '/v1/execute', headers: h.headers(undefined, { 'content-type': 'application/octet-stream', 'x-kindling-spec': SPEC }), payload: Buffer.from([0, 1, 2, 255]) });
    assert.equal(json.statusCode, 200, json.body);
    assert.match(json.headers['content-type'] as string, /^application\/json/);
    assert.equal((json.json() as { stdout: string }).stdout, Buffer.from([0, 1, 2, 255]).toString('utf8'));

    const raw = await h.app.inject({ method: 'POST', url: '/v1/execute', headers: h.headers(undefined, { 'content-type': 'application/octet-stream', accept: 'application/octet-stream', 'x-kindling-spec': SPEC }), payload: Buffer.from([0, 1, 2, 255]) });
    assert.equal(raw.statusCode, 200, raw.body);
    assert.equal(raw.headers['content-type'], 'application/octet-stream');
    assert.deepEqual(raw.rawPayload, Buffer.from([0, 1, 2, 255]));
    assert.equal(raw.headers['x-kindling-execution-id'], 'exec_fake');
    assert.equal(raw.headers['x-kindling-executor'], 'sandbox');
    assert.equal(raw.trailers['x-kindling-exit-code'], '0');
    assert.equal(raw.trailers['x-kindling-timed-out'], 'false');
  });

  it('refuses raw bodies it cannot run before starting anything', async () => {
    h.calls.length = 0;
    const raw = { 'content-type': 'application/octet-stream' };
    const cases: [Record<string, string>, number, string, RegExp][] = [
      [raw, 400, 'VALIDATION_FAILED', /needs the execution spec as JSON in the x-kindling-spec header/],
      [{ ...raw, 'x-kindling-spec': '{"image":' }, 400, 'INVALID_JSON', /x-kindling-spec header is not valid JSON/],
      [{ ...raw, 'x-kindling-spec': JSON.stringify({ image: 'kindling/base', command: ['cat'], stdin: 'x' }) }, 400, 'VALIDATION_FAILED', /x-kindling-spec .*stdin comes from the body/],
      [{ ...raw, 'x-kindling-spec': JSON.stringify({ image: 'kindling/base', command: 'cat' }) }, 400, 'VALIDATION_FAILED', /x-kindling-spec command/],
      [{ ...raw, 'x-kindling-spec': SPEC, accept: 'text/event-stream' }, 406, 'NOT_ACCEPTABLE', /for SSE send the spec as application\/json/],
    ];
    for (const [headers, status, code, message] of cases) {
      const response = await h.app.inject({ method: 'POST', url: '/v1/execute', headers: h.headers(undefined, headers), payload: Buffer.from('stdin') });
      assert.equal(response.statusCode, status, `${JSON.stringify(headers)}: ${response.body}`);
      assert.equal(errorOf(response).code, code);
      assert.match(errorOf(response).message, message);
    }
    assert.deepEqual(h.calls, []);
  });

  it('answers 413 to a raw body declared over --max-stream-bytes, before starting anything', async () => {
    h.calls.length = 0;
    const response = await h.app.inject({ method: 'POST', url: '/v1/execute', headers: h.headers(undefined, { 'content-type': 'application/octet-stream', 'x-kindling-spec': SPEC }), payload: Buffer.alloc(300 * 1024) });
    assert.equal(response.statusCode, 413, response.body);
    assert.equal(errorOf(response).code, 'PAYLOAD_TOO_LARGE');
    assert.match(errorOf(response).message, /--max-stream-bytes/);
    assert.deepEqual(h.calls, []);
  });

  it('answers 415 to a body that is neither JSON nor raw', async () => {
    for (const type of ['text/plain', 'multipart/form-data; boundary=x']) {
      const response = await h.app.inject({ method: 'POST', url: '/v1/execute', headers: h.headers(undefined, { 'content-type': type }), payload: SPEC });
      assert.equal(response.statusCode, 415, `${type}: ${response.body}`);
      assert.equal(errorOf(response).code, 'UNSUPPORTED_MEDIA_TYPE');
    }
  });

  it("maps a refusal of the service (429 with Retry-After) to a JSON error, also when SSE was asked for", async () => {
    const busy = await buildHarness({ execute: async () => Promise.reject(new KindlingError('TOO_MANY_REQUESTS', 'the executor is at capacity', { retryAfterSeconds: 2 })) });
    try {
      for (const accept of ['application/json', 'text/event-stream']) {
        const response = await busy.app.inject({ method: 'POST', url: '/v1/execute', headers: busy.headers(undefined, { accept }), payload: { image: 'kindling/base', command: ['true'] } });
        assert.equal(response.statusCode, 429, accept);
        assert.equal(response.headers['retry-after'], '2');
        assert.match(response.headers['content-type'] as string, /^application\/json/);
      }
    } finally {
      await busy.close();
    }
  });
});
