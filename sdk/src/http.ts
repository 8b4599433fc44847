/**
 * The one HTTP transport every resource uses: builds URLs and headers, applies the request timeout and the caller's
 * signal, and converts every failure to a `KindlingError` (responses through `errorFromResponse`, failures without a
 * response through `errorFromFailure`). Resources never call `fetch` or construct transport errors themselves.
 */
import { errorFromFailure, errorFromResponse, KindlingError } from './errors.js';

export type FetchFunction = (input: string, init: RequestInit) => Promise<Response>;

export interface HttpClientOptions {
  /** Base URL, already validated; a path prefix is kept. */
  baseUrl: string;
  apiKey: string | undefined;
  /** Sent as `x-kindling-tenant` (an admin acting as that tenant). */
  tenant?: string | undefined;
  /** Default request timeout in milliseconds; 0 disables it. */
  timeoutMs: number;
  fetch: FetchFunction;
}

export interface CallOptions {
  /** Cancels the request; the SDK then throws `AbortError`. */
  signal?: AbortSignal | undefined;
  /** Timeout for this request in milliseconds (0: none). Default: the client's `timeoutMs`. */
  timeoutMs?: number | undefined;
}

export interface SendOptions {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  /** Path below the base URL, starting with '/'. */
  path: string;
  /** Sent as JSON when defined. */
  body?: unknown;
  /** Sent as is (bytes or UTF-8 text) when defined, with `contentType` (default application/octet-stream). */
  rawBody?: Uint8Array | string | Blob | ReadableStream<Uint8Array>;
  contentType?: string;
  /** Extra request headers. */
  headers?: Record<string, string>;
  /** `Accept` header. Default `application/json`. */
  accept?: string;
  /** Non-2xx statuses to hand back as responses instead of throwing (e.g. 503 from /readyz). */
  acceptStatuses?: readonly number[];
}

export interface JsonOptions extends SendOptions, CallOptions {
  /**
   * For a status in `acceptStatuses`: whether its parsed body is a valid answer. When it is not (or the body is not
   * JSON), the response is mapped to an error as any other. Default: accept none.
   */
  acceptBody?: (body: unknown) => boolean;
}

/**
 * One request's lifetime: its combined abort signal (caller's signal + timeout + `cancel()`), and the conversion of
 * whatever fails during it. Must be `dispose()`d when the request is over (clears the timer and listeners).
 */
export class Call {
  readonly url: string;
  readonly signal: AbortSignal;
  readonly #controller = new AbortController();
  readonly #timeoutMs: number;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #callerSignal: AbortSignal | undefined;
  #abortedBy: 'timeout' | 'caller' | undefined;
  #abortReason: unknown;
  #responseStarted = false;
  readonly #onCallerAbort = (): void => this.cancel(this.#callerSignal?.reason);

  constructor(url: string, options: { signal?: AbortSignal | undefined; timeoutMs: number }) {
    this.url = url;
    this.signal = this.#controller.signal;
    this.#timeoutMs = options.timeoutMs;
    this.#callerSignal = options.signal;
    if (options.signal?.aborted) {
      this.cancel(options.signal.reason);
    } else {
      options.signal?.addEventListener('abort', this.#onCallerAbort, { once: true });
      if (options.timeoutMs > 0) {
        this.#timer = setTimeout(() => {
          this.#timer = undefined;
          this.#abort('timeout', undefined);
        }, options.timeoutMs);
      }
    }
  }

  /** Aborts the request on the caller's behalf; it then fails with `AbortError`. No-op once aborted. */
  cancel(reason?: unknown): void {
    this.#abort('caller', reason);
  }

  /** Marks that response headers arrived, so later failures read as a broken stream rather than no connection. */
  responseStarted(): void {
    this.#responseStarted = true;
  }

  /** Converts anything thrown during this request into the error to surface. */
  toError(err: unknown): KindlingError {
    return errorFromFailure(err, {
      url: this.url,
      abortedBy: this.#abortedBy,
      timeoutMs: this.#timeoutMs,
      abortReason: this.#abortReason,
      responseStarted: this.#responseStarted,
    });
  }

  /** Ends the request's bookkeeping. Idempotent. Does not abort an unread body: cancel the body for that. */
  dispose(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#callerSignal?.removeEventListener('abort', this.#onCallerAbort);
    this.#callerSignal = undefined;
  }

  #abort(by: 'timeout' | 'caller', reason: unknown): void {
    if (this.#abortedBy !== undefined || this.signal.aborted) return;
    this.#abortedBy = by;
    this.#abortReason = reason;
    this.dispose();
    this.#controller.abort(reason);
  }
}

export class HttpClient {
  readonly baseUrl: string;
  readonly timeoutMs: number;
  readonly #apiKey: string | undefined;
  readonly #tenant: string | undefined;
  readonly #fetch: FetchFunction;

  constructor(options: HttpClientOptions) {
    this.baseUrl = options.baseUrl;
    this.timeoutMs = options.timeoutMs;
    this.#apiKey = options.apiKey;
    this.#tenant = options.tenant;
    this.#fetch = options.fetch;
  }

  url(path: string): string {
    return this.baseUrl + path;
  }

  /** Starts a request's lifetime (timer and signals). Pair with `send`, and `dispose()` it when done. */
  open(path: string, options: CallOptions = {}): Call {
    return new Call(this.url(path), { signal: options.signal, timeoutMs: options.timeoutMs ?? this.timeoutMs });
  }

  /**
   * Sends the request of `call` and returns the response once its headers arrived. A non-2xx status (other than
   * `acceptStatuses`) is read and thrown as a mapped `KindlingError`; failures are converted by `call.toError`.
   */
  async send(call: Call, options: SendOptions): Promise<Response> {
    const headers: Record<string, string> = { ...options.headers, accept: options.accept ?? 'application/json' };
    if (this.#apiKey !== undefined) headers.authorization = `Bearer ${this.#apiKey}`;
    if (this.#tenant !== undefined) headers['x-kindling-tenant'] = this.#tenant;
    let body: string | Uint8Array | Blob | ReadableStream<Uint8Array> | undefined;
    if (options.rawBody !== undefined) {
      body = options.rawBody;
      headers['content-type'] = options.contentType ?? 'application/octet-stream';
    } else if (options.body !== undefined) {
      body = JSON.stringify(options.body);
      headers['content-type'] = 'application/json';
    }
    try {
      const init: RequestInit = { method: options.method, headers, signal: call.signal };
      if (body !== undefined) init.body = body as BodyInit;
      // A streamed body is sent as it is read (fetch requires saying so).
      if (body instanceof ReadableStream) (init as RequestInit & { duplex: 'half' }).duplex = 'half';
      const response = await this.#fetch(call.url, init);
      call.responseStarted();
      if (!response.ok && !(options.acceptStatuses ?? []).includes(response.status)) {
        const text = await response.text();
        throw errorFromResponse(response.status, response.headers, text);
      }
      return response;
    } catch (err) {
      throw call.toError(err);
    }
  }

  /**
   * Sends a request whose answer is someone else's (a sandbox's server behind /v1/sandboxes/ID/ports/PORT): any
   * status of theirs comes back as the Response; only the platform's own refusals (no `x-kindling-port` header on the
   * answer: unknown sandbox, nothing listening, too many connections) throw a mapped `KindlingError`.
   */
  async proxied(call: Call, init: RequestInit): Promise<Response> {
    const headers = new Headers(init.headers);
    if (this.#apiKey !== undefined) headers.set('authorization', `Bearer ${this.#apiKey}`);
    if (this.#tenant !== undefined) headers.set('x-kindling-tenant', this.#tenant);
    try {
      const response = await this.#fetch(call.url, { ...init, headers, signal: call.signal, ...(init.body instanceof ReadableStream ? { duplex: 'half' } : {}) } as RequestInit);
      call.responseStarted();
      if (!response.ok && !response.headers.has('x-kindling-port')) throw errorFromResponse(response.status, response.headers, await response.text());
      return response;
    } catch (err) {
      throw call.toError(err);
    }
  }

  /** A whole JSON request: open, send, parse, dispose. */
  async json<T>(options: JsonOptions): Promise<T> {
    const call = this.open(options.path, options);
    try {
      const response = await this.send(call, options);
      let text: string;
      try {
        text = await response.text();
      } catch (err) {
        throw call.toError(err);
      }
      if (!response.ok) {
        let body: unknown;
        try {
          body = JSON.parse(text);
        } catch {
          body = undefined;
        }
        if (body !== undefined && options.acceptBody?.(body) === true) return body as T;
        throw errorFromResponse(response.status, response.headers, text);
      }
      return parseJson<T>(text, response.status, call.url);
    } finally {
      call.dispose();
    }
  }
}

/** Parses a successful response body; a body that is not JSON is a protocol error (`INVALID_RESPONSE`). */
export function parseJson<T>(text: string, status: number, url: string): T {
  try {
    return JSON.parse(text) as T;
  } catch (err) {
    throw new KindlingError({
      code: 'INVALID_RESPONSE',
      message: `Expected JSON from ${url} (HTTP ${status}), got: ${text.trim().slice(0, 200) || '(empty body)'}`,
      status,
      cause: err,
    });
  }
}
