/**
 * Tenant quotas and metering of persistent sandboxes against a started server (sandbox executor, real bubblewrap):
 * maxSandboxes refuses a second running sandbox (create, and resuming a paused one), maxSandboxMemoryMb refuses a
 * create whose memory does not fit, and a busy loop in a sandbox shows up in GET /v1/usage as the tenant's CPU ms and
 * GB-seconds under the sandbox's id.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Kindling, RateLimitError } from '@kindling/sdk';
import { series } from './helpers/prom-text.js';
import { sandboxUnavailableReason, startTestServer, waitFor, type TestServer } from './helpers/server.js';

const unavailable = await sandboxUnavailableReason();
const ADMIN = 'admin-key-for-sandbox-quotas-test-0123456789';

const quotaError = (quota: string, limit: number) => (error: unknown) => {
  assert.ok(error instanceof RateLimitError, String(error));
  assert.equal(error.code, 'TENANT_SANDBOX_LIMIT');
  assert.match(error.message, new RegExp(`quota ${quota} \\(${limit}\\)`));
  assert.match(error.message, /PATCH \/v1\/tenants\/sbq/);
  return true;
};

describe('tenant quotas and metering of persistent sandboxes', { skip: unavailable ?? false }, () => {
  let server: TestServer;
  let admin: Kindling;
  let tenant: Kindling;
  let tenantKey: string;

  before(async () => {
    // A short meter interval: a running sandbox is metered every 200 ms as well as at pause/stop.
    server = await startTestServer({ executor: 'sandbox', adminKey: ADMIN, maxSandboxesPerTenant: 5, sandboxMeterIntervalMs: 200 });
    admin = new Kindling({ url: server.url, apiKey: ADMIN });
    const made = await admin.tenants.create('sbq', { quotas: { maxSandboxes: 1, maxSandboxMemoryMb: 384 } });
    tenantKey = made.apiKey;
    tenant = new Kindling({ url: server.url, apiKey: tenantKey });
  });
  after(async () => {
    await server?.stop();
  });

  test('the quotas are shown in effect, with the server default for the ones not set', async () => {
    const info = await admin.tenants.get('sbq');
    assert.equal(info.effectiveQuotas.maxSandboxes, 1);
    assert.equal(info.effectiveQuotas.maxSandboxMemoryMb, 384);
    assert.equal(info.effectiveQuotas.maxPausedSandboxes, 5, '--max-sandboxes-per-tenant is the default');
    assert.equal(info.effectiveQuotas.maxSnapshotBytes, null);
  });

  test('maxSandboxes 1: a second create is 429, and so is resuming a paused one while another runs', async () => {
    const first = await tenant.sandboxes.create({ runtime: 'bash', limits: { memoryMb: 128 } });
    try {
      await assert.rejects(tenant.sandboxes.create({ runtime: 'bash', limits: { memoryMb: 128 } }), quotaError('maxSandboxes', 1));
      await first.pause();
      const second = await tenant.sandboxes.create({ runtime: 'bash', limits: { memoryMb: 128 } });
      try {
        await assert.rejects(first.resume(), quotaError('maxSandboxes', 1));
        // A command's auto-resume is the same resume.
        await assert.rejects(first.commands.run(['true']), quotaError('maxSandboxes', 1));
        assert.equal((await tenant.sandboxes.get(first.id)).state, 'paused');
      } finally {
        await second.kill();
      }
      await first.resume();
      assert.equal((await first.commands.run(['echo', 'back'])).stdout, 'back\n');
    } finally {
      await first.kill();
    }
  });

  test('maxSandboxMemoryMb: a create whose memory would pass it is 429 before anything is made; the gauges show the paused one', async () => {
    const kept = await tenant.sandboxes.create({ runtime: 'bash', limits: { memoryMb: 256 } });
    try {
      await kept.pause();
      // The operator's gauges: the paused sandbox and its memory, per tenant.
      const metrics = await (await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN}` } })).text();
      assert.deepEqual(series(metrics, 'kindling_persistent_sandboxes', { tenant: 'sbq', state: 'paused' }), [1]);
      assert.deepEqual(series(metrics, 'kindling_persistent_sandboxes', { tenant: 'sbq', state: 'running' }), [0]);
      assert.deepEqual(series(metrics, 'kindling_persistent_sandbox_memory_mb', { tenant: 'sbq' }), [256]);
      const before = (await tenant.sandboxes.list()).length;
      await assert.rejects(tenant.sandboxes.create({ runtime: 'bash', limits: { memoryMb: 256 } }), quotaError('maxSandboxMemoryMb', 384));
      assert.equal((await tenant.sandboxes.list()).length, before, 'nothing was made');
      const fits = await tenant.sandboxes.create({ runtime: 'bash', limits: { memoryMb: 128 } });
      await fits.kill();
    } finally {
      await kept.kill();
    }
  });

  test('a busy loop in a sandbox yields usage records: CPU ms and GB-seconds of the tenant, under the sandbox id', async () => {
    await admin.tenants.update('sbq', { maxSandboxMemoryMb: null });
    const sb = await tenant.sandboxes.create({ runtime: 'bash', limits: { memoryMb: 256 } });
    const usage = async (who: string): Promise<{ rows: { tenant: string; function: string; invocations: number; cpuMs: number; gbSeconds: number }[] }> => {
      const response = await fetch(`${server.url}/v1/usage`, { headers: { authorization: `Bearer ${who}` } });
      assert.equal(response.status, 200);
      return (await response.json()) as never;
    };
    try {
      // A fixed amount of work (not of wall time): its CPU does not shrink on a loaded host, it only takes longer.
      const run = await sb.commands.run(['sh', '-c', 'i=0; while [ $i -lt 600000 ]; do i=$((i+1)); done; echo done']);
      assert.equal(run.stdout, 'done\n');
      // Metered every 200 ms while it runs (the test does not wait for the stop).
      await waitFor(
        async () => {
          const row = (await usage(tenantKey)).rows.find((candidate) => candidate.function === sb.id);
          return row !== undefined && row.cpuMs > 100 && row.gbSeconds > 0;
        },
        10_000,
        'the busy loop metered',
      ).catch(async (error: unknown) => {
        throw new Error(`${String(error)}; rows: ${JSON.stringify((await usage(tenantKey)).rows)}`);
      });
    } finally {
      await sb.kill();
    }
    const row = (await usage(tenantKey)).rows.find((candidate) => candidate.function === sb.id);
    assert.ok(row !== undefined, 'a usage row keyed by the sandbox id');
    assert.equal(row.tenant, 'sbq');
    assert.equal(row.invocations, 0, 'sandbox records are not invocations');
    // 600k shell iterations: about half a second of CPU or more, whatever the load.
    assert.ok(row.cpuMs > 100, `cpu ${row.cpuMs} ms of the busy loop`);
    assert.ok(row.gbSeconds > 0, `gbSeconds ${row.gbSeconds}`);
    // The admin sees it under the tenant; the default tenant has no such row.
    const all = await usage(ADMIN);
    assert.ok(all.rows.some((candidate) => candidate.tenant === 'sbq' && candidate.function === sb.id));
    assert.ok(!all.rows.some((candidate) => candidate.tenant !== 'sbq' && candidate.function === sb.id));
  });
});
