/**
 * A worker cut off from NATS by a real partition: the worker runs in a network namespace of its own, and its NATS
 * traffic is dropped there by iptables (no reset, no close: the silent kind a broken switch or a firewall makes). Its
 * gateway gives up on its runs, its async work runs on another worker, it aborts what it was running (fencing), and
 * once the link is back it takes work again, with every invocation recorded once.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createInterface } from 'node:readline';
import { describe, it } from 'node:test';
import { promisify } from 'node:util';
import { Kindling } from '@kindling/sdk';
import { startNode, type Node } from './helpers/cluster-node.js';
import { lifo, natsUnavailable, startNatsCluster } from './helpers/nats-cluster.js';
import { createTestNamespace, netUnavailableReason } from './helpers/nethost.js';
import { sandboxUnavailableReason } from './helpers/server.js';
import { waitFor } from './helpers/wait.js';

const execFileAsync = promisify(execFile);
const unavailable = natsUnavailable || ((await sandboxUnavailableReason()) ?? (await netUnavailableReason()) ?? false);

async function deploy(gateway: Node, name: string, spec: Record<string, unknown>): Promise<void> {
  const response = await fetch(`${gateway.url}/v1/functions/${name}`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify(spec) });
  assert.ok(response.status === 201 || response.status === 200, `${response.status} ${await response.text()}`);
}

/**
 * The worker in the namespace listens on a non-loopback address, where a server never runs without keys: it gets an
 * admin key, which its /metrics then asks for.
 */
const WORKER_ADMIN_KEY = 'kdl_partition-test-admin-key-0123456789abcdef';

async function metrics(node: Node): Promise<string> {
  const response = await fetch(`${node.url}/metrics`, { headers: { authorization: `Bearer ${WORKER_ADMIN_KEY}` } });
  assert.equal(response.status, 200, `GET ${node.url}/metrics`);
  return response.text();
}

/** `kindling_<metric>{...function="<name>"...status="<status>"...}` on a node, 0 when absent. */
async function counted(node: Node, metric: string, functionName: string, status: string): Promise<number> {
  const text = await metrics(node);
  const pattern = new RegExp(`^kindling_${metric}\\{[^}]*function="${functionName}"[^}]*status="${status}"[^}]*\\} (\\d+)$`, 'm');
  return Number(pattern.exec(text)?.[1] ?? 0);
}

/** The client ports of the connections nats-server holds for a worker (its monitoring endpoint). */
async function workerConnections(monitorPort: number, nodeId: string): Promise<number[]> {
  const connz = (await (await fetch(`http://127.0.0.1:${monitorPort}/connz?limit=1024`)).json()) as { connections?: { name?: string; port: number }[] };
  return (connz.connections ?? []).filter((connection) => connection.name === `kindling-worker-${nodeId}`).map((connection) => connection.port);
}

async function inFlight(node: Node): Promise<number> {
  return Number(/^kindling_handler_invocations_in_flight(?:\{[^}]*\})? (\d+)$/m.exec(await metrics(node))?.[1] ?? NaN);
}

describe('serve --cluster: a worker partitioned from NATS', { skip: unavailable }, () => {
  it('its gateway gives up on its runs, its async work runs once elsewhere, it fences itself, and it comes back after the partition', { timeout: 240_000 }, async (context) => {
    const t = lifo(context);
    const namespace = await createTestNamespace('10.98.7');
    t.after(() => namespace.remove());
    const nats = await startNatsCluster(t, { nodes: 1, clientHost: namespace.hostAddress });
    const natsUrl = nats.urls[0] as string;
    const natsPort = nats.nodes[0]!.clientPort;
    const gateway = await startNode(t, natsUrl, 'gateway', 'gw-1');
    // The worker's HTTP listens on the namespace's address, so the test reads its metrics across the veth (which the
    // partition below leaves open: only NATS traffic is dropped).
    const cutOff = await startNode(t, natsUrl, 'worker', 'wk-cut', undefined, { KINDLING_ADMIN_KEY: WORKER_ADMIN_KEY }, ['--host', namespace.address], namespace.enter);
    const logs: string[] = [];
    createInterface({ input: cutOff.child.stdout! }).on('line', (line) => logs.push(line));
    const client = new Kindling({ url: gateway.url });
    const sees = async (nodeId: string): Promise<boolean> => {
      const status = await client.cluster();
      return status.mode === 'cluster' && status.workers.some((worker) => worker.nodeId === nodeId);
    };
    await waitFor(() => sees('wk-cut'), { timeoutMs: 30_000, what: 'the gateway to see the namespaced worker' });

    // Runs long enough that, left alone, the cut-off worker would finish it well after the partition began.
    await deploy(gateway, 'slow', { runtime: 'node', handler: 'handler', timeoutMs: 120_000, code: 'exports.handler = async (event) => { await new Promise((r) => setTimeout(r, 25000)); return "slept " + event; }' });
    await deploy(gateway, 'hang', { runtime: 'node', handler: 'handler', timeoutMs: 120_000, code: 'exports.handler = () => new Promise(() => {})' });
    const accepted = await fetch(`${gateway.url}/v1/functions/slow/invoke`, { method: 'POST', headers: { 'content-type': 'text/plain', 'x-kindling-async': 'true' }, body: 'once' });
    assert.equal(accepted.status, 202, await accepted.clone().text());
    const location = accepted.headers.get('location')!;
    const syncCall = fetch(`${gateway.url}/v1/functions/hang/invoke`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'x' }).then(async (response) => ({ status: response.status, text: await response.text() }));
    await waitFor(async () => (await inFlight(cutOff)) === 2, { timeoutMs: 60_000, intervalMs: 100, what: 'both runs to start on the namespaced worker' });
    const healthy = await startNode(t, natsUrl, 'worker', 'wk-ok', undefined, { KINDLING_ADMIN_KEY: WORKER_ADMIN_KEY });
    await waitFor(() => sees('wk-ok'), { timeoutMs: 30_000, what: 'the gateway to see the second worker' });

    // The partition: the worker's NATS packets vanish both ways, inside its namespace (removed with the namespace).
    const iptables = (...args: string[]): Promise<unknown> => execFileAsync(namespace.enter[0]!, [...namespace.enter.slice(1), 'iptables', ...args]);
    const natsTraffic = (action: '-A' | '-D', workerPort?: number): Promise<unknown[]> => {
      const port = workerPort === undefined ? [] : ['--sport', String(workerPort)];
      const back = workerPort === undefined ? [] : ['--dport', String(workerPort)];
      return Promise.all([
        iptables(action, 'OUTPUT', '-p', 'tcp', '-d', namespace.hostAddress, ...port, '--dport', String(natsPort), '-j', 'DROP'),
        iptables(action, 'INPUT', '-p', 'tcp', '-s', namespace.hostAddress, '--sport', String(natsPort), ...back, '-j', 'DROP'),
      ]);
    };
    const deadPort = await workerConnections(nats.nodes[0]!.monitorPort, 'wk-cut').then((ports) => {
      assert.equal(ports.length, 1, `connections of the worker before the cut: ${ports.join(', ')}`);
      return ports[0]!;
    });
    await natsTraffic('-A');
    const cutAt = performance.now();

    // The gateway hears nothing from the worker and gives up on the sync call: WORKER_LOST, not a hang, and not
    // CLUSTER_UNAVAILABLE (its own link is fine).
    const lost = await syncCall;
    assert.equal(lost.status, 502, lost.text);
    assert.equal((JSON.parse(lost.text) as { error: { code: string } }).error.code, 'WORKER_LOST');
    const gaveUpAfterMs = performance.now() - cutAt;
    assert.ok(gaveUpAfterMs < 20_000, `the gateway gave up after ${Math.round(gaveUpAfterMs)} ms`);

    // The worker, cut off, aborts both runs itself: well before the 25 s run would have ended there.
    await waitFor(async () => (await inFlight(cutOff)) === 0, { timeoutMs: 30_000, intervalMs: 200, what: 'the cut-off worker to abort its runs' });
    const fencedAfterMs = performance.now() - cutAt;
    assert.ok(fencedAfterMs < 11_000, `fenced after ${Math.round(fencedAfterMs)} ms`);
    context.diagnostic(`after the cut: the gateway answered WORKER_LOST in ${Math.round(gaveUpAfterMs)} ms; the worker had aborted its runs by ${Math.round(fencedAfterMs)} ms`);
    await waitFor(() => logs.some((line) => line.includes('cut off from NATS: the runs of gateways were aborted')), { timeoutMs: 10_000, what: 'the worker to log its fencing' });
    const fencedAtLine = logs.findIndex((line) => line.includes('cut off from NATS: the runs of gateways were aborted'));

    // The async invocation is delivered again, to the healthy worker, and ends there.
    type View = { status: string; attempts: number; error?: string };
    const view = async (): Promise<View> => (await (await fetch(`${gateway.url}${location}`)).json()) as View;
    await waitFor(async () => !['queued', 'running'].includes((await view()).status), { timeoutMs: 90_000, intervalMs: 250, what: 'the invocation to finish' });
    assert.deepEqual([(await view()).status, (await view()).attempts], ['succeeded', 2], JSON.stringify(await view()));
    assert.equal(await (await fetch(`${gateway.url}${location}/output`)).text(), 'slept once');
    assert.equal(await counted(healthy, 'invocations_total', 'slow', 'succeeded'), 1, 'the healthy worker ran it');

    // The link comes back, except for the connection the worker gave up on: its packets stay dropped, as after a NAT
    // or firewall that lost its state, so the server holds it (with its subscriptions) until its own ping check,
    // minutes later. The worker reconnects, heartbeats again and takes calls, none lost to that dead connection; the
    // aborted run never counts as a success there and the record keeps its one outcome.
    await natsTraffic('-A', deadPort);
    await natsTraffic('-D');
    await waitFor(() => logs.slice(fencedAtLine).some((line) => /"nats":"connected"/.test(line) && line.includes('cluster connection')), { timeoutMs: 60_000, what: 'the worker to reconnect' });
    await waitFor(() => sees('wk-cut'), { timeoutMs: 60_000, what: 'the gateway to see the worker again' });
    // A cold function goes to the worker that ranks first for it: of a few functions, some rank the one that was cut off
    // first, and their calls run there. The server may still hold the worker's dead connection (it drops it only at its
    // own ping check, minutes later); no call may be lost to it.
    let placedBack = null as string | null;
    for (let index = 0; index < 16 && placedBack === null; index++) {
      await deploy(gateway, `echo-${index}`, { runtime: 'node', handler: 'handler', code: 'exports.handler = async (event) => "got " + event' });
      const response = await fetch(`${gateway.url}/v1/functions/echo-${index}/invoke`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'back' });
      assert.deepEqual([response.status, await response.text()], [200, 'got back']);
      if (response.headers.get('x-kindling-node') === 'wk-cut') placedBack = `echo-${index}`;
    }
    assert.ok(placedBack !== null, 'a call ran on the worker that was cut off');
    assert.equal((await workerConnections(nats.nodes[0]!.monitorPort, 'wk-cut')).length, 2, 'the server still holds the dead connection beside the new one');
    for (let call = 0; call < 6; call++) {
      const response: Response = await fetch(`${gateway.url}/v1/functions/${placedBack}/invoke`, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: `again ${call}` });
      assert.deepEqual([response.status, await response.text(), response.headers.get('x-kindling-node')], [200, `got again ${call}`, 'wk-cut']);
    }
    assert.equal(await counted(cutOff, 'invocations_total', 'slow', 'succeeded'), 0, 'the cut-off worker did not finish the run');
    assert.deepEqual([(await view()).status, (await view()).attempts], ['succeeded', 2]);
  });
});
