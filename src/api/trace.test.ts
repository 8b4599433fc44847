import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseTraceparent, startRequestTrace } from './trace.js';

describe('W3C traceparent', () => {
  const valid = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';

  it('parses a valid header and rejects malformed ones', () => {
    assert.deepEqual(parseTraceparent(valid), { traceId: '4bf92f3577b34da6a3ce929d0e0e4736', parentSpanId: '00f067aa0ba902b7', flags: '01' });
    for (const bad of [
      undefined,
      '',
      'garbage',
      valid.toUpperCase(),
      `ff${valid.slice(2)}`,
      `00-${'0'.repeat(32)}-00f067aa0ba902b7-01`,
      `00-4bf92f3577b34da6a3ce929d0e0e4736-${'0'.repeat(16)}-01`,
      `${valid}-extra`,
      '00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01',
    ]) {
      assert.equal(parseTraceparent(bad), null, String(bad));
    }
    // A future version may carry more fields.
    assert.ok(parseTraceparent(`01${valid.slice(2)}-more`));
  });

  it('continues an incoming trace with a new span, or starts one', () => {
    const continued = startRequestTrace(valid);
    assert.equal(continued.traceId, '4bf92f3577b34da6a3ce929d0e0e4736');
    assert.equal(continued.parentSpanId, '00f067aa0ba902b7');
    assert.notEqual(continued.spanId, '00f067aa0ba902b7');
    assert.equal(continued.traceparent, `00-${continued.traceId}-${continued.spanId}-01`);
    const fresh = startRequestTrace('nonsense');
    assert.match(fresh.traceparent, /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    assert.equal(fresh.parentSpanId, null);
  });
});
