/**
 * What the platform needs of a tracer: spans with W3C ids, attributes, an error status and explicit start and end
 * times. The gateway and the orchestrator speak this small interface; src/tracing/otlp.ts implements it with the
 * OpenTelemetry SDK, so that without `--otlp-endpoint` nothing of the SDK is loaded and no span is made.
 */
export type SpanAttributes = Record<string, string | number | boolean>;

/** Server: an API request; consumer: an async invocation taken from the queue; internal: a phase. */
export type SpanKindName = 'server' | 'consumer' | 'internal';

export interface SpanOptions {
  kind?: SpanKindName;
  attributes?: SpanAttributes;
  /** When the span started, in epoch milliseconds (fractions allowed); default now. */
  startMs?: number;
}

export interface TraceSpan {
  readonly traceId: string;
  readonly spanId: string;
  /** `00-<trace id>-<span id>-<flags>`: this span as the parent of what runs under it (a sandbox's TRACEPARENT). */
  readonly traceparent: string;
  setAttributes(attributes: SpanAttributes): void;
  updateName(name: string): void;
  /** A failure of the platform (not of the user's code): status ERROR, the stable error code as an attribute. */
  fail(code: string, message: string): void;
  /** A span under this one. */
  startChild(name: string, options?: SpanOptions): TraceSpan;
  /** Ends the span (at `atMs`, epoch milliseconds; default now). Only the first call counts. */
  end(atMs?: number): void;
}

export interface Tracer {
  /**
   * A span continuing `parent`, a W3C traceparent (its trace id, and its span as the parent); null or an invalid one
   * starts a new trace. Whether it is sampled follows the parent's flag, else the tracer's sampling ratio.
   */
  startSpan(name: string, parent: string | null, options?: SpanOptions): TraceSpan;
  /** Exports what ended and is still buffered. */
  forceFlush(): Promise<void>;
  /** Exports what is buffered, then stops exporting. */
  shutdown(): Promise<void>;
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;

/** The parts of a valid traceparent, or null (wrong shape, version ff, all-zero ids, extra fields on version 00). */
export function parseTraceparent(header: string | null | undefined): { traceId: string; parentSpanId: string; flags: string } | null {
  if (typeof header !== 'string') return null;
  const match = TRACEPARENT.exec(header.trim());
  if (!match) return null;
  const [, version, traceId, parentSpanId, flags, rest] = match as unknown as [string, string, string, string, string, string | undefined];
  if (version === 'ff') return null;
  if (version === '00' && rest !== undefined) return null;
  if (/^0+$/.test(traceId) || /^0+$/.test(parentSpanId)) return null;
  return { traceId, parentSpanId, flags };
}

/** Epoch milliseconds with sub-millisecond precision: the clock Kindling gives the OpenTelemetry SDK for every span's start and end. */
export const spanClockMs = (): number => performance.timeOrigin + performance.now();

/**
 * A wall-clock time (Date.now(), e.g. a stored createdAtMs) on the span clock, never later than now. The two clocks
 * drift apart over a long-lived process (the monotonic clock is not slewed by NTP), so a span that starts at a stored
 * time and has children timed on the span clock must be converted, or a child may seem to start before its parent.
 */
export function wallToSpanClockMs(wallMs: number): number {
  const nowMs = spanClockMs();
  return Math.min(nowMs, wallMs + (nowMs - Date.now()));
}

/** The attribute names of Kindling's spans (documented in docs/operations.md, "Tracing"). */
export const ATTR = {
  tenant: 'kindling.tenant',
  function: 'kindling.function',
  version: 'kindling.function.version',
  invocationId: 'kindling.invocation.id',
  executionId: 'kindling.execution.id',
  executor: 'kindling.executor',
  mode: 'kindling.mode',
  coldStart: 'kindling.cold_start',
  exitCode: 'kindling.exit_code',
  outcome: 'kindling.outcome',
  errorCode: 'kindling.error.code',
  timedOut: 'kindling.timed_out',
  oomKilled: 'kindling.oom_killed',
} as const;

/** OpenTelemetry's stable HTTP server attributes (semantic conventions 1.2x), as strings: no module to load for them. */
export const HTTP_ATTR = {
  method: 'http.request.method',
  route: 'http.route',
  path: 'url.path',
  statusCode: 'http.response.status_code',
} as const;
