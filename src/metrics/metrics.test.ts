import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { Metrics } from './metrics.js';

describe('metrics', () => {
  it('documents every metric it defines in docs/metrics.md', async () => {
    const doc = readFileSync(new URL('../../../docs/metrics.md', import.meta.url), 'utf8');
    const metrics = new Metrics({ collectProcess: false, queue: () => ({ running: 1, queued: 2 }), pools: () => [], dataDirSpace: async () => ({ freeBytes: 1, sizeBytes: 2 }), cluster: () => ({ connected: true, workers: 3 }) });
    const names = (await metrics.registry.getMetricsAsJSON()).map((metric) => metric.name);
    assert.ok(names.length >= 15);
    for (const name of names) assert.ok(doc.includes(`| \`${name}\` |`), `${name} is not in the table of docs/metrics.md`);
    const text = await metrics.registry.metrics();
    assert.match(text, /^kindling_executions_in_flight 1$/m);
    assert.match(text, /^kindling_queue_depth 2$/m);
    assert.match(text, /^kindling_cluster_connected 1$/m);
    assert.match(text, /^kindling_cluster_workers 3$/m);
    metrics.onClusterRun('worker_lost');
    assert.match(await metrics.registry.metrics(), /^kindling_cluster_runs_total\{outcome="worker_lost"\} 1$/m);
  });

  it('a server on its own has no cluster gauges (no alert on a NATS connection it never had)', async () => {
    const text = await new Metrics({ collectProcess: false }).registry.metrics();
    assert.doesNotMatch(text, /^kindling_cluster_(connected|workers) /m);
  });
});

describe('metrics per tenant', () => {
  it('counts invocations and CPU seconds by tenant, and work without a tenant for "default"', async () => {
    const metrics = new Metrics({ collectProcess: false });
    const call = { invocationId: 'i', functionName: 'hello', executor: 'sandbox' as const, status: 'succeeded' as const, coldStart: false, durationMs: 5, inBytes: 1, outBytes: 1, queuedMs: 0, memoryMb: 128, cpuMs: 250 };
    // Two tenants with a function of the same name stay apart.
    metrics.onInvocation({ ...call, tenant: 'acme' });
    metrics.onInvocation({ ...call, tenant: 'acme' });
    metrics.onInvocation({ ...call, tenant: 'globex' });
    metrics.onIdleUsage({ tenant: 'globex', functionName: 'hello', executor: 'sandbox', cpuMs: 500, memoryMb: 128 });
    metrics.onExecutionFailed({ code: 'INTERNAL' } as never, { executor: 'sandbox' });
    const text = await metrics.registry.metrics();
    assert.match(text, /^kindling_invocations_total\{tenant="acme",function="hello",executor="sandbox",status="succeeded",cold="false"\} 2$/m);
    assert.match(text, /^kindling_invocations_total\{tenant="globex",function="hello",executor="sandbox",status="succeeded",cold="false"\} 1$/m);
    assert.match(text, /^kindling_invocations_total\{tenant="default",function="_execute",executor="sandbox",status="error",cold="true"\} 1$/m);
    assert.match(text, /^kindling_cpu_seconds_total\{tenant="acme",function="hello",executor="sandbox"\} 0.5$/m);
    assert.match(text, /^kindling_cpu_seconds_total\{tenant="globex",function="hello",executor="sandbox"\} 0.75$/m);
  });
});
