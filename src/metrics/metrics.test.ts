import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { Metrics } from './metrics.js';

describe('metrics', () => {
  it('documents every metric it defines in docs/metrics.md', async () => {
    const doc = readFileSync(new URL('../../../docs/metrics.md', import.meta.url), 'utf8');
    const metrics = new Metrics({ collectProcess: false, queue: () => ({ running: 1, queued: 2 }), pools: () => [], dataDirSpace: async () => ({ freeBytes: 1, sizeBytes: 2 }) });
    const names = (await metrics.registry.getMetricsAsJSON()).map((metric) => metric.name);
    assert.ok(names.length >= 15);
    for (const name of names) assert.ok(doc.includes(`| \`${name}\` |`), `${name} is not in the table of docs/metrics.md`);
    const text = await metrics.registry.metrics();
    assert.match(text, /^kindling_executions_in_flight 1$/m);
    assert.match(text, /^kindling_queue_depth 2$/m);
  });
});
