/**
 * Async invocations, callbacks, retention and live logs end to end against a real server on the sandbox executor.
 */
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { execFile } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { Kindling, NotFoundError, type LogEvent } from '@kindling/sdk';
import { sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const unavailable = await sandboxUnavailableReason();
const execFileAsync = promisify(execFile);
const CLI = new URL('../../bin/kindling.js', import.meta.url).pathname;

interface View {
  id: string;
  function: string;
  version: number;
  status: string;
  exitCode: number | null;
  durationMs: number | null;
  error?: string;
  callback?: { state: string; attempts: number };
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
}

async function readBody(request: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of request) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

describe('async invocations (sandbox executor)', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  let hook: Server;
  let hookPort = 0;
  const received: { attempt: string; body: Record<string, unknown> }[] = [];
  let failFirst = 0;

  const api = (path: string, init?: RequestInit): Promise<Response> => fetch(`${server.url}${path}`, init);
  const deploy = async (name: string, command: string[]): Promise<void> => {
    const response = await api(`/v1/functions/${name}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ image: 'kindling/base', command }) });
    assert.ok(response.ok, await response.text());
  };
  const enqueue = async (name: string, body: string, headers: Record<string, string> = {}): Promise<{ status: number; json: { invocationId: string; created: boolean } }> => {
    const response = await api(`/v1/functions/${name}/invoke`, { method: 'POST', headers: { 'x-kindling-async': 'true', ...headers }, body });
    return { status: response.status, json: (await response.json()) as { invocationId: string; created: boolean } };
  };
  const get = async (id: string): Promise<View> => (await (await api(`/v1/invocations/${id}`)).json()) as View;
  const finished = async (id: string): Promise<View> => {
    let view: View | null = null;
    await waitFor(async () => {
      view = await get(id);
      return view.status === 'succeeded' || view.status === 'failed';
    }, 60_000, `invocation ${id} to finish`);
    return view!;
  };

  before(async () => {
    hook = createServer((request, response) => {
      void readBody(request).then((text) => {
        if (failFirst > 0) {
          failFirst--;
          response.writeHead(500).end();
          return;
        }
        received.push({ attempt: String(request.headers['x-kindling-attempt']), body: JSON.parse(text) as Record<string, unknown> });
        response.writeHead(204).end();
      });
    });
    await new Promise<void>((resolve) => hook.listen(0, '127.0.0.1', resolve));
    hookPort = (hook.address() as AddressInfo).port;
    server = await startTestServer({
      executor: 'sandbox',
      asyncInvocations: { concurrency: 4, callbackAllow: [`127.0.0.1:${hookPort}`], callbackBaseDelayMs: 100, retentionMs: 60 * 60_000 },
    });
  });
  after(async () => {
    await server?.stop();
    await new Promise((resolve) => hook?.close(resolve));
  });

  it('202 with an id once stored; the dispatcher runs it; status, output and listing', async () => {
    await deploy('echo', ['sh', '-c', 'cat; echo to-stderr >&2']);
    const { status, json } = await enqueue('echo', 'hello async');
    assert.equal(status, 202);
    assert.match(json.invocationId, /^inv_/);
    const view = await finished(json.invocationId);
    assert.equal(view.status, 'succeeded');
    assert.equal(view.exitCode, 0);
    assert.equal(view.function, 'echo');
    assert.equal(view.version, 1);
    assert.ok(view.durationMs! > 0);
    assert.ok(Date.parse(view.createdAt) <= Date.parse(view.startedAt!) && Date.parse(view.startedAt!) <= Date.parse(view.finishedAt!));
    const output = await api(`/v1/invocations/${json.invocationId}/output`);
    assert.equal(output.status, 200);
    assert.equal(await output.text(), 'hello async');
    assert.equal(output.headers.get('x-kindling-exit-code'), '0');

    const listed = (await (await api('/v1/invocations?function=echo&status=succeeded')).json()) as { invocations: View[] };
    assert.ok(listed.invocations.some((i) => i.id === json.invocationId));
    const none = (await (await api(`/v1/invocations?function=echo&since=${Date.now() + 60_000}`)).json()) as { invocations: View[] };
    assert.equal(none.invocations.length, 0);
    assert.equal((await api('/v1/invocations?status=bogus')).status, 400);
    assert.equal((await api('/v1/invocations/inv_nope')).status, 404);
    assert.equal((await api('/v1/functions/nope/invoke', { method: 'POST', headers: { 'x-kindling-async': 'true' }, body: 'x' })).status, 404);
  });

  it('a failing function ends failed with its exit code; FIFO order is kept', async () => {
    await deploy('fail', ['sh', '-c', 'exit 3']);
    const { json } = await enqueue('fail', '');
    const view = await finished(json.invocationId);
    assert.equal(view.status, 'failed');
    assert.equal(view.exitCode, 3);
    assert.match(view.error ?? '', /exited with code 3/);
  });

  it('the same Idempotency-Key returns the first invocation and never runs twice', async () => {
    await deploy('once', ['cat']);
    const first = await enqueue('once', 'one', { 'idempotency-key': 'key-123' });
    const second = await enqueue('once', 'two', { 'idempotency-key': 'key-123' });
    assert.equal(second.status, 202);
    assert.equal(second.json.invocationId, first.json.invocationId);
    assert.equal(second.json.created, false);
    await finished(first.json.invocationId);
    const third = await enqueue('once', 'three', { 'idempotency-key': 'key-123' });
    assert.equal(third.json.invocationId, first.json.invocationId);
    const all = (await (await api('/v1/invocations?function=once')).json()) as { invocations: View[] };
    assert.equal(all.invocations.length, 1);
    assert.equal(await (await api(`/v1/invocations/${first.json.invocationId}/output`)).text(), 'one');
  });

  it('POSTs the result to an allowed callback URL, retrying with backoff; other destinations are refused', async () => {
    await deploy('cb', ['cat']);
    failFirst = 2;
    const { json } = await enqueue('cb', 'called back', { 'x-kindling-callback': `http://127.0.0.1:${hookPort}/hook` });
    await waitFor(async () => received.some((r) => r.body.id === json.invocationId), 30_000, 'the callback');
    const delivery = received.find((r) => r.body.id === json.invocationId)!;
    assert.equal(delivery.attempt, '3');
    assert.equal(delivery.body.status, 'succeeded');
    assert.equal(Buffer.from(delivery.body.outputBase64 as string, 'base64').toString(), 'called back');
    await waitFor(async () => (await get(json.invocationId)).callback?.state === 'delivered', 5000, 'the callback state');
    const refused = await enqueue('cb', 'x', { 'x-kindling-callback': 'http://169.254.169.254/latest/meta-data' });
    assert.equal(refused.status, 400);
    const badPort = await enqueue('cb', 'x', { 'x-kindling-callback': `http://127.0.0.1:${hookPort + 1}/` });
    assert.equal(badPort.status, 400);
  });

  it('the logs of a running invocation stream live over SSE (a line shows before the function exits)', async () => {
    await deploy('slow', ['sh', '-c', 'echo first-line; sleep 3; echo last-line']);
    const controller = new AbortController();
    const functionLogs = await api('/v1/functions/slow/logs?follow=true&tail=0', { signal: controller.signal });
    assert.equal(functionLogs.headers.get('content-type'), 'text/event-stream; charset=utf-8');
    const { json } = await enqueue('slow', '');
    // Per invocation: follows while it runs, ends with the invocation.
    const logs = await api(`/v1/invocations/${json.invocationId}/logs`);
    const reader = logs.body!.getReader();
    let text = '';
    while (!text.includes('first-line')) {
      const { value, done } = await reader.read();
      assert.ok(!done, 'the stream ended before the first line');
      text += Buffer.from(value).toString('utf8');
    }
    assert.equal((await get(json.invocationId)).status, 'running', 'the line arrived while the function still ran');
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += Buffer.from(value).toString('utf8');
    }
    assert.match(text, /event: stdout\ndata: \{"invocationId":"inv_[^"]+","text":"first-line\\n"\}/);
    assert.match(text, /last-line/);
    assert.match(text, /event: end\ndata: .*"status":"succeeded"/);

    // Per function: the same lines, live.
    const functionReader = functionLogs.body!.getReader();
    let functionText = '';
    while (!functionText.includes('last-line')) {
      const { value, done } = await functionReader.read();
      assert.ok(!done);
      functionText += Buffer.from(value).toString('utf8');
    }
    assert.match(functionText, /event: start/);
    assert.match(functionText, /first-line/);
    controller.abort();
    await functionReader.cancel().catch(() => undefined);

    // After it finished: the stored logs, then the end.
    const stored = await (await api(`/v1/invocations/${json.invocationId}/logs`)).text();
    assert.match(stored, /first-line\\nlast-line/);
    assert.match(stored, /event: end/);
  });
});

describe('async invocations through the SDK and the CLI', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  let client: Kindling;
  before(async () => {
    server = await startTestServer({ executor: 'sandbox' });
    client = new Kindling({ url: server.url });
  });
  after(async () => {
    await server?.stop();
  });

  it('invokeAsync, waitFor, output, list, get; logs as an async iterator that follows', async () => {
    await client.functions.deploy('sdk-echo', { image: 'kindling/base', command: ['sh', '-c', 'echo started; sleep 1; cat'] });
    const controller = new AbortController();
    const seen: LogEvent[] = [];
    const following = (async () => {
      for await (const event of client.functions.logs('sdk-echo', { follow: true, tail: 0, signal: controller.signal })) {
        seen.push(event);
        if (event.type === 'end') return;
      }
    })();
    // The follower is connected before the invocation exists (it would still see a running one, replayed).
    await waitFor(async () => server.logBus.followed, 10_000, 'the log follower connected');
    const { invocationId, created } = await client.functions.invokeAsync('sdk-echo', 'payload', { idempotencyKey: 'sdk-1' });
    assert.equal(created, true);
    assert.equal((await client.functions.invokeAsync('sdk-echo', 'other', { idempotencyKey: 'sdk-1' })).invocationId, invocationId);
    const done = await client.invocations.waitFor(invocationId, { timeoutMs: 60_000 });
    assert.equal(done.status, 'succeeded');
    assert.equal((await client.invocations.output(invocationId)).text(), 'started\npayload');
    assert.ok((await client.invocations.list({ function: 'sdk-echo', status: 'succeeded' })).some((i) => i.id === invocationId));
    await following;
    controller.abort();
    assert.deepEqual(seen.map((e) => e.type).filter((t) => t !== 'stdout'), ['start', 'end']);
    assert.equal(seen.filter((e) => e.type === 'stdout').map((e) => e.text).join(''), 'started\npayload');
    await assert.rejects(client.invocations.get('inv_missing'), NotFoundError);
    const logs: LogEvent[] = [];
    for await (const event of client.invocations.logs(invocationId)) logs.push(event);
    assert.equal(logs.at(-1)?.type, 'end');
  });

  it('a streamed (> 1 MiB) sync output resolves with streamed: true and the exit code and duration of its record', async () => {
    await client.functions.deploy('big', { image: 'kindling/base', command: ['sh', '-c', 'head -c 3000000 /dev/zero; exit "$0"', '4'] });
    const result = await client.functions.invoke('big');
    assert.equal(result.body.length, 3_000_000);
    assert.equal(result.streamed, true);
    assert.equal(result.exitCode, 4);
    assert.ok(result.durationMs > 0, String(result.durationMs));
  });

  it('the CLI: invoke --async, invocations get/wait/output, logs', async () => {
    const url = ['--url', server.url];
    await execFileAsync('node', [CLI, 'deploy', 'cli-fn', '--image', 'kindling/base', ...url, '--', 'sh', '-c', 'echo out; echo err >&2']);
    const id = (await execFileAsync('node', [CLI, 'invoke', 'cli-fn', '--async', '--data', 'x', ...url])).stdout.trim();
    assert.match(id, /^inv_/);
    const waited = JSON.parse((await execFileAsync('node', [CLI, 'invocations', 'wait', id, ...url])).stdout) as { status: string };
    assert.equal(waited.status, 'succeeded');
    const got = JSON.parse((await execFileAsync('node', [CLI, 'invocations', 'get', id, ...url])).stdout) as { id: string; exitCode: number };
    assert.equal(got.id, id);
    assert.equal(got.exitCode, 0);
    assert.equal((await execFileAsync('node', [CLI, 'invocations', 'output', id, ...url])).stdout, 'out\n');
    const logs = await execFileAsync('node', [CLI, 'logs', 'cli-fn', ...url]);
    assert.equal(logs.stdout, 'out\n');
    assert.equal(logs.stderr, 'err\n');
    assert.match((await execFileAsync('node', [CLI, 'invocations', 'list', '--function', 'cli-fn', ...url])).stdout, new RegExp(`${id}\\s+cli-fn@1\\s+succeeded`));
  });
});

describe('retention of async invocations', { skip: unavailable ?? false }, () => {
  it('finished invocations are swept after the TTL', async () => {
    const server = await startTestServer({ executor: 'sandbox', asyncInvocations: { retentionMs: 300, sweepIntervalMs: 100 } });
    const seen = new Set<string>();
    try {
      const deployed = await fetch(`${server.url}/v1/functions/short`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ image: 'kindling/base', command: ['true'] }) });
      assert.equal(deployed.status, 201);
      const response = await fetch(`${server.url}/v1/functions/short/invoke`, { method: 'POST', headers: { 'x-kindling-async': 'true' } });
      assert.equal(response.status, 202, 'accepted: a failed enqueue must not pass as "expired"');
      const { invocationId } = (await response.json()) as { invocationId: string };
      assert.match(invocationId, /^inv_/);
      // It existed and finished before it was swept (a 404 from the start would prove nothing).
      await waitFor(async () => {
        const got = await fetch(`${server.url}/v1/invocations/${invocationId}`);
        if (got.status === 404) return true;
        const { status } = (await got.json()) as { status: string };
        seen.add(status);
        return false;
      }, 30_000, 'the invocation to expire');
      assert.ok(seen.size > 0, 'the invocation was readable before it expired');
    } finally {
      await server.stop();
    }
  });
});
