import { KindlingError } from './errors.js';
import type { CallOptions, HttpClient } from './http.js';
import { APIResource, call, checkMs, type RequestOptions } from './resource.js';
import { SseParser } from './sse.js';
import type { Invocation, InvocationStatus, LogEvent } from './types.js';

const path = (id: string): string => `/v1/invocations/${encodeURIComponent(id)}`;

/** Filters of `invocations.list()`. */
export interface ListInvocationsOptions extends RequestOptions {
  function?: string;
  status?: InvocationStatus;
  /** Created at or after (a Date, or milliseconds since the epoch). */
  since?: Date | number;
  /** Created before. */
  until?: Date | number;
  /** At most this many, newest first (1-1000). Server default: 100. */
  limit?: number;
}

/** Options of `invocations.waitFor()`. */
export interface WaitForOptions {
  /** Gives up with `ConnectionError` (code `TIMEOUT`) after this long. Default: 600000 (10 min); 0: never. */
  timeoutMs?: number;
  /** Delay between polls in milliseconds. Default 250. */
  intervalMs?: number;
  signal?: AbortSignal;
}

/** The output of a finished invocation. */
export interface InvocationOutput {
  body: Uint8Array;
  text(): string;
}

/** `/v1/invocations`: async invocations, their status, output and logs. */
export class Invocations extends APIResource {
  /** `GET /v1/invocations/ID`; rejects with `NotFoundError` for an unknown (or expired) id. */
  get(id: string, options: RequestOptions = {}): Promise<Invocation> {
    return this.http.json<Invocation>({ method: 'GET', path: path(id), ...call(options) });
  }

  /** `GET /v1/invocations?...`: newest first. */
  async list(options: ListInvocationsOptions = {}): Promise<Invocation[]> {
    const query = new URLSearchParams();
    if (options.function !== undefined) query.set('function', options.function);
    if (options.status !== undefined) query.set('status', options.status);
    if (options.since !== undefined) query.set('since', String(+options.since));
    if (options.until !== undefined) query.set('until', String(+options.until));
    if (options.limit !== undefined) query.set('limit', String(options.limit));
    const suffix = query.size > 0 ? `?${query.toString()}` : '';
    const answer = await this.http.json<{ invocations: Invocation[] }>({ method: 'GET', path: `/v1/invocations${suffix}`, ...call(options) });
    return answer.invocations;
  }

  /** `GET /v1/invocations/ID/output`: the raw stdout of a finished invocation (409 `INVOCATION_NOT_FINISHED` before). */
  async output(id: string, options: RequestOptions = {}): Promise<InvocationOutput> {
    const request = this.http.open(`${path(id)}/output`, call(options));
    try {
      const response = await this.http.send(request, { method: 'GET', path: `${path(id)}/output`, accept: '*/*' });
      let bytes: Uint8Array;
      try {
        bytes = new Uint8Array(await response.arrayBuffer());
      } catch (err) {
        throw request.toError(err);
      }
      return { body: bytes, text: () => new TextDecoder().decode(bytes) };
    } finally {
      request.dispose();
    }
  }

  /** Polls until the invocation succeeded or failed and resolves with it (a failed one resolves too). */
  async waitFor(id: string, options: WaitForOptions = {}): Promise<Invocation> {
    checkMs('timeoutMs', options.timeoutMs);
    const timeoutMs = options.timeoutMs ?? 600_000;
    const interval = options.intervalMs ?? 250;
    const deadline = timeoutMs === 0 ? Infinity : Date.now() + timeoutMs;
    for (;;) {
      const invocation = await this.get(id, options.signal ? { signal: options.signal } : {});
      if (invocation.status === 'succeeded' || invocation.status === 'failed') return invocation;
      if (Date.now() + interval > deadline) {
        throw new KindlingError({ code: 'TIMEOUT', message: `invocation ${id} was still ${invocation.status} after ${timeoutMs} ms` });
      }
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(resolve, interval);
        options.signal?.addEventListener('abort', () => {
          clearTimeout(timer);
          reject(new KindlingError({ code: 'ABORTED', message: 'waitFor was aborted' }));
        }, { once: true });
      });
    }
  }

  /** `GET /v1/invocations/ID/logs`: the invocation's output events, live while it runs; ends with an `end` event. */
  logs(id: string, options: RequestOptions = {}): AsyncIterable<LogEvent> {
    return sseEvents(this.http, `${path(id)}/logs`, { ...call(options), timeoutMs: options.requestTimeoutMs ?? 0 });
  }
}

/** What one SSE event becomes for the caller: an item to yield (or none), and whether it ends the stream. */
export interface SseStep<T> {
  item?: T;
  last?: boolean;
}

/**
 * Reads an SSE stream and yields what `step` makes of each event (the stream ends where the server ends it, or at
 * an event `step` says is the last); breaking out of the loop cancels the request.
 */
export function sseStream<T>(http: HttpClient, urlPath: string, options: CallOptions, step: (event: { event: string; data: string }) => SseStep<T>): AsyncIterable<T> {
  return {
    async *[Symbol.asyncIterator]() {
      const request = http.open(urlPath, options);
      try {
        const response = await http.send(request, { method: 'GET', path: urlPath, accept: 'text/event-stream' });
        const parser = new SseParser();
        const reader = response.body!.getReader();
        try {
          for (;;) {
            let chunk: ReadableStreamReadResult<Uint8Array>;
            try {
              chunk = await reader.read();
            } catch (err) {
              throw request.toError(err);
            }
            for (const event of chunk.done ? parser.end() : parser.push(chunk.value)) {
              const { item, last } = step(event);
              if (item !== undefined) yield item;
              if (last === true) return;
            }
            if (chunk.done) return;
          }
        } finally {
          await reader.cancel().catch(() => undefined);
        }
      } finally {
        request.dispose();
      }
    },
  };
}

/** Reads a log SSE stream as LogEvents; breaking out of the loop cancels the request. */
export function sseEvents(http: HttpClient, urlPath: string, options: CallOptions): AsyncIterable<LogEvent> {
  return sseStream(http, urlPath, options, (event) => ({ item: { type: event.event as LogEvent['type'], ...(JSON.parse(event.data) as Omit<LogEvent, 'type'>) } }));
}

