/**
 * Client logic against a tiny node:http server on 127.0.0.1 that mimics the Kindling endpoints. This tests what the
 * SDK sends and how it reads answers (JSON, SSE, errors, aborts, timeouts); e2e tests against the real server live in
 * the main project.
 */
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, beforeEach, describe, it, mock } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Call } from './http.js';
import {
  AbortError,
  AuthenticationError,
  ConnectionError,
  type ExecutionResult,
  Kindling,
  KindlingError,
  NotFoundError,
  RateLimitError,
  ServerError,
  ValidationError,
} from './index.js';

type Handler = (req: IncomingMessage, res: ServerResponse, body: string) => void | Promise<void>;

interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  body: string;
  /** Resolves when the client's connection for this request closes; true if the response had not finished. */
  closedEarly: Promise<boolean>;
}

let server: Server;
let baseUrl: string;
let handler: Handler;
let seen: Seen[] = [];

function result(overrides: Partial<ExecutionResult> = {}): ExecutionResult {
  return {
    id: 'ex_1',
    exitCode: 0,
    signal: null,
    stdout: '',
    stderr: '',
    outputEncoding: 'utf8',
    durationMs: 12,
    coldStart: false,
    executor: 'docker',
    timedOut: false,
    oomKilled: false,
    truncated: false,
    stdoutTruncated: false,
    stderrTruncated: false,
    timings: { queuedMs: 1, startMs: 2, runMs: 9 },
    ...overrides,
  };
}

function json(res: ServerResponse, status: number, value: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(value));
}

function errorBody(code: string, message: string, details?: Record<string, unknown>): unknown {
  return { error: details === undefined ? { code, message } : { code, message, details }, requestId: 'req-42' };
}

/** Writes raw SSE text in the given chunks, pausing between them so they arrive as separate reads. */
async function sse(res: ServerResponse, chunks: string[], end = true): Promise<void> {
  res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
  res.flushHeaders();
  for (const chunk of chunks) {
    if (res.destroyed) return;
    res.write(chunk);
    await sleep(5);
  }
  if (end) res.end();
}

function client(options: ConstructorParameters<typeof Kindling>[0] = {}): Kindling {
  return new Kindling({ url: baseUrl, ...options });
}

before(async () => {
  server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (part: Buffer) => parts.push(part));
    req.on('end', () => {
      const closedEarly = new Promise<boolean>((resolve) => res.on('close', () => resolve(!res.writableFinished)));
      const body = Buffer.concat(parts).toString('utf8');
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body, closedEarly });
      Promise.resolve(handler(req, res, body)).catch((err: unknown) => {
        res.destroy(err instanceof Error ? err : new Error(String(err)));
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

beforeEach(() => {
  seen = [];
  handler = (_req, res) => json(res, 500, errorBody('INTERNAL', 'no handler set'));
});

/** Resolves once the server has the request (the handler runs): a state to wait on, not a delay to guess. A request
 *  that never comes fails by the suite's timeout. */
async function arrived(): Promise<void> {
  while (seen.length === 0) await sleep(1);
}

function only(): Seen {
  assert.equal(seen.length, 1, `expected one request, saw ${seen.length}`);
  return seen[0] as Seen;
}

describe('health and readiness', { timeout: 10_000 }, () => {
  it('health() GETs /healthz without Authorization when no key is set', async () => {
    handler = (_req, res) => json(res, 200, { status: 'ok' });
    assert.deepEqual(await client().health(), { status: 'ok' });
    const req = only();
    assert.equal(req.method, 'GET');
    assert.equal(req.url, '/healthz');
    assert.equal(req.headers.authorization, undefined);
  });

  it('sends the API key as a Bearer token and keeps a URL path prefix', async () => {
    handler = (_req, res) => json(res, 200, { status: 'ok' });
    await client({ url: `${baseUrl}/kindling/`, apiKey: 'sk-test' }).health();
    const req = only();
    assert.equal(req.url, '/kindling/healthz');
    assert.equal(req.headers.authorization, 'Bearer sk-test');
  });

  it('ready() returns the executor states, also when the server answers 503 not_ready', async () => {
    const body = {
      status: 'not_ready',
      defaultExecutor: 'docker',
      executors: [{ name: 'docker', ready: false, reason: 'docker socket not reachable' }],
    };
    handler = (_req, res) => json(res, 503, body);
    assert.deepEqual(await client().ready(), body);
    assert.equal(only().url, '/readyz');
  });

  it('ready() still throws for a 503 that is an error envelope', async () => {
    handler = (_req, res) => json(res, 503, errorBody('SHUTTING_DOWN', 'going away'), { 'retry-after': '5' });
    const err = await client().ready().then(
      () => assert.fail('expected an error'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof ServerError);
    assert.equal(err.code, 'SHUTTING_DOWN');
    assert.equal(err.retryAfterMs, 5000);
  });
});

describe('execute', { timeout: 10_000 }, () => {
  it('POSTs the spec as JSON and resolves a non-zero exit as a normal result', async () => {
    const expected = result({ exitCode: 3, stdout: 'out\n', stderr: 'boom\n' });
    handler = (_req, res) => json(res, 200, expected);
    const spec = { runtime: 'python', code: 'import sys; sys.exit(3)', env: { A: '1' }, timeoutMs: 5000, memoryMb: 128 };
    const got = await client({ apiKey: 'k' }).execute(spec);
    assert.deepEqual(got, expected);
    const req = only();
    assert.equal(req.method, 'POST');
    assert.equal(req.url, '/v1/execute');
    assert.equal(req.headers['content-type'], 'application/json');
    assert.equal(req.headers.accept, 'application/json');
    assert.equal(req.headers.authorization, 'Bearer k');
    assert.deepEqual(JSON.parse(req.body), spec);
  });

  it('run() and runCommand() build the spec and keep call options out of the body', async () => {
    handler = (_req, res) => json(res, 200, result());
    const controller = new AbortController();
    const k = client();
    await k.run('python', 'print(1)', { stdin: 'in', timeoutMs: 1000, signal: controller.signal, requestTimeoutMs: 5000 });
    await k.runCommand('kindling/base', ['sh', '-c', 'cat'], { stdin: new Uint8Array([0, 255, 10]), executor: 'sandbox' });
    assert.deepEqual(
      seen.map((s) => JSON.parse(s.body) as unknown),
      [
        { stdin: 'in', timeoutMs: 1000, runtime: 'python', code: 'print(1)' },
        { stdinBase64: 'AP8K', executor: 'sandbox', image: 'kindling/base', command: ['sh', '-c', 'cat'] },
      ],
    );
  });

  it('rejects binary stdin together with stdinBase64 before sending', async () => {
    await assert.rejects(
      client().execute({ runtime: 'bash', code: 'cat', stdin: new Uint8Array([1]), stdinBase64: 'AQ==' }),
      TypeError,
    );
    assert.equal(seen.length, 0);
  });

  it('maps error responses to typed errors', async () => {
    const k = client();
    const cases: Array<[number, unknown, Record<string, string>, new (...a: never[]) => KindlingError]> = [
      [400, errorBody('LIMIT_OUT_OF_RANGE', 'memoryMb must be <= 4096', { field: 'memoryMb' }), {}, ValidationError],
      [401, errorBody('UNAUTHORIZED', 'missing or wrong API key'), {}, AuthenticationError],
      [404, errorBody('NOT_FOUND', 'no such thing'), {}, NotFoundError],
      [413, errorBody('PAYLOAD_TOO_LARGE', 'too big'), {}, ValidationError],
      [429, errorBody('TOO_MANY_REQUESTS', 'slow down'), { 'retry-after': '2' }, RateLimitError],
      [503, errorBody('EXECUTOR_UNAVAILABLE', 'docker is down'), {}, ServerError],
    ];
    for (const [status, body, headers, type] of cases) {
      handler = (_req, res) => json(res, status, body, headers);
      const err = await k.execute({ runtime: 'bash', code: 'true' }).then(
        () => assert.fail(`expected ${type.name} for ${status}`),
        (e: unknown) => e,
      );
      assert.ok(err instanceof type, `status ${status} gave ${String(err)}`);
      assert.equal(err.status, status);
      assert.equal(err.requestId, 'req-42');
      const envelope = body as { error: { code: string; message: string } };
      assert.equal(err.code, envelope.error.code);
      assert.equal(err.message, envelope.error.message);
      if (status === 400) assert.deepEqual(err.details, { field: 'memoryMb' });
      if (status === 429) assert.equal(err.retryAfterMs, 2000);
    }
  });

  it('throws INVALID_RESPONSE for a 200 that is not JSON', async () => {
    handler = (_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<html>captive portal</html>');
    };
    const err = await client().health().then(
      () => assert.fail('expected an error'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof KindlingError);
    assert.equal(err.code, 'INVALID_RESPONSE');
    assert.match(err.message, /captive portal/);
  });

  it('throws ConnectionError CONNECTION_FAILED when nothing listens', async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const err = await new Kindling({ url: `http://127.0.0.1:${port}` }).health().then(
      () => assert.fail('expected an error'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof ConnectionError);
    assert.equal(err.code, 'CONNECTION_FAILED');
    assert.equal(err.retryable, true);
    assert.match(err.message, /ECONNREFUSED/);
  });

  it('times out with ConnectionError TIMEOUT after timeoutMs', async () => {
    handler = () => {}; // never answers
    const started = Date.now();
    const err = await client({ timeoutMs: 150 }).health().then(
      () => assert.fail('expected a timeout'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof ConnectionError);
    assert.equal(err.code, 'TIMEOUT');
    assert.ok(Date.now() - started >= 140, 'timed out too early');
    assert.equal(await only().closedEarly, true);
  });

  it('extends the request timeout to the spec timeoutMs plus grace, unless requestTimeoutMs is given', async () => {
    handler = async (_req, res) => {
      await sleep(300);
      json(res, 200, result());
    };
    const k = client({ timeoutMs: 100 });
    // The client default (100 ms) is raised to timeoutMs + 30 s for the execution, so this completes.
    assert.equal((await k.run('bash', 'sleep 0.3', { timeoutMs: 1000 })).exitCode, 0);
    // An explicit per-call timeout is taken as given.
    const err = await k.run('bash', 'sleep 0.3', { timeoutMs: 1000, requestTimeoutMs: 100 }).then(
      () => assert.fail('expected a timeout'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof ConnectionError);
    assert.equal(err.code, 'TIMEOUT');
  });

  it('aborts with AbortError when the caller signal fires, and closes the connection', async () => {
    handler = () => {}; // never answers
    const controller = new AbortController();
    const pending = client().execute({ runtime: 'bash', code: 'sleep 100' }, { signal: controller.signal });
    await arrived();
    const reason = new Error('user navigated away');
    controller.abort(reason);
    const err = await pending.then(
      () => assert.fail('expected an abort'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof AbortError);
    assert.equal(err.name, 'AbortError');
    assert.equal(err.code, 'ABORTED');
    assert.equal(err.cause, reason);
    assert.equal(await only().closedEarly, true);
  });

  it('rejects at once for an already aborted signal, sending nothing', async () => {
    await assert.rejects(client().health({ signal: AbortSignal.abort() }), AbortError);
    assert.equal(seen.length, 0);
  });
});

describe('streaming', { timeout: 10_000 }, () => {
  const exit = result({ exitCode: 1, stdout: 'hello\nworld\n', stderr: 'warn\n' });
  const exitJson = JSON.stringify(exit);
  // Awkward framing on purpose: CRLF, a keep-alive, a multi-line chunk as several data lines, chunk cuts mid-field,
  // mid-CRLF and mid-JSON.
  const frames = [
    ': keep-alive\r\n\r\n',
    'event: stdout\r\ndata: hello\r\ndata: wor',
    'ld\r\ndata: \r\n\r',
    '\nevent: stderr\ndata: warn\ndata: \n\n:ping\n\n',
    `event: exit\ndata: ${exitJson.slice(0, 20)}`,
    `${exitJson.slice(20)}\n\n`,
  ];

  it('yields output events in order and resolves result from the exit event', async () => {
    handler = (_req, res) => sse(res, frames);
    const stream = client({ apiKey: 'k' }).stream({ runtime: 'bash', code: 'echo hello; echo world; echo warn >&2' });
    const events: unknown[] = [];
    for await (const event of stream) events.push(event);
    assert.deepEqual(events, [
      { type: 'stdout', data: 'hello\nworld\n' },
      { type: 'stderr', data: 'warn\n' },
    ]);
    assert.deepEqual(await stream.result, exit);
    const req = only();
    assert.equal(req.headers.accept, 'text/event-stream');
    assert.equal(req.headers.authorization, 'Bearer k');
    assert.equal(req.url, '/v1/execute');
  });

  it('calls onStdout/onStderr and resolves result without anyone iterating', async () => {
    handler = (_req, res) => sse(res, frames);
    const calls: string[] = [];
    const stream = client().stream(
      { runtime: 'bash', code: 'x' },
      { onStdout: (d) => calls.push(`out:${d}`), onStderr: (d) => calls.push(`err:${d}`) },
    );
    assert.deepEqual(await stream.result, exit);
    assert.deepEqual(calls, ['out:hello\nworld\n', 'err:warn\n']);
  });

  it('execute() with callbacks streams under the hood', async () => {
    handler = (_req, res) => sse(res, frames);
    const out: string[] = [];
    const got = await client().execute({ runtime: 'bash', code: 'x' }, { onStdout: (d) => out.push(d) });
    assert.deepEqual(got, exit);
    assert.deepEqual(out, ['hello\nworld\n']);
    assert.equal(only().headers.accept, 'text/event-stream');
  });

  it('falls back to the plain JSON result when the server ignores Accept', async () => {
    handler = (_req, res) => json(res, 200, exit);
    const stream = client().stream({ runtime: 'bash', code: 'x' });
    const events: unknown[] = [];
    for await (const event of stream) events.push(event);
    assert.deepEqual(events, [
      { type: 'stdout', data: exit.stdout },
      { type: 'stderr', data: exit.stderr },
    ]);
    assert.deepEqual(await stream.result, exit);
  });

  it('throws a typed error for an HTTP error before the stream starts', async () => {
    handler = (_req, res) => json(res, 400, errorBody('UNKNOWN_RUNTIME', 'no runtime "cobol"'));
    const stream = client().stream({ runtime: 'cobol', code: 'x' });
    await assert.rejects(stream.result, (err: unknown) => err instanceof ValidationError && err.code === 'UNKNOWN_RUNTIME');
    await assert.rejects(async () => {
      for await (const _ of stream) assert.fail('no events expected');
    }, ValidationError);
  });

  it('turns an error event into ServerError, after delivering the output before it', async () => {
    handler = (_req, res) =>
      sse(res, [
        'event: stdout\ndata: partial\n\n',
        `event: error\ndata: ${JSON.stringify(errorBody('EXECUTOR_FAILED', 'agent crashed'))}\n\n`,
      ]);
    const stream = client().stream({ runtime: 'bash', code: 'x' });
    const events: unknown[] = [];
    const err = await (async () => {
      for await (const event of stream) events.push(event);
    })().then(
      () => assert.fail('expected an error'),
      (e: unknown) => e,
    );
    assert.deepEqual(events, [{ type: 'stdout', data: 'partial' }]);
    assert.ok(err instanceof ServerError);
    assert.equal(err.code, 'EXECUTOR_FAILED');
    assert.equal(err.message, 'agent crashed');
    assert.equal(err.requestId, 'req-42');
    assert.equal(err.retryable, true);
    assert.equal(await stream.result.catch((e: unknown) => e), err);
  });

  it('fails with STREAM_INTERRUPTED when the stream ends without an exit event', async () => {
    handler = (_req, res) => sse(res, ['event: stdout\ndata: a\n\n']);
    const err = await client().stream({ runtime: 'bash', code: 'x' }).result.then(
      () => assert.fail('expected an error'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof ConnectionError);
    assert.equal(err.code, 'STREAM_INTERRUPTED');
  });

  it('fails with STREAM_INTERRUPTED when the connection drops mid-stream', async () => {
    handler = async (_req, res) => {
      await sse(res, ['event: stdout\ndata: a\n\n', 'event: exit\ndata: {"id"'], false);
      res.destroy();
    };
    const err = await client().stream({ runtime: 'bash', code: 'x' }).result.then(
      () => assert.fail('expected an error'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof ConnectionError, String(err));
    assert.equal(err.code, 'STREAM_INTERRUPTED');
  });

  it('leaving the loop early aborts the execution and closes the connection', async () => {
    handler = (_req, res) => sse(res, ['event: stdout\ndata: first\n\n'], false); // then stays open
    const stream = client().stream({ runtime: 'bash', code: 'yes' });
    for await (const event of stream) {
      assert.equal(event.data, 'first');
      break;
    }
    await assert.rejects(stream.result, AbortError);
    assert.equal(await only().closedEarly, true);
  });

  it('abort() cancels a stream nobody iterates', async () => {
    handler = (_req, res) => sse(res, [': open\n\n'], false);
    const stream = client().stream({ runtime: 'bash', code: 'sleep 100' });
    await arrived();
    stream.abort();
    await assert.rejects(stream.result, AbortError);
    assert.equal(await only().closedEarly, true);
  });

  it('a throwing callback aborts the execution and rejects with that error', async () => {
    handler = (_req, res) => sse(res, ['event: stdout\ndata: a\n\n'], false);
    const mine = new Error('callback failed');
    const err = await client()
      .execute({ runtime: 'bash', code: 'x' }, { onStdout: () => { throw mine; } })
      .then(
        () => assert.fail('expected an error'),
        (e: unknown) => e,
      );
    assert.equal(err, mine);
    assert.equal(await only().closedEarly, true);
  });

  it('an ExecutionStream can be iterated only once', async () => {
    handler = (_req, res) => sse(res, frames);
    const stream = client().stream({ runtime: 'bash', code: 'x' });
    for await (const _ of stream) {
      // drain
    }
    await assert.rejects(async () => {
      for await (const _ of stream) assert.fail('second iteration yielded');
    }, TypeError);
  });
});

describe('configuration', { timeout: 10_000 }, () => {
  it('defaults to http://127.0.0.1:8080 and a 60 s timeout', () => {
    const k = new Kindling();
    assert.equal(k.url, 'http://127.0.0.1:8080');
    assert.equal(k.timeoutMs, 120_000);
  });

  it('fromEnv() reads KINDLING_URL and KINDLING_API_KEY; explicit options win; empty values are unset', async () => {
    handler = (_req, res) => json(res, 200, { status: 'ok' });
    await Kindling.fromEnv({}, { KINDLING_URL: baseUrl, KINDLING_API_KEY: 'from-env' }).health();
    await Kindling.fromEnv({ apiKey: 'explicit' }, { KINDLING_URL: `${baseUrl}/`, KINDLING_API_KEY: 'from-env' }).health();
    assert.equal(Kindling.fromEnv({}, { KINDLING_URL: '', KINDLING_API_KEY: '' }).url, 'http://127.0.0.1:8080');
    assert.deepEqual(
      seen.map((s) => s.headers.authorization),
      ['Bearer from-env', 'Bearer explicit'],
    );
  });

  it('fromEnv() defaults to process.env', () => {
    const saved = process.env.KINDLING_URL;
    process.env.KINDLING_URL = 'http://kindling.example:9000/';
    try {
      assert.equal(Kindling.fromEnv().url, 'http://kindling.example:9000');
    } finally {
      if (saved === undefined) delete process.env.KINDLING_URL;
      else process.env.KINDLING_URL = saved;
    }
  });

  it('rejects bad urls and timeouts at construction', () => {
    assert.throws(() => new Kindling({ url: 'not a url' }), TypeError);
    assert.throws(() => new Kindling({ url: 'ftp://host' }), TypeError);
    assert.throws(() => new Kindling({ url: 'http://host/?x=1' }), TypeError);
    assert.throws(() => new Kindling({ timeoutMs: -1 }), RangeError);
    assert.throws(() => new Kindling({ timeoutMs: Number.NaN }), RangeError);
  });

  it('uses a custom fetch when given', async () => {
    const calls: Array<[string, RequestInit]> = [];
    const k = new Kindling({
      url: 'http://kindling.internal:1234/',
      apiKey: 'abc',
      fetch: async (input, init) => {
        calls.push([input, init]);
        return new Response('{"status":"ok"}', { status: 200, headers: { 'content-type': 'application/json' } });
      },
    });
    assert.deepEqual(await k.health(), { status: 'ok' });
    assert.equal(calls.length, 1);
    assert.equal(calls[0]?.[0], 'http://kindling.internal:1234/healthz');
    assert.deepEqual(calls[0]?.[1].headers, { accept: 'application/json', authorization: 'Bearer abc' });
  });
});

describe('Call (request lifetime)', () => {
  it('fires its timeout, and dispose() clears the timer', () => {
    mock.timers.enable({ apis: ['setTimeout'] });
    try {
      const timed = new Call('http://x/', { timeoutMs: 1000 });
      const disposed = new Call('http://x/', { timeoutMs: 1000 });
      disposed.dispose();
      mock.timers.tick(999);
      assert.equal(timed.signal.aborted, false);
      mock.timers.tick(1);
      assert.equal(timed.signal.aborted, true);
      assert.equal(timed.toError(new Error('x')).code, 'TIMEOUT');
      mock.timers.tick(10_000);
      assert.equal(disposed.signal.aborted, false);
    } finally {
      mock.timers.reset();
    }
  });

  it('stops listening to the caller signal once disposed', () => {
    const controller = new AbortController();
    const call = new Call('http://x/', { signal: controller.signal, timeoutMs: 0 });
    call.dispose();
    controller.abort();
    assert.equal(call.signal.aborted, false);
  });
});
