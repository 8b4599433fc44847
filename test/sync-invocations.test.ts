/**
 * Synchronous invocations are recorded like async ones (status, exit code, duration, capped stdout/stderr) and
 * handlers' console/print output reaches log followers while the call still runs. Real servers, real sandboxes.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Kindling } from '@kindling/sdk';
import { dockerUnavailableReason, sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const execFileAsync = promisify(execFile);
const CLI = new URL('../../bin/kindling.js', import.meta.url).pathname;
const sandboxMissing = await sandboxUnavailableReason();
const dockerMissing = await dockerUnavailableReason();

interface View {
  id: string;
  function: string;
  version: number;
  mode: string;
  status: string;
  exitCode: number | null;
  durationMs: number | null;
  coldStart: boolean | null;
  error?: string;
  payloadBytes: number;
  outputBytes: number | null;
  createdAt: string;
  finishedAt: string | null;
}

/** Reads an SSE stream until `until` matches what arrived so far, noting when each chunk arrived. */
async function readSse(response: Response, until: (text: string) => boolean): Promise<{ text: string; arrivals: { atMs: number; text: string }[] }> {
  const reader = response.body!.getReader();
  let text = '';
  const arrivals: { atMs: number; text: string }[] = [];
  while (!until(text)) {
    const { value, done } = await reader.read();
    if (done) break;
    const chunk = Buffer.from(value).toString('utf8');
    arrivals.push({ atMs: performance.now(), text: chunk });
    text += chunk;
  }
  await reader.cancel().catch(() => undefined);
  return { text, arrivals };
}

describe('synchronous invocations are recorded (sandbox executor)', { skip: sandboxMissing ?? false }, () => {
  let server: TestServer;
  const api = (path: string, init?: RequestInit): Promise<Response> => fetch(`${server.url}${path}`, init);
  const deploy = async (name: string, spec: Record<string, unknown>): Promise<void> => {
    const response = await api(`/v1/functions/${name}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify(spec) });
    assert.ok(response.ok, await response.text());
  };
  const list = async (name: string): Promise<View[]> => ((await (await api(`/v1/invocations?function=${name}`)).json()) as { invocations: View[] }).invocations;

  before(async () => {
    // A small log cap, so that capping shows with small outputs.
    server = await startTestServer({ executor: 'sandbox', asyncInvocations: { syncLogBytes: 1000 } });
  });
  after(async () => {
    await server?.stop();
  });

  it('a command function: listed with mode sync, status, exit code, duration, and its logs', async () => {
    await deploy('sync-cmd', { image: 'kindling/base', command: ['sh', '-c', 'cat; echo to-stderr >&2; exit "${CODE:-0}"'] });
    const response = await api('/v1/functions/sync-cmd/invoke', { method: 'POST', body: 'hello sync' });
    assert.equal(response.status, 200);
    assert.equal(await response.text(), 'hello sync');
    const id = response.headers.get('x-kindling-invocation-id')!;
    assert.ok(id);

    const listed = await list('sync-cmd');
    assert.equal(listed.length, 1);
    const view = listed[0]!;
    assert.equal(view.id, id);
    assert.equal(view.mode, 'sync');
    assert.equal(view.status, 'succeeded');
    assert.equal(view.exitCode, 0);
    assert.equal(view.function, 'sync-cmd');
    assert.equal(view.version, 1);
    assert.equal(view.payloadBytes, 'hello sync'.length);
    assert.equal(view.outputBytes, 'hello sync'.length);
    assert.ok(view.durationMs! > 0);
    assert.ok(view.finishedAt !== null);
    assert.deepEqual(await (await api(`/v1/invocations/${id}`)).json(), view);

    const logs = await (await api(`/v1/invocations/${id}/logs`)).text();
    assert.match(logs, /event: stdout\ndata: \{"invocationId":"[^"]+","text":"hello sync"\}/);
    assert.match(logs, /event: stderr\ndata: \{"invocationId":"[^"]+","text":"to-stderr\\n"\}/);
    assert.match(logs, /event: end\ndata: .*"status":"succeeded"/);
    assert.equal(await (await api(`/v1/invocations/${id}/output`)).text(), 'hello sync');

    // The SDK and the CLI see it too.
    const client = new Kindling({ url: server.url });
    const [viaSdk] = await client.invocations.list({ function: 'sync-cmd' });
    assert.equal(viaSdk?.mode, 'sync');
    const cli = await execFileAsync('node', [CLI, 'invocations', 'list', '--function', 'sync-cmd', '--url', server.url]);
    assert.match(cli.stdout, new RegExp(`${id}\\s+sync-cmd@1\\s+succeeded\\s+sync\\s+exit=0`));
  });

  it('a failing command is recorded failed with its exit code; the function log tail replays sync calls', async () => {
    await deploy('sync-fail', { image: 'kindling/base', command: ['sh', '-c', 'echo failing >&2; exit 3'] });
    const response = await api('/v1/functions/sync-fail/invoke', { method: 'POST', body: '' });
    assert.equal(response.headers.get('x-kindling-exit-code'), '3');
    await response.arrayBuffer();
    const [view] = await list('sync-fail');
    assert.equal(view!.status, 'failed');
    assert.equal(view!.exitCode, 3);
    assert.match(view!.error ?? '', /exited with code 3/);
    const tail = await (await api('/v1/functions/sync-fail/logs?tail=5')).text();
    assert.match(tail, /failing/);
  });

  it('a streamed (> 1 MiB) output is recorded with its full size and the first --sync-log-bytes of it', async () => {
    await deploy('sync-big', { image: 'kindling/base', command: ['sh', '-c', 'head -c 3000000 /dev/zero | tr "\\0" a'] });
    const response = await api('/v1/functions/sync-big/invoke', { method: 'POST', body: '' });
    assert.equal(response.headers.get('x-kindling-output'), 'streamed');
    assert.equal((await response.arrayBuffer()).byteLength, 3_000_000);
    const [view] = await list('sync-big');
    assert.equal(view!.status, 'succeeded');
    assert.equal(view!.outputBytes, 3_000_000);
    const kept = await (await api(`/v1/invocations/${view!.id}/output`)).text();
    assert.equal(kept, 'a'.repeat(1000));
  });

  it('a handler: the return value as stdout and its console output as stderr, capped', async () => {
    await deploy('sync-handler', {
      runtime: 'node',
      handler: 'handler',
      code: 'export function handler(body) { console.log("log line", body.length); console.error("x".repeat(5000)); return "ret:" + body; }',
    });
    const response = await api('/v1/functions/sync-handler/invoke', { method: 'POST', body: 'abc' });
    assert.equal(await response.text(), 'ret:abc');
    const id = response.headers.get('x-kindling-invocation-id')!;
    const view = (await (await api(`/v1/invocations/${id}`)).json()) as View;
    assert.equal(view.mode, 'sync');
    assert.equal(view.status, 'succeeded');
    assert.equal(view.exitCode, 0);
    assert.equal(view.payloadBytes, 3);
    const logs = await (await api(`/v1/invocations/${id}/logs`)).text();
    assert.match(logs, /"text":"ret:abc"/);
    const stderr = /event: stderr\ndata: (.*)\n/.exec(logs);
    assert.ok(stderr, logs);
    const text = (JSON.parse(stderr[1]!) as { text: string }).text;
    assert.ok(text.startsWith('log line 3\n'), text.slice(0, 100));
    assert.equal(Buffer.byteLength(text), 1000, 'stderr is capped at syncLogBytes');
  });

  it('a handler that throws is recorded failed with exit code 1', async () => {
    await deploy('sync-throw', { runtime: 'python', handler: 'main', code: 'def main(body):\n    raise ValueError("nope")\n' });
    const response = await api('/v1/functions/sync-throw/invoke', { method: 'POST', body: '' });
    assert.equal(response.headers.get('x-kindling-exit-code'), '1');
    await response.arrayBuffer();
    const [view] = await list('sync-throw');
    assert.equal(view!.status, 'failed');
    assert.equal(view!.exitCode, 1);
  });

  it('many concurrent calls: every one is recorded (batched writes lose nothing)', async () => {
    await deploy('sync-many', { runtime: 'node', handler: 'handler', code: 'export const handler = (b) => b;', maxConcurrency: 2, minWarm: 2 });
    const ids = await Promise.all(
      Array.from({ length: 60 }, async (_, i) => {
        const response = await api('/v1/functions/sync-many/invoke', { method: 'POST', body: String(i) });
        assert.equal(await response.text(), String(i));
        return response.headers.get('x-kindling-invocation-id')!;
      }),
    );
    const listed = await list('sync-many');
    assert.deepEqual(new Set(listed.map((v) => v.id)), new Set(ids));
  });
});

describe('retention applies to synchronous invocations', { skip: sandboxMissing ?? false }, () => {
  it('a recorded sync invocation is swept after the TTL', async () => {
    const server = await startTestServer({ executor: 'sandbox', asyncInvocations: { retentionMs: 300, sweepIntervalMs: 100 } });
    try {
      const deployed = await fetch(`${server.url}/v1/functions/short`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ image: 'kindling/base', command: ['true'] }) });
      assert.equal(deployed.status, 201, await deployed.text());
      const response = await fetch(`${server.url}/v1/functions/short/invoke`, { method: 'POST' });
      await response.arrayBuffer();
      assert.equal(response.status, 200);
      const id = response.headers.get('x-kindling-invocation-id');
      assert.ok(id, 'the answer names the recorded invocation');
      assert.equal((await fetch(`${server.url}/v1/invocations/${id}`)).status, 200);
      await waitFor(async () => (await fetch(`${server.url}/v1/invocations/${id}`)).status === 404, 30_000, 'the invocation to expire');
    } finally {
      await server.stop();
    }
  });
});

/** A handler prints, sleeps 2 s, returns: the follower must see the line >= 1 s before the call returns. */
function liveHandlerLogs(executor: 'sandbox' | 'docker', missing: string | null): void {
  describe(`handler logs are live for followers (${executor} executor)`, { skip: missing ?? false }, () => {
    let server: TestServer;
    before(async () => {
      server = await startTestServer({ executor });
    });
    after(async () => {
      await server?.stop();
    });

    const cases = [
      { runtime: 'node', handler: 'handler', code: 'export async function handler() { console.log("early-line"); await new Promise((r) => setTimeout(r, 2000)); return "done"; }' },
      { runtime: 'python', handler: 'main', code: 'import time\ndef main(body):\n    print("early-line")\n    time.sleep(2)\n    return "done"\n' },
    ];
    for (const spec of cases) {
      it(`${spec.runtime}: the printed line arrives while the call still runs`, async () => {
        const name = `live-${spec.runtime}`;
        const deployed = await fetch(`${server.url}/v1/functions/${name}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ...spec, minWarm: 1 }) });
        assert.ok(deployed.ok, await deployed.text());
        // Warm it first so that the timed call is not a cold start.
        await (await fetch(`${server.url}/v1/functions/${name}/invoke`, { method: 'POST' })).arrayBuffer();

        const follower = await fetch(`${server.url}/v1/functions/${name}/logs?follow=true&tail=0`);
        assert.equal(follower.status, 200);
        const invoked = fetch(`${server.url}/v1/functions/${name}/invoke`, { method: 'POST' }).then(async (response) => {
          const body = await response.text();
          return { atMs: performance.now(), body, id: response.headers.get('x-kindling-invocation-id') };
        });
        const { text, arrivals } = await readSse(follower, (t) => /event: end/.test(t));
        const answer = await invoked;
        assert.equal(answer.body, 'done');
        const lineAt = arrivals.find((a) => a.text.includes('early-line'))?.atMs;
        assert.ok(lineAt !== undefined, `the follower never saw the line: ${text}`);
        assert.ok(answer.atMs - lineAt >= 1000, `the line came only ${(answer.atMs - lineAt).toFixed(0)} ms before the answer`);
        assert.match(text, new RegExp(`event: start\\ndata: \\{"invocationId":"${answer.id}"\\}`));
        assert.match(text, /event: stderr\ndata: \{"invocationId":"[^"]+","text":"early-line/);
        // The return value shows as stdout at the end, before the end event (as for async invocations).
        assert.match(text, /event: stdout\ndata: \{"invocationId":"[^"]+","text":"done"\}[\s\S]*event: end\ndata: .*"status":"succeeded"/);
      });
    }
  });
}

liveHandlerLogs('sandbox', sandboxMissing);
liveHandlerLogs('docker', dockerMissing);
