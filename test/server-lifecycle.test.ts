/**
 * The server's lifecycle against real executors: createServer builds without listening; a start that fails (its port
 * is taken) leaves nothing behind (sandboxes, cgroups, containers, run dirs, the data dir's lock); destroy() aborts
 * what runs at once; close() and destroy() are idempotent.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { createServer as createNetServer, type Server } from 'node:net';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { createServer, startServer } from '../src/server.js';
import { sample } from './helpers/prom-text.js';
import { leftovers, nothingLeft } from './helpers/faults.js';
import { docker, newDataDir, ownerIdOf, sandboxUnavailableReason, testServerConfig, waitFor } from './helpers/server.js';

const sandboxMissing = await sandboxUnavailableReason();

/** A loopback port held by another listener. */
async function takenPort(): Promise<{ port: number; holder: Server }> {
  const holder = createNetServer();
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
  const address = holder.address();
  assert.ok(address && typeof address === 'object');
  return { port: address.port, holder };
}

describe('server lifecycle', { skip: sandboxMissing ?? false }, () => {
  it('a start on a port that is taken fails with the listen error and leaves nothing: no sandbox, cgroup, container, run dir or lock', async () => {
    const { port, holder } = await takenPort();
    const dataDir = await newDataDir();
    try {
      // Everything that starts work at start-up is on: generic warm sandboxes, prewarmed launchers, docker too.
      const config = testServerConfig(dataDir, { executor: 'sandbox', enableExecutors: ['docker'], port, prewarmPerShape: 2, functionPools: { genericPerShape: 1 } });
      await assert.rejects(startServer(config), (error: NodeJS.ErrnoException) => error.code === 'EADDRINUSE');
      assert.equal(existsSync(join(dataDir, 'server.pid')), false, 'the data dir lock was released');
      const left = await leftovers(docker, ownerIdOf(dataDir), dataDir);
      assert.ok(nothingLeft(left), JSON.stringify(left));
      // The same data dir serves at once.
      const next = await startServer({ ...config, port: 0 });
      try {
        assert.equal((await fetch(`${next.url}/healthz`)).status, 200);
      } finally {
        await next.close();
      }
    } finally {
      holder.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it('createServer builds without listening or starting warm sandboxes (listen() does); destroy() releases all and may be called twice', async () => {
    const dataDir = await newDataDir();
    try {
      const server = await createServer(testServerConfig(dataDir, { executor: 'sandbox', functionPools: { genericPerShape: 1 } }));
      assert.equal(server.app.server.listening, false);
      assert.equal(existsSync(join(dataDir, 'server.pid')), true, 'built: the data dir is locked');
      // Requests are served through inject() before (and without) listening.
      const health = await server.app.inject({ method: 'GET', url: '/healthz' });
      assert.equal(health.statusCode, 200);
      // No warm sandbox was started (this config prewarms nothing: prewarmPerShape 0, the test servers' default).
      const generic = (): { idle: number; creating: number } => server.handlers.stats().generic as { idle: number; creating: number };
      assert.equal(generic().idle + generic().creating, 0, `no generic warm sandbox before listen(): ${JSON.stringify(generic())}`);
      // listen() starts them (for node and python on the default executor).
      const url = await server.listen();
      assert.equal((await fetch(`${url}/healthz`)).status, 200);
      await waitFor(async () => generic().idle + generic().creating > 0, 10_000, 'generic warm sandboxes after listen()');
      await Promise.all([server.destroy(), server.destroy()]);
      await server.destroy();
      assert.equal(existsSync(join(dataDir, 'server.pid')), false);
      assert.ok(nothingLeft(await leftovers(docker, ownerIdOf(dataDir), dataDir)));
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it('destroy() kills a running execution at once instead of waiting for the shutdown deadline', async () => {
    const dataDir = await newDataDir();
    try {
      const server = await startServer(testServerConfig(dataDir, { executor: 'sandbox', shutdownTimeoutMs: 60_000 }));
      const running = fetch(`${server.url}/v1/execute`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ image: 'kindling/base', command: ['sleep', '60'], timeoutMs: 120_000 }),
      }).then(
        async (response) => ({ status: response.status, body: await response.text() }),
        (error: Error) => ({ status: 0, body: error.message }),
      );
      const inFlight = async (): Promise<number> => sample(await (await fetch(`${server.url}/metrics`)).text(), 'kindling_executions_in_flight');
      await waitFor(async () => (await inFlight()) === 1, 20_000, 'the execution to run');
      const startedMs = Date.now();
      await server.destroy();
      const tookMs = Date.now() - startedMs;
      assert.ok(tookMs < 20_000, `destroy() took ${tookMs} ms; a 60 s sleep and a 60 s deadline were not waited for`);
      // The client is answered (or its connection ends): never left hanging, never told the sleep succeeded.
      const answer = await running;
      if (answer.status === 200) assert.notEqual((JSON.parse(answer.body) as { exitCode: number }).exitCode, 0, answer.body);
      await server.close();
      assert.ok(nothingLeft(await leftovers(docker, ownerIdOf(dataDir), dataDir)));
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
