/**
 * A call names the worker process it is for: two processes answering to one node id (started at once, before the
 * registry told them apart) never both run it; the one the gateway's registry copy names does. Real nats-server, the
 * gateway's RemoteRuns and two WorkerRuns on their own connections; the runs are stand-ins (no sandbox needed to
 * show who ran what).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { connectCluster } from '../src/cluster/connection.js';
import type { WorkerEntry } from '../src/cluster/registry.js';
import { RemoteRuns } from '../src/cluster/remote-runs.js';
import { WorkerRuns } from '../src/cluster/worker-runs.js';
import type { InvocationResult } from '../src/orchestrator/function-service.js';
import type { FunctionVersion } from '../src/store/store.js';
import { lifo, natsUnavailable, startNatsCluster } from './helpers/nats-cluster.js';

const VERSION: FunctionVersion = { tenant: 'default', name: 'echo', version: 1, createdAtMs: Date.now(), spec: { runtime: 'node', handler: 'handler', code: 'exports.handler = (e) => e' } };

describe('a call names the worker instance it is for', { skip: natsUnavailable }, () => {
  it('of two processes with one node id, only the instance the registry names runs each call', async (context) => {
    const t = lifo(context);
    const cluster = await startNatsCluster(t, { nodes: 1 });
    const ran: string[] = [];
    const workerConnections: Awaited<ReturnType<typeof connectCluster>>[] = [];
    const worker = async (instance: string) => {
      const connection = await connectCluster(cluster.urls);
      t.after(() => connection.close());
      workerConnections.push(connection);
      const runs = new WorkerRuns(connection.nc, {
        nodeId: 'wk-same',
        identity: { instance, startedAt: new Date().toISOString() },
        run: async (version, body): Promise<InvocationResult> => {
          ran.push(`${instance}:${body.toString()}`);
          return { invocationId: `inv-${ran.length}`, tenant: version.tenant, functionName: version.name, version: version.version, exitCode: 0, body: Buffer.from(`${instance} got ${body.toString()}`), stderr: Buffer.alloc(0), durationMs: 1, coldStart: false, timedOut: false, executor: 'sandbox' };
        },
      });
      t.after(async () => runs.close());
      // Its subscriptions are at the server once a round trip on its connection came back.
      await connection.nc.flush();
    };
    await worker('inst-a');
    await worker('inst-b');
    const gatewayConnection = await connectCluster(cluster.urls);
    t.after(() => gatewayConnection.close());
    let named = 'inst-a';
    const entry = (): WorkerEntry => ({ nodeId: 'wk-same', role: 'worker', capacity: 8, inFlight: 0, warm: [], startedAt: new Date().toISOString(), heartbeatAt: new Date().toISOString(), instance: named });
    const router = new RemoteRuns(gatewayConnection.nc, { nodeId: 'gw', runsHere: false, workers: () => [entry()] });
    t.after(async () => router.close());
    const call = async (body: string): Promise<string> => {
      const result = await router.route(VERSION, 'sandbox', Buffer.from(body), {}, () => Promise.reject(new Error('nothing runs on the gateway here')), async () => () => {});
      assert.ok(result !== null, 'the version goes to a worker');
      return (await result).body.toString();
    };
    for (let index = 0; index < 5; index++) assert.equal(await call(`a${index}`), `inst-a got a${index}`);
    named = 'inst-b';
    for (let index = 0; index < 5; index++) assert.equal(await call(`b${index}`), `inst-b got b${index}`);
    // Both workers have handled every request delivered to them once a round trip on their connections came back
    // (messages and the server's answer arrive in order). Each call ran once, on the instance named: the other process
    // saw every request and ran none of them.
    await Promise.all(workerConnections.map((connection) => connection.nc.flush()));
    assert.deepEqual(ran, [...[0, 1, 2, 3, 4].map((index) => `inst-a:a${index}`), ...[0, 1, 2, 3, 4].map((index) => `inst-b:b${index}`)]);
  });
});
