import { APIResource, type RequestOptions } from './resource.js';
import type { ExecutionResult, ExecutorName, Runtime } from './types.js';

/** A persistent sandbox as the server describes it (`GET /v1/sandboxes/ID`). */
export interface SandboxInfo {
  id: string;
  /** `running`, `paused` (frozen: no CPU) or `stopped` (deleted, max lifetime, died, server restart). */
  state: 'running' | 'paused' | 'stopped';
  executor: string;
  image: string;
  runtime: string | null;
  limits: { memoryMb: number; cpus: number; pids: number; diskMb: number };
  envNames: string[];
  workdir: string;
  idleTimeoutMs: number;
  maxLifetimeMs: number;
  metadata: Record<string, string>;
  createdAt: string;
  lastActiveAt: string;
  expiresAt: string;
  stoppedAt: string | null;
  stopReason: string | null;
  /** The kernel's accounting of the whole sandbox so far; null once stopped. */
  usage: { cpuMs: number | null; memoryPeakBytes: number | null } | null;
}

export interface CreateSandboxOptions extends RequestOptions {
  /** A runtime's image (`python`, `node`, `bash`, `rust`); or give `image`. Default: `bash` when neither is given. */
  runtime?: Runtime;
  image?: string;
  executor?: ExecutorName;
  /** memoryMb (default 256), cpus (default 1), pids (default 256), diskMb (each of /work and /tmp; default 256). */
  limits?: { memoryMb?: number; cpus?: number; pids?: number; diskMb?: number };
  env?: Record<string, string>;
  /** Milliseconds without a command or file operation before the sandbox is paused. Default 600000. */
  idleTimeoutMs?: number;
  /** Milliseconds after creation when the sandbox is stopped and removed. Default 3600000. */
  maxLifetimeMs?: number;
  metadata?: Record<string, string>;
}

export interface RunCommandOptions extends RequestOptions {
  /** Text fed to stdin; without it stdin is /dev/null. */
  stdin?: string;
  env?: Record<string, string>;
  /** Default /work. */
  workdir?: string;
  /** Wall-clock limit in milliseconds (default 60000): the command's process tree is killed, the sandbox lives on. */
  timeoutMs?: number;
  /** Bytes kept per output stream. Default 1048576. */
  outputBytes?: number;
  /** Default true: a paused sandbox is resumed first; false: `ConflictError` (SANDBOX_PAUSED). */
  autoResume?: boolean;
}

export interface SandboxFileEntry {
  name: string;
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  /** Permission bits, octal (e.g. "644"). */
  mode: string;
  modifiedAt: string;
}

const sandboxPath = (id: string): string => `/v1/sandboxes/${encodeURIComponent(id)}`;
const filesPath = (id: string, path: string, suffix = ''): string => `${sandboxPath(id)}/files${suffix}?path=${encodeURIComponent(path)}`;

function call(options: RequestOptions): { signal?: AbortSignal; timeoutMs?: number } {
  const out: { signal?: AbortSignal; timeoutMs?: number } = {};
  if (options.signal !== undefined) out.signal = options.signal;
  if (options.requestTimeoutMs !== undefined) out.timeoutMs = options.requestTimeoutMs;
  return out;
}

/**
 * `/v1/sandboxes`: persistent sandboxes. `create()` and `connect()` give a `Sandbox` handle (E2B's shape:
 * `sb.commands.run`, `sb.files.write/read/list/remove`, `sb.pause/resume/kill`); the methods here take an id.
 */
export class Sandboxes extends APIResource {
  /** `POST /v1/sandboxes`: resolves once the sandbox runs. */
  async create(options: CreateSandboxOptions = {}): Promise<Sandbox> {
    const { signal, requestTimeoutMs, ...spec } = options;
    if (spec.runtime === undefined && spec.image === undefined) spec.runtime = 'bash';
    const info = await this.http.json<SandboxInfo>({ method: 'POST', path: '/v1/sandboxes', body: spec, ...call({ ...(signal ? { signal } : {}), ...(requestTimeoutMs === undefined ? {} : { requestTimeoutMs }) }) });
    return new Sandbox(this, info);
  }

  /** A handle on an existing sandbox (`NotFoundError` when the caller's tenant has none of that id). */
  async connect(id: string, options: RequestOptions = {}): Promise<Sandbox> {
    return new Sandbox(this, await this.get(id, options));
  }

  /** `GET /v1/sandboxes`: the caller's tenant's sandboxes, optionally of one state. */
  async list(options: RequestOptions & { state?: SandboxInfo['state'] } = {}): Promise<SandboxInfo[]> {
    const query = options.state === undefined ? '' : `?state=${encodeURIComponent(options.state)}`;
    return (await this.http.json<{ sandboxes: SandboxInfo[] }>({ method: 'GET', path: `/v1/sandboxes${query}`, ...call(options) })).sandboxes;
  }

  /** `GET /v1/sandboxes/ID`. */
  get(id: string, options: RequestOptions = {}): Promise<SandboxInfo> {
    return this.http.json<SandboxInfo>({ method: 'GET', path: sandboxPath(id), ...call(options) });
  }

  /** `DELETE /v1/sandboxes/ID`: kills every process and removes the sandbox and its files. */
  delete(id: string, options: RequestOptions = {}): Promise<void> {
    return this.noContent('DELETE', sandboxPath(id), options);
  }

  /** `POST /v1/sandboxes/ID/pause`: freezes every process (no CPU used). */
  pause(id: string, options: RequestOptions = {}): Promise<SandboxInfo> {
    return this.http.json<SandboxInfo>({ method: 'POST', path: `${sandboxPath(id)}/pause`, body: {}, ...call(options) });
  }

  /** `POST /v1/sandboxes/ID/resume`. */
  resume(id: string, options: RequestOptions = {}): Promise<SandboxInfo> {
    return this.http.json<SandboxInfo>({ method: 'POST', path: `${sandboxPath(id)}/resume`, body: {}, ...call(options) });
  }

  /** `POST /v1/sandboxes/ID/commands`: a non-zero exit or a timeout is a result, not an error. */
  run(id: string, command: string[], options: RunCommandOptions = {}): Promise<ExecutionResult> {
    const { signal, requestTimeoutMs, ...body } = options;
    // The request outlives the command's own timeout by a little.
    const timeoutMs = requestTimeoutMs ?? (body.timeoutMs === undefined ? undefined : body.timeoutMs + 30_000);
    return this.http.json<ExecutionResult>({ method: 'POST', path: `${sandboxPath(id)}/commands`, body: { command, ...body }, ...call({ ...(signal ? { signal } : {}), ...(timeoutMs === undefined ? {} : { requestTimeoutMs: timeoutMs }) }) });
  }

  /** `PUT /v1/sandboxes/ID/files?path=`: writes the file (parents made). */
  writeFile(id: string, path: string, data: string | Uint8Array, options: RequestOptions = {}): Promise<{ path: string; size: number }> {
    return this.http.json<{ path: string; size: number }>({ method: 'PUT', path: filesPath(id, path), rawBody: data, ...call(options) });
  }

  /** `GET /v1/sandboxes/ID/files?path=`: the file's bytes. */
  async readFile(id: string, path: string, options: RequestOptions = {}): Promise<Uint8Array> {
    const request = this.http.open(filesPath(id, path), call(options));
    try {
      const response = await this.http.send(request, { method: 'GET', path: filesPath(id, path), accept: 'application/octet-stream' });
      try {
        return new Uint8Array(await response.arrayBuffer());
      } catch (err) {
        throw request.toError(err);
      }
    } finally {
      request.dispose();
    }
  }

  /** `GET /v1/sandboxes/ID/files/list?path=`: a directory's entries. */
  async listFiles(id: string, path: string, options: RequestOptions = {}): Promise<SandboxFileEntry[]> {
    return (await this.http.json<{ entries: SandboxFileEntry[] }>({ method: 'GET', path: filesPath(id, path, '/list'), ...call(options) })).entries;
  }

  /** `DELETE /v1/sandboxes/ID/files?path=`: removes a file or a directory (recursively). */
  removeFile(id: string, path: string, options: RequestOptions = {}): Promise<void> {
    return this.noContent('DELETE', filesPath(id, path), options);
  }

  /* --- ports ------------------------------------------------------------------------------------------------------ */

  /**
   * The URL of `port` inside the sandbox through the API (`/v1/sandboxes/ID/ports/PORT`): append the path; every
   * request to it needs the API key (`Authorization: Bearer KEY`), which the sandbox's server never sees.
   */
  portUrl(id: string, port: number, path = ''): string {
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new RangeError(`port must be a whole number from 1 to 65535, got ${port}`);
    return this.http.url(`${sandboxPath(id)}/ports/${port}${path === '' || path.startsWith('/') ? path : `/${path}`}`);
  }

  /**
   * Any HTTP request to a server listening on `port` inside the sandbox (`/v1/sandboxes/ID/ports/PORT/...`), streamed
   * both ways. Resolves with that server's answer, whatever its status; throws only for the platform's refusals
   * (`NotFoundError` for an unknown sandbox, `KindlingError` SANDBOX_PORT_UNREACHABLE when nothing listens there).
   * The response's body must be read or cancelled; `requestTimeoutMs` bounds the wait for the answer's headers.
   */
  async fetchPort(id: string, port: number, path = '/', init: RequestInit & RequestOptions = {}): Promise<Response> {
    const { signal, requestTimeoutMs, ...rest } = init;
    const url = this.portUrl(id, port, path);
    const request = this.http.open(url.slice(this.http.baseUrl.length), call({ ...(signal ? { signal } : {}), ...(requestTimeoutMs === undefined ? {} : { requestTimeoutMs }) }));
    try {
      return await this.http.proxied(request, rest);
    } finally {
      // The timeout covers the wait for the answer's headers; the body is the caller's to read or cancel.
      request.dispose();
    }
  }

  /* --- end of ports ----------------------------------------------------------------------------------------------- */

  private async noContent(method: 'DELETE', path: string, options: RequestOptions): Promise<void> {
    const request = this.http.open(path, call(options));
    try {
      const response = await this.http.send(request, { method, path });
      await response.arrayBuffer().catch(() => undefined);
    } finally {
      request.dispose();
    }
  }
}

/** A handle on one persistent sandbox. */
export class Sandbox {
  readonly id: string;
  /** What the server said last (create, connect, pause, resume, refresh). */
  info: SandboxInfo;
  readonly commands: { run: (command: string[], options?: RunCommandOptions) => Promise<ExecutionResult> };
  readonly files: {
    write: (path: string, data: string | Uint8Array, options?: RequestOptions) => Promise<{ path: string; size: number }>;
    /** The file as UTF-8 text. */
    read: (path: string, options?: RequestOptions) => Promise<string>;
    readBytes: (path: string, options?: RequestOptions) => Promise<Uint8Array>;
    list: (path?: string, options?: RequestOptions) => Promise<SandboxFileEntry[]>;
    remove: (path: string, options?: RequestOptions) => Promise<void>;
  };
  readonly #api: Sandboxes;

  constructor(api: Sandboxes, info: SandboxInfo) {
    this.#api = api;
    this.id = info.id;
    this.info = info;
    this.commands = { run: (command, options) => api.run(this.id, command, options) };
    this.files = {
      write: (path, data, options) => api.writeFile(this.id, path, data, options),
      read: async (path, options) => new TextDecoder().decode(await api.readFile(this.id, path, options)),
      readBytes: (path, options) => api.readFile(this.id, path, options),
      list: (path = '/work', options) => api.listFiles(this.id, path, options),
      remove: (path, options) => api.removeFile(this.id, path, options),
    };
  }

  get state(): SandboxInfo['state'] {
    return this.info.state;
  }

  async pause(options?: RequestOptions): Promise<void> {
    this.info = await this.#api.pause(this.id, options);
  }

  async resume(options?: RequestOptions): Promise<void> {
    this.info = await this.#api.resume(this.id, options);
  }

  async refresh(options?: RequestOptions): Promise<SandboxInfo> {
    this.info = await this.#api.get(this.id, options);
    return this.info;
  }

  /* --- ports ------------------------------------------------------------------------------------------------------ */

  /**
   * The URL of `port` inside this sandbox through the API; requests to it need the API key (Authorization: Bearer).
   * E.g. `${sb.getHost(8000)}/index.html`.
   */
  getHost(port: number): string {
    return this.#api.portUrl(this.id, port);
  }

  /** An HTTP request to the server listening on `port` in this sandbox: its answer, whatever the status. */
  fetch(port: number, path = '/', init: RequestInit & RequestOptions = {}): Promise<Response> {
    return this.#api.fetchPort(this.id, port, path, init);
  }

  /* --- end of ports ----------------------------------------------------------------------------------------------- */

  /** Deletes the sandbox (every process killed, its files gone). */
  kill(options?: RequestOptions): Promise<void> {
    return this.#api.delete(this.id, options);
  }
}
