import { randomHex } from '../core/ids.js';

/**
 * W3C Trace Context (https://www.w3.org/TR/trace-context/): `traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex
 * flags>`. A valid incoming header is continued (same trace id, flags kept); anything else starts a new trace. Each
 * request is one span of this server: its new span id is what responses echo and what sandboxes see as their parent.
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
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;

/** The parts of a valid traceparent, or null (wrong shape, version ff, all-zero ids, extra fields on version 00). */
export function parseTraceparent(header: string | undefined): { traceId: string; parentSpanId: string; flags: string } | null {
  if (typeof header !== 'string') return null;
  const match = TRACEPARENT.exec(header.trim());
  if (!match) return null;
  const [, version, traceId, parentSpanId, flags, rest] = match as unknown as [string, string, string, string, string, string | undefined];
  if (version === 'ff') return null;
  if (version === '00' && rest !== undefined) return null;
  if (/^0+$/.test(traceId) || /^0+$/.test(parentSpanId)) return null;
  return { traceId, parentSpanId, flags };
}

const nonZeroHex = (bytes: number): string => {
  for (;;) {
    const value = randomHex(bytes);
    if (!/^0+$/.test(value)) return value;
  }
};

export function startRequestTrace(header: string | undefined): RequestTrace {
  const incoming = parseTraceparent(header);
  const traceId = incoming?.traceId ?? nonZeroHex(16);
  const spanId = nonZeroHex(8);
  // Sampled by default when we start the trace; an incoming decision is kept.
  const flags = incoming?.flags ?? '01';
  return { traceId, spanId, parentSpanId: incoming?.parentSpanId ?? null, flags, traceparent: `00-${traceId}-${spanId}-${flags}` };
}
