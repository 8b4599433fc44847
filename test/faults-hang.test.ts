/**
 * Fault: a sandbox that hangs while it starts. The hang is injected the clean way: a handler function whose module top
 * level blocks (so the agent never says HELLO), on the real sandbox executor. A start that does not finish within the
 * start timeout is killed, its resources removed, counted as a failed sandbox in /metrics, and a fresh one is tried:
 * a hang that passes (here: only until a deadline) is served by the fresh sandbox; one that does not ends in a clear
 * retryable 503 SANDBOX_START_TIMEOUT, never in a request that waits forever.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { sample } from './helpers/prom-text.js';
import { processes } from './helpers/faults.js';
import { sandboxDirs, sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const unavailable = await sandboxUnavailableReason();
const START_TIMEOUT_MS = 2500;

async function failedWarmStarts(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return sample(text, 'kindling_sandboxes_total', { executor: 'sandbox', event: 'failed', kind: 'warm' });
}

describe('a sandbox that hangs during start-up', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  const deploy = async (name: string, code: string): Promise<void> => {
    const response = await fetch(`${server.url}/v1/functions/${name}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ runtime: 'python', handler: 'handler', code }) });
    assert.ok(response.ok, await response.text());
  };
  const invoke = async (name: string, body: string): Promise<{ status: number; text: string; ms: number; retryAfter: string | null }> => {
    const started = Date.now();
    const response = await fetch(`${server.url}/v1/functions/${name}/invoke`, { method: 'POST', body });
    return { status: response.status, text: await response.text(), ms: Date.now() - started, retryAfter: response.headers.get('retry-after') };
  };
  /** Handler sandboxes of this server still alive: their python agents with a function's code (not the bwrap parents). */
  const handlerProcesses = (): string[] =>
    processes()
      .filter((p) => p.cgroup.includes(`/kindling/${server.ownerId}/`) && p.cmdline.startsWith('python3 ') && p.cmdline.includes('handler.py'))
      .map((p) => `${p.pid} ${p.cmdline}`);

  before(async () => {
    // No generic sandboxes: every cold start is a fresh sandbox started with the function's code.
    server = await startTestServer({ executor: 'sandbox', functionPools: { startTimeoutMs: START_TIMEOUT_MS, genericPerShape: 0 } });
  });
  after(async () => {
    await server?.stop();
  });

  it('a start that hangs once is killed, counted, and the request is served by a fresh sandbox', { timeout: 60_000 }, async () => {
    const failedBefore = await failedWarmStarts(server.url);
    // Module top levels that run before the deadline block (the first start); later ones load at once (the retry).
    const deadline = Date.now() / 1000 + (START_TIMEOUT_MS * 0.7) / 1000;
    await deploy('hangs-once', `import time\nif time.time() < ${deadline}:\n    time.sleep(3600)\n\ndef handler(body):\n    return b"served " + body\n`);
    const answer = await invoke('hangs-once', 'x');
    assert.equal(answer.status, 200, answer.text);
    assert.equal(answer.text, 'served x');
    assert.ok(answer.ms >= START_TIMEOUT_MS, `it waited for the start timeout (${answer.ms} ms)`);
    assert.equal((await failedWarmStarts(server.url)) - failedBefore, 1, 'the hung start is counted as a failed sandbox');
    // The hung sandbox is gone: one handler sandbox (the fresh one, warm now) remains.
    await waitFor(async () => handlerProcesses().length === 1, 10_000, `one handler sandbox (${handlerProcesses().join('; ')})`);
    // The warm one serves the next call at once.
    const warm = await invoke('hangs-once', 'y');
    assert.equal(warm.text, 'served y');
  });

  it('a start that always hangs ends in a retryable 503 SANDBOX_START_TIMEOUT, and nothing is left', { timeout: 60_000 }, async () => {
    const failedBefore = await failedWarmStarts(server.url);
    const agentsBefore = await sandboxDirs(server.dataDir, 'agents');
    await deploy('hangs', 'import time\nwhile True:\n    time.sleep(1)\n\ndef handler(body):\n    return body\n');
    const answer = await invoke('hangs', 'x');
    assert.equal(answer.status, 503, answer.text);
    assert.equal((JSON.parse(answer.text) as { error: { code: string } }).error.code, 'SANDBOX_START_TIMEOUT');
    assert.ok(answer.retryAfter !== null, 'Retry-After');
    // The first start and the fresh one, each bounded by the timeout: no request that waits forever.
    assert.ok(answer.ms >= 2 * START_TIMEOUT_MS && answer.ms < 6 * START_TIMEOUT_MS, `answered after ${answer.ms} ms`);
    assert.equal((await failedWarmStarts(server.url)) - failedBefore, 2, 'both hung starts are counted');
    // Killed and removed: no agent of the hung function runs, and its socket dirs are gone.
    await waitFor(async () => handlerProcesses().length === 1, 10_000, `only the warm sandbox of the other function (${handlerProcesses().join('; ')})`);
    assert.deepEqual(await sandboxDirs(server.dataDir, 'agents'), agentsBefore);
    // The pool is not wedged: a fixed version deploys and serves.
    await deploy('hangs', 'def handler(body):\n    return b"fixed " + body\n');
    assert.equal((await invoke('hangs', 'z')).text, 'fixed z');
  });
});

describe('a generic sandbox that hangs while loading a function', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  before(async () => {
    // One generic python sandbox waits: the cold start hands it the code (a LOAD), which hangs.
    server = await startTestServer({ executor: 'sandbox', functionPools: { startTimeoutMs: START_TIMEOUT_MS, genericPerShape: 1 } });
    await waitFor(async () => ((server.handlers.stats() as { generic: { idle: number } }).generic.idle) >= 1, 30_000, 'a generic sandbox');
  });
  after(async () => {
    await server?.stop();
  });

  /** Failed starts of generic sandboxes (the pool's refill runs beside the test and may miss the short start timeout under load). */
  const genericFailures = (): number => (server.handlers.stats() as { generic: { failed: number } }).generic.failed;

  it('the load is bounded too: killed, counted, then fresh sandboxes, then a retryable 503', { timeout: 60_000 }, async () => {
    const failedBefore = await failedWarmStarts(server.url);
    const genericFailedBefore = genericFailures();
    const put = await fetch(`${server.url}/v1/functions/hangs`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ runtime: 'python', handler: 'handler', code: 'import time\nwhile True:\n    time.sleep(1)\n\ndef handler(body):\n    return body\n' }) });
    assert.ok(put.ok);
    const started = Date.now();
    const response = await fetch(`${server.url}/v1/functions/hangs/invoke`, { method: 'POST', body: 'x' });
    const ms = Date.now() - started;
    assert.equal(response.status, 503);
    assert.equal(((await response.json()) as { error: { code: string } }).error.code, 'SANDBOX_START_TIMEOUT');
    // The generic sandbox's load, then a fresh sandbox and one retry: three bounded starts.
    assert.ok(ms >= 3 * START_TIMEOUT_MS && ms < 8 * START_TIMEOUT_MS, `answered after ${ms} ms`);
    // A refill of the generic pool that missed the start timeout on a loaded machine is counted too, and is not this
    // function's: it is taken out of the count.
    const refillFailures = genericFailures() - genericFailedBefore;
    assert.equal((await failedWarmStarts(server.url)) - failedBefore - refillFailures, 3, 'the hung load and both hung starts are counted');
  });
});
