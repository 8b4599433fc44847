import { Executions, type ExecuteOptions, type RunOptions, type StreamOptions } from './executions.js';
import { Functions } from './functions.js';
import { type FetchFunction, HttpClient } from './http.js';
import { InteractiveExecution, type InteractiveOptions } from './interactive.js';
import { Images } from './images.js';
import { Invocations } from './invocations.js';
import { Keys, Tenants } from './tenants.js';
import { Sandboxes } from './sandboxes.js';
import { checkMs, type RequestOptions } from './resource.js';
import type { ExecutionStream } from './stream.js';
import type { ExecuteSpec, ExecutionResult, ClusterStatus, HealthStatus, ReadyStatus, Runtime } from './types.js';

/** Where a client talks to when no `url` is given. */
export const DEFAULT_URL = 'http://127.0.0.1:8080';
/** Default request timeout in milliseconds. */
export const DEFAULT_TIMEOUT_MS = 120_000;

export interface KindlingOptions {
  /**
   * Base URL of the Kindling server, `http:` or `https:`; a path prefix (behind a reverse proxy) is kept.
   * Default: `http://127.0.0.1:8080`.
   */
  url?: string;
  /** API key, sent as `Authorization: Bearer KEY` on every request. Default: none (no header is sent). */
  apiKey?: string;
  /** With the admin key: act as this tenant (sent as `x-kindling-tenant`). Default: none (the key's own tenant). */
  tenant?: string;
  /**
   * Request timeout in milliseconds, for the whole request including reading the response (and the whole stream for
   * `stream()`). 0 disables it. For executions it is raised to the spec's `timeoutMs` + 30000 when that is longer, so
   * a long execution is not cut off by the client. Default: 120000 (the server's longest default timeout, 60 s for rust, plus its 30 s queue wait and a margin).
   */
  timeoutMs?: number;
  /** The `fetch` to use (for proxies, tests or instrumentation). Default: the global `fetch`. */
  fetch?: FetchFunction;
}

/** Environment read by `Kindling.fromEnv()`. */
export type KindlingEnv = Record<string, string | undefined>;

/**
 * Client of one Kindling server. Cheap to create; holds no connections of its own (the `fetch` implementation pools
 * them). Every method rejects with a `KindlingError` subclass on failure; a program's non-zero exit is a result.
 *
 * Resources grow as properties (`client.functions`, `client.invocations`); executions are exposed as methods on the
 * client because they are the common case.
 */
export class Kindling {
  /** The normalized base URL requests go to (no trailing slash). */
  readonly url: string;
  /** The default request timeout in milliseconds (0: none). */
  readonly timeoutMs: number;
  readonly #http: HttpClient;
  readonly #apiKey: string | undefined;
  readonly #executions: Executions;
  /** Deployed functions: `deploy`, `get`, `list`, `delete`, `invoke`. */
  readonly functions: Functions;
  /** Async invocations: `get`, `list`, `output`, `waitFor`, `logs`. */
  readonly invocations: Invocations;
  /** Tenants (admin key): `create`, `list`, `get`, `update`, `delete`; `me()` with any key. */
  readonly tenants: Tenants;
  /** Persistent sandboxes: `create` (a `Sandbox` handle: commands, files, pause, resume, kill), `connect`, `list`. */
  readonly sandboxes: Sandboxes;
  /** API keys of tenants (admin key): `create`, `list`, `revoke`. */
  readonly keys: Keys;
  /** Custom images (a built-in image plus Debian packages and files): `create`, `get`, `list`, `delete`. */
  readonly images: Images;

  constructor(options: KindlingOptions = {}) {
    this.url = normalizeUrl(options.url ?? DEFAULT_URL);
    checkMs('timeoutMs', options.timeoutMs);
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const fetchFn = options.fetch ?? globalFetch();
    this.#apiKey = options.apiKey === undefined || options.apiKey === '' ? undefined : options.apiKey;
    this.#http = new HttpClient({
      baseUrl: this.url,
      apiKey: options.apiKey === undefined || options.apiKey === '' ? undefined : options.apiKey,
      tenant: options.tenant === undefined || options.tenant === '' ? undefined : options.tenant,
      timeoutMs: this.timeoutMs,
      fetch: fetchFn,
    });
    this.#executions = new Executions(this.#http);
    this.functions = new Functions(this.#http);
    this.invocations = new Invocations(this.#http);
    this.tenants = new Tenants(this.#http);
    this.sandboxes = new Sandboxes(this.#http);
    this.sandboxes.socketAuth = { url: this.url, apiKey: this.#apiKey };
    this.keys = new Keys(this.#http);
    this.images = new Images(this.#http);
  }

  /**
   * A client configured from the environment: `KINDLING_URL` (default `http://127.0.0.1:8080`) and
   * `KINDLING_API_KEY` (default none). Empty variables count as unset; fields given in `options` win over the
   * environment. `env` defaults to `process.env` (an empty environment where there is no `process`).
   */
  static fromEnv(options: KindlingOptions = {}, env: KindlingEnv = processEnv()): Kindling {
    const fromEnv: KindlingOptions = {};
    if (env.KINDLING_URL) fromEnv.url = env.KINDLING_URL;
    if (env.KINDLING_API_KEY) fromEnv.apiKey = env.KINDLING_API_KEY;
    return new Kindling({ ...fromEnv, ...definedOnly(options) });
  }

  /** `GET /healthz`: resolves `{status: 'ok'}` once the server accepts work. */
  health(options: RequestOptions = {}): Promise<HealthStatus> {
    return this.#http.json<HealthStatus>({ method: 'GET', path: '/healthz', ...callOptions(options) });
  }

  /**
   * `GET /readyz`: the state of each executor. A not-ready server resolves with `status: 'not_ready'` (also when it
   * answers 503) rather than rejecting.
   */
  ready(options: RequestOptions = {}): Promise<ReadyStatus> {
    return this.#http.json<ReadyStatus>({
      method: 'GET',
      path: '/readyz',
      acceptStatuses: [503],
      acceptBody: (body) => typeof body === 'object' && body !== null && 'status' in body && 'executors' in body,
      ...callOptions(options),
    });
  }

  /**
   * `GET /v1/cluster` (admin key): `{mode: 'single'}` on a server on its own; in cluster mode this node's role, id and
   * NATS connection and the workers it sees (capacity, in flight, warm function versions, last heartbeat).
   */
  cluster(options: RequestOptions = {}): Promise<ClusterStatus> {
    return this.#http.json<ClusterStatus>({ method: 'GET', path: '/v1/cluster', ...callOptions(options) });
  }

  /**
   * `POST /v1/execute`: runs `spec` to completion and resolves with its result. A non-zero exit, a timeout
   * (`timedOut`) or an OOM kill (`oomKilled`) resolves normally. With `onStdout`/`onStderr` the request streams and
   * the callbacks see output as it is produced.
   */
  execute(spec: ExecuteSpec, options: ExecuteOptions = {}): Promise<ExecutionResult> {
    return this.#executions.execute(spec, options);
  }

  /**
   * `GET /v1/execute/ws`: an interactive execution. Send stdin with `write()` (await it for backpressure) and `end()`,
   * read output through `onStdout`/`onStderr` as it is produced; `result` resolves with the final result. `close()`
   * (or aborting `signal`) kills it. Uses the `ws` package in Node.
   */
  interactive(spec: ExecuteSpec, options: InteractiveOptions = {}): InteractiveExecution {
    return new InteractiveExecution(this.url, this.#apiKey, spec, options);
  }

  /** Runs source code: `run('python', 'print(1)')`. `options` takes the other spec fields and the call options. */
  run(runtime: Runtime, code: string, options: RunOptions = {}): Promise<ExecutionResult> {
    const { signal, requestTimeoutMs, onStdout, onStderr, ...rest } = options;
    return this.execute({ ...rest, runtime, code }, definedOnly({ signal, requestTimeoutMs, onStdout, onStderr }));
  }

  /** Runs a command in an image: `runCommand('kindling/base', ['sh', '-c', 'echo hi'])`. */
  runCommand(image: string, command: string[], options: RunOptions = {}): Promise<ExecutionResult> {
    const { signal, requestTimeoutMs, onStdout, onStderr, ...rest } = options;
    return this.execute({ ...rest, image, command }, definedOnly({ signal, requestTimeoutMs, onStdout, onStderr }));
  }

  /**
   * `POST /v1/execute` as server-sent events. Returns at once; iterate the stream for `{type, data}` output events
   * and await `stream.result` for the result. See `ExecutionStream`.
   */
  stream(spec: ExecuteSpec, options: StreamOptions = {}): ExecutionStream {
    return this.#executions.stream(spec, options);
  }
}

function callOptions(options: RequestOptions): { signal?: AbortSignal; timeoutMs?: number } {
  checkMs('requestTimeoutMs', options.requestTimeoutMs);
  return definedOnly({ signal: options.signal, timeoutMs: options.requestTimeoutMs });
}

function definedOnly<T extends object>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as T;
}

function normalizeUrl(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new TypeError(`Invalid Kindling url: ${JSON.stringify(raw)} (expected e.g. ${DEFAULT_URL})`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new TypeError(`Kindling url must be http: or https:, got ${url.protocol}`);
  }
  if (url.search !== '' || url.hash !== '' || url.username !== '' || url.password !== '') {
    throw new TypeError('Kindling url must not carry a query, a fragment or credentials (use apiKey)');
  }
  return url.origin + url.pathname.replace(/\/+$/, '');
}

function globalFetch(): FetchFunction {
  if (typeof globalThis.fetch !== 'function') {
    throw new TypeError('No global fetch in this environment: pass options.fetch (Node 20 or later has one)');
  }
  // Looked up per call (so instrumentation installed later applies) and called unbound-safe (browsers require it).
  return (input, init) => globalThis.fetch(input, init);
}

function processEnv(): KindlingEnv {
  const proc = (globalThis as { process?: { env?: KindlingEnv } }).process;
  return proc?.env ?? {};
}
