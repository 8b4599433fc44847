import { randomHex } from '../core/ids.js';
import { parseTraceparent, type Tracer, type TraceSpan } from '../core/tracing.js';

export { parseTraceparent };

/**
 * W3C Trace Context (https://www.w3.org/TR/trace-context/): `traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex
 * flags>`. A valid incoming header is continued (same trace id, flags kept); anything else starts a new trace. Each
 * request is one span of this server: its new span id is what responses echo and what sandboxes see as their parent.
 * With a tracer (--otlp-endpoint) that span is a real one, exported: its ids are the SDK's, so what the response echoes
 * and what a sandbox's own spans name as their parent is the span the trace backend shows.
 */
export interface RequestTrace {
  traceId: string;
  /** This server's span for the request. */
  spanId: string;
  /** The caller's span, when a valid traceparent came in. */
  parentSpanId: string | null;
  flags: string;
  /** `00-traceId-spanId-flags`: echoed in the response and passed to sandboxes as env TRACEPARENT. */
  traceparent: string;
  /** The exported span of the request (a tracer is configured and the request is traced); ended when it is answered. */
  span?: TraceSpan;
}

const nonZeroHex = (bytes: number): string => {
  for (;;) {
    const value = randomHex(bytes);
    if (!/^0+$/.test(value)) return value;
  }
};

export function startRequestTrace(header: string | undefined, traced?: { tracer: Tracer; name: string; attributes: Record<string, string> }): RequestTrace {
  const incoming = parseTraceparent(header);
  if (traced !== undefined) {
    const parent = incoming === null ? null : `00-${incoming.traceId}-${incoming.parentSpanId}-${incoming.flags}`;
    const span = traced.tracer.startSpan(traced.name, parent, { kind: 'server', attributes: traced.attributes });
    return { traceId: span.traceId, spanId: span.spanId, parentSpanId: incoming?.parentSpanId ?? null, flags: span.traceparent.slice(-2), traceparent: span.traceparent, span };
  }
  const traceId = incoming?.traceId ?? nonZeroHex(16);
  const spanId = nonZeroHex(8);
  // Sampled by default when we start the trace; an incoming decision is kept.
  const flags = incoming?.flags ?? '01';
  return { traceId, spanId, parentSpanId: incoming?.parentSpanId ?? null, flags, traceparent: `00-${traceId}-${spanId}-${flags}` };
}
