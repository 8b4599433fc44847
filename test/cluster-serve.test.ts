/**
 * `kindling serve --cluster`: a gateway and workers as separate server processes on a real nats-server. Handler
 * invocations sent to the gateway run on a worker (x-kindling-node says which), a worker that dies mid-run is reported
 * within seconds, a draining worker's share moves to another, and what workers cannot run (command functions) runs on
 * the gateway.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { Kindling } from '@kindling/sdk';
import { KINDLING_CLI, startNode, stop, type Node } from './helpers/cluster-node.js';
import { lifo, natsUnavailable, startNatsCluster, type CleanupOwner } from './helpers/nats-cluster.js';
import { IMAGES_DIR, sandboxUnavailableReason } from './helpers/server.js';
import { waitFor } from './helpers/wait.js';

const PYTHON_SDK = new URL('../../sdk/python', import.meta.url).pathname;
const execFileAsync = promisify(execFile);
const unavailable = natsUnavailable || ((await sandboxUnavailableReason()) ?? false);

async function deploy(gateway: Node, name: string, spec: Record<string, unknown>): Promise<void> {
  const response = await fetch(`${gateway.url}/v1/functions/${name}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify(spec) });
  assert.ok(response.status === 201 || response.status === 200, `${response.status} ${await response.text()}`);
}

async function invoke(gateway: Node, name: string, body: string): Promise<{ status: number; node: string | null; coldStart: string | null; retryAfter: string | null; text: string }> {
  const response = await fetch(`${gateway.url}/v1/functions/${name}/invoke`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body });
  return { status: response.status, node: response.headers.get('x-kindling-node'), coldStart: response.headers.get('x-kindling-cold-start'), retryAfter: response.headers.get('retry-after'), text: await response.text() };
}

/** A nats-server, a gateway and a worker it sees, all stopped by the test's cleanup. */
async function gatewayWithWorker(context: CleanupOwner) {
  const t = lifo(context);
  const nats = await startNatsCluster(t, { nodes: 1 });
  const natsUrl = nats.urls[0] as string;
  const gateway = await startNode(t, natsUrl, 'gateway', 'gw-1');
  const worker = await startNode(t, natsUrl, 'worker', 'wk-a');
  await waitFor(async () => (await fetch(`${gateway.url}/readyz`)).status === 200, { timeoutMs: 30_000, what: 'the gateway to see the worker' });
  return { t, nats, natsUrl, gateway, worker };
}

const ECHO = { runtime: 'node', handler: 'handler', code: 'exports.handler = async (event) => "got " + event' };

describe('serve --cluster: gateways and workers', { skip: unavailable }, () => {
  it('a gateway sends handler invocations to a worker, sync and async, and async command invocations; streamed ones run on the gateway', { timeout: 120_000 }, async (context) => {
    const t = lifo(context);
    const nats = await startNatsCluster(t, { nodes: 1 });
    const natsUrl = nats.urls[0] as string;
    const gateway = await startNode(t, natsUrl, 'gateway', 'gw-1');
    // No worker yet: the gateway is up but not ready, and says why; a handler invocation is refused, retryable.
    const before = await fetch(`${gateway.url}/readyz`);
    assert.equal(before.status, 503);
    assert.match(JSON.stringify(await before.json()), /no worker is registered in the cluster/);
    await deploy(gateway, 'echo', ECHO);
    const refused = await invoke(gateway, 'echo', 'x');
    assert.equal(refused.status, 503, refused.text);
    assert.equal((JSON.parse(refused.text) as { error: { code: string } }).error.code, 'NO_WORKERS');
    assert.ok(refused.retryAfter !== null, 'a Retry-After header');

    const worker = await startNode(t, natsUrl, 'worker', 'wk-a');
    await waitFor(async () => (await fetch(`${gateway.url}/readyz`)).status === 200, { timeoutMs: 30_000, what: 'the gateway to see the worker' });
    // The operator's view: this node and the worker it sees (the SDK's cluster(), the console's Cluster section).
    const view = await new Kindling({ url: gateway.url }).cluster();
    assert.ok(view.mode === 'cluster' && view.role === 'gateway' && view.nodeId === 'gw-1' && view.nats === 'connected', JSON.stringify(view));
    assert.deepEqual(view.workers.map((w) => [w.nodeId, w.role, w.capacity]), [['wk-a', 'worker', 32]]);
    const first = await invoke(gateway, 'echo', 'one');
    assert.equal(first.status, 200, first.text);
    assert.equal(first.text, 'got one');
    assert.equal(first.node, 'wk-a');
    assert.equal(first.coldStart, 'true');
    const second = await invoke(gateway, 'echo', 'two');
    assert.deepEqual([second.status, second.text, second.node, second.coldStart], [200, 'got two', 'wk-a', 'false'], 'the warm sandbox on the worker answers');

    // The tenant's usage is recorded where its records are kept, the gateway, with the worker's measures; not twice.
    type Metered = { invocations: { id: string; function: string; status: string; cpuMs: number | null }[] };
    const meteredCalls = async (node: Node) => ((await (await fetch(`${node.url}/v1/usage/invocations?limit=1000`)).json()) as Metered).invocations.filter((record) => record.function === 'echo' && record.status !== 'idle');
    await waitFor(async () => (await meteredCalls(gateway)).length === 2, { timeoutMs: 10_000, what: 'the two calls in the usage records of the gateway' });
    assert.ok((await meteredCalls(gateway)).every((record) => record.status === 'succeeded' && typeof record.cpuMs === 'number'));
    assert.deepEqual(await meteredCalls(worker), [], 'the worker does not meter them again');

    // Deleted and deployed again, the function is version 1 again: the worker's warm sandbox of the old code goes.
    assert.equal((await fetch(`${gateway.url}/v1/functions/echo`, { method: 'DELETE' })).status, 204);
    await deploy(gateway, 'echo', { ...ECHO, code: 'exports.handler = async (event) => "new " + event' });
    const renewed = await invoke(gateway, 'echo', 'three');
    assert.deepEqual([renewed.status, renewed.text, renewed.node], [200, 'new three', 'wk-a']);
    await deploy(gateway, 'echo', ECHO);

    // The SDKs say which worker ran it.
    assert.equal((await new Kindling({ url: gateway.url }).functions.invoke('echo', 'ts')).node, 'wk-a');
    const python = await execFileAsync('/usr/bin/python3', ['-c', `import kindling; r = kindling.Kindling(${JSON.stringify(gateway.url)}).functions.invoke("echo", "py"); print(r.node, r.text)`], { env: { PATH: '/usr/bin:/bin', PYTHONPATH: PYTHON_SDK } });
    assert.equal(python.stdout.trim(), 'wk-a got py');

    // Async: queued on the gateway, run on the worker, recorded on the gateway.
    const accepted = await fetch(`${gateway.url}/v1/functions/echo/invoke`, { method: 'POST', headers: { 'content-type': 'text/plain', 'x-kindling-async': 'true' }, body: 'later' });
    assert.equal(accepted.status, 202);
    const location = accepted.headers.get('location')!;
    await waitFor(async () => ((await (await fetch(`${gateway.url}${location}`)).json()) as { status: string }).status === 'succeeded', { timeoutMs: 30_000, what: 'the async invocation to succeed' });
    assert.equal(await (await fetch(`${gateway.url}${location}/output`)).text(), 'got later');

    // An answer larger than one NATS message (1 MiB here) comes in pieces, whole; a call whose body does not fit in
    // one runs on the gateway, which holds the function too.
    await deploy(gateway, 'big', { runtime: 'node', handler: 'handler', code: 'exports.handler = async (event) => "y".repeat(3 * 1024 * 1024) + event.length' });
    const big = await invoke(gateway, 'big', 'end');
    assert.deepEqual([big.status, big.node, big.text.length, big.text.slice(-2)], [200, 'wk-a', 3 * 1024 * 1024 + 1, 'y3']);
    const largeBody = await invoke(gateway, 'big', 'z'.repeat(1024 * 1024));
    assert.deepEqual([largeBody.status, largeBody.node, largeBody.text.slice(-8)], [200, null, 'y1048576']);

    // A function deleted on the gateway loses its warm sandboxes on the worker too (minWarm ones included).
    // Its handler leaves 300 ms of CPU burning after it returned: idle usage of the function.
    await deploy(gateway, 'keep', { ...ECHO, minWarm: 1, code: 'exports.handler = async () => { setTimeout(() => { const end = Date.now() + 300; while (Date.now() < end); }, 20); return "kept"; }' });
    assert.equal((await invoke(gateway, 'keep', 'k')).node, 'wk-a');
    // The CPU its sandbox burns after a call returned is the tenant's too (idle usage, billed at the next call's start
    // at the latest): the worker sends it to the gateway, which records it; the worker does not.
    type UsageRows = { rows: { function: string; cpuMs: number }[] };
    const cpuOf = async (node: Node, name: string): Promise<number> => ((await (await fetch(`${node.url}/v1/usage?groupBy=function`)).json()) as UsageRows).rows.find((row) => row.function === name)?.cpuMs ?? 0;
    await waitFor(async () => {
      await invoke(gateway, 'keep', 'k');
      return (await cpuOf(gateway, 'keep')) >= 100;
    }, { timeoutMs: 20_000, intervalMs: 100, what: "the idle CPU of the function's sandbox in the gateway's usage" });
    assert.equal(await cpuOf(worker, 'keep'), 0, 'the worker does not record it');
    const workerPools = async (): Promise<string[]> => ((await (await fetch(`${worker.url}/v1/pools`)).json()) as { pools: { function: string }[] }).pools.map((pool) => pool.function);
    assert.ok((await workerPools()).includes('keep'));
    assert.equal((await fetch(`${gateway.url}/v1/functions/keep`, { method: 'DELETE' })).status, 204);
    await waitFor(async () => !(await workerPools()).includes('keep'), { timeoutMs: 10_000, what: "the worker to close the deleted function's pool" });


    // A client that goes away cancels the run on the worker (its sandbox goes), not only its wait at the gateway.
    await deploy(gateway, 'hang', { runtime: 'node', handler: 'handler', timeoutMs: 120_000, code: 'exports.handler = () => new Promise(() => {})' });
    const inFlight = async (): Promise<number> => Number(/^kindling_handler_invocations_in_flight(?:\{[^}]*\})? (\d+)$/m.exec(await (await fetch(`${worker.url}/metrics`)).text())?.[1] ?? NaN);
    const abort = new AbortController();
    const call = fetch(`${gateway.url}/v1/functions/hang/invoke`, { method: 'POST', body: 'x', signal: abort.signal }).catch((error: unknown) => error);
    await waitFor(async () => (await inFlight()) === 1, { timeoutMs: 30_000, intervalMs: 100, what: 'the run to start on the worker' });
    abort.abort();
    assert.ok((await call) instanceof Error);
    await waitFor(async () => (await inFlight()) === 0, { timeoutMs: 30_000, intervalMs: 100, what: 'the worker to end the cancelled run' });

    // A command function's sync call streams stdin and stdout through the gateway: it runs there (no node header), as
    // on a single server. Its async calls (a stored body in, stdout out) run on a worker, metered once, by the gateway.
    await deploy(gateway, 'upper', { image: 'kindling/base', command: ['tr', 'a-z', 'A-Z'] });
    const command = await invoke(gateway, 'upper', 'shout');
    assert.deepEqual([command.status, command.text, command.node], [200, 'SHOUT', null]);
    const upperOnWorker = async (): Promise<number> => Number(/^kindling_invocations_total\{[^}]*function="upper"[^}]*status="succeeded"[^}]*\} (\d+)$/m.exec(await (await fetch(`${worker.url}/metrics`)).text())?.[1] ?? 0);
    const queuedCommand = await fetch(`${gateway.url}/v1/functions/upper/invoke`, { method: 'POST', headers: { 'content-type': 'text/plain', 'x-kindling-async': 'true' }, body: 'quiet' });
    assert.equal(queuedCommand.status, 202);
    const commandLocation = queuedCommand.headers.get('location')!;
    await waitFor(async () => ((await (await fetch(`${gateway.url}${commandLocation}`)).json()) as { status: string }).status === 'succeeded', { timeoutMs: 30_000, what: 'the async command invocation to succeed' });
    assert.equal(await (await fetch(`${gateway.url}${commandLocation}/output`)).text(), 'QUIET');
    assert.equal(await upperOnWorker(), 1, 'the worker ran it');
    const upperRecords = async (node: Node) => ((await (await fetch(`${node.url}/v1/usage/invocations?limit=1000`)).json()) as Metered).invocations.filter((record) => record.function === 'upper');
    await waitFor(async () => (await upperRecords(gateway)).length === 2, { timeoutMs: 10_000, what: 'both calls of the command function in the usage records of the gateway' });
    assert.ok((await upperRecords(gateway)).every((record) => record.status === 'succeeded' && typeof record.cpuMs === 'number'));
    assert.deepEqual(await upperRecords(worker), [], 'the worker does not meter it again');
    await stop(worker.child, 'SIGTERM');
  });

  it('a worker killed mid-run is reported as WORKER_LOST within seconds; with none left, NO_WORKERS', { timeout: 120_000 }, async (context) => {
    const { t, natsUrl, gateway, worker } = await gatewayWithWorker(context);
    await deploy(gateway, 'hang', { runtime: 'node', handler: 'handler', timeoutMs: 60_000, code: 'exports.handler = () => new Promise(() => {})' });
    const started = Date.now();
    const pending = invoke(gateway, 'hang', 'x');
    // Killed once the run is under way on the worker (its metrics count it in flight).
    await waitFor(async () => /^kindling_handler_invocations_in_flight(\{[^}]*\})? 1$/m.test(await (await fetch(`${worker.url}/metrics`)).text()), { timeoutMs: 30_000, intervalMs: 100, what: 'the run to start on the worker' });
    await stop(worker.child, 'SIGKILL');
    const lost = await pending;
    const elapsedMs = Date.now() - started;
    assert.equal(lost.status, 502, lost.text);
    assert.equal((JSON.parse(lost.text) as { error: { code: string } }).error.code, 'WORKER_LOST');
    assert.ok(elapsedMs < 20_000, `reported after ${elapsedMs} ms, not at the function's 60 s timeout`);
    // Its registry entry outlives it (until the TTL), but nothing answers on its subject: refused at once, retryable.
    const refused = await invoke(gateway, 'hang', 'x');
    assert.equal(refused.status, 503, refused.text);
    assert.equal((JSON.parse(refused.text) as { error: { code: string } }).error.code, 'NO_WORKERS');
    // The gateway's metrics say so (the alerts KindlingWorkerLost and KindlingNoWorkers read them).
    const gatewayMetric = async (pattern: RegExp): Promise<number> => Number(pattern.exec(await (await fetch(`${gateway.url}/metrics`)).text())?.[1] ?? NaN);
    assert.equal(await gatewayMetric(/^kindling_cluster_runs_total\{[^}]*outcome="worker_lost"[^}]*\} (\d+)$/m), 1);
    assert.equal(await gatewayMetric(/^kindling_cluster_runs_total\{[^}]*outcome="no_workers"[^}]*\} (\d+)$/m), 1);
    assert.equal(await gatewayMetric(/^kindling_cluster_connected(?:\{[^}]*\})? (\d+)$/m), 1);
    // What the killed worker left (its sandboxes' mounts) is reaped by the next start on its data dir.
    const mountsUnder = async (dir: string): Promise<string[]> => (await readFile('/proc/mounts', 'utf8')).split('\n').flatMap((line) => line.split(' ')[1]?.startsWith(`${dir}/`) ? [line.split(' ')[1] as string] : []);
    const left = await mountsUnder(worker.dataDir);
    assert.ok(left.length > 0, 'the killed worker left mounts (else this check proves nothing)');
    const restarted = await startNode(t, natsUrl, 'worker', 'wk-a', worker.dataDir);
    const stillThere = (await mountsUnder(worker.dataDir)).filter((mount) => left.includes(mount));
    assert.deepEqual(stillThere, [], 'no mount of the killed worker is left');
    await stop(restarted.child, 'SIGTERM');
  });

  it('an async invocation whose worker is killed mid-run is delivered again to another worker, and its record counts the attempts', { timeout: 120_000 }, async (context) => {
    const { t, natsUrl, gateway, worker } = await gatewayWithWorker(context);
    const second = await startNode(t, natsUrl, 'worker', 'wk-b');
    await waitFor(async () => JSON.stringify(await new Kindling({ url: gateway.url }).cluster()).includes('"wk-b"'), { timeoutMs: 30_000, what: 'the gateway to see the second worker' });
    // Long enough that the kill below lands mid-run; short enough for the other worker to finish it.
    await deploy(gateway, 'slow', { runtime: 'node', handler: 'handler', timeoutMs: 60_000, code: 'exports.handler = async (event) => { await new Promise((r) => setTimeout(r, 6000)); return "slept " + event; }' });
    const accepted = await fetch(`${gateway.url}/v1/functions/slow/invoke`, { method: 'POST', headers: { 'content-type': 'text/plain', 'x-kindling-async': 'true' }, body: 'once' });
    assert.equal(accepted.status, 202);
    const location = accepted.headers.get('location')!;
    // Whichever worker the run was placed on is killed once it runs there.
    const busy = async (node: Node): Promise<boolean> => /^kindling_handler_invocations_in_flight(\{[^}]*\})? 1$/m.test(await (await fetch(`${node.url}/metrics`)).text());
    let killed: Node | null = null;
    await waitFor(async () => {
      for (const node of [worker, second]) if (await busy(node)) killed = node;
      return killed !== null;
    }, { timeoutMs: 30_000, intervalMs: 100, what: 'the run to start on a worker' });
    const lost = killed as unknown as Node;
    const other = lost === worker ? second : worker;
    await stop(lost.child, 'SIGKILL');
    // Its mounts and cgroups are reaped by a start on its data dir, before the cleanup removes the dir (whatever the
    // assertions below say). Its own cleanup owner: the reaper is stopped here.
    t.after(async () => {
      const reaper = await startNode({ after: () => undefined }, natsUrl, 'worker', lost.name, lost.dataDir);
      await stop(reaper.child, 'SIGTERM');
    });
    type View = { status: string; attempts: number; error?: string };
    const view = async (): Promise<View> => (await (await fetch(`${gateway.url}${location}`)).json()) as View;
    await waitFor(async () => !['queued', 'running'].includes((await view()).status), { timeoutMs: 60_000, intervalMs: 200, what: 'the invocation to finish' });
    const done = await view();
    assert.deepEqual([done.status, done.attempts], ['succeeded', 2], JSON.stringify(done));
    assert.equal(await (await fetch(`${gateway.url}${location}/output`)).text(), 'slept once');
    const otherRan = Number(/^kindling_invocations_total\{[^}]*function="slow"[^}]*status="succeeded"[^}]*\} (\d+)$/m.exec(await (await fetch(`${other.url}/metrics`)).text())?.[1] ?? 0);
    assert.equal(otherRan, 1, `the other worker (${other.name}) ran it`);
  });

  it('an async invocation whose gateway is killed mid-run is delivered again when the gateway starts again', { timeout: 120_000 }, async (context) => {
    const { t, natsUrl, gateway, worker } = await gatewayWithWorker(context);
    await deploy(gateway, 'slow', { runtime: 'node', handler: 'handler', timeoutMs: 60_000, code: 'exports.handler = async (event) => { await new Promise((r) => setTimeout(r, 3000)); return "slept " + event; }' });
    const accepted = await fetch(`${gateway.url}/v1/functions/slow/invoke`, { method: 'POST', headers: { 'content-type': 'text/plain', 'x-kindling-async': 'true' }, body: 'again' });
    const location = accepted.headers.get('location')!;
    await waitFor(async () => /^kindling_handler_invocations_in_flight(\{[^}]*\})? 1$/m.test(await (await fetch(`${worker.url}/metrics`)).text()), { timeoutMs: 30_000, intervalMs: 100, what: 'the run to start on the worker' });
    // The gateway dies with the run under way on the worker (whose answer then reaches nobody); it starts again on
    // its data dir, where the invocation is still `running`.
    await stop(gateway.child, 'SIGKILL');
    const restarted = await startNode(t, natsUrl, 'gateway', 'gw-1', gateway.dataDir);
    type View = { status: string; attempts: number; error?: string };
    const view = async (): Promise<View> => (await (await fetch(`${restarted.url}${location}`)).json()) as View;
    await waitFor(async () => !['queued', 'running'].includes((await view()).status), { timeoutMs: 60_000, intervalMs: 200, what: 'the invocation to finish' });
    assert.deepEqual([(await view()).status, (await view()).attempts], ['succeeded', 2], JSON.stringify(await view()));
    assert.equal(await (await fetch(`${restarted.url}${location}/output`)).text(), 'slept again');
  });

  it('an async invocation whose worker stalls mid-run (SIGSTOP: still subscribed, still in the registry, warm) is delivered to another worker, not back to it', { timeout: 120_000 }, async (context) => {
    const { t, natsUrl, gateway, worker } = await gatewayWithWorker(context);
    await deploy(gateway, 'slow', { runtime: 'node', handler: 'handler', timeoutMs: 60_000, code: 'exports.handler = async (event) => { if (event !== "warm") await new Promise((r) => setTimeout(r, 4000)); return "slept " + event; }' });
    // Warm on the first worker only, and known to be (its heartbeat lists the version), so placement prefers it.
    assert.equal((await invoke(gateway, 'slow', 'warm')).node, 'wk-a');
    const second = await startNode(t, natsUrl, 'worker', 'wk-b');
    type ClusterWorkers = { workers?: { nodeId: string; warm: string[] }[] };
    await waitFor(async () => {
      const workers = ((await new Kindling({ url: gateway.url }).cluster()) as ClusterWorkers).workers ?? [];
      return workers.some((one) => one.nodeId === 'wk-b') && workers.some((one) => one.nodeId === 'wk-a' && one.warm.includes('default/slow@1'));
    }, { timeoutMs: 30_000, what: 'the gateway to see the second worker, and the first one warm' });
    const accepted = await fetch(`${gateway.url}/v1/functions/slow/invoke`, { method: 'POST', headers: { 'content-type': 'text/plain', 'x-kindling-async': 'true' }, body: 'stalled' });
    const location = accepted.headers.get('location')!;
    await waitFor(async () => /^kindling_handler_invocations_in_flight(\{[^}]*\})? 1$/m.test(await (await fetch(`${worker.url}/metrics`)).text()), { timeoutMs: 30_000, intervalMs: 100, what: 'the run to start on the first worker' });
    worker.child.kill('SIGSTOP');
    t.after(async () => void worker.child.kill('SIGCONT'));
    type View = { status: string; attempts: number };
    const view = async (): Promise<View> => (await (await fetch(`${gateway.url}${location}`)).json()) as View;
    await waitFor(async () => !['queued', 'running'].includes((await view()).status), { timeoutMs: 60_000, intervalMs: 200, what: 'the invocation to finish' });
    assert.deepEqual([(await view()).status, (await view()).attempts], ['succeeded', 2], JSON.stringify(await view()));
    const secondRan = Number(/^kindling_invocations_total\{[^}]*function="slow"[^}]*status="succeeded"[^}]*\} (\d+)$/m.exec(await (await fetch(`${second.url}/metrics`)).text())?.[1] ?? 0);
    assert.equal(secondRan, 1, 'the second worker ran it');
    worker.child.kill('SIGCONT');
  });

  it('kill -9 of the NATS server the gateway is connected to, under async load on a 3-node NATS cluster: every accepted invocation succeeds, each recorded once', { timeout: 240_000 }, async (context) => {
    const t = lifo(context);
    const nats = await startNatsCluster(t, { nodes: 3 });
    const urls = nats.urls.join(',');
    const gateway = await startNode(t, urls, 'gateway', 'gw-1');
    const workers = [await startNode(t, urls, 'worker', 'wk-a'), await startNode(t, urls, 'worker', 'wk-b')];
    await waitFor(async () => {
      const seen = JSON.stringify(await new Kindling({ url: gateway.url }).cluster());
      return seen.includes('"wk-a"') && seen.includes('"wk-b"');
    }, { timeoutMs: 60_000, intervalMs: 250, what: 'the gateway to see both workers' });
    await deploy(gateway, 'work', { runtime: 'node', handler: 'handler', timeoutMs: 60_000, code: 'exports.handler = async (event) => { await new Promise((r) => setTimeout(r, 400)); return "done " + event; }' });
    // Which NATS server holds the gateway's connection (each server's /connz lists its clients by name).
    let serving = -1;
    await waitFor(async () => {
      for (const node of nats.nodes) {
        const connz = (await (await fetch(`http://127.0.0.1:${node.monitorPort}/connz`)).json()) as { connections?: { name?: string }[] };
        if ((connz.connections ?? []).some((connection) => connection.name === 'kindling-gateway-gw-1')) serving = node.index;
      }
      return serving >= 0;
    }, { timeoutMs: 10_000, what: "the gateway's NATS server" });
    const total = 24;
    const accept = async (i: number): Promise<string> => {
      const accepted = await fetch(`${gateway.url}/v1/functions/work/invoke`, { method: 'POST', headers: { 'content-type': 'text/plain', 'x-kindling-async': 'true' }, body: `n${i}` });
      assert.equal(accepted.status, 202, await accepted.text());
      return accepted.headers.get('location')!;
    };
    const locations: string[] = [];
    for (let i = 0; i < total / 2; i++) locations.push(await accept(i));
    // Runs are under way on the workers when the server goes.
    const inFlight = async (node: Node): Promise<number> => Number(/^kindling_handler_invocations_in_flight(?:\{[^}]*\})? (\d+)$/m.exec(await (await fetch(`${node.url}/metrics`)).text())?.[1] ?? 0);
    await waitFor(async () => (await inFlight(workers[0]!)) + (await inFlight(workers[1]!)) > 0, { timeoutMs: 60_000, intervalMs: 50, what: 'runs to start on the workers' });
    await nats.kill(serving, 'SIGKILL');
    // Accepted while the gateway finds another server: queued in its store, never refused for the outage.
    for (let i = total / 2; i < total; i++) locations.push(await accept(i));
    type View = { status: string; attempts: number; error?: string };
    const views = async (): Promise<View[]> => Promise.all(locations.map(async (location) => (await (await fetch(`${gateway.url}${location}`)).json()) as View));
    await waitFor(async () => (await views()).every((view) => !['queued', 'running'].includes(view.status)), { timeoutMs: 180_000, intervalMs: 500, what: 'every invocation to finish' });
    const finished = await views();
    assert.deepEqual(finished.filter((view) => view.status !== 'succeeded'), [], 'every accepted invocation succeeded');
    for (const [i, location] of locations.entries()) assert.equal(await (await fetch(`${gateway.url}${location}/output`)).text(), `done n${i}`);
    // One outcome each: the gateway's list holds each id once, all succeeded.
    const listed = (await (await fetch(`${gateway.url}/v1/invocations?function=work&limit=100`)).json()) as { invocations: { id: string; status: string }[] };
    const ids = listed.invocations.map((invocation) => invocation.id);
    assert.equal(new Set(ids).size, ids.length);
    assert.equal(ids.length, total);
    context.diagnostic(`attempts: ${finished.map((view) => view.attempts).join(',')}`);
  });

  it('a worker cut off from NATS aborts the runs gateways sent it (fencing); the gateway, cut off too, answers CLUSTER_UNAVAILABLE', { timeout: 120_000 }, async (context) => {
    const { nats, gateway, worker } = await gatewayWithWorker(context);
    await deploy(gateway, 'hang', { runtime: 'node', handler: 'handler', timeoutMs: 120_000, code: 'exports.handler = () => new Promise(() => {})' });
    const pending = invoke(gateway, 'hang', 'x');
    const inFlight = async (): Promise<number> => Number(/^kindling_handler_invocations_in_flight(?:\{[^}]*\})? (\d+)$/m.exec(await (await fetch(`${worker.url}/metrics`)).text())?.[1] ?? NaN);
    await waitFor(async () => (await inFlight()) === 1, { timeoutMs: 30_000, intervalMs: 100, what: 'the run to start on the worker' });
    // The only NATS server goes: the worker and the gateway are both cut off. The gateway knows its own link failed,
    // so it does not blame the worker: 503 CLUSTER_UNAVAILABLE, retryable (the run may have happened).
    await nats.kill(0, 'SIGKILL');
    const lost = await pending;
    assert.equal(lost.status, 503, lost.text);
    const error = (JSON.parse(lost.text) as { error: { code: string; details?: { sent?: boolean } } }).error;
    assert.deepEqual([error.code, error.details?.sent], ['CLUSTER_UNAVAILABLE', true]);
    // The worker, still without NATS, ends the run itself instead of letting it run to its 120 s timeout.
    await waitFor(async () => (await inFlight()) === 0, { timeoutMs: 30_000, intervalMs: 100, what: 'the worker to abort the run' });
  });

  it("a node id in use (a worker's, a gateway's) is refused at start; a function's maxConcurrency holds across workers", { timeout: 120_000 }, async (context) => {
    const { t, natsUrl, gateway } = await gatewayWithWorker(context);
    // A second process with the id of a live worker would split its calls: it exits before it listens, saying why.
    const twinDir = await mkdtemp(join(tmpdir(), 'kindling-cluster-twin-'));
    t.after(() => rm(twinDir, { recursive: true, force: true }));
    // A process started with an id that is in use: its exit code and what it printed.
    const startTwin = (role: string, nodeId: string): Promise<{ code: number | null; output: string }> =>
      new Promise((resolve) => {
        const child = spawn(process.execPath, [KINDLING_CLI, 'serve', '--cluster', natsUrl, '--role', role, '--node-name', nodeId, '--port', '0', '--data-dir', twinDir, '--images-dir', IMAGES_DIR, '--prewarm', '0', '--generic-sandboxes', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
        t.after(() => stop(child, 'SIGKILL'));
        let output = '';
        const read = (chunk: Buffer): void => {
          output += String(chunk);
          // Started after all (the check failed): stopped here, so the test fails at once rather than at its timeout.
          if (output.includes('Kindling is listening')) child.kill('SIGKILL');
        };
        child.stdout.on('data', read);
        child.stderr.on('data', read);
        child.once('exit', (code) => resolve({ code, output }));
      });
    const twin = await startTwin('worker', 'wk-a');
    assert.notEqual(twin.code, 0);
    assert.match(twin.output, /node id "wk-a" is in use by a live node/);
    assert.doesNotMatch(twin.output, /Kindling is listening/);
    // So does a second gateway with the id of a live gateway (it would take over its registered address).
    const gatewayTwin = await startTwin('gateway', 'gw-1');
    assert.notEqual(gatewayTwin.code, 0);
    assert.match(gatewayTwin.output, /node id "gw-1" is in use by a live node/);
    assert.doesNotMatch(gatewayTwin.output, /Kindling is listening/);

    // Two workers: a cold function's first calls would go one to each. Its maxConcurrency of 1 (no queue) is counted
    // by the gateway, so a second call at the same time is refused, whichever worker is free.
    await startNode(t, natsUrl, 'worker', 'wk-b');
    await waitFor(async () => JSON.stringify(await new Kindling({ url: gateway.url }).cluster()).includes('"wk-b"'), { timeoutMs: 30_000, what: 'the gateway to see both workers' });
    await deploy(gateway, 'single', { ...ECHO, maxConcurrency: 1, maxQueued: 0, code: 'exports.handler = async (event) => { await new Promise((r) => setTimeout(r, 1500)); return "got " + event; }' });
    const calls = await Promise.all([invoke(gateway, 'single', 'a'), invoke(gateway, 'single', 'b')]);
    assert.deepEqual(calls.map((call) => call.status).sort(), [200, 429], calls.map((call) => `${call.status} ${call.node} ${call.text}`).join('; '));
    const refusedCall = calls.find((call) => call.status === 429)!;
    assert.equal((JSON.parse(refusedCall.text) as { error: { code: string } }).error.code, 'TOO_MANY_REQUESTS');
    assert.ok(refusedCall.retryAfter !== null);
    // The slot is given back when the run ends: the next call runs.
    assert.equal((await invoke(gateway, 'single', 'c')).status, 200);
  });

  it("a draining worker leaves the registry at once and its functions' calls move to another worker", { timeout: 120_000 }, async (context) => {
    const t = lifo(context);
    const nats = await startNatsCluster(t, { nodes: 1 });
    const natsUrl = nats.urls[0] as string;
    const gateway = await startNode(t, natsUrl, 'gateway', 'gw-1');
    const workers = await Promise.all([startNode(t, natsUrl, 'worker', 'wk-a'), startNode(t, natsUrl, 'worker', 'wk-b')]);
    // Both registered (each heartbeats once before it says it listens); the gateway's watch sees them shortly.
    const listed = async (): Promise<string> => (await (await fetch(`${gateway.url}/readyz`)).text());
    await waitFor(async () => JSON.parse(await listed()).status === 'ready', { timeoutMs: 30_000, what: 'the gateway to see a worker' });
    await deploy(gateway, 'echo', { ...ECHO, code: 'exports.handler = async (event) => { if (String(event) === "slow") await new Promise((r) => setTimeout(r, 1500)); return "got " + event; }' });
    // Calls one after another stay on one worker (its warm sandbox), whichever it is.
    const nodes = new Set<string | null>();
    for (let i = 0; i < 5; i++) nodes.add((await invoke(gateway, 'echo', `${i}`)).node);
    assert.equal(nodes.size, 1, `one worker answered them all: ${[...nodes].join(', ')}`);
    const holder = [...nodes][0] as string;
    const drained = workers.find((worker) => worker.name === holder)!;
    const other = workers.find((worker) => worker.name !== holder)!;
    // A call under way when the drain begins finishes there.
    const running = invoke(gateway, 'echo', 'slow');
    const busy = async (node: Node): Promise<boolean> => /^kindling_handler_invocations_in_flight(\{[^}]*\})? 1$/m.test(await (await fetch(`${node.url}/metrics`)).text());
    let busyNode: string | null = null;
    await waitFor(async () => {
      for (const worker of workers) if (await busy(worker)) busyNode = worker.name;
      return busyNode !== null;
    }, { timeoutMs: 30_000, intervalMs: 20, what: 'the slow call to run' });
    assert.equal(busyNode, holder, 'the slow call went to the worker that holds the warm sandbox');
    const exited = stop(drained.child, 'SIGTERM');
    const finished = await running;
    assert.deepEqual([finished.status, finished.text, finished.node], [200, 'got slow', holder], 'the call in flight is drained, not cut');
    await exited;
    const after = await invoke(gateway, 'echo', 'moved');
    assert.deepEqual([after.status, after.text, after.node], [200, 'got moved', other.name], 'the other worker answers at once');
  });
});
