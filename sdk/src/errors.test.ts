import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  AbortError,
  AuthenticationError,
  ConflictError,
  ConnectionError,
  errorFromFailure,
  errorFromPayload,
  errorFromResponse,
  KindlingError,
  NotFoundError,
  PermissionDeniedError,
  parseRetryAfter,
  RateLimitError,
  ServerError,
  ValidationError,
} from './errors.js';

function headers(values: Record<string, string> = {}): Headers {
  return new Headers(values);
}

function body(code: string, message: string, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ error: { code, message, ...extra }, requestId: 'req-1' });
}

describe('errorFromResponse', () => {
  const cases: Array<[number, string, new (...args: never[]) => KindlingError, boolean]> = [
    [400, 'VALIDATION_FAILED', ValidationError, false],
    [401, 'UNAUTHORIZED', AuthenticationError, false],
    [403, 'FORBIDDEN', PermissionDeniedError, false],
    [404, 'NOT_FOUND', NotFoundError, false],
    [405, 'METHOD_NOT_ALLOWED', ValidationError, false],
    [409, 'TENANT_EXISTS', ConflictError, false],
    [413, 'PAYLOAD_TOO_LARGE', ValidationError, false],
    [415, 'UNSUPPORTED_MEDIA_TYPE', ValidationError, false],
    [429, 'TOO_MANY_REQUESTS', RateLimitError, true],
    [500, 'INTERNAL', ServerError, false],
    [502, 'EXECUTOR_FAILED', ServerError, true],
    [503, 'EXECUTOR_UNAVAILABLE', ServerError, true],
    [503, 'SANDBOX_START_TIMEOUT', ServerError, true],
    [507, 'STORAGE_FULL', ServerError, true],
    [504, 'GATEWAY_TIMEOUT', ServerError, true],
  ];
  it('keeps the broader classes for the new ones: 403 is an AuthenticationError, 409 a ValidationError', () => {
    assert.ok(errorFromResponse(403, headers(), body('FORBIDDEN', 'admin only')) instanceof AuthenticationError);
    assert.ok(errorFromResponse(409, headers(), body('INVOCATION_NOT_FINISHED', 'running')) instanceof ValidationError);
  });
  for (const [status, code, type, retryable] of cases) {
    it(`maps ${status} ${code} to ${type.name} (retryable: ${retryable})`, () => {
      const err = errorFromResponse(status, headers(), body(code, `bad ${status}`));
      assert.ok(err instanceof type, `${err.name} is not a ${type.name}`);
      assert.ok(err instanceof KindlingError);
      assert.ok(err instanceof Error);
      assert.equal(err.name, type.name);
      assert.equal(err.code, code);
      assert.equal(err.status, status);
      assert.equal(err.message, `bad ${status}`);
      assert.equal(err.requestId, 'req-1');
      assert.equal(err.retryable, retryable);
    });
  }

  it('keeps details and honours an explicit retryable from the body', () => {
    const err = errorFromResponse(
      400,
      headers(),
      body('LIMIT_OUT_OF_RANGE', 'memoryMb too big', { details: { field: 'memoryMb', max: 4096 }, retryable: true }),
    );
    assert.deepEqual(err.details, { field: 'memoryMb', max: 4096 });
    assert.equal(err.retryable, true);
  });

  it('reads Retry-After into retryAfterMs on 429 and 503', () => {
    const limited = errorFromResponse(429, headers({ 'retry-after': '2' }), body('TOO_MANY_REQUESTS', 'slow down'));
    assert.ok(limited instanceof RateLimitError);
    assert.equal(limited.retryAfterMs, 2000);
    const busy = errorFromResponse(503, headers({ 'Retry-After': '0' }), body('SHUTTING_DOWN', 'bye'));
    assert.equal(busy.retryAfterMs, 0);
    assert.equal(errorFromResponse(429, headers(), body('TOO_MANY_REQUESTS', 'x')).retryAfterMs, undefined);
  });

  it('maps a non-JSON body (a proxy page) by status, with the start of the body in the message', () => {
    const err = errorFromResponse(502, headers({ 'x-request-id': 'proxy-9' }), '<html>Bad Gateway</html>');
    assert.ok(err instanceof ServerError);
    assert.equal(err.code, 'HTTP_502');
    assert.equal(err.message, 'HTTP 502: <html>Bad Gateway</html>');
    assert.equal(err.requestId, 'proxy-9');
    assert.equal(err.retryable, true);
    const empty = errorFromResponse(401, headers(), '');
    assert.ok(empty instanceof AuthenticationError);
    assert.equal(empty.code, 'HTTP_401');
    assert.equal(empty.message, 'HTTP 401');
  });

  it('prefers the body requestId over the header', () => {
    assert.equal(errorFromResponse(404, headers({ 'x-request-id': 'h' }), body('NOT_FOUND', 'x')).requestId, 'req-1');
  });

  it('maps JSON that is not an error envelope by status', () => {
    const err = errorFromResponse(400, headers(), '{"message":"flat"}');
    assert.ok(err instanceof ValidationError);
    assert.equal(err.code, 'HTTP_400');
  });
});

describe('errorFromPayload without a status (stream error event)', () => {
  it('is a ServerError, retryable for transient codes only', () => {
    const failed = errorFromPayload({ error: { code: 'EXECUTOR_FAILED', message: 'agent died' }, requestId: 'r' });
    assert.ok(failed instanceof ServerError);
    assert.equal(failed.status, undefined);
    assert.equal(failed.code, 'EXECUTOR_FAILED');
    assert.equal(failed.message, 'agent died');
    assert.equal(failed.requestId, 'r');
    assert.equal(failed.retryable, true);
    assert.equal(errorFromPayload({ error: { code: 'INTERNAL', message: 'x' } }).retryable, false);
  });

  it('survives garbage', () => {
    const err = errorFromPayload(undefined, { fallbackMessage: 'not json' });
    assert.ok(err instanceof ServerError);
    assert.equal(err.code, 'INTERNAL');
    assert.equal(err.message, 'not json');
  });
});

describe('parseRetryAfter', () => {
  it('parses seconds, fractions and HTTP dates; rejects garbage', () => {
    assert.equal(parseRetryAfter('3'), 3000);
    assert.equal(parseRetryAfter(' 1.5 '), 1500);
    const now = Date.parse('2025-01-01T00:00:00Z');
    assert.equal(parseRetryAfter('Wed, 01 Jan 2025 00:00:10 GMT', now), 10_000);
    assert.equal(parseRetryAfter('Tue, 31 Dec 2024 23:59:00 GMT', now), 0);
    assert.equal(parseRetryAfter('soon'), undefined);
    assert.equal(parseRetryAfter('-1'), undefined);
    assert.equal(parseRetryAfter(''), undefined);
    assert.equal(parseRetryAfter(null), undefined);
  });
});

describe('errorFromFailure', () => {
  const url = 'http://127.0.0.1:1/v1/execute';

  it('turns a refused connection into a retryable ConnectionError naming the socket error', () => {
    const socketError = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' });
    const err = errorFromFailure(new TypeError('fetch failed', { cause: socketError }), { url });
    assert.ok(err instanceof ConnectionError);
    assert.equal(err.code, 'CONNECTION_FAILED');
    assert.equal(err.status, undefined);
    assert.equal(err.retryable, true);
    assert.match(err.message, /127\.0\.0\.1:1.*ECONNREFUSED/);
  });

  it('says STREAM_INTERRUPTED once the response had started', () => {
    const err = errorFromFailure(new TypeError('terminated'), { url, responseStarted: true });
    assert.ok(err instanceof ConnectionError);
    assert.equal(err.code, 'STREAM_INTERRUPTED');
  });

  it('reports a timeout as ConnectionError TIMEOUT, whatever was thrown', () => {
    const err = errorFromFailure(new DOMException('aborted', 'AbortError'), { url, abortedBy: 'timeout', timeoutMs: 250 });
    assert.ok(err instanceof ConnectionError);
    assert.equal(err.code, 'TIMEOUT');
    assert.match(err.message, /250 ms/);
  });

  it('reports a caller abort as AbortError carrying the reason', () => {
    const reason = new Error('user left');
    const err = errorFromFailure(new DOMException('aborted', 'AbortError'), { url, abortedBy: 'caller', abortReason: reason });
    assert.ok(err instanceof AbortError);
    assert.ok(err instanceof KindlingError);
    assert.equal(err.name, 'AbortError');
    assert.equal(err.code, 'ABORTED');
    assert.equal(err.retryable, false);
    assert.equal(err.cause, reason);
  });

  it('passes KindlingErrors through unchanged', () => {
    const original = new NotFoundError({ code: 'NOT_FOUND', message: 'x', status: 404 });
    assert.equal(errorFromFailure(original, { url }), original);
  });
});
