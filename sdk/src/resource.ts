import type { HttpClient } from './http.js';

/**
 * Base of every API resource (executions today; functions and invocations next). A resource holds the shared
 * transport and nothing else, so all of them send requests, time out and convert errors the same way.
 */
export abstract class APIResource {
  protected readonly http: HttpClient;

  constructor(http: HttpClient) {
    this.http = http;
  }
}

/** Options every request method accepts. */
export interface RequestOptions {
  /** Cancels the request; the call then rejects with `AbortError`. Default: none. */
  signal?: AbortSignal;
  /**
   * Request timeout for this call in milliseconds; 0 disables it. When it passes the call rejects with
   * `ConnectionError` (code `TIMEOUT`). Default: the client's `timeoutMs` (see `KindlingOptions.timeoutMs`).
   */
  requestTimeoutMs?: number;
}

/** Throws a RangeError unless `value` is undefined or a finite number >= 0. */
export function checkMs(name: string, value: number | undefined): void {
  if (value === undefined) return;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new RangeError(`${name} must be a finite number of milliseconds >= 0 (0 disables it), got ${String(value)}`);
  }
}

/** A call's options as the transport takes them: the signal and the timeout, only those given. */
export function call(options: RequestOptions): { signal?: AbortSignal; timeoutMs?: number } {
  const out: { signal?: AbortSignal; timeoutMs?: number } = {};
  if (options.signal !== undefined) out.signal = options.signal;
  if (options.requestTimeoutMs !== undefined) out.timeoutMs = options.requestTimeoutMs;
  return out;
}

/** A DELETE answered 204 (no body); errors are thrown by `send`. */
export async function sendDelete(http: HttpClient, path: string, options: RequestOptions): Promise<void> {
  const request = http.open(path, call(options));
  try {
    const response = await http.send(request, { method: 'DELETE', path });
    await response.arrayBuffer().catch(() => undefined);
  } finally {
    request.dispose();
  }
}
