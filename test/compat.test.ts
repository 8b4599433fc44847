/**
 * The FaaS blueprint gateway's routes (POST /api/v1/execute, GET /health, POST /api/v1/snapshots) against a real
 * server on the sandbox executor: the request bodies are the ones the original TypeScript SDK
 * (sdks/typescript/src/index.ts) and Python SDK (sdks/python/faas_sdk.py) build, written out as literal JSON, and the
 * assertions are on the fields those SDKs read from the answer. What does not translate answers 501
 * COMPAT_UNSUPPORTED with the Kindling route to use; bad input answers 4xx with a stable code.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';

const unavailable = await sandboxUnavailableReason();
const KEY = 'compat-admin-key-0123456789abcdef';

interface Answer {
  status: number;
  body: Record<string, unknown>;
}

describe('the FaaS blueprint gateway routes', { skip: unavailable ?? false }, () => {
  let server: TestServer;

  before(async () => {
    server = await startTestServer({ executor: 'sandbox', adminKey: KEY });
  });
  after(async () => {
    await server?.stop();
  });

  /** A request as the original SDKs send it: JSON body, `Authorization: Bearer KEY` when they have a key. */
  async function call(method: string, path: string, body?: unknown, key: string | null = KEY): Promise<Answer> {
    const headers: Record<string, string> = {};
    if (key !== null) headers.authorization = `Bearer ${key}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const response = await fetch(`${server.url}${path}`, { method, headers, ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }) });
    const text = await response.text();
    return { status: response.status, body: text.length > 0 ? (JSON.parse(text) as Record<string, unknown>) : {} };
  }

  /** The fields the original SDKs read from an InvokeResponse, with their types. */
  function assertInvokeShape(answer: Answer): void {
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    const body = answer.body;
    assert.equal(typeof body.request_id, 'string');
    assert.ok((body.request_id as string).length > 0);
    assert.ok(Number.isInteger(body.exit_code), 'exit_code is an integer');
    assert.equal(typeof body.stdout, 'string');
    assert.equal(typeof body.stderr, 'string');
    assert.equal(body.output, body.stdout, 'output is stdout (the Python SDK reads output)');
    assert.equal(body.logs, body.stderr, 'logs is stderr');
    assert.ok(Number.isInteger(body.duration_ms) && (body.duration_ms as number) > 0, `duration_ms ${String(body.duration_ms)} is a whole number > 0`);
    assert.ok(body.error === null || typeof body.error === 'string');
  }

  test('GET /health answers the original shape without a key; /healthz and /readyz are unchanged', async () => {
    // faas_sdk.py health_check sends no Authorization header.
    const health = await call('GET', '/health', undefined, null);
    assert.equal(health.status, 200);
    assert.equal(health.body.status, 'healthy');
    assert.equal(health.body.docker, false, 'this server runs only the sandbox executor');
    assert.equal(health.body.firecracker, false);
    assert.ok(Number.isInteger(health.body.uptime_ms) && (health.body.uptime_ms as number) >= 0);
    assert.deepEqual((await call('GET', '/healthz', undefined, null)).body, { status: 'ok' });
    assert.equal((await call('GET', '/readyz', undefined, null)).status, 200);
  });

  test('POST /api/v1/execute needs the API key as Authorization: Bearer, as /v1 does', async () => {
    const body = { command: 'echo hi', image: 'alpine:latest', runtime: 'auto', timeout_ms: 30000 };
    const missing = await call('POST', '/api/v1/execute', body, null);
    assert.equal(missing.status, 401);
    assert.equal((missing.body.error as { code: string }).code, 'UNAUTHORIZED');
    assert.equal((await call('POST', '/api/v1/execute', body, 'not-a-key')).status, 401);
  });

  test('the TypeScript SDK execute() body runs `sh -c COMMAND` in the alpine alias and answers InvokeResponse', async () => {
    // FaaSClient.execute({ command, image: 'alpine:latest' }) with the defaults: runtime auto, timeout 30000, md5 cache key.
    const answer = await call('POST', '/api/v1/execute', {
      command: 'echo "Hello World" && echo "Line 2"',
      image: 'alpine:latest',
      runtime: 'auto',
      timeout_ms: 30000,
      cache_key: '0d7c1e4d8a3b0a8f4b8f2c7a1e0f9d3c',
    });
    assertInvokeShape(answer);
    assert.equal(answer.body.stdout, 'Hello World\nLine 2\n');
    assert.equal(answer.body.exit_code, 0);
    assert.equal(answer.body.error, null);
  });

  test('env_vars as the SDKs send them ([name, value] pairs) reach the process', async () => {
    // TS: Object.entries(envVars); Python: [[k, v] for k, v in env_vars.items()].
    const answer = await call('POST', '/api/v1/execute', {
      command: 'echo "API_KEY=$API_KEY" && echo "ENV=$NODE_ENV"',
      image: 'alpine:latest',
      runtime: 'docker',
      timeout_ms: 30000,
      env_vars: [
        ['API_KEY', 'secret-key-123'],
        ['NODE_ENV', 'production'],
      ],
      working_dir: '/tmp',
    });
    assertInvokeShape(answer);
    assert.equal(answer.body.stdout, 'API_KEY=secret-key-123\nENV=production\n');
  });

  test('the language helpers of both SDKs run in the mapped runtimes (python, node)', async () => {
    // TypeScript runPython: python -c "..." (double quotes escaped) in python:3.11-slim.
    const tsPython = await call('POST', '/api/v1/execute', {
      command: 'python -c "\ndata = [1, 2, 3, 4, 5]\nprint(f\\"Total: {sum(data)}\\")\n"',
      image: 'python:3.11-slim',
      runtime: 'auto',
      timeout_ms: 30000,
    });
    assertInvokeShape(tsPython);
    assert.equal(tsPython.body.stdout, 'Total: 15\n', JSON.stringify(tsPython.body));
    // Python run_python: python3 -c '...' in python:3.11-slim.
    const pyPython = await call('POST', '/api/v1/execute', { command: "python3 -c 'print(\"Python works\", 2 + 2)'", image: 'python:3.11-slim', runtime: 'auto', timeout_ms: 30000 });
    assertInvokeShape(pyPython);
    assert.equal(pyPython.body.stdout, 'Python works 4\n');
    // Python run_javascript: node -e '...' in node:18-alpine; TypeScript runJavaScript uses node:20-slim.
    const node = await call('POST', '/api/v1/execute', { command: "node -e 'console.log(\"Sum: \" + [1, 2, 3, 4, 5].reduce((a, b) => a + b, 0))'", image: 'node:18-alpine', runtime: 'auto', timeout_ms: 30000 });
    assertInvokeShape(node);
    assert.equal(node.body.stdout, 'Sum: 15\n');
  });

  test('a non-zero exit is a 200 result with exit_code and error, as the original answered', async () => {
    const answer = await call('POST', '/api/v1/execute', { command: 'sh -c "echo error && exit 3"', image: 'alpine:latest', runtime: 'auto', timeout_ms: 30000 });
    assertInvokeShape(answer);
    assert.equal(answer.body.exit_code, 3);
    assert.equal(answer.body.stdout, 'error\n');
    assert.equal(answer.body.error, 'Process exited with code 3');
  });

  test('timeout_ms is enforced: the command is ended and the answer says so', async () => {
    const started = Date.now();
    const answer = await call('POST', '/api/v1/execute', { command: 'sleep 60', image: 'alpine:latest', runtime: 'auto', timeout_ms: 1000 });
    assertInvokeShape(answer);
    assert.equal(answer.body.timed_out, true);
    assert.match(answer.body.error as string, /^Timed out after 1000 ms/);
    assert.ok(Date.now() - started < 30_000, 'answered long before the command would have ended');
  });

  test('bad input gets a 4xx with a stable code and a message saying what to send', async () => {
    const code = (answer: Answer): string => (answer.body.error as { code: string }).code;
    const message = (answer: Answer): string => (answer.body.error as { message: string }).message;

    const noCommand = await call('POST', '/api/v1/execute', { image: 'alpine:latest' });
    assert.equal(noCommand.status, 400);
    assert.equal(code(noCommand), 'VALIDATION_FAILED');
    assert.match(message(noCommand), /command/);

    const notJson = await call('POST', '/api/v1/execute', 'invalid json');
    assert.equal(notJson.status, 400);
    assert.equal(code(notJson), 'INVALID_JSON');

    const image = await call('POST', '/api/v1/execute', { command: 'python inference.py', image: 'pytorch/pytorch:latest' });
    assert.equal(image.status, 400);
    assert.equal(code(image), 'UNKNOWN_IMAGE');
    assert.match(message(image), /alpine\[:tag\].*python\[:tag\].*kindling\/<name>/);

    const mode = await call('POST', '/api/v1/execute', { command: 'date', mode: 'turbo' });
    assert.equal(mode.status, 400);
    assert.equal(code(mode), 'VALIDATION_FAILED');
    assert.match(message(mode), /mode.*ephemeral/);

    const timeout = await call('POST', '/api/v1/execute', { command: 'date', timeout_ms: 0 });
    assert.equal(timeout.status, 400);
    assert.equal(code(timeout), 'LIMIT_OUT_OF_RANGE');

    for (const [type, status, expected] of [['text/plain', 415, 'UNSUPPORTED_MEDIA_TYPE'], ['application/octet-stream', 400, 'VALIDATION_FAILED']] as const) {
      const response = await fetch(`${server.url}/api/v1/execute`, { method: 'POST', headers: { authorization: `Bearer ${KEY}`, 'content-type': type }, body: 'echo hi' });
      assert.equal(response.status, status, type);
      assert.equal(((await response.json()) as { error: { code: string } }).error.code, expected, type);
    }

    const env = await call('POST', '/api/v1/execute', { command: 'date', env_vars: [['1BAD', 'x']] });
    assert.equal(env.status, 400);
    assert.equal(code(env), 'VALIDATION_FAILED');
  });

  test('the modes: ephemeral, cached and persistent run once; branched and checkpointed answer 501 with the Kindling route', async () => {
    for (const mode of ['ephemeral', 'cached', 'persistent']) {
      const answer = await call('POST', '/api/v1/execute', { command: 'echo mode', image: 'alpine:latest', mode });
      assertInvokeShape(answer);
      assert.equal(answer.body.stdout, 'mode\n', mode);
    }
    // faas_sdk.py fork_execution("parent-123", "echo 'Forked execution'").
    const fork = await call('POST', '/api/v1/execute', { command: "echo 'Forked execution'", mode: 'branched', branch_from: 'parent-123', runtime: 'auto' });
    assert.equal(fork.status, 501);
    assert.equal((fork.body.error as { code: string }).code, 'COMPAT_UNSUPPORTED');
    assert.match((fork.body.error as { message: string }).message, /POST \/v1\/sandboxes\/ID\/fork/);
    const checkpoint = await call('POST', '/api/v1/execute', { command: 'date', mode: 'checkpointed' });
    assert.equal(checkpoint.status, 501);
    assert.match((checkpoint.body.error as { message: string }).message, /POST \/v1\/sandboxes\/ID\/snapshots/);
  });

  test('the other routes of the SDKs answer 501 COMPAT_UNSUPPORTED naming the Kindling route', async () => {
    const cases: [string, string, unknown, RegExp][] = [
      ['POST', '/api/v1/prewarm', { image: 'python:3.11-slim', count: 3, runtime: 'auto' }, /minWarm/],
      ['GET', '/api/v1/metrics', undefined, /GET \/metrics/],
      ['GET', '/api/v1/logs/ex_123/stream', undefined, /text\/event-stream/],
      ['POST', '/api/v1/instances', { image: 'alpine:latest', cpu_cores: 1, memory_mb: 512 }, /POST \/api\/v1\/execute/],
    ];
    for (const [method, path, body, pointer] of cases) {
      const answer = await call(method, path, body);
      assert.equal(answer.status, 501, `${method} ${path}`);
      assert.equal((answer.body.error as { code: string }).code, 'COMPAT_UNSUPPORTED');
      assert.match((answer.body.error as { message: string }).message, pointer, `${method} ${path}`);
    }
  });

  test('POST /api/v1/snapshots snapshots a persistent sandbox named by container_id', async () => {
    const created = await call('POST', '/v1/sandboxes', { image: 'kindling/base' });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const sandboxId = created.body.id as string;
    try {
      // createSnapshot(containerId, name, description) of both SDKs.
      const answer = await call('POST', '/api/v1/snapshots', { container_id: sandboxId, name: 'checkpoint-1', description: null });
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
      assert.equal(typeof answer.body.id, 'string');
      assert.equal(answer.body.name, 'checkpoint-1');
      assert.equal(answer.body.container_id, sandboxId);
      assert.ok(!Number.isNaN(Date.parse(answer.body.created_at as string)));
      assert.ok(Number.isInteger(answer.body.size_bytes));
      const snapshotId = answer.body.id as string;
      assert.equal((await call('GET', `/v1/snapshots/${snapshotId}`)).status, 200, 'a real Kindling snapshot');
      const unknown = await call('POST', '/api/v1/snapshots', { container_id: 'sb_nothere', name: 'x' });
      assert.equal(unknown.status, 404);
      assert.equal((unknown.body.error as { code: string }).code, 'SANDBOX_NOT_FOUND');
      assert.equal((await call('DELETE', `/v1/sandboxes/${sandboxId}`)).status, 204);
      assert.equal((await call('DELETE', `/v1/snapshots/${snapshotId}`)).status, 204);
    } finally {
      await call('DELETE', `/v1/sandboxes/${sandboxId}`);
    }
  });
});
