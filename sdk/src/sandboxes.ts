import { ConnectionError, errorFromPayload, KindlingError } from './errors.js';
import { type Call, parseJson } from './http.js';
import { toBase64 } from './executions.js';
import { APIResource, call, type RequestOptions } from './resource.js';
import { readSse } from './sse.js';
import type { ExecutionResult, ExecutorName, Runtime } from './types.js';
import { PtyHandle, type PtyCreateOptions } from './pty.js';
import { uploadBody, type UploadData } from './upload.js';

/** A persistent sandbox as the server describes it (`GET /v1/sandboxes/ID`). */
export interface SandboxInfo {
  id: string;
  /**
   * `running`, `paused` (frozen: no CPU), `hibernated` (no RAM held; see `hibernation`) or `stopped` (max lifetime,
   * died, server restart).
   */
  state: 'running' | 'paused' | 'hibernated' | 'stopped';
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
  /** `persistent`: the files are on a disk of the sandbox's own, kept while it is stopped until it is deleted. */
  storage: { persistent: boolean; fromSnapshot: string | null };
  /**
   * While hibernated: `processesKept` true when the executor saved processes and memory (they come back on resume),
   * false when only the files were kept (a resume starts a new process tree).
   */
  hibernation: { processesKept: boolean; bytes: number | null; at: string } | null;
}

/** `GET /v1/sandboxes` filters. */
export interface ListSandboxesOptions extends RequestOptions {
  state?: SandboxInfo['state'];
  /** Only sandboxes whose metadata has every one of these pairs (exact values; at most 16 keys). */
  metadata?: Record<string, string>;
}

/** `PATCH /v1/sandboxes/ID`. */
export interface UpdateSandboxOptions extends RequestOptions {
  /** The sandbox stops this long from now (extends or shortens its lifetime; within the server's cap). */
  timeoutMs?: number;
  /** A new idle timeout (auto-pause after this long without activity). */
  idleTimeoutMs?: number;
}

/** A snapshot of a sandbox's files (`POST /v1/sandboxes/ID/snapshots`). Immutable; kept until deleted. */
export interface SnapshotInfo {
  id: string;
  sandboxId: string;
  executor: string;
  image: string;
  runtime: string | null;
  limits: { memoryMb: number; cpus: number; pids: number; diskMb: number };
  createdAt: string;
  bytes: number;
  /** Whether memory and processes are kept (true on gvisor; false on the sandbox, docker and microvm executors: files only). */
  memory: boolean;
  note: string;
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
  /** A snapshot id: /work starts as its files; runtime/image and limits default to the snapshot's. */
  fromSnapshot?: string;
}

export interface RunCommandOptions extends RequestOptions {
  /** Text or bytes fed to stdin; without it stdin is /dev/null. */
  stdin?: string | Uint8Array;
  env?: Record<string, string>;
  /** Default /work. */
  workdir?: string;
  /** Wall-clock limit in milliseconds (default 60000): the command's process tree is killed, the sandbox lives on. */
  timeoutMs?: number;
  /** Bytes kept per output stream. Default 1048576. */
  outputBytes?: number;
  /** Default true: a paused sandbox is resumed first; false: `ConflictError` (SANDBOX_PAUSED). */
  autoResume?: boolean;
  /**
   * Called with each stdout chunk as it is produced (chunks are not lines): the command's output streams (SSE). For a
   * background command: its output from the start (what the server kept), then live, until it exits.
   */
  onStdout?: (data: string) => void;
  onStderr?: (data: string) => void;
}

/** Options of a background command (`commands.run(cmd, {background: true})`, `sandboxes.start`). */
export interface BackgroundCommandOptions extends RunCommandOptions {
  background: true;
}

/** A background command as the server describes it (`GET /v1/sandboxes/ID/commands/CID`). */
export interface SandboxCommandInfo {
  id: string;
  command: string[];
  /** Its pid inside the sandbox. */
  pid: number | null;
  state: 'running' | 'exited';
  /** Null while running; 137 when killed or timed out. */
  exitCode: number | null;
  signal: string | null;
  killed: boolean;
  timedOut: boolean;
  startedAt: string;
  endedAt: string | null;
  /** The most output kept for its logs (stdout and stderr together, newest kept). */
  outputBytes: number;
  droppedBytes: number;
}

/** What `CommandHandle.wait()` resolves with: the final state and the output seen by the follower. */
export interface BackgroundCommandResult extends SandboxCommandInfo {
  stdout: string;
  stderr: string;
}

/** Options of following a background command's logs. */
export interface CommandLogsOptions extends RequestOptions {
  onStdout?: (data: string) => void;
  onStderr?: (data: string) => void;
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
const commandPath = (id: string, commandId: string): string => `${sandboxPath(id)}/commands/${encodeURIComponent(commandId)}`;

/** The wire body of a command: binary stdin becomes `stdinBase64`. */
function commandBody(command: string[], options: Omit<RunCommandOptions, 'signal' | 'requestTimeoutMs' | 'onStdout' | 'onStderr'>): Record<string, unknown> {
  const { stdin, ...rest } = options;
  if (stdin === undefined || typeof stdin === 'string') return { command, ...rest, ...(stdin === undefined ? {} : { stdin }) };
  return { command, ...rest, stdinBase64: toBase64(stdin) };
}

function parseLoose(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

const filesPath = (id: string, path: string, suffix = ''): string => `${sandboxPath(id)}/files${suffix}?path=${encodeURIComponent(path)}`;

/**
 * `/v1/sandboxes`: persistent sandboxes. `create()` and `connect()` give a `Sandbox` handle (E2B's shape:
 * `sb.commands.run`, `sb.files.write/read/list/remove`, `sb.pause/resume/kill`); the methods here take an id.
 */
export class Sandboxes extends APIResource {
  /** @internal The WebSocket endpoint and key (set by the client), for terminals. */
  socketAuth: { url: string; apiKey: string | undefined } = { url: '', apiKey: undefined };

  /** `GET /v1/sandboxes/ID/pty`: an interactive terminal in the sandbox (WebSocket; the `ws` package in Node). */
  pty(id: string, options: PtyCreateOptions): PtyHandle {
    return new PtyHandle(this.socketAuth.url || this.http.baseUrl, this.socketAuth.apiKey, id, options);
  }

  /** `POST /v1/sandboxes`: resolves once the sandbox runs. */
  async create(options: CreateSandboxOptions = {}): Promise<Sandbox> {
    const { signal, requestTimeoutMs, ...spec } = options;
    if (spec.runtime === undefined && spec.image === undefined && spec.fromSnapshot === undefined) spec.runtime = 'bash';
    const info = await this.http.json<SandboxInfo>({ method: 'POST', path: '/v1/sandboxes', body: spec, ...call({ ...(signal ? { signal } : {}), ...(requestTimeoutMs === undefined ? {} : { requestTimeoutMs }) }) });
    return new Sandbox(this, info);
  }

  /** A handle on an existing sandbox (`NotFoundError` when the caller's tenant has none of that id). */
  async connect(id: string, options: RequestOptions = {}): Promise<Sandbox> {
    return new Sandbox(this, await this.get(id, options));
  }

  /** `GET /v1/sandboxes`: the caller's tenant's sandboxes, optionally of one state and with given metadata. */
  async list(options: ListSandboxesOptions = {}): Promise<SandboxInfo[]> {
    const query = new URLSearchParams();
    if (options.state !== undefined) query.set('state', options.state);
    for (const [key, value] of Object.entries(options.metadata ?? {})) query.set(`metadata.${key}`, value);
    const text = query.toString();
    return (await this.http.json<{ sandboxes: SandboxInfo[] }>({ method: 'GET', path: `/v1/sandboxes${text === '' ? '' : `?${text}`}`, ...call(options) })).sandboxes;
  }

  /** `PATCH /v1/sandboxes/ID`: the time left to live (`timeoutMs` from now) and/or the idle timeout. */
  update(id: string, options: UpdateSandboxOptions): Promise<SandboxInfo> {
    const { signal, requestTimeoutMs, ...body } = options;
    return this.http.json<SandboxInfo>({ method: 'PATCH', path: sandboxPath(id), body, ...call({ ...(signal ? { signal } : {}), ...(requestTimeoutMs === undefined ? {} : { requestTimeoutMs }) }) });
  }

  /** E2B's `setTimeout`: the sandbox stops `timeoutMs` from now (`PATCH /v1/sandboxes/ID {timeoutMs}`). */
  setTimeout(id: string, timeoutMs: number, options: RequestOptions = {}): Promise<SandboxInfo> {
    return this.update(id, { ...options, timeoutMs });
  }

  /**
   * `POST /v1/sandboxes/ID/hibernate`: releases its RAM. Processes come back on resume where the executor can save
   * them (`info.hibernation.processesKept`); elsewhere the files are kept and the processes end.
   */
  hibernate(id: string, options: RequestOptions = {}): Promise<SandboxInfo> {
    return this.http.json<SandboxInfo>({ method: 'POST', path: `${sandboxPath(id)}/hibernate`, body: {}, ...call(options) });
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

  /* Commands ---------------------------------------------------------------------------------------------------- */

  /**
   * `POST /v1/sandboxes/ID/commands`: a non-zero exit or a timeout is a result, not an error. With `onStdout` or
   * `onStderr` the output streams as it is produced (SSE). With `background: true` see `start()`.
   */
  run(id: string, command: string[], options: BackgroundCommandOptions): Promise<CommandHandle>;
  run(id: string, command: string[], options?: RunCommandOptions & { background?: false }): Promise<ExecutionResult>;
  run(id: string, command: string[], options: RunCommandOptions & { background?: boolean } = {}): Promise<ExecutionResult | CommandHandle> {
    if (options.background === true) return this.start(id, command, options);
    const { signal, requestTimeoutMs, onStdout, onStderr, background: _background, ...rest } = options;
    const body = commandBody(command, rest);
    // The request outlives the command's own timeout by a little.
    const timeoutMs = requestTimeoutMs ?? (rest.timeoutMs === undefined ? undefined : rest.timeoutMs + 30_000);
    const calling = call({ ...(signal ? { signal } : {}), ...(timeoutMs === undefined ? {} : { requestTimeoutMs: timeoutMs }) });
    if (onStdout === undefined && onStderr === undefined) {
      return this.http.json<ExecutionResult>({ method: 'POST', path: `${sandboxPath(id)}/commands`, body, ...calling });
    }
    const request = this.http.open(`${sandboxPath(id)}/commands`, calling);
    return this.#events<ExecutionResult>(request, { method: 'POST', path: `${sandboxPath(id)}/commands`, body }, { onStdout, onStderr }, (result) => {
      // A server (or proxy) that ignored Accept answered the plain result: replay its output once.
      if (result.stdout) onStdout?.(result.stdout);
      if (result.stderr) onStderr?.(result.stderr);
    });
  }

  /** `POST /v1/sandboxes/ID/commands {background: true}`: starts the command; resolves once it runs, with its handle. */
  async start(id: string, command: string[], options: RunCommandOptions = {}): Promise<CommandHandle> {
    const { signal, requestTimeoutMs, onStdout, onStderr, ...rest } = options;
    const body = { ...commandBody(command, rest), background: true };
    const info = await this.http.json<SandboxCommandInfo>({ method: 'POST', path: `${sandboxPath(id)}/commands`, body, ...call({ ...(signal ? { signal } : {}), ...(requestTimeoutMs === undefined ? {} : { requestTimeoutMs }) }) });
    return new CommandHandle(this, id, info, onStdout === undefined && onStderr === undefined ? null : { ...(onStdout ? { onStdout } : {}), ...(onStderr ? { onStderr } : {}) });
  }

  /** `GET /v1/sandboxes/ID/commands`: running background commands, then the most recently finished ones. */
  async listCommands(id: string, options: RequestOptions = {}): Promise<SandboxCommandInfo[]> {
    return (await this.http.json<{ commands: SandboxCommandInfo[] }>({ method: 'GET', path: `${sandboxPath(id)}/commands`, ...call(options) })).commands;
  }

  /** `GET /v1/sandboxes/ID/commands/CID`. */
  getCommand(id: string, commandId: string, options: RequestOptions = {}): Promise<SandboxCommandInfo> {
    return this.http.json<SandboxCommandInfo>({ method: 'GET', path: commandPath(id, commandId), ...call(options) });
  }

  /** `DELETE /v1/sandboxes/ID/commands/CID`: kills its process tree; resolves with its final state. */
  killCommand(id: string, commandId: string, options: RequestOptions = {}): Promise<SandboxCommandInfo> {
    return this.http.json<SandboxCommandInfo>({ method: 'DELETE', path: commandPath(id, commandId), ...call(options) });
  }

  /**
   * `GET /v1/sandboxes/ID/commands/CID/logs`: the output kept so far, then live, through the callbacks; resolves
   * with the command's final state once it exited. No request timeout unless `requestTimeoutMs` is given.
   */
  commandLogs(id: string, commandId: string, options: CommandLogsOptions = {}): Promise<SandboxCommandInfo> {
    const request = this.http.open(`${commandPath(id, commandId)}/logs`, { ...(options.signal ? { signal: options.signal } : {}), timeoutMs: options.requestTimeoutMs ?? 0 });
    return this.#events<SandboxCommandInfo>(request, { method: 'GET', path: `${commandPath(id, commandId)}/logs` }, options, () => {});
  }

  /** Reads an SSE answer: `stdout`/`stderr` to the callbacks, the `exit` event's JSON is the result. */
  async #events<T>(request: Call, send: { method: 'GET' | 'POST'; path: string; body?: unknown }, callbacks: { onStdout?: ((data: string) => void) | undefined; onStderr?: ((data: string) => void) | undefined }, plain: (result: T) => void): Promise<T> {
    let callbackFailure: { error: unknown } | undefined;
    const deliver = (callback: ((data: string) => void) | undefined, data: string): void => {
      if (callback === undefined) return;
      try {
        callback(data);
      } catch (error) {
        callbackFailure = { error };
        throw error;
      }
    };
    try {
      const response = await this.http.send(request, { ...send, accept: 'text/event-stream' });
      if (!(response.headers.get('content-type') ?? '').toLowerCase().includes('text/event-stream')) {
        const result = parseJson<T>(await response.text(), response.status, request.url);
        plain(result);
        return result;
      }
      if (response.body === null) throw new KindlingError({ code: 'INVALID_RESPONSE', message: `Empty event stream from ${request.url}` });
      for await (const event of readSse(response.body)) {
        if (event.event === 'stdout') deliver(callbacks.onStdout, event.data);
        else if (event.event === 'stderr') deliver(callbacks.onStderr, event.data);
        else if (event.event === 'exit') return parseJson<T>(event.data, response.status, request.url);
        else if (event.event === 'error') throw errorFromPayload(parseLoose(event.data), { fallbackMessage: event.data });
      }
      throw new ConnectionError({ code: 'STREAM_INTERRUPTED', message: `The event stream from ${request.url} ended before the exit event`, retryable: true });
    } catch (err) {
      if (callbackFailure !== undefined) {
        request.cancel(callbackFailure.error);
        throw callbackFailure.error;
      }
      throw request.toError(err);
    } finally {
      request.dispose();
    }
  }

  /* ---------------------------------------------------------------------------------------------------------------- */

  /**
   * `PUT /v1/sandboxes/ID/files?path=`: writes the file (parents made). `data` may be a stream (a Node.js Readable,
   * a web ReadableStream, any async iterable): it is sent as it is read. A stream cannot be sent twice.
   */
  writeFile(id: string, path: string, data: UploadData, options: RequestOptions = {}): Promise<{ path: string; size: number }> {
    return this.http.json<{ path: string; size: number }>({ method: 'PUT', path: filesPath(id, path), rawBody: uploadBody(data), ...call(options) });
  }

  /** `POST /v1/sandboxes/ID/files/mkdir`: makes the directory (parents too unless `parents: false`); `created` false when it existed. */
  mkdir(id: string, path: string, options: RequestOptions & { parents?: boolean } = {}): Promise<{ path: string; created: boolean }> {
    const { parents, ...rest } = options;
    return this.http.json<{ path: string; created: boolean }>({ method: 'POST', path: `${sandboxPath(id)}/files/mkdir`, body: { path, ...(parents === undefined ? {} : { parents }) }, ...call(rest) });
  }

  /**
   * `PUT /v1/sandboxes/ID/files/tar?path=DIR`: extracts a tar archive (streamed) into the directory, made when
   * missing. Entries leaving it (absolute, "..", links out) or devices: `ValidationError` SANDBOX_TAR_INVALID, nothing changed.
   */
  writeTar(id: string, dir: string, tar: UploadData, options: RequestOptions = {}): Promise<{ path: string; entries: number; bytes: number }> {
    return this.http.json<{ path: string; entries: number; bytes: number }>({ method: 'PUT', path: filesPath(id, dir, '/tar'), rawBody: uploadBody(tar), contentType: 'application/x-tar', ...call(options) });
  }

  /**
   * `GET /v1/sandboxes/ID/files/tar?path=DIR`: the directory as a tar archive, streamed (names relative to it,
   * symlinks kept as links). Read or cancel the stream; `requestTimeoutMs` bounds the wait for its start.
   */
  async readTar(id: string, dir: string, options: RequestOptions = {}): Promise<ReadableStream<Uint8Array>> {
    const request = this.http.open(filesPath(id, dir, '/tar'), call(options));
    try {
      const response = await this.http.send(request, { method: 'GET', path: filesPath(id, dir, '/tar'), accept: 'application/x-tar' });
      if (response.body === null) throw new KindlingError({ code: 'INVALID_RESPONSE', message: `Empty tar stream from ${request.url}` });
      return response.body;
    } finally {
      request.dispose();
    }
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

  /* -- snapshots and forks ---------------------------------------------------------------------------------------- */

  /** `POST /v1/sandboxes/ID/snapshots`: an immutable copy of the sandbox's files. */
  snapshot(id: string, options: RequestOptions = {}): Promise<SnapshotInfo> {
    return this.http.json<SnapshotInfo>({ method: 'POST', path: `${sandboxPath(id)}/snapshots`, body: {}, ...call(options) });
  }

  /** `POST /v1/sandboxes/ID/fork`: a snapshot and `count` sandboxes made from it. */
  async fork(id: string, count: number, options: RequestOptions = {}): Promise<{ snapshot: SnapshotInfo; sandboxes: Sandbox[] }> {
    const made = await this.http.json<{ snapshot: SnapshotInfo; sandboxes: SandboxInfo[] }>({ method: 'POST', path: `${sandboxPath(id)}/fork`, body: { count }, ...call(options) });
    return { snapshot: made.snapshot, sandboxes: made.sandboxes.map((info) => new Sandbox(this, info)) };
  }

  /** `GET /v1/snapshots`: the tenant's snapshots (of one sandbox with `sandboxId`). */
  async listSnapshots(options: RequestOptions & { sandboxId?: string } = {}): Promise<SnapshotInfo[]> {
    const query = options.sandboxId === undefined ? '' : `?sandboxId=${encodeURIComponent(options.sandboxId)}`;
    return (await this.http.json<{ snapshots: SnapshotInfo[] }>({ method: 'GET', path: `/v1/snapshots${query}`, ...call(options) })).snapshots;
  }

  /** `GET /v1/snapshots/ID`. */
  getSnapshot(id: string, options: RequestOptions = {}): Promise<SnapshotInfo> {
    return this.http.json<SnapshotInfo>({ method: 'GET', path: `/v1/snapshots/${encodeURIComponent(id)}`, ...call(options) });
  }

  /** `DELETE /v1/snapshots/ID` (`ConflictError` SNAPSHOT_IN_USE while sandboxes are made from it). */
  deleteSnapshot(id: string, options: RequestOptions = {}): Promise<void> {
    return this.noContent('DELETE', `/v1/snapshots/${encodeURIComponent(id)}`, options);
  }

  /* ---------------------------------------------------------------------------------------------------------------- */
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
  readonly commands: SandboxCommands;
  readonly files: {
    /** Text, bytes or a stream (Node.js Readable, web ReadableStream, async iterable), sent as it is read. */
    write: (path: string, data: UploadData, options?: RequestOptions) => Promise<{ path: string; size: number }>;
    /** Makes a directory (and its parents); false when it existed already (E2B's `makeDir`). */
    makeDir: (path: string, options?: RequestOptions) => Promise<boolean>;
    /** Extracts a tar archive (bytes or a stream) into `dir`. */
    uploadDir: (dir: string, tar: UploadData, options?: RequestOptions) => Promise<{ path: string; entries: number; bytes: number }>;
    /** `dir` as a tar archive stream. */
    downloadDir: (dir: string, options?: RequestOptions) => Promise<ReadableStream<Uint8Array>>;
    /** The file as UTF-8 text. */
    read: (path: string, options?: RequestOptions) => Promise<string>;
    readBytes: (path: string, options?: RequestOptions) => Promise<Uint8Array>;
    list: (path?: string, options?: RequestOptions) => Promise<SandboxFileEntry[]>;
    remove: (path: string, options?: RequestOptions) => Promise<void>;
  };
  /** Interactive terminals (`GET /v1/sandboxes/ID/pty`): `create({cols, rows, onData})`. */
  readonly pty: { create: (options: PtyCreateOptions) => PtyHandle };
  readonly #api: Sandboxes;

  constructor(api: Sandboxes, info: SandboxInfo) {
    this.#api = api;
    this.id = info.id;
    this.info = info;
    this.pty = { create: (options) => api.pty(this.id, options) };
    this.commands = new SandboxCommands(api, this.id);
    this.files = {
      write: (path, data, options) => api.writeFile(this.id, path, data, options),
      makeDir: async (path, options) => (await api.mkdir(this.id, path, options)).created,
      uploadDir: (dir, tar, options) => api.writeTar(this.id, dir, tar, options),
      downloadDir: (dir, options) => api.readTar(this.id, dir, options),
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

  /** Releases the sandbox's RAM; `info.hibernation.processesKept` says whether its processes come back on resume. */
  async hibernate(options?: RequestOptions): Promise<SandboxInfo> {
    this.info = await this.#api.hibernate(this.id, options);
    return this.info;
  }

  /** E2B's `setTimeout`: the sandbox stops `timeoutMs` from now. */
  async setTimeout(timeoutMs: number, options?: RequestOptions): Promise<void> {
    this.info = await this.#api.setTimeout(this.id, timeoutMs, options);
  }

  /** An immutable snapshot of the sandbox's files (and of its processes on gvisor: `memory: true`). */
  snapshot(options?: RequestOptions): Promise<SnapshotInfo> {
    return this.#api.snapshot(this.id, options);
  }

  /** `count` new sandboxes from one snapshot of this one; none sees the others' later writes. */
  async fork(count: number, options?: RequestOptions): Promise<Sandbox[]> {
    return (await this.#api.fork(this.id, count, options)).sandboxes;
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

/* Commands of one sandbox (E2B's shape) ------------------------------------------------------------------------------ */

/** `sb.commands`: `run` (foreground, streamed with callbacks, or `background: true` for a handle), `list`, `connect`, `kill`. */
export class SandboxCommands {
  readonly #api: Sandboxes;
  readonly #id: string;

  constructor(api: Sandboxes, id: string) {
    this.#api = api;
    this.#id = id;
  }

  run(command: string[], options: BackgroundCommandOptions): Promise<CommandHandle>;
  run(command: string[], options?: RunCommandOptions & { background?: false }): Promise<ExecutionResult>;
  run(command: string[], options: RunCommandOptions & { background?: boolean } = {}): Promise<ExecutionResult | CommandHandle> {
    return options.background === true ? this.#api.start(this.#id, command, options) : this.#api.run(this.#id, command, { ...options, background: false });
  }

  /** Running background commands, then the most recently finished ones. */
  list(options?: RequestOptions): Promise<SandboxCommandInfo[]> {
    return this.#api.listCommands(this.#id, options);
  }

  /** A handle on a background command by id (to wait for it, follow its output or kill it). */
  async connect(commandId: string, options: CommandLogsOptions = {}): Promise<CommandHandle> {
    const { onStdout, onStderr, ...rest } = options;
    const info = await this.#api.getCommand(this.#id, commandId, rest);
    return new CommandHandle(this.#api, this.#id, info, onStdout === undefined && onStderr === undefined ? null : { ...(onStdout ? { onStdout } : {}), ...(onStderr ? { onStderr } : {}) });
  }

  /** Kills a background command's process tree. */
  kill(commandId: string, options?: RequestOptions): Promise<SandboxCommandInfo> {
    return this.#api.killCommand(this.#id, commandId, options);
  }
}

/**
 * A background command. Given callbacks, it follows the command's output at once (from the start, as kept by the
 * server); `wait()` follows it (if not already) until it exits and resolves with its final state and output.
 */
export class CommandHandle {
  readonly id: string;
  readonly pid: number | null;
  readonly sandboxId: string;
  /** What the server said last. */
  info: SandboxCommandInfo;
  readonly #api: Sandboxes;
  #following: Promise<BackgroundCommandResult> | null = null;
  readonly #callbacks: CommandLogsOptions;

  constructor(api: Sandboxes, sandboxId: string, info: SandboxCommandInfo, callbacks: CommandLogsOptions | null) {
    this.#api = api;
    this.sandboxId = sandboxId;
    this.id = info.id;
    this.pid = info.pid;
    this.info = info;
    this.#callbacks = callbacks ?? {};
    // Followed at once: the callbacks get the output as it comes. A failure surfaces in wait().
    if (callbacks !== null) void this.#follow().catch(() => {});
  }

  /** Resolves once the command exited: its final state, and its output as kept by the server (bounded). */
  wait(options: RequestOptions = {}): Promise<BackgroundCommandResult> {
    return this.#follow(options);
  }

  /** Kills its process tree. */
  async kill(options?: RequestOptions): Promise<SandboxCommandInfo> {
    this.info = await this.#api.killCommand(this.sandboxId, this.id, options);
    return this.info;
  }

  async refresh(options?: RequestOptions): Promise<SandboxCommandInfo> {
    this.info = await this.#api.getCommand(this.sandboxId, this.id, options);
    return this.info;
  }

  #follow(options: RequestOptions = {}): Promise<BackgroundCommandResult> {
    this.#following ??= (async () => {
      let stdout = '';
      let stderr = '';
      const { onStdout, onStderr } = this.#callbacks;
      const info = await this.#api.commandLogs(this.sandboxId, this.id, {
        ...options,
        onStdout: (data) => {
          // Kept as bounded as on the server: the newest outputBytes characters.
          stdout = (stdout + data).slice(-Math.max(this.info.outputBytes, 1));
          onStdout?.(data);
        },
        onStderr: (data) => {
          stderr = (stderr + data).slice(-Math.max(this.info.outputBytes, 1));
          onStderr?.(data);
        },
      });
      this.info = info;
      return { ...info, stdout, stderr };
    })();
    const following = this.#following;
    // A failed follow may be retried by the next wait().
    following.catch(() => {
      if (this.#following === following) this.#following = null;
    });
    return following;
  }
}
