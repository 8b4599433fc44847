/**
 * The tracer of a server started with --otlp-endpoint: the OpenTelemetry JS SDK (its own provider, never the global
 * one, so that two servers in one process do not share it), spans batched by its BatchSpanProcessor and sent by its
 * OTLP/HTTP exporter (JSON). Contexts are passed explicitly (no async-hooks context manager): the gateway and the
 * orchestrator hand spans down themselves. Loaded only when tracing is on.
 */
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Context, type Span, type Tracer as OtelTracer } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { detectResources, hostDetector, osDetector, processDetector, resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, BatchSpanProcessor, ParentBasedSampler, TraceIdRatioBasedSampler } from '@opentelemetry/sdk-trace-base';
import { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION } from '@opentelemetry/semantic-conventions';
import { ATTR, parseTraceparent, spanClockMs, type SpanAttributes, type SpanKindName, type SpanOptions, type Tracer, type TraceSpan } from '../core/tracing.js';
import { OTLP_MAX_BATCH_SPANS, type OtlpTracingConfig } from './options.js';

const KINDS: Record<SpanKindName, SpanKind> = { server: SpanKind.SERVER, consumer: SpanKind.CONSUMER, internal: SpanKind.INTERNAL };

class OtelSpan implements TraceSpan {
  readonly traceId: string;
  readonly spanId: string;
  readonly traceparent: string;
  private ended = false;

  constructor(
    private readonly span: Span,
    private readonly tracer: OtelTracer,
  ) {
    const context = span.spanContext();
    this.traceId = context.traceId;
    this.spanId = context.spanId;
    this.traceparent = `00-${context.traceId}-${context.spanId}-${context.traceFlags.toString(16).padStart(2, '0')}`;
  }

  setAttributes(attributes: SpanAttributes): void {
    this.span.setAttributes(attributes);
  }

  updateName(name: string): void {
    this.span.updateName(name);
  }

  fail(code: string, message: string): void {
    this.span.setAttribute(ATTR.errorCode, code);
    this.span.setStatus({ code: SpanStatusCode.ERROR, message: `${code}: ${message}` });
  }

  startChild(name: string, options: SpanOptions = {}): TraceSpan {
    return start(this.tracer, name, trace.setSpan(ROOT_CONTEXT, this.span), options);
  }

  end(atMs?: number): void {
    if (this.ended) return;
    this.ended = true;
    this.span.end(atMs ?? spanClockMs());
  }
}

function start(tracer: OtelTracer, name: string, context: Context, options: SpanOptions): TraceSpan {
  const span = tracer.startSpan(
    name,
    {
      kind: KINDS[options.kind ?? 'internal'],
      ...(options.attributes ? { attributes: options.attributes } : {}),
      // Every span is timed on one clock (the SDK's default mixes Date.now() for a start with the monotonic clock for
      // given times, so a phase could seem to start before its request when the two have drifted apart).
      startTime: options.startMs ?? spanClockMs(),
    },
    context,
  );
  return new OtelSpan(span, tracer);
}

export interface OtlpTracerOptions extends OtlpTracingConfig {
  /** service.version of the resource. */
  serviceVersion: string;
  /** service.instance.id of the resource: this server process. */
  instanceId: string;
}

/** A tracer exporting to `options.url`; shutdown() flushes and stops it. */
export function createOtlpTracer(options: OtlpTracerOptions): Tracer {
  const resource = resourceFromAttributes({
    [ATTR_SERVICE_NAME]: 'kindling',
    [ATTR_SERVICE_VERSION]: options.serviceVersion,
    'service.instance.id': options.instanceId,
    // host.name, host.arch, host.id, os.type, process.pid, process.runtime.*: who sent the span, whatever the node is called.
  }).merge(detectResources({ detectors: [hostDetector, osDetector, processDetector] }));
  const exporter = new OTLPTraceExporter({
    url: options.url,
    timeoutMillis: options.exportTimeoutMs ?? 10_000,
    ...(options.headers ? { headers: options.headers } : {}),
  });
  const maxQueueSize = Math.max(1, options.maxQueueSpans ?? 2048);
  const provider = new BasicTracerProvider({
    resource,
    sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(options.samplingRatio ?? 1) }),
    spanProcessors: [
      new BatchSpanProcessor(exporter, {
        maxQueueSize,
        maxExportBatchSize: Math.min(OTLP_MAX_BATCH_SPANS, maxQueueSize),
        scheduledDelayMillis: options.batchDelayMs ?? 5000,
        exportTimeoutMillis: options.exportTimeoutMs ?? 10_000,
      }),
    ],
  });
  const tracer = provider.getTracer('kindling', options.serviceVersion);
  return {
    startSpan(name, parent, spanOptions = {}) {
      const incoming = parseTraceparent(parent);
      const context =
        incoming === null
          ? ROOT_CONTEXT
          : trace.setSpanContext(ROOT_CONTEXT, { traceId: incoming.traceId, spanId: incoming.parentSpanId, traceFlags: parseInt(incoming.flags, 16) & 1, isRemote: true });
      return start(tracer, name, context, spanOptions);
    },
    forceFlush: () => provider.forceFlush(),
    shutdown: () => provider.shutdown(),
  };
}
