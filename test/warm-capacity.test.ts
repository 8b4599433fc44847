/**
 * The warm capacity's defaults against a real server on the sandbox executor: more python handler functions than the
 * old default cap (64 warm sandboxes, which counted each sandbox's 256 MB limit against 16 GiB) each keep a warm
 * sandbox, so a second round of calls is served warm by every one, and nothing was evicted. Skips with the reason
 * when the host cannot run the sandbox.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Kindling } from '@kindling/sdk';
import { series } from './helpers/prom-text.js';
import { sandboxCgroups } from './helpers/faults.js';
import { sandboxUnavailableReason, startTestServer, type TestServer } from './helpers/server.js';

const unavailable = await sandboxUnavailableReason();

/** More than the old default cap of 64. */
const FUNCTIONS = 100;
/** Calls at once while warming (the machine is shared: a few at a time, not a burst). */
const WORKERS = 4;

async function eachFunction(work: (name: string) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < FUNCTIONS) await work(`fn-${next++}`);
  };
  await Promise.all(Array.from({ length: WORKERS }, worker));
}


describe('warm capacity defaults hold many idle handler sandboxes (sandbox executor)', { skip: unavailable ?? false, timeout: 20 * 60_000 }, () => {
  let server: TestServer;
  let client: Kindling;

  before(async () => {
    // The capacity's caps are the server's defaults (derived from this machine); only the queue deadline is generous
    // for a shared machine, and the idle TTL long enough that no sandbox expires while the others warm.
    server = await startTestServer({ executor: 'sandbox', functionPools: { queueTimeoutMs: 120_000, idleTtlMs: 30 * 60_000 } });
    client = new Kindling({ url: server.url });
  });
  after(async () => {
    const ownerId = server?.ownerId;
    await server?.stop();
    if (ownerId) assert.deepEqual(sandboxCgroups(ownerId), [], 'no sandbox cgroup may remain after close');
  });

  it(`${FUNCTIONS} python functions warmed in turn all answer warm afterwards; none was evicted`, async () => {
    await eachFunction(async (name) => {
      await client.functions.deploy(name, { runtime: 'python', code: `def handler(body):\n    return "${name}:" + body.decode()\n`, handler: 'handler' });
      const first = await client.functions.invoke(name, 'a');
      assert.deepEqual([first.text(), first.coldStart], [`${name}:a`, true]);
    });
    const cold: string[] = [];
    await eachFunction(async (name) => {
      const again = await client.functions.invoke(name, 'b');
      assert.equal(again.text(), `${name}:b`);
      if (again.coldStart) cold.push(name);
    });
    assert.deepEqual(cold, [], 'every function kept its warm sandbox');
    const capacity = server.handlers.capacity.stats;
    assert.equal(capacity.sandboxes, FUNCTIONS);
    // Charged what they use (cgroup peak), far below their 256 MB limits.
    assert.ok(capacity.memoryMb < FUNCTIONS * 64, `memory counted: ${capacity.memoryMb} MB`);
    const text = await (await fetch(`${server.url}/metrics`)).text();
    for (const reason of ['count', 'memory', 'tenant', 'pressure']) {
      assert.equal(series(text, 'kindling_warm_sandbox_evictions_total', { reason })[0], 0, `evictions (${reason})`);
    }
    assert.equal(series(text, 'kindling_warm_capacity', { what: 'sandboxes' })[0], FUNCTIONS);
  });
});
