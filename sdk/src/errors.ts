/**
 * Every error the SDK throws for a request is a `KindlingError`. HTTP error responses are converted in exactly one
 * place, `errorFromPayload` (through `errorFromResponse`); failures without a response (network, timeout, abort) in
 * `errorFromFailure`. A program that exits non-zero is a result, never an error.
 */

export interface KindlingErrorOptions {
  /** Stable machine-readable code: the server's (`VALIDATION_FAILED`, ...) or the SDK's (`CONNECTION_FAILED`, ...). */
  code: string;
  message: string;
  /** HTTP status, when the server answered. */
  status?: number | undefined;
  requestId?: string | undefined;
  retryable?: boolean | undefined;
  details?: Record<string, unknown> | undefined;
  /** How long to wait before retrying, in milliseconds (from `Retry-After`). */
  retryAfterMs?: number | undefined;
  cause?: unknown;
}

/** Base class of every error the SDK throws for a request. */
export class KindlingError extends Error {
  /** Stable machine-readable code, e.g. `VALIDATION_FAILED`, `UNAUTHORIZED`, `CONNECTION_FAILED`, `TIMEOUT`. */
  readonly code: string;
  /** HTTP status of the response; undefined when there was none (network failure, timeout, abort, stream error). */
  readonly status: number | undefined;
  /** The server's request id (body `requestId` or header `x-request-id`), for support and logs. */
  readonly requestId: string | undefined;
  /** Whether the same request may succeed if sent again later. The SDK never retries by itself. */
  readonly retryable: boolean;
  /** Extra facts from the server (e.g. which field, the allowed range). */
  readonly details: Record<string, unknown> | undefined;
  /** Milliseconds the server asked to wait before retrying (`Retry-After`), when it said. */
  readonly retryAfterMs: number | undefined;

  constructor(options: KindlingErrorOptions) {
    super(options.message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'KindlingError';
    this.code = options.code;
    this.status = options.status;
    this.requestId = options.requestId;
    this.retryable = options.retryable ?? false;
    this.details = options.details;
    this.retryAfterMs = options.retryAfterMs;
  }
}

/** 401 or 403: the API key is missing, wrong, or not allowed to do this. */
export class AuthenticationError extends KindlingError {
  constructor(options: KindlingErrorOptions) {
    super(options);
    this.name = 'AuthenticationError';
  }
}

/** 403: the key is valid but not allowed to do this (an admin-only route with a tenant key). */
export class PermissionDeniedError extends AuthenticationError {
  constructor(options: KindlingErrorOptions) {
    super(options);
    this.name = 'PermissionDeniedError';
  }
}

/** 404: the resource (or route) does not exist, or belongs to another tenant. */
export class NotFoundError extends KindlingError {
  constructor(options: KindlingErrorOptions) {
    super(options);
    this.name = 'NotFoundError';
  }
}

/** Any other 4xx (400, 413, 415, ...): the request is wrong; fix it before sending it again. */
export class ValidationError extends KindlingError {
  constructor(options: KindlingErrorOptions) {
    super(options);
    this.name = 'ValidationError';
  }
}

/** 409 (`TENANT_EXISTS`, `INVOCATION_NOT_FINISHED`, `TENANT_STORAGE_LIMIT`): the request conflicts with what exists; a `ValidationError` too. */
export class ConflictError extends ValidationError {
  constructor(options: KindlingErrorOptions) {
    super(options);
    this.name = 'ConflictError';
  }
}

/** 429: too many requests. `retryAfterMs` says how long to wait when the server sent `Retry-After`. */
export class RateLimitError extends KindlingError {
  constructor(options: KindlingErrorOptions) {
    super(options);
    this.name = 'RateLimitError';
  }
}

/** 5xx, or an `error` event in the middle of a stream: the platform failed. `retryable` says whether to try again. */
export class ServerError extends KindlingError {
  constructor(options: KindlingErrorOptions) {
    super(options);
    this.name = 'ServerError';
  }
}

/**
 * No (complete) response: the server could not be reached, the connection broke, or the request timed out
 * (`code` is `CONNECTION_FAILED`, `STREAM_INTERRUPTED` or `TIMEOUT`). The request may or may not have run.
 */
export class ConnectionError extends KindlingError {
  constructor(options: KindlingErrorOptions) {
    super(options);
    this.name = 'ConnectionError';
  }
}

/**
 * The caller cancelled the request (its `signal` fired, `stream.abort()`, or leaving a `for await` loop early).
 * `code` is `ABORTED`; `cause` is the signal's reason. Its `name` is `AbortError`, like the platform's.
 */
export class AbortError extends KindlingError {
  constructor(options: KindlingErrorOptions) {
    super(options);
    this.name = 'AbortError';
  }
}

/** Codes whose failure is transient when the status is unknown (stream `error` events). */
const RETRYABLE_CODES = new Set(['TOO_MANY_REQUESTS', 'SANDBOX_PORT_UNREACHABLE', 'SANDBOX_PORT_LIMIT', 'EXECUTOR_UNAVAILABLE', 'EXECUTOR_FAILED', 'SHUTTING_DOWN', 'SANDBOX_START_TIMEOUT', 'STORAGE_FULL', 'NO_WORKERS', 'WORKER_LOST', 'CLUSTER_UNAVAILABLE']);
// 507: the server's disk is full (STORAGE_FULL); nothing was stored, so the same request can be sent again later.
const RETRYABLE_STATUSES = new Set([408, 429, 502, 503, 504, 507]);

/**
 * Parses `Retry-After` (delay in seconds, or an HTTP date) into milliseconds. Undefined when absent or unparsable.
 */
export function parseRetryAfter(value: string | null | undefined, now: number = Date.now()): number | undefined {
  if (value === null || value === undefined) return undefined;
  const text = value.trim();
  if (text === '') return undefined;
  if (/^\d+(\.\d+)?$/.test(text)) return Math.round(Number(text) * 1000);
  // An HTTP date names its day and month; without letters, Date.parse would read '-1' or '5' as a year.
  if (!/[a-z]/i.test(text)) return undefined;
  const at = Date.parse(text);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, at - now);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export interface PayloadContext {
  /** HTTP status; undefined for an `error` event inside a stream. */
  status?: number | undefined;
  /** Value of the `Retry-After` header. */
  retryAfter?: string | null | undefined;
  /** Value of the `x-request-id` header, used when the body has no `requestId`. */
  requestIdHeader?: string | null | undefined;
  /** Used as the message when the payload has none (e.g. the start of a non-JSON body). */
  fallbackMessage?: string | undefined;
}

/**
 * THE mapping from a server error to a typed error. `payload` is the parsed error body
 * `{"error":{"code","message","details"?,"retryable"?},"requestId"}`, or anything else (then the status decides).
 */
export function errorFromPayload(payload: unknown, context: PayloadContext = {}): KindlingError {
  const { status } = context;
  const body = isRecord(payload) ? payload : {};
  const error = isRecord(body.error) ? body.error : {};

  const code =
    typeof error.code === 'string' && error.code !== ''
      ? error.code
      : status === undefined
        ? 'INTERNAL'
        : `HTTP_${status}`;
  const message =
    typeof error.message === 'string' && error.message !== ''
      ? error.message
      : (context.fallbackMessage ?? (status === undefined ? 'The server reported an error' : `HTTP ${status}`));
  const requestId =
    typeof body.requestId === 'string' ? body.requestId : context.requestIdHeader || undefined;
  const details = isRecord(error.details) ? error.details : undefined;
  const retryable =
    typeof error.retryable === 'boolean'
      ? error.retryable
      : status === undefined
        ? RETRYABLE_CODES.has(code)
        : RETRYABLE_STATUSES.has(status);
  const retryAfterMs = parseRetryAfter(context.retryAfter);

  const options: KindlingErrorOptions = { code, message, status, requestId, retryable, details, retryAfterMs };
  if (status === undefined) return new ServerError(options);
  if (status === 403) return new PermissionDeniedError(options);
  if (status === 401) return new AuthenticationError(options);
  if (status === 409) return new ConflictError(options);
  if (status === 404) return new NotFoundError(options);
  if (status === 429) return new RateLimitError(options);
  if (status >= 500) return new ServerError(options);
  if (status >= 400) return new ValidationError(options);
  return new KindlingError(options);
}

/** Maps an HTTP error response (status, headers, raw body text) through `errorFromPayload`. */
export function errorFromResponse(
  status: number,
  headers: { get(name: string): string | null },
  bodyText: string,
): KindlingError {
  let payload: unknown;
  try {
    payload = JSON.parse(bodyText);
  } catch {
    payload = undefined;
  }
  const snippet = bodyText.trim().slice(0, 200);
  return errorFromPayload(payload, {
    status,
    retryAfter: headers.get('retry-after'),
    requestIdHeader: headers.get('x-request-id'),
    fallbackMessage: snippet === '' ? `HTTP ${status}` : `HTTP ${status}: ${snippet}`,
  });
}

export interface FailureContext {
  /** The URL the request went to, for the message. */
  url: string;
  /** Why the request's own signal fired, if it did. */
  abortedBy?: 'timeout' | 'caller' | undefined;
  /** The timeout that fired, in milliseconds. */
  timeoutMs?: number | undefined;
  /** The caller's abort reason. */
  abortReason?: unknown;
  /** True when the response had started (headers received) before the failure. */
  responseStarted?: boolean | undefined;
}

/** Maps a failure with no (complete) response: network error, timeout or abort. Keeps `KindlingError`s as they are. */
export function errorFromFailure(err: unknown, context: FailureContext): KindlingError {
  if (context.abortedBy === 'timeout') {
    return new ConnectionError({
      code: 'TIMEOUT',
      message: `Request to ${context.url} timed out after ${context.timeoutMs ?? '?'} ms`,
      retryable: true,
      cause: err,
    });
  }
  if (context.abortedBy === 'caller') {
    return new AbortError({
      code: 'ABORTED',
      message: `Request to ${context.url} was aborted`,
      cause: context.abortReason,
    });
  }
  if (err instanceof KindlingError) return err;
  const reason = describeCause(err);
  return new ConnectionError({
    code: context.responseStarted ? 'STREAM_INTERRUPTED' : 'CONNECTION_FAILED',
    message: context.responseStarted
      ? `Connection to ${context.url} was lost while reading the response${reason}`
      : `Could not reach Kindling at ${context.url}${reason}`,
    retryable: true,
    cause: err,
  });
}

function describeCause(err: unknown): string {
  // Node's fetch throws TypeError('fetch failed') with the socket error (ECONNREFUSED, ...) as its cause.
  const inner = err instanceof Error && err.cause instanceof Error ? err.cause : err;
  if (inner instanceof Error) {
    const code = (inner as { code?: unknown }).code;
    return `: ${inner.message}${typeof code === 'string' && !inner.message.includes(code) ? ` (${code})` : ''}`;
  }
  return '';
}
