import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { SpanAttributes, SpanOptions, TraceSpan } from '../core/tracing.js';
import { InvocationPhases, outcomeName } from './phases.js';

/** A span that writes down what is done to it (and to its children). */
class FakeSpan implements TraceSpan {
  readonly traceId = 't'.repeat(32);
  readonly spanId = 's'.repeat(16);
  readonly traceparent = `00-${this.traceId}-${this.spanId}-01`;
  readonly children: FakeSpan[] = [];
  attributes: SpanAttributes = {};
  endedAtMs: number | null = null;
  ends = 0;
  failed: string | null = null;
  constructor(
    readonly name: string,
    readonly startMs = 0,
  ) {}
  setAttributes(attributes: SpanAttributes): void {
    Object.assign(this.attributes, attributes);
  }
  updateName(): void {}
  fail(code: string): void {
    this.failed = code;
  }
  startChild(name: string, options: SpanOptions = {}): TraceSpan {
    const child = new FakeSpan(name, options.startMs);
    child.setAttributes(options.attributes ?? {});
    this.children.push(child);
    return child;
  }
  end(atMs?: number): void {
    this.ends++;
    this.endedAtMs ??= atMs ?? -1;
  }
}

describe('InvocationPhases', () => {
  it('tiles the phases: each starts where the one before ended; the same phase again changes nothing', () => {
    const parent = new FakeSpan('request');
    let now = 100;
    const phases = new InvocationPhases(parent, () => now);
    phases.enter('queue');
    now = 110;
    phases.enter('queue');
    phases.enter('start', { 'kindling.executor': 'sandbox' });
    phases.annotate({ 'kindling.cold_start': true });
    now = 130;
    phases.enter('run');
    now = 150;
    phases.enter('record');
    now = 151;
    phases.end();
    phases.end();
    phases.enter('run');
    const spans = parent.children;
    assert.deepEqual(
      spans.map((span) => [span.name, span.startMs, span.endedAtMs]),
      [
        ['queue', 100, 110],
        ['start', 110, 130],
        ['run', 130, 150],
        ['record', 150, -1],
      ],
    );
    assert.deepEqual(spans[1]!.attributes, { 'kindling.executor': 'sandbox', 'kindling.cold_start': true });
    assert.equal(spans[3]!.ends, 1, 'ended once');
  });

  it('never starts a phase before the one it ends (a start timed back from its duration)', () => {
    const parent = new FakeSpan('request');
    const phases = new InvocationPhases(parent, () => 200);
    phases.enter('queue', undefined, 150);
    phases.enter('start', undefined, 120);
    assert.deepEqual(parent.children.map((span) => [span.name, span.startMs]), [['queue', 150], ['start', 150]]);
  });

  it('marks a failure on the phase under way only', () => {
    const parent = new FakeSpan('request');
    const phases = new InvocationPhases(parent, () => 1);
    phases.enter('queue');
    phases.fail('TOO_MANY_REQUESTS', 'full');
    phases.enter('record');
    assert.deepEqual(parent.children.map((span) => span.failed), ['TOO_MANY_REQUESTS', null]);
    assert.equal(parent.failed, null);
  });

  it('names outcomes: a timeout and an OOM kill before the exit code', () => {
    assert.equal(outcomeName({ exitCode: 0, timedOut: false }), 'succeeded');
    assert.equal(outcomeName({ exitCode: 1, timedOut: false }), 'failed');
    assert.equal(outcomeName({ exitCode: 137, timedOut: true, oomKilled: false }), 'timeout');
    assert.equal(outcomeName({ exitCode: 137, timedOut: false, oomKilled: true }), 'oom');
  });
});
