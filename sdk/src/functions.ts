import { KindlingError } from './errors.js';
import { APIResource, call, type RequestOptions } from './resource.js';
import { sseEvents, sseStream } from './invocations.js';
import type { BuildLogEvent, DeployAccepted, FunctionBuildInfo, FunctionInfo, FunctionSpec, FunctionVersionInfo, InvocationResult, LogEvent } from './types.js';

const path = (name: string): string => `/v1/functions/${encodeURIComponent(name)}`;

/** Options of `functions.invoke()`. */
export interface InvokeOptions extends RequestOptions {
  /** Content-Type of the body. Default: `application/octet-stream`. */
  contentType?: string;
}

/** Options of `functions.invokeAsync()`. */
export interface InvokeAsyncOptions extends InvokeOptions {
  /** Sent as `Idempotency-Key`: the same key for the same function returns the first invocation, never runs twice. */
  idempotencyKey?: string;
  /** Sent as `x-kindling-callback`: the server POSTs the result there (only to destinations its operator allowed). */
  callbackUrl?: string;
}

/** Options of `functions.logs()`. */
export interface LogsOptions extends RequestOptions {
  /** Keep the stream open and yield every invocation's output live. Default false. */
  follow?: boolean;
  /** How many recent finished invocations to replay first. Server default: 10. */
  tail?: number;
}

/** Options of `functions.deployBundle()`. */
export interface DeployBundleOptions extends RequestOptions {
  /**
   * false: when the bundle needs a dependency build, resolve with `DeployAccepted` (202, the build id, status
   * `building`) as soon as the build started instead of when it ended (sent as `Prefer: respond-async`). A bundle
   * without dependencies is stored at once either way and resolves with the function. Default true.
   */
  wait?: boolean;
}

/** `/v1/functions`: deploy, inspect, delete and invoke deployed functions. */
export class Functions extends APIResource {
  /**
   * `PUT /v1/functions/NAME`: deploys a new version; resolves with the function (its `version` is the new one). A
   * deploy that builds (go and rust code is compiled; `apt` packages get an image made once per package set) waits
   * for its build, or with `wait: false` resolves with `DeployAccepted` once the build started.
   */
  deploy(name: string, spec: FunctionSpec, options: DeployBundleOptions & { wait: false }): Promise<FunctionInfo | DeployAccepted>;
  deploy(name: string, spec: FunctionSpec, options?: DeployBundleOptions & { wait?: true }): Promise<FunctionInfo>;
  deploy(name: string, spec: FunctionSpec, options: DeployBundleOptions = {}): Promise<FunctionInfo | DeployAccepted> {
    const { wait, ...rest } = options;
    return this.http.json<FunctionInfo | DeployAccepted>({ method: 'PUT', path: path(name), body: spec, ...(wait === false ? { headers: { prefer: 'respond-async' } } : {}), ...call(rest) });
  }

  /**
   * `PUT /v1/functions/NAME` with a bundle: `tar` is a tar archive of the function's directory (bytes, a Blob or a
   * stream), `spec` goes in the Kindling-Function-Spec header. A handler is named `FILE:FUNCTION` (`handler.py:main`,
   * `src/index.js:handler`); a command runs in the bundle's directory (/work, read-only). Resolves with the function;
   * its `bundle.sha256` is the archive's content hash. An unsafe entry rejects with a 400 `BUNDLE_INVALID` naming it.
   */
  deployBundle(name: string, spec: Omit<FunctionSpec, 'code'>, tar: Uint8Array | Blob | ReadableStream<Uint8Array>, options: DeployBundleOptions & { wait: false }): Promise<FunctionInfo | DeployAccepted>;
  deployBundle(name: string, spec: Omit<FunctionSpec, 'code'>, tar: Uint8Array | Blob | ReadableStream<Uint8Array>, options?: DeployBundleOptions & { wait?: true }): Promise<FunctionInfo>;
  async deployBundle(name: string, spec: Omit<FunctionSpec, 'code'>, tar: Uint8Array | Blob | ReadableStream<Uint8Array>, options: DeployBundleOptions = {}): Promise<FunctionInfo | DeployAccepted> {
    const { wait, ...rest } = options;
    const request = this.http.open(path(name), call(rest));
    try {
      const response = await this.http.send(request, {
        method: 'PUT',
        path: path(name),
        rawBody: tar,
        contentType: 'application/x-tar',
        headers: { 'kindling-function-spec': JSON.stringify(spec), ...(wait === false ? { prefer: 'respond-async' } : {}) },
      });
      try {
        return (await response.json()) as FunctionInfo | DeployAccepted;
      } catch (err) {
        throw request.toError(err);
      }
    } finally {
      request.dispose();
    }
  }

  /** `GET /v1/functions/NAME/builds/ID`: one build's record (status, error, and the version a ready build stored). */
  build(name: string, id: string, options: RequestOptions = {}): Promise<FunctionBuildInfo> {
    return this.http.json<FunctionBuildInfo>({ method: 'GET', path: `${path(name)}/builds/${encodeURIComponent(id)}`, ...call(options) });
  }

  /**
   * `GET /v1/functions/NAME/builds/ID/logs?follow=true`: a build's log as it is written (first what it wrote so far),
   * ending with `{ type: 'end', build }` once the build ended (at once for a build that already ended). Breaking out of
   * the loop cancels the request. No request timeout unless `requestTimeoutMs` is given (a build may take minutes).
   */
  followBuildLog(name: string, id: string, options: RequestOptions = {}): AsyncIterable<BuildLogEvent> {
    const target = `${path(name)}/builds/${encodeURIComponent(id)}/logs?follow=true`;
    return sseStream<BuildLogEvent>(this.http, target, { ...call(options), timeoutMs: options.requestTimeoutMs ?? 0 }, (event) => {
      const data = JSON.parse(event.data) as Record<string, unknown>;
      if (event.event === 'log') return { item: { type: 'log', text: String(data.text ?? '') } };
      if (event.event === 'skipped') return { item: { type: 'skipped', bytes: Number(data.bytes ?? 0) } };
      if (event.event === 'end') return { item: { type: 'end', build: data as unknown as FunctionBuildInfo }, last: true };
      return {};
    });
  }

  /** `GET /v1/functions/NAME`; rejects with `NotFoundError` when there is none. */
  get(name: string, options: RequestOptions = {}): Promise<FunctionInfo> {
    return this.http.json<FunctionInfo>({ method: 'GET', path: path(name), ...call(options) });
  }

  /** `GET /v1/functions`. */
  /**
   * `GET /v1/functions/NAME/versions`: the versions the server keeps of the function (the newest few, see the server's
   * --function-versions-kept, plus any a queued invocation still needs), oldest first; `latest` marks the one that runs.
   */
  async versions(name: string, options: RequestOptions = {}): Promise<FunctionVersionInfo[]> {
    const answer = await this.http.json<{ versions: FunctionVersionInfo[] }>({ method: 'GET', path: `${path(name)}/versions`, ...call(options) });
    return answer.versions;
  }

  /**
   * `GET /v1/functions/NAME/builds`: the dependency builds of the function's deploys (npm ci, pip install), newest
   * first, with their status and error; a first deploy's build shows here before the function exists.
   */
  async builds(name: string, options: RequestOptions = {}): Promise<FunctionBuildInfo[]> {
    const answer = await this.http.json<{ builds: FunctionBuildInfo[] }>({ method: 'GET', path: `${path(name)}/builds`, ...call(options) });
    return answer.builds;
  }

  /**
   * `GET /v1/functions/NAME/builds/ID/logs`: a build's log (npm's or pip's output): what it wrote so far while it runs,
   * its last 64 KiB once it ended. The id is in `BUILD_FAILED`'s `details.buildId`, `layer.buildId` and `lastBuild.id`.
   * Rejects with `NotFoundError` (`BUILD_NOT_FOUND`) for an id the function does not have.
   */
  async buildLogs(name: string, id: string, options: RequestOptions = {}): Promise<{ status: FunctionBuildInfo['status']; log: string }> {
    const target = `${path(name)}/builds/${encodeURIComponent(id)}/logs`;
    const request = this.http.open(target, call(options));
    try {
      const response = await this.http.send(request, { method: 'GET', path: target });
      try {
        return { status: (response.headers.get('x-kindling-build-status') ?? 'ready') as FunctionBuildInfo['status'], log: await response.text() };
      } catch (err) {
        throw request.toError(err);
      }
    } finally {
      request.dispose();
    }
  }

  async list(options: RequestOptions = {}): Promise<FunctionInfo[]> {
    const answer = await this.http.json<{ functions: FunctionInfo[] }>({ method: 'GET', path: '/v1/functions', ...call(options) });
    return answer.functions;
  }

  /** `DELETE /v1/functions/NAME`: removes every version and its warm sandboxes. */
  async delete(name: string, options: RequestOptions = {}): Promise<void> {
    const request = this.http.open(path(name), call(options));
    try {
      const response = await this.http.send(request, { method: 'DELETE', path: path(name) });
      await response.arrayBuffer().catch(() => undefined);
    } finally {
      request.dispose();
    }
  }

  /**
   * `POST /v1/functions/NAME/invoke`: sends `body` as raw bytes (a string as UTF-8) and resolves with the raw
   * response. A non-zero exit (or a handler that threw) resolves normally with `exitCode` set.
   */
  async invoke(name: string, body: Uint8Array | string = new Uint8Array(0), options: InvokeOptions = {}): Promise<InvocationResult> {
    const request = this.http.open(`${path(name)}/invoke`, call(options));
    try {
      const response = await this.http.send(request, {
        method: 'POST',
        path: `${path(name)}/invoke`,
        rawBody: body,
        contentType: options.contentType ?? 'application/octet-stream',
        accept: '*/*',
      });
      let bytes: Uint8Array;
      try {
        bytes = new Uint8Array(await response.arrayBuffer());
      } catch (err) {
        throw request.toError(err);
      }
      const streamed = response.headers.get('x-kindling-output') === 'streamed';
      const header = (name: string): string => {
        if (streamed && (name === 'x-kindling-exit-code' || name === 'x-kindling-duration-ms')) return response.headers.get(name) ?? 'NaN';
        const value = response.headers.get(name);
        if (value === null) {
          throw new KindlingError({ code: 'INVALID_RESPONSE', message: `The invoke response from ${request.url} has no ${name} header`, status: response.status });
        }
        return value;
      };
      const invocationId = header('x-kindling-invocation-id');
      let exitCode = Number(header('x-kindling-exit-code'));
      let durationMs = Number(header('x-kindling-duration-ms'));
      if (streamed) {
        // fetch cannot read HTTP trailers: the server records every invocation, so the facts come from its record.
        const recorded = await this.#recorded(invocationId, options);
        if (recorded !== null) {
          exitCode = recorded.exitCode ?? Number.NaN;
          durationMs = recorded.durationMs ?? Number.NaN;
        }
      }
      return {
        body: bytes,
        text: () => new TextDecoder().decode(bytes),
        invocationId,
        version: Number(header('x-kindling-function-version')),
        exitCode,
        durationMs,
        coldStart: header('x-kindling-cold-start') === 'true',
        streamed,
        ...(response.headers.get('x-kindling-node') === null ? {} : { node: response.headers.get('x-kindling-node')! }),
      };
    } finally {
      request.dispose();
    }
  }

  /** The stored record of a finished invocation; null from a server that does not record synchronous invocations. */
  async #recorded(id: string, options: InvokeOptions): Promise<{ exitCode: number | null; durationMs: number | null } | null> {
    try {
      return await this.http.json<{ exitCode: number | null; durationMs: number | null }>({ method: 'GET', path: `/v1/invocations/${encodeURIComponent(id)}`, ...call(options) });
    } catch (err) {
      if (err instanceof KindlingError && err.status === 404) return null;
      throw err;
    }
  }

  /**
   * `POST /v1/functions/NAME/invoke` with `x-kindling-async: true`: resolves with the invocation id once the server
   * committed the invocation (202). `created` is false when `idempotencyKey` returned an earlier invocation.
   * Follow it with `client.invocations.waitFor(id)`.
   */
  async invokeAsync(name: string, body: Uint8Array | string = new Uint8Array(0), options: InvokeAsyncOptions = {}): Promise<{ invocationId: string; created: boolean }> {
    const headers: Record<string, string> = { 'x-kindling-async': 'true' };
    if (options.idempotencyKey !== undefined) headers['idempotency-key'] = options.idempotencyKey;
    if (options.callbackUrl !== undefined) headers['x-kindling-callback'] = options.callbackUrl;
    const request = this.http.open(`${path(name)}/invoke`, call(options));
    try {
      const response = await this.http.send(request, { method: 'POST', path: `${path(name)}/invoke`, rawBody: body, contentType: options.contentType ?? 'application/octet-stream', headers });
      let answer: { invocationId: string; created: boolean };
      try {
        answer = (await response.json()) as { invocationId: string; created: boolean };
      } catch (err) {
        throw request.toError(err);
      }
      return { invocationId: answer.invocationId, created: answer.created };
    } finally {
      request.dispose();
    }
  }

  /**
   * `GET /v1/functions/NAME/logs` as an async iterator of log events: the last `tail` finished invocations, then with
   * `follow` every invocation live until the loop breaks or `signal` aborts.
   */
  logs(name: string, options: LogsOptions = {}): AsyncIterable<LogEvent> {
    const query = new URLSearchParams();
    if (options.follow) query.set('follow', 'true');
    if (options.tail !== undefined) query.set('tail', String(options.tail));
    const suffix = query.size > 0 ? `?${query.toString()}` : '';
    // A followed stream has no natural end: no request timeout unless one is asked for.
    const timeout = options.requestTimeoutMs ?? (options.follow ? 0 : undefined);
    return sseEvents(this.http, `${path(name)}/logs${suffix}`, { ...call(options), ...(timeout === undefined ? {} : { timeoutMs: timeout }) });
  }
}

