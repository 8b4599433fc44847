/**
 * End to end through the SDK, the CLI and plain HTTP against a real server, once per executor: the real Docker engine
 * and the real bubblewrap sandbox.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { Kindling, RateLimitError, ValidationError, AuthenticationError, type ExecutionResult } from '@kindling/sdk';
import { sample } from './helpers/prom-text.js';
import { containersOf, dockerUnavailableReason, sandboxDirs, sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const execFileAsync = promisify(execFile);
const CLI = new URL('../../bin/kindling.js', import.meta.url).pathname;
const unavailable = await dockerUnavailableReason();
const EXECUTORS = [
  { name: 'docker', unavailable },
  { name: 'sandbox', unavailable: await sandboxUnavailableReason() },
] as const;

interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  trailers: Record<string, string | undefined>;
  body: Buffer;
}

/** A raw-mode execution with node:http (fetch does not expose trailers). */
function rawRequest(baseUrl: string, spec: Record<string, unknown>, body: Buffer, rawOutput: boolean): Promise<RawResponse> {
  const url = new URL(`${baseUrl}/v1/execute`);
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: url.hostname,
        port: url.port,
        path: url.pathname,
        method: 'POST',
        headers: { 'content-type': 'application/octet-stream', 'x-kindling-spec': JSON.stringify(spec), ...(rawOutput ? { accept: 'application/octet-stream' } : {}) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, trailers: res.trailers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** What this server's executor still holds: containers (docker) or run dirs (sandbox). */
async function leftovers(server: TestServer, executor: string): Promise<string[]> {
  if (executor === 'docker') return (await containersOf(server.ownerId)).map((info) => info.Id);
  return sandboxDirs(server.dataDir, 'runs');
}

async function postJson(url: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; headers: Headers; json: { error: { code: string; message: string }; requestId: string; stdout: string } }> {
  const response = await fetch(`${url}/v1/execute`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: response.status, headers: response.headers, json: (await response.json()) as { error: { code: string; message: string }; requestId: string; stdout: string } };
}

for (const { name: executorName, unavailable: skipReason } of EXECUTORS) describe(`${executorName} executor end to end`, { skip: skipReason ?? false }, () => {
  let server: TestServer;
  let client: Kindling;

  before(async () => {
    server = await startTestServer({ executor: executorName });
    client = new Kindling({ url: server.url });
  });
  after(async () => {
    if (!server) return;
    const executor = server.executors.get(executorName);
    await server.stop();
    // Nothing the tests made may remain.
    if (executorName === 'docker') assert.deepEqual(await containersOf(server.ownerId), []);
    assert.equal(executor ? (await executor.reap()).removed : 0, 0);
  });

  it('answers healthz, readyz, openapi and metrics', async () => {
    assert.deepEqual(await client.health(), { status: 'ok' });
    const ready = await client.ready();
    assert.equal(ready.status, 'ready');
    assert.equal(ready.defaultExecutor, executorName);
    const openapi = (await (await fetch(`${server.url}/openapi.json`)).json()) as { paths: Record<string, unknown> };
    assert.ok(openapi.paths['/v1/execute']);
    for (const path of ['/v1/tenants', '/v1/tenants/{name}', '/v1/tenants/{name}/keys', '/v1/tenants/{name}/keys/{id}', '/v1/tenant']) assert.ok(openapi.paths[path], `${path} in the OpenAPI document`);
  });

  for (const [runtime, code, expected] of [
    ['bash', 'echo "hello from bash $BASH_VERSION" | cut -c1-15', 'hello from bash\n'],
    ['python', 'import sys; print("hello from python", sys.version_info[0])', 'hello from python 3\n'],
    ['node', 'console.log("hello from node", typeof process.versions.node)', 'hello from node string\n'],
    ['node', 'import { platform } from "node:os";\nconsole.log("esm", platform())', 'esm linux\n'],
    ['rust', 'fn fib(n: u64) -> u64 { if n < 2 { n } else { fib(n - 1) + fib(n - 2) } }\nfn main() { println!("fib {}", fib(20)); }', 'fib 6765\n'],
  ] as const) {
    it(`runs a ${runtime} hello world (${expected.trim()})`, async () => {
      const result = await client.run(runtime, code);
      assert.equal(result.stderr, '');
      assert.equal(result.exitCode, 0);
      assert.equal(result.stdout, expected);
      assert.equal(result.executor, executorName);
    });
  }

  it('a rust function is compiled at deploy: a call execs the program, which reads the body on stdin', async () => {
    const code = 'use std::io::Read;\nfn main() { let mut s = String::new(); std::io::stdin().read_to_string(&mut s).unwrap(); println!("{} {}", std::env::args().next().unwrap(), s.len()); }\n';
    const info = await client.functions.deploy(`rust-compiled-${executorName}`, { runtime: 'rust', code: `${code}// ${Date.now()}\n` });
    assert.equal(info.layer?.kind, 'compile');
    assert.equal(info.layer?.reused, false);
    assert.equal((await client.functions.invoke(`rust-compiled-${executorName}`, 'four')).text(), '/kindling-bin/main 4\n');
  });

  it('round-trips 1 MiB of random bytes through stdin and stdout byte-exact', async () => {
    const input = randomBytes(1 << 20);
    const { status, json } = await postJson(server.url, {
      image: 'kindling/base',
      command: ['cat'],
      stdinBase64: input.toString('base64'),
      outputEncoding: 'base64',
    });
    assert.equal(status, 200);
    const output = Buffer.from(json.stdout, 'base64');
    assert.equal(createHash('sha256').update(output).digest('hex'), createHash('sha256').update(input).digest('hex'));
  });

  it('streams a raw body to stdin and raw stdout back, byte-exact, with the result in trailers', async () => {
    const input = randomBytes(3 * 1024 * 1024 + 17);
    const response = await rawRequest(server.url, { image: 'kindling/base', command: ['sh', '-c', 'cat; echo done >&2; exit 7'] }, input, true);
    assert.equal(response.status, 200);
    assert.equal(response.headers['x-kindling-executor'], executorName);
    assert.ok(response.body.equals(input), 'stdout differs from stdin');
    assert.equal(response.trailers['x-kindling-exit-code'], '7');
    assert.equal(Buffer.from(response.trailers['x-kindling-stderr-base64'] ?? '', 'base64').toString(), 'done\n');
    const counted = await rawRequest(server.url, { image: 'kindling/base', command: ['wc', '-c'] }, input, false);
    assert.equal((JSON.parse(counted.body.toString()) as ExecutionResult).stdout.trim(), String(input.length));
    const bad = await rawRequest(server.url, { image: 'kindling/base', command: ['cat'], stdin: 'x' } as never, input, false);
    assert.equal(bad.status, 400);
    assert.equal((JSON.parse(bad.body.toString()) as { error: { code: string } }).error.code, 'VALIDATION_FAILED');
  });

  it('a client that disconnects mid-upload cancels the execution and frees the sandbox', async () => {
    const inFlight = async (): Promise<number> => sample(await (await fetch(`${server.url}/metrics`)).text(), 'kindling_executions_in_flight');
    const url = new URL(`${server.url}/v1/execute`);
    const req = httpRequest({ host: url.hostname, port: url.port, path: url.pathname, method: 'POST', headers: { 'content-type': 'application/octet-stream', 'x-kindling-spec': JSON.stringify({ runtime: 'bash', code: 'exec cat', timeoutMs: 60_000 }) } });
    req.on('error', () => undefined);
    req.write(randomBytes(256 * 1024));
    try {
      // The execution and its sandbox must exist before the client goes, or this would prove nothing about cancelling
      // it. (A code execution: the sandbox executor keeps the code in a run dir, which is what leftovers() sees of it;
      // a Docker container appears a moment after the execution is counted in flight.)
      await waitFor(async () => (await inFlight()) === 1 && (await leftovers(server, executorName)).length >= 1, 20_000, 'the execution of the upload and its sandbox');
    } finally {
      req.destroy();
    }
    await waitFor(async () => (await inFlight()) === 0, 20_000, 'the execution of the aborted upload to end');
    await waitFor(async () => (await leftovers(server, executorName)).length === 0, 20_000, 'the sandbox of the aborted upload to be removed');
  });

  it('keeps stderr apart and reports a non-zero exit as a result', async () => {
    const result = await client.runCommand('kindling/base', ['sh', '-c', 'echo out; echo err >&2; exit 3']);
    assert.deepEqual([result.exitCode, result.stdout, result.stderr], [3, 'out\n', 'err\n']);
  });

  it('passes env and workdir', async () => {
    const result = await client.runCommand('kindling/base', ['sh', '-c', 'echo "$A $B"; pwd'], { env: { A: 'x y', B: '$z' }, workdir: '/app' });
    assert.equal(result.stdout, 'x y $z\n/app\n');
  });

  it('a timeout kills the sandbox fast and nothing of it remains', async () => {
    const startedAt = Date.now();
    // A code execution: the sandbox executor keeps its code in a run dir, which leftovers() sees (a plain command has none).
    const result = await client.run('bash', 'exec sleep 100', { timeoutMs: 500 });
    const elapsedMs = Date.now() - startedAt;
    assert.equal(result.timedOut, true);
    // The sleep would take 100 s: ending well before means the timeout killed it (how soon after 500 ms depends on the
    // machine's load, so no tighter bound).
    assert.ok(elapsedMs < 30_000, `took ${elapsedMs} ms`);
    await waitFor(async () => (await leftovers(server, executorName)).length === 0, 20_000, 'the sandbox to be removed');
  });

  it('reports an OOM kill', async () => {
    const result = await client.run('python', 'x = bytearray(400 * 1024 * 1024)', { memoryMb: 64 });
    assert.equal(result.oomKilled, true);
    assert.notEqual(result.exitCode, 0);
  });

  it('caps output and says it truncated', async () => {
    const result = await client.runCommand('kindling/base', ['sh', '-c', 'head -c 100000 /dev/zero | tr "\\0" a'], { outputBytes: 1000 });
    assert.equal(result.stdout.length, 1000);
    assert.equal(result.truncated, true);
    assert.equal(result.exitCode, 0);
  });

  it('streams the first chunk over SSE before the process ends', async () => {
    const inFlight = async (): Promise<number> => sample(await (await fetch(`${server.url}/metrics`)).text(), 'kindling_executions_in_flight');
    const events: string[] = [];
    let runningAtFirst: number | null = null;
    const stream = client.stream({ image: 'kindling/base', command: ['sh', '-c', 'echo first; sleep 5; echo second'] });
    for await (const event of stream) {
      events.push(`${event.type}:${event.data.trim()}`);
      // Observed, not timed: when the first chunk is here, the execution is still running (in its sleep).
      if (events.length === 1) runningAtFirst = await inFlight();
    }
    const result = await stream.result;
    assert.deepEqual(events, ['stdout:first', 'stdout:second']);
    assert.equal(runningAtFirst, 1, 'the first chunk arrived only at the end');
    assert.equal(result.stdout, 'first\nsecond\n');
  });

  it('runs 20 executions in parallel', async () => {
    const startedAt = Date.now();
    const results = await Promise.all(Array.from({ length: 20 }, (_, index) => client.runCommand('kindling/base', ['sh', '-c', `sleep 1; echo ${index}`])));
    results.forEach((result: ExecutionResult, index) => assert.equal(result.stdout, `${index}\n`));
    assert.ok(Date.now() - startedAt < 20_000);
  });

  it('answers bad input with 4xx, a stable code and a message', async () => {
    const cases: [unknown, number, string][] = [
      ['{"runtime": "python", "code": ', 400, 'INVALID_JSON'],
      [{ runtime: 'cobol', code: 'x' }, 400, 'UNKNOWN_RUNTIME'],
      [{ image: 'kindling/nope', command: ['true'] }, 400, 'UNKNOWN_IMAGE'],
      [{ runtime: 'python', code: '1', stdin: 'a', stdinBase64: 'YQ==' }, 400, 'CONFLICTING_FIELDS'],
      // runtime + code may name a custom image built from the runtime's; kindling/base is not one.
      [{ runtime: 'python', code: '1', image: 'kindling/base' }, 400, 'VALIDATION_FAILED'],
      [{ runtime: 'python', code: '1', image: 'kindling/base', command: ['true'] }, 400, 'CONFLICTING_FIELDS'],
      [{ runtime: 'python', code: '1', timeoutMs: -1 }, 400, 'LIMIT_OUT_OF_RANGE'],
      [{ runtime: 'python', code: '1', memoryMb: 1e9 }, 400, 'LIMIT_OUT_OF_RANGE'],
      [{ runtime: 'python', code: '1', pids: 'many' }, 400, 'VALIDATION_FAILED'],
      [{ runtime: 'python', code: '1', colour: 'blue' }, 400, 'VALIDATION_FAILED'],
      [{ runtime: 'python', code: '1', network: 'bridge' }, 400, 'VALIDATION_FAILED'],
      [{ runtime: 'python', code: '1', executor: 'quantum' }, 400, 'UNKNOWN_EXECUTOR'],
      [{ runtime: 'python' }, 400, 'VALIDATION_FAILED'],
      [{}, 400, 'VALIDATION_FAILED'],
      [{ image: 'kindling/base', command: [] }, 400, 'VALIDATION_FAILED'],
      [{ runtime: 'bash', code: 'x', stdin: 'y'.repeat(9 * 1024 * 1024) }, 413, 'PAYLOAD_TOO_LARGE'],
    ];
    for (const [body, status, code] of cases) {
      const response = await postJson(server.url, body);
      assert.equal(response.status, status, `${JSON.stringify(body).slice(0, 80)} -> ${JSON.stringify(response.json)}`);
      assert.equal(response.json.error.code, code);
      assert.ok(response.json.error.message.length > 10);
      assert.equal(typeof response.json.requestId, 'string');
    }
    const wrongType = await fetch(`${server.url}/v1/execute`, { method: 'POST', headers: { 'content-type': 'text/xml' }, body: '<x/>' });
    assert.equal(wrongType.status, 415);
    const missing = await fetch(`${server.url}/v1/nothing-here`);
    assert.equal(missing.status, 404);
    assert.equal(((await missing.json()) as { error: { code: string } }).error.code, 'ROUTE_NOT_FOUND');
    await assert.rejects(client.run('python', '1', { timeoutMs: -1 }), ValidationError);
  });

  it('counts executions in /metrics', async () => {
    const scrape = async (): Promise<number> => {
      const text = await (await fetch(`${server.url}/metrics`)).text();
      return sample(text, 'kindling_invocations_total', { function: '_execute', executor: executorName, status: 'failed' });
    };
    const before = await scrape();
    await client.runCommand('kindling/base', ['false']);
    await client.runCommand('kindling/base', ['false']);
    assert.equal((await scrape()) - before, 2);
  });

  it('the CLI runs code, pipes stdin and passes the exit code through', async () => {
    const { stdout } = await execFileAsync('node', [CLI, 'run', '--url', server.url, '--runtime', 'python', '-c', 'print(6 * 7)']);
    assert.equal(stdout, '42\n');
    const child = spawn('node', [CLI, 'run', '--url', server.url, '--image', 'kindling/base', '--stdin', '--', 'sh', '-c', 'tr a-z A-Z; exit 3'], { stdio: ['pipe', 'pipe', 'pipe'] });
    child.stdin.end('piped through\n');
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const exitCode = await new Promise<number | null>((resolve) => child.on('close', resolve));
    assert.equal(output, 'PIPED THROUGH\n');
    assert.equal(exitCode, 3);
  });
});

describe('the gateway under overload and with auth (docker)', { skip: unavailable ?? false }, () => {
  it('answers 429 with Retry-After beyond the concurrency limit and queue', async () => {
    const server = await startTestServer({ maxConcurrent: 1, maxQueued: 1 });
    try {
      const client = new Kindling({ url: server.url });
      const outcomes = await Promise.allSettled(Array.from({ length: 4 }, () => client.runCommand('kindling/base', ['sleep', '1'])));
      const rejected = outcomes.filter((outcome) => outcome.status === 'rejected').map((outcome) => (outcome as PromiseRejectedResult).reason as unknown);
      assert.equal(outcomes.filter((outcome) => outcome.status === 'fulfilled').length, 2);
      assert.equal(rejected.length, 2);
      for (const error of rejected) {
        assert.ok(error instanceof RateLimitError);
        assert.equal(error.retryAfterMs, 1000);
      }
      assert.equal((await client.health()).status, 'ok');
    } finally {
      await server.stop();
    }
  });

  it('requires the API key on /v1 when the server has one', async () => {
    const server = await startTestServer({ adminKey: 's3cret-key' });
    try {
      await assert.rejects(new Kindling({ url: server.url }).runCommand('kindling/base', ['true']), AuthenticationError);
      await assert.rejects(new Kindling({ url: server.url, apiKey: 'wrong' }).runCommand('kindling/base', ['true']), AuthenticationError);
      const result = await new Kindling({ url: server.url, apiKey: 's3cret-key' }).runCommand('kindling/base', ['echo', 'ok']);
      assert.equal(result.stdout, 'ok\n');
      assert.equal((await fetch(`${server.url}/healthz`)).status, 200);
      // The router decodes paths; the key check must not be fooled by a percent-encoded /v1 or an unknown route.
      for (const path of ['/%76%31/execute', '/v1/%65xecute', '/V1/execute', '/v1/execute/', '/nothing']) {
        const response = await fetch(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ image: 'kindling/base', command: ['id'] }) });
        assert.equal(response.status, 401, `${path} answered ${response.status}`);
      }
    } finally {
      await server.stop();
    }
  });

  it('never listens on a non-loopback address without keys: the first start generates the admin key', async () => {
    const shown: string[] = [];
    const server = await startTestServer({ host: '0.0.0.0', announceAdminKey: (key) => shown.push(key) });
    try {
      assert.equal(shown.length, 1);
      const url = server.url.replace('0.0.0.0', '127.0.0.1');
      assert.equal((await fetch(`${url}/v1/functions`)).status, 401);
      assert.equal((await fetch(`${url}/v1/functions`, { headers: { authorization: `Bearer ${shown[0]}` } })).status, 200);
    } finally {
      await server.stop();
    }
  });
});
