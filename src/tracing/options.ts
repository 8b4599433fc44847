/**
 * The tracing options of `kindling serve`, checked without loading the OpenTelemetry SDK (a server without
 * --otlp-endpoint never loads it).
 */
export interface OtlpTracingConfig {
  /** Where spans are POSTed (OTLP/HTTP, JSON): the full URL, e.g. http://collector:4318/v1/traces (see tracesUrl). */
  url: string;
  /** Share of new traces sampled, 0 to 1; a caller's traceparent decides for the traces it continues. Default 1. */
  samplingRatio?: number;
  /** One export request may take this long before it is given up (its spans are dropped). Default 10000. */
  exportTimeoutMs?: number;
  /** Ended spans wait at most this long to be sent in a batch. Default 5000. */
  batchDelayMs?: number;
  /** Ended spans held for export at most; beyond, new ones are dropped (a receiver that is down costs no memory). Default 2048. */
  maxQueueSpans?: number;
  /** Headers of each export request (e.g. an API key of a hosted backend). */
  headers?: Record<string, string>;
}

/** Spans per export request (the SDK's default); never more than the queue. */
export const OTLP_MAX_BATCH_SPANS = 512;

/**
 * The traces URL of --otlp-endpoint, as OTEL_EXPORTER_OTLP_ENDPOINT is read: a base URL gets `/v1/traces` appended,
 * a URL whose path already ends in `/v1/traces` is used as it is. Throws an Error saying how to fix a bad one.
 */
export function tracesUrl(endpoint: string): string {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw new Error(`--otlp-endpoint "${endpoint}" is not a URL; give the OTLP/HTTP receiver's base URL, e.g. http://127.0.0.1:4318 (spans go to its /v1/traces)`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new Error(`--otlp-endpoint must be an http: or https: URL (OTLP over HTTP, port 4318 by convention), got "${url.protocol}"; gRPC (4317) is not supported`);
  }
  if (url.username !== '' || url.password !== '') {
    throw new Error('--otlp-endpoint must not carry credentials (they would show in logs); send them as a header with --otlp-headers "authorization=..."');
  }
  if (url.search !== '' || url.hash !== '') throw new Error(`--otlp-endpoint "${endpoint}" must have no query or fragment`);
  if (!url.pathname.endsWith('/v1/traces')) url.pathname = `${url.pathname.replace(/\/+$/, '')}/v1/traces`;
  return url.toString();
}

/** --otlp-headers `name=value,name=value` (the format of OTEL_EXPORTER_OTLP_HEADERS; values may be percent-encoded). */
export function parseOtlpHeaders(value: string): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const entry of value.split(',').map((part) => part.trim()).filter((part) => part !== '')) {
    const at = entry.indexOf('=');
    const name = at > 0 ? entry.slice(0, at).trim() : '';
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name)) throw new Error(`--otlp-headers takes name=value pairs separated by commas, got "${entry.slice(0, 80)}"`);
    let decoded: string;
    try {
      decoded = decodeURIComponent(entry.slice(at + 1).trim());
    } catch {
      throw new Error(`--otlp-headers: the value of "${name}" is not valid percent-encoding`);
    }
    headers[name.toLowerCase()] = decoded;
  }
  return headers;
}

/** --otlp-sampling-ratio: a number from 0 to 1. */
export function parseSamplingRatio(value: string): number {
  const ratio = Number(value);
  if (value.trim() === '' || !Number.isFinite(ratio) || ratio < 0 || ratio > 1) throw new Error(`--otlp-sampling-ratio must be a number from 0 to 1 (1 samples every new trace), got "${value}"`);
  return ratio;
}
