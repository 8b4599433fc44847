import { ConnectionError, errorFromPayload, KindlingError } from './errors.js';
import { type Call, parseJson } from './http.js';
import { APIResource, checkMs, type RequestOptions } from './resource.js';
import { readSse } from './sse.js';
import { ExecutionStream } from './stream.js';
import type { ExecuteSpec, ExecutionResult, OutputEvent } from './types.js';

/**
 * Extra time, in milliseconds, the request timeout allows beyond a spec's `timeoutMs` (queueing, sandbox start,
 * collecting output), so the client does not give up on an execution the server is still allowed to run.
 */
export const EXECUTION_GRACE_MS = 30_000;

/** Options of `execute()` and `stream()`. */
export interface ExecuteOptions extends RequestOptions {
  /**
   * Called with each stdout chunk as it is produced (chunks are not lines). Giving it (or `onStderr`) makes
   * `execute()` stream under the hood. If it throws, the execution is aborted and the call rejects with that error.
   */
  onStdout?: (data: string) => void;
  /** Like `onStdout`, for stderr. */
  onStderr?: (data: string) => void;
}

/** Options of `stream()`. */
export type StreamOptions = ExecuteOptions;

/** Options of `run()` and `runCommand()`: the spec's other fields plus the call options. */
export type RunOptions = Omit<ExecuteSpec, 'runtime' | 'code' | 'image' | 'command'> & ExecuteOptions;

/** `POST /v1/execute`, plain and streaming. */
export class Executions extends APIResource {
  async execute(spec: ExecuteSpec, options: ExecuteOptions = {}): Promise<ExecutionResult> {
    if (options.onStdout !== undefined || options.onStderr !== undefined) return this.stream(spec, options).result;
    const body = toWire(spec);
    return this.http.json<ExecutionResult>({
      method: 'POST',
      path: '/v1/execute',
      body,
      signal: options.signal,
      timeoutMs: this.#timeoutFor(spec, options),
    });
  }

  stream(spec: ExecuteSpec, options: StreamOptions = {}): ExecutionStream {
    const body = toWire(spec);
    const call = this.http.open('/v1/execute', { signal: options.signal, timeoutMs: this.#timeoutFor(spec, options) });
    return new ExecutionStream(
      (emit) => this.#pump(call, body, options, emit),
      (reason) => call.cancel(reason),
    );
  }

  #timeoutFor(spec: ExecuteSpec, options: RequestOptions): number {
    checkMs('requestTimeoutMs', options.requestTimeoutMs);
    if (options.requestTimeoutMs !== undefined) return options.requestTimeoutMs;
    const base = this.http.timeoutMs;
    if (base === 0) return 0;
    const limit = spec.timeoutMs;
    if (typeof limit === 'number' && Number.isFinite(limit) && limit > 0) {
      return Math.max(base, limit + EXECUTION_GRACE_MS);
    }
    return base;
  }

  async #pump(
    call: Call,
    body: WireSpec,
    options: StreamOptions,
    emit: (event: OutputEvent) => void,
  ): Promise<ExecutionResult> {
    let callbackFailure: { error: unknown } | undefined;
    const deliver = (event: OutputEvent): void => {
      const callback = event.type === 'stdout' ? options.onStdout : options.onStderr;
      if (callback !== undefined) {
        try {
          callback(event.data);
        } catch (error) {
          callbackFailure = { error };
          throw error;
        }
      }
      emit(event);
    };

    try {
      const response = await this.http.send(call, {
        method: 'POST',
        path: '/v1/execute',
        body,
        accept: 'text/event-stream',
      });
      const contentType = response.headers.get('content-type') ?? '';
      if (!contentType.toLowerCase().includes('text/event-stream')) {
        // A server (or proxy) that ignores Accept answers with the plain result: replay its output once.
        const result = parseJson<ExecutionResult>(await response.text(), response.status, call.url);
        if (result.stdout) deliver({ type: 'stdout', data: result.stdout });
        if (result.stderr) deliver({ type: 'stderr', data: result.stderr });
        return result;
      }
      if (response.body === null) {
        throw new KindlingError({ code: 'INVALID_RESPONSE', message: `Empty event stream from ${call.url}` });
      }
      for await (const event of readSse(response.body)) {
        switch (event.event) {
          case 'stdout':
          case 'stderr':
            deliver({ type: event.event, data: event.data });
            break;
          case 'exit':
            return parseJson<ExecutionResult>(event.data, response.status, call.url);
          case 'error':
            throw errorFromPayload(parseLoose(event.data), { fallbackMessage: event.data });
          default:
            break; // unknown events are for newer clients
        }
      }
      throw new ConnectionError({
        code: 'STREAM_INTERRUPTED',
        message: `The event stream from ${call.url} ended before the exit event`,
        retryable: true,
      });
    } catch (err) {
      if (callbackFailure !== undefined) {
        call.cancel(callbackFailure.error);
        throw callbackFailure.error;
      }
      throw call.toError(err);
    } finally {
      call.dispose();
    }
  }
}

/** The JSON body sent for a spec: binary stdin becomes `stdinBase64`. */
export type WireSpec = Omit<ExecuteSpec, 'stdin'> & { stdin?: string };

export function toWire(spec: ExecuteSpec): WireSpec {
  if (typeof spec !== 'object' || spec === null) throw new TypeError('The execution spec must be an object');
  const { stdin, ...rest } = spec;
  if (stdin === undefined || typeof stdin === 'string') return spec as WireSpec;
  if (!(stdin instanceof Uint8Array)) throw new TypeError('stdin must be a string or a Uint8Array');
  if (rest.stdinBase64 !== undefined) throw new TypeError('Give at most one of stdin and stdinBase64');
  return { ...rest, stdinBase64: toBase64(stdin) };
}

export function toBase64(bytes: Uint8Array): string {
  let binary = '';
  const chunk = 0x8000;
  for (let i = 0; i < bytes.length; i += chunk) {
    binary += String.fromCharCode(...bytes.subarray(i, i + chunk));
  }
  return btoa(binary);
}

function parseLoose(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
