/**
 * Persistent sandboxes: a resource a tenant creates, runs many commands in, reads and writes files of, pauses,
 * resumes and deletes. The executor makes and runs the sandbox (`Executor.createPersistentSandbox`); this service owns
 * the lifecycle around it: records (in the store), tenant isolation and caps, idle auto-pause, max lifetime, command
 * timeouts and output caps (the execute contract's result), and file operations, which run as commands INSIDE the
 * sandbox (its mount namespace, its uid), so a path is always resolved by the sandbox's own view of its file system:
 * a symlink planted there to /proc/1/root or to a host path leads to the sandbox's own files, never the host's.
 *
 * Not kept across a restart of the server: a sandbox's processes and tmpfs die with it; at start-up the executors
 * reap what is left and `recover()` marks every record that was running or paused as stopped.
 */
import { posix } from 'node:path';
import type { Duplex, Readable } from 'node:stream';
import { KindlingError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { RUNTIME_NAMES, type ExecutionResult, type ExecutorName, type ResourceLimits, type RuntimeName } from '../core/types.js';
import type { Executor, PersistentSandbox, SandboxCommand } from '../executors/executor.js';
import type { SandboxRecord, SandboxState, SqliteSandboxStore } from '../store/sandboxes-sqlite.js';
import { BASE_ENV } from './execution-service.js';
import { DEFAULT_LIMIT_POLICY, resolveLimits, type LimitPolicy } from './limits.js';
import { RUNTIMES } from './runtimes.js';

export interface CreateSandboxRequest {
  runtime?: string;
  image?: string;
  executor?: string;
  memoryMb?: number;
  cpus?: number;
  pids?: number;
  diskMb?: number;
  env?: Record<string, string>;
  idleTimeoutMs?: number;
  maxLifetimeMs?: number;
  metadata?: Record<string, string>;
}

export interface SandboxCommandInput {
  command: string[];
  stdin?: string;
  env?: Record<string, string>;
  workdir?: string;
  timeoutMs?: number;
  outputBytes?: number;
  /** Default true: a command on a paused sandbox resumes it first; false answers 409 SANDBOX_PAUSED. */
  autoResume?: boolean;
}

export interface SandboxFileEntry {
  name: string;
  path: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  /** Permission bits as an octal string, e.g. "644". */
  mode: string;
  modifiedAt: string;
}

export interface SandboxesOptions {
  executors: ReadonlyMap<ExecutorName, Executor>;
  defaultExecutor: ExecutorName;
  store: SqliteSandboxStore;
  limits?: LimitPolicy;
  /** Caps of the caller's tenant on memoryMb, cpus, pids, diskMb (its quotas). */
  capsOf?: (tenant: string) => Partial<ResourceLimits>;
  /** Live (running or paused) sandboxes per tenant. Default 10. */
  maxPerTenant?: number;
  /** Default 10 min; at most maxLifetimeMs. */
  defaultIdleTimeoutMs?: number;
  /** Default 1 h; the largest accepted is `maxLifetimeCapMs` (default 24 h). */
  defaultMaxLifetimeMs?: number;
  maxLifetimeCapMs?: number;
  /** Stopped records are listed this long, then forgotten. Default 1 h. */
  stoppedRetentionMs?: number;
  /** Proxied port connections open at once per sandbox. Default 64. */
  maxPortConnections?: number;
  /** A proxied connection ends after this long without a byte either way. Default 5 min. */
  portIdleTimeoutMs?: number;
  onError?: (error: unknown, context: Record<string, unknown>) => void;
}

/** What the API answers for a sandbox. */
export interface SandboxView {
  id: string;
  state: SandboxState;
  executor: string;
  image: string;
  runtime: string | null;
  limits: SandboxRecord['limits'];
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
  usage: { cpuMs: number | null; memoryPeakBytes: number | null } | null;
}

const WORKDIR = '/work';
const MAX_PATH = 4096;
const DEFAULT_COMMAND_TIMEOUT_MS = 60_000;
const DEFAULT_OUTPUT_BYTES = 1024 * 1024;
/** How long a connect to a sandbox's port may take before it answers SANDBOX_PORT_UNREACHABLE. */
const PORT_CONNECT_TIMEOUT_MS = 5000;
/** The executor's own backstop beyond the lifetime the service enforces. */
const LIFETIME_BACKSTOP_MS = 60_000;

interface Live {
  record: SandboxRecord;
  sandbox: PersistentSandbox;
  busy: number;
  idleTimer: NodeJS.Timeout | null;
  lifetimeTimer: NodeJS.Timeout;
  /** Serialises pause/resume/destroy of one sandbox. */
  chain: Promise<unknown>;
  /** Why it is being stopped (set before the executor destroys it). */
  stopping: string | null;
}

export class SandboxService {
  private readonly live = new Map<string, Live>();
  private readonly creating = new Map<string, number>();
  /** Open proxied port connections per sandbox id. */
  private readonly portConnections = new Map<string, number>();
  private readonly limits: LimitPolicy;
  private readonly maxPerTenant: number;
  private readonly defaultIdleTimeoutMs: number;
  private readonly defaultMaxLifetimeMs: number;
  private readonly maxLifetimeCapMs: number;
  private readonly stoppedRetentionMs: number;
  private closed = false;

  constructor(private readonly options: SandboxesOptions) {
    this.limits = options.limits ?? DEFAULT_LIMIT_POLICY;
    this.maxPerTenant = options.maxPerTenant ?? 10;
    this.defaultIdleTimeoutMs = options.defaultIdleTimeoutMs ?? 10 * 60_000;
    this.defaultMaxLifetimeMs = options.defaultMaxLifetimeMs ?? 60 * 60_000;
    this.maxLifetimeCapMs = options.maxLifetimeCapMs ?? 24 * 60 * 60_000;
    this.stoppedRetentionMs = options.stoppedRetentionMs ?? 60 * 60_000;
  }

  /** At start-up, after the executors reaped their orphans: records of a previous run's sandboxes say stopped. */
  recover(): number {
    const now = Date.now();
    this.options.store.pruneStopped(now - this.stoppedRetentionMs);
    return this.options.store.markAllStopped('server restarted: the sandbox ended with the previous server process', now);
  }

  async create(tenant: string, request: CreateSandboxRequest): Promise<SandboxView> {
    if (this.closed) throw new KindlingError('SHUTTING_DOWN', 'the server is shutting down');
    const executorName = (request.executor ?? this.options.defaultExecutor) as ExecutorName;
    const executor = this.options.executors.get(executorName);
    if (executor === undefined) {
      throw new KindlingError('UNKNOWN_EXECUTOR', `executor "${request.executor}" is not enabled on this server (enabled: ${[...this.options.executors.keys()].join(', ')})`, { details: { field: 'executor' } });
    }
    if (executor.createPersistentSandbox === undefined) {
      throw new KindlingError('SANDBOXES_UNSUPPORTED', `the ${executorName} executor cannot host persistent sandboxes in this version (no long-lived sandbox, exec, files or freezer there yet); use executor "sandbox"`, { details: { executor: executorName, supported: [...this.options.executors.values()].filter((e) => e.createPersistentSandbox !== undefined).map((e) => e.name) } });
    }
    if ((request.runtime === undefined) === (request.image === undefined)) {
      throw new KindlingError('CONFLICTING_FIELDS', 'give exactly one of "runtime" or "image"', { details: { fields: ['runtime', 'image'] } });
    }
    let image: string;
    if (request.runtime !== undefined) {
      if (!(RUNTIME_NAMES as readonly string[]).includes(request.runtime)) throw new KindlingError('UNKNOWN_RUNTIME', `unknown runtime "${request.runtime}" (one of ${RUNTIME_NAMES.join(', ')})`, { details: { field: 'runtime' } });
      image = RUNTIMES[request.runtime as RuntimeName].image;
    } else {
      image = request.image!;
    }
    if (!executor.hasImage(image)) throw new KindlingError('UNKNOWN_IMAGE', `image "${image}" is not available on the ${executorName} executor`, { details: { field: 'image', executor: executorName } });
    const caps = this.options.capsOf?.(tenant) ?? {};
    const limits = resolveLimits({ memoryMb: request.memoryMb, cpus: request.cpus, pids: request.pids, diskMb: request.diskMb } as Partial<ResourceLimits>, {}, this.limits, caps);
    const maxLifetimeMs = this.duration('maxLifetimeMs', request.maxLifetimeMs, this.defaultMaxLifetimeMs, 1000, this.maxLifetimeCapMs);
    const idleTimeoutMs = this.duration('idleTimeoutMs', request.idleTimeoutMs, Math.min(this.defaultIdleTimeoutMs, maxLifetimeMs), 1000, maxLifetimeMs);
    const env = { ...BASE_ENV, ...request.env };
    const count = this.liveCount(tenant);
    if (count >= this.maxPerTenant) {
      throw new KindlingError('TENANT_SANDBOX_LIMIT', `tenant "${tenant}" has ${count} live sandboxes, its cap (${this.maxPerTenant}); delete one (DELETE /v1/sandboxes/ID) first`, { details: { cap: this.maxPerTenant }, retryAfterSeconds: 5 });
    }
    const id = newId('sb');
    const now = Date.now();
    const record: SandboxRecord = {
      id,
      tenant,
      state: 'running',
      executor: executorName,
      image,
      runtime: request.runtime ?? null,
      limits: { memoryMb: limits.memoryMb, cpus: limits.cpus, pids: limits.pids, diskMb: limits.diskMb },
      envNames: Object.keys(request.env ?? {}),
      workdir: WORKDIR,
      idleTimeoutMs,
      maxLifetimeMs,
      metadata: request.metadata ?? {},
      createdAtMs: now,
      lastActiveAtMs: now,
      stoppedAtMs: null,
      stopReason: null,
    };
    this.creating.set(tenant, (this.creating.get(tenant) ?? 0) + 1);
    let sandbox: PersistentSandbox;
    try {
      sandbox = await executor.createPersistentSandbox(
        {
          id,
          image,
          command: [],
          env,
          workdir: WORKDIR,
          limits: { ...limits, timeoutMs: maxLifetimeMs + LIFETIME_BACKSTOP_MS },
          network: 'none',
          stdin: false,
          files: [],
          labels: { 'dev.kindling.sandbox': id, 'dev.kindling.tenant': tenant },
        },
        {},
      );
    } finally {
      this.creating.set(tenant, (this.creating.get(tenant) ?? 1) - 1);
    }
    this.options.store.put(record);
    const entry: Live = {
      record,
      sandbox,
      busy: 0,
      idleTimer: null,
      lifetimeTimer: setTimeout(() => void this.stop(entry, 'maxLifetimeMs passed').catch((error: unknown) => this.options.onError?.(error, { sandbox: id })), maxLifetimeMs),
      chain: Promise.resolve(),
      stopping: null,
    };
    entry.lifetimeTimer.unref();
    this.live.set(id, entry);
    // A sandbox that dies on its own (its supervisor killed, OOM) is stopped.
    void sandbox.disposed.then(() => {
      if (this.live.get(id) === entry) this.finish(entry, entry.stopping ?? 'the sandbox ended on its own (out of memory, or its processes were killed)');
    });
    this.armIdle(entry);
    return this.view(record, sandbox);
  }

  list(tenant: string, state?: SandboxState): SandboxView[] {
    return this.options.store
      .list(tenant)
      .filter((record) => state === undefined || record.state === state)
      .map((record) => this.view(record, this.live.get(record.id)?.sandbox ?? null));
  }

  get(tenant: string, id: string): SandboxView {
    const record = this.record(tenant, id);
    return this.view(record, this.live.get(id)?.sandbox ?? null);
  }

  /** Destroys the sandbox (if still live) and forgets its record. */
  async delete(tenant: string, id: string): Promise<void> {
    this.record(tenant, id);
    const entry = this.live.get(id);
    if (entry !== undefined) await this.stop(entry, 'deleted');
    this.options.store.delete(id);
  }

  async pause(tenant: string, id: string): Promise<SandboxView> {
    const entry = this.entry(tenant, id);
    await this.serial(entry, async () => {
      if (entry.record.state !== 'running') return;
      await entry.sandbox.pause();
      this.setState(entry, 'paused');
    });
    return this.view(entry.record, entry.sandbox);
  }

  async resume(tenant: string, id: string): Promise<SandboxView> {
    const entry = this.entry(tenant, id);
    await this.resumeEntry(entry);
    this.touch(entry);
    return this.view(entry.record, entry.sandbox);
  }

  /**
   * Runs a command and answers the execute contract's result: a non-zero exit or a timeout is a result. The timeout
   * kills the command's process tree, never the sandbox.
   */
  async run(tenant: string, id: string, input: SandboxCommandInput): Promise<ExecutionResult> {
    const timeoutMs = this.duration('timeoutMs', input.timeoutMs, DEFAULT_COMMAND_TIMEOUT_MS, 1, this.limits.max.timeoutMs);
    const outputBytes = input.outputBytes ?? DEFAULT_OUTPUT_BYTES;
    if (!Number.isInteger(outputBytes) || outputBytes < 0 || outputBytes > this.limits.max.outputBytes) {
      throw new KindlingError('LIMIT_OUT_OF_RANGE', `outputBytes must be a whole number from 0 to ${this.limits.max.outputBytes}`, { details: { field: 'outputBytes' } });
    }
    const workdir = input.workdir === undefined ? WORKDIR : this.cleanPath(input.workdir, 'workdir');
    return this.withCommand(tenant, id, input.autoResume ?? true, async (entry) => {
      const started = performance.now();
      const command = await entry.sandbox.exec({ command: input.command, env: input.env ?? {}, workdir, stdin: input.stdin !== undefined });
      if (command.stdin !== null) command.stdin.end(input.stdin ?? '');
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        command.kill();
      }, timeoutMs);
      const [stdout, stderr] = [collect(command.stdout, outputBytes), collect(command.stderr, outputBytes)];
      const exit = await command.wait().finally(() => clearTimeout(timer));
      const [out, err] = await Promise.all([stdout, stderr]);
      const durationMs = Math.round((performance.now() - started) * 100) / 100;
      return {
        id: newId('cmd'),
        exitCode: exit.exitCode,
        signal: exit.signal,
        stdout: out.text,
        stderr: err.text,
        outputEncoding: 'utf8',
        durationMs,
        coldStart: false,
        executor: entry.record.executor as ExecutorName,
        timedOut,
        oomKilled: false,
        truncated: out.truncated || err.truncated,
        stdoutTruncated: out.truncated,
        stderrTruncated: err.truncated,
        timings: { queuedMs: 0, startMs: 0, runMs: durationMs },
      };
    });
  }

  /** Writes `body` to `path` inside the sandbox (parents made); bounded by the sandbox's diskMb. */
  async writeFile(tenant: string, id: string, path: string, body: Readable): Promise<{ path: string; size: number }> {
    const target = this.cleanPath(path, 'path');
    if (target === '/') throw new KindlingError('SANDBOX_PATH_INVALID', 'path must name a file, not /', { details: { field: 'path' } });
    return this.withCommand(tenant, id, true, async (entry) => {
      const command = await entry.sandbox.exec({
        command: ['sh', '-c', 'd="${1%/*}"; [ -z "$d" ] || mkdir -p -- "$d" || exit 3; [ ! -d "$1" ] || { echo "is a directory" >&2; exit 4; }; cat > "$1" || { rm -f -- "$1"; exit 5; }; wc -c < "$1"', 'kindling-write', target],
        env: {},
        workdir: WORKDIR,
        stdin: true,
      });
      let sent = 0;
      body.on('data', (chunk: Buffer) => (sent += chunk.length));
      body.pipe(command.stdin!);
      let bodyError: unknown = null;
      body.on('error', (error) => {
        bodyError = error;
        command.kill();
      });
      const out = collect(command.stdout, 256);
      const err = collect(command.stderr, 4096);
      const exit = await command.wait();
      const [stdout, stderr] = await Promise.all([out, err]);
      if (bodyError !== null) {
        // The partial file goes too.
        await this.cleanupPartial(entry, target);
        throw bodyError;
      }
      if (exit.exitCode !== 0) throw fileError(target, exit.exitCode, stderr.text, entry.record.limits.diskMb);
      return { path: target, size: Number(stdout.text.trim()) || sent };
    });
  }

  /**
   * Opens `path` for reading inside the sandbox: resolves once the first bytes (or the end) arrived, with a stream of
   * the content, or rejects with a 4xx when the file is not there or not a file.
   */
  async readFile(tenant: string, id: string, path: string): Promise<Readable> {
    const target = this.cleanPath(path, 'path');
    const entry = this.entry(tenant, id);
    await this.beforeCommand(entry, true);
    entry.busy++;
    let command: SandboxCommand;
    try {
      command = await entry.sandbox.exec({ command: ['sh', '-c', '[ -d "$1" ] && { echo "is a directory" >&2; exit 4; }; exec cat -- "$1"', 'kindling-read', target], env: {}, workdir: WORKDIR, stdin: false });
    } catch (error) {
      this.done(entry);
      throw error;
    }
    const err = collect(command.stderr, 4096);
    const exit = command.wait();
    void exit.finally(() => this.done(entry));
    // The first byte or the end, whichever comes first, decides between a stream and an error.
    const first = await Promise.race([
      new Promise<'data'>((resolve) => command.stdout.once('readable', () => resolve('data'))),
      exit.then(() => 'exit' as const),
    ]);
    if (first === 'exit' || command.stdout.readableLength === 0) {
      const code = (await exit).exitCode;
      if (code !== 0) {
        command.stdout.resume();
        throw fileError(target, code, (await err).text, entry.record.limits.diskMb);
      }
    }
    // A download given up half-way (the client went away) must not leave `cat` blocked on a full pipe.
    command.stdout.once('close', () => command.kill());
    return command.stdout;
  }

  private async cleanupPartial(entry: Live, target: string): Promise<void> {
    const command = await entry.sandbox.exec({ command: ['rm', '-f', '--', target], env: {}, workdir: WORKDIR, stdin: false });
    command.stdout.resume();
    command.stderr.resume();
    await command.wait();
  }

  async listFiles(tenant: string, id: string, path: string): Promise<{ path: string; entries: SandboxFileEntry[] }> {
    const target = this.cleanPath(path, 'path');
    return this.withCommand(tenant, id, true, async (entry) => {
      // One line per entry: "<raw mode hex> <size> <mtime> <name>"; names are NUL-terminated (a name may hold a newline).
      const command = await entry.sandbox.exec({
        command: ['sh', '-c', 'cd -- "$1" || exit 2; for f in .[!.]* ..?* *; do if [ -e "$f" ] || [ -L "$f" ]; then stat --printf "%f %s %Y %n\\0" -- "$f" || exit 6; fi; done', 'kindling-list', target],
        env: {},
        workdir: WORKDIR,
        stdin: false,
      });
      const out = collect(command.stdout, 16 * 1024 * 1024);
      const err = collect(command.stderr, 4096);
      const exit = await command.wait();
      const [stdout, stderr] = await Promise.all([out, err]);
      if (exit.exitCode !== 0) throw fileError(target, exit.exitCode === 2 ? 1 : exit.exitCode, stderr.text, entry.record.limits.diskMb);
      const entries = stdout.text
        .split('\0')
        .filter((line) => line !== '')
        .map((line) => {
          const [modeHex, size, mtime] = line.split(' ', 3);
          const name = line.slice(modeHex!.length + size!.length + mtime!.length + 3);
          const mode = parseInt(modeHex!, 16);
          const kind = mode & 0o170000;
          return {
            name,
            path: posix.join(target, name),
            type: kind === 0o100000 ? 'file' : kind === 0o040000 ? 'dir' : kind === 0o120000 ? 'symlink' : 'other',
            size: Number(size),
            mode: (mode & 0o7777).toString(8).padStart(3, '0'),
            modifiedAt: new Date(Number(mtime) * 1000).toISOString(),
          } satisfies SandboxFileEntry;
        });
      return { path: target, entries };
    });
  }

  async removeFile(tenant: string, id: string, path: string): Promise<void> {
    const target = this.cleanPath(path, 'path');
    if (target === '/') throw new KindlingError('SANDBOX_PATH_INVALID', 'path must not be /', { details: { field: 'path' } });
    await this.withCommand(tenant, id, true, async (entry) => {
      const command = await entry.sandbox.exec({ command: ['sh', '-c', '[ -e "$1" ] || [ -L "$1" ] || exit 1; rm -rf -- "$1"', 'kindling-rm', target], env: {}, workdir: WORKDIR, stdin: false });
      command.stdout.resume();
      const err = collect(command.stderr, 4096);
      const exit = await command.wait();
      if (exit.exitCode !== 0) throw fileError(target, exit.exitCode, (await err).text, entry.record.limits.diskMb);
    });
  }

  /* --- ports ------------------------------------------------------------------------------------------------------ */

  /**
   * Opens one connection to `port` on the sandbox's loopback (ports.ts of the executor): tenant-checked, a paused
   * sandbox is resumed first (as a command would be), at most `maxPortConnections` at once. While it is open the
   * sandbox counts as busy (no idle auto-pause); `release()` (idempotent) must be called once it ended.
   */
  async openPort(tenant: string, id: string, port: number): Promise<{ stream: Duplex; release: () => void }> {
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      throw new KindlingError('VALIDATION_FAILED', `port must be a whole number from 1 to 65535, got ${String(port).slice(0, 20)}`, { details: { field: 'port' } });
    }
    const entry = this.entry(tenant, id);
    if (entry.sandbox.connectPort === undefined) {
      throw new KindlingError('SANDBOXES_UNSUPPORTED', `the ${entry.record.executor} executor cannot reach a sandbox's ports in this version`, { details: { executor: entry.record.executor } });
    }
    const cap = this.options.maxPortConnections ?? 64;
    const open = this.portConnections.get(id) ?? 0;
    if (open >= cap) {
      throw new KindlingError('SANDBOX_PORT_LIMIT', `sandbox ${id} has ${open} proxied connections open, its cap (${cap}); close one or retry`, { details: { sandbox: id, cap }, retryAfterSeconds: 1 });
    }
    this.portConnections.set(id, open + 1);
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      const left = (this.portConnections.get(id) ?? 1) - 1;
      if (left > 0) this.portConnections.set(id, left);
      else this.portConnections.delete(id);
    };
    try {
      await this.beforeCommand(entry, true);
    } catch (error) {
      release();
      throw error;
    }
    entry.busy++;
    let stream: Duplex;
    try {
      stream = await entry.sandbox.connectPort(port, { idleTimeoutMs: this.options.portIdleTimeoutMs ?? 5 * 60_000, connectTimeoutMs: PORT_CONNECT_TIMEOUT_MS });
    } catch (error) {
      release();
      this.done(entry);
      throw error;
    }
    let finished = false;
    return {
      stream,
      release: () => {
        if (finished) return;
        finished = true;
        release();
        this.done(entry);
      },
    };
  }

  /* --- end of ports ----------------------------------------------------------------------------------------------- */

  /** A deleted tenant's sandboxes go with it (processes, files and records). */
  async deleteTenant(tenant: string): Promise<void> {
    await Promise.allSettled([...this.live.values()].filter((entry) => entry.record.tenant === tenant).map((entry) => this.stop(entry, 'tenant deleted')));
    for (const record of this.options.store.list(tenant)) this.options.store.delete(record.id);
  }

  /** Destroys every live sandbox (their records say stopped). Before the executors close. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.live.values()].map((entry) => this.stop(entry, 'server stopped')));
  }

  /* ---------------------------------------------------------------------------------------------------------------- */

  private liveCount(tenant: string): number {
    let count = this.creating.get(tenant) ?? 0;
    for (const entry of this.live.values()) if (entry.record.tenant === tenant) count++;
    return count;
  }

  private duration(field: string, value: number | undefined, fallback: number, min: number, max: number): number {
    if (value === undefined) return fallback;
    if (!Number.isInteger(value) || value < min || value > max) {
      throw new KindlingError('LIMIT_OUT_OF_RANGE', `${field} must be a whole number of milliseconds from ${min} to ${max}, got ${value}`, { details: { field, min, max } });
    }
    return value;
  }

  /**
   * A clean absolute path inside the sandbox: relative paths are taken from /work; `..` segments, NUL and over-long
   * paths are refused (before anything runs). Symlinks are resolved later, inside the sandbox, by its own kernel view.
   */
  private cleanPath(path: string, field: string): string {
    if (typeof path !== 'string' || path === '' || path.length > MAX_PATH || path.includes('\0')) {
      throw new KindlingError('SANDBOX_PATH_INVALID', `${field} must be a non-empty path of at most ${MAX_PATH} characters without NUL`, { details: { field } });
    }
    if (path.split('/').includes('..')) {
      throw new KindlingError('SANDBOX_PATH_INVALID', `${field} "${path.slice(0, 200)}" must not contain ".." segments`, { details: { field } });
    }
    const absolute = path.startsWith('/') ? path : `${WORKDIR}/${path}`;
    const clean = posix.normalize(absolute);
    return clean.length > 1 && clean.endsWith('/') ? clean.slice(0, -1) : clean;
  }

  private record(tenant: string, id: string): SandboxRecord {
    const record = this.live.get(id)?.record ?? this.options.store.get(id);
    // Another tenant's sandbox answers exactly as one that does not exist.
    if (record === null || record.tenant !== tenant) throw new KindlingError('SANDBOX_NOT_FOUND', `no sandbox "${id.slice(0, 100)}"`, { details: { sandbox: id.slice(0, 100) } });
    return record;
  }

  private entry(tenant: string, id: string): Live {
    const record = this.record(tenant, id);
    const entry = this.live.get(id);
    if (entry === undefined || !entry.sandbox.alive) {
      throw new KindlingError('SANDBOX_NOT_RUNNING', `sandbox ${id} has stopped (${record.stopReason ?? 'ended'}); its processes and files are gone: create a new one`, { details: { sandbox: id, state: record.state } });
    }
    return entry;
  }

  private async withCommand<T>(tenant: string, id: string, autoResume: boolean, work: (entry: Live) => Promise<T>): Promise<T> {
    const entry = this.entry(tenant, id);
    await this.beforeCommand(entry, autoResume);
    entry.busy++;
    try {
      return await work(entry);
    } finally {
      this.done(entry);
    }
  }

  private async beforeCommand(entry: Live, autoResume: boolean): Promise<void> {
    if (entry.record.state === 'paused') {
      if (!autoResume) throw new KindlingError('SANDBOX_PAUSED', `sandbox ${entry.record.id} is paused: resume it (POST /v1/sandboxes/${entry.record.id}/resume) or send autoResume: true`, { details: { sandbox: entry.record.id } });
    }
    await this.resumeEntry(entry);
    this.touch(entry);
  }

  private done(entry: Live): void {
    entry.busy--;
    this.touch(entry);
  }

  private resumeEntry(entry: Live): Promise<void> {
    return this.serial(entry, async () => {
      if (entry.record.state !== 'paused') return;
      await entry.sandbox.resume();
      this.setState(entry, 'running');
    });
  }

  private serial<T>(entry: Live, work: () => Promise<T>): Promise<T> {
    const next = entry.chain.then(work, work);
    entry.chain = next.catch(() => {});
    return next;
  }

  private setState(entry: Live, state: SandboxState): void {
    entry.record = { ...entry.record, state };
    this.options.store.put(entry.record);
  }

  /** Activity: the idle clock starts again once no command runs. */
  private touch(entry: Live): void {
    entry.record = { ...entry.record, lastActiveAtMs: Date.now() };
    this.armIdle(entry);
  }

  private armIdle(entry: Live): void {
    if (entry.idleTimer !== null) clearTimeout(entry.idleTimer);
    entry.idleTimer = null;
    if (entry.busy > 0 || entry.record.state !== 'running') return;
    entry.idleTimer = setTimeout(() => {
      entry.idleTimer = null;
      if (entry.busy > 0 || this.live.get(entry.record.id) !== entry) return;
      void this.serial(entry, async () => {
        if (entry.record.state !== 'running' || entry.busy > 0) return;
        await entry.sandbox.pause();
        this.setState(entry, 'paused');
      }).catch((error: unknown) => this.options.onError?.(error, { sandbox: entry.record.id, during: 'idle pause' }));
    }, entry.record.idleTimeoutMs);
    entry.idleTimer.unref();
  }

  private async stop(entry: Live, reason: string): Promise<void> {
    entry.stopping ??= reason;
    await this.serial(entry, async () => {
      await entry.sandbox.destroy();
      this.finish(entry, reason);
    });
  }

  private finish(entry: Live, reason: string): void {
    if (this.live.get(entry.record.id) !== entry) return;
    this.live.delete(entry.record.id);
    if (entry.idleTimer !== null) clearTimeout(entry.idleTimer);
    clearTimeout(entry.lifetimeTimer);
    entry.record = { ...entry.record, state: 'stopped', stoppedAtMs: Date.now(), stopReason: reason };
    if (this.options.store.get(entry.record.id) !== null) this.options.store.put(entry.record);
  }

  private view(record: SandboxRecord, sandbox: PersistentSandbox | null): SandboxView {
    return {
      id: record.id,
      state: record.state,
      executor: record.executor,
      image: record.image,
      runtime: record.runtime,
      limits: record.limits,
      envNames: record.envNames,
      workdir: record.workdir,
      idleTimeoutMs: record.idleTimeoutMs,
      maxLifetimeMs: record.maxLifetimeMs,
      metadata: record.metadata,
      createdAt: new Date(record.createdAtMs).toISOString(),
      lastActiveAt: new Date(record.lastActiveAtMs).toISOString(),
      expiresAt: new Date(record.createdAtMs + record.maxLifetimeMs).toISOString(),
      stoppedAt: record.stoppedAtMs === null ? null : new Date(record.stoppedAtMs).toISOString(),
      stopReason: record.stopReason,
      usage: sandbox?.usage() ?? null,
    };
  }
}

/** Reads a stream to its end, keeping at most `cap` bytes (the rest is drained and dropped). */
function collect(stream: Readable, cap: number): Promise<{ text: string; truncated: boolean }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let kept = 0;
    let truncated = false;
    stream.on('data', (chunk: Buffer) => {
      if (kept >= cap) {
        truncated ||= chunk.length > 0;
        return;
      }
      const piece = chunk.length > cap - kept ? chunk.subarray(0, cap - kept) : chunk;
      if (piece.length < chunk.length) truncated = true;
      chunks.push(piece);
      kept += piece.length;
    });
    const done = (): void => resolve({ text: Buffer.concat(chunks).toString('utf8'), truncated });
    stream.once('end', done);
    stream.once('close', done);
    stream.once('error', done);
  });
}

/** Maps a failed file command (its exit code and the tool's message) to the API's error. */
function fileError(path: string, exitCode: number, stderr: string, diskMb: number): KindlingError {
  const message = stderr.trim().split('\n').pop()?.slice(0, 300) ?? '';
  if (/No space left|Disk quota/i.test(stderr)) {
    return new KindlingError('SANDBOX_DISK_FULL', `${path} does not fit in the sandbox's writable space (diskMb ${diskMb}); nothing was kept`, { details: { path, diskMb } });
  }
  if (/No such file|not found|can't cd|can.t cd/i.test(stderr) || exitCode === 1) {
    return new KindlingError('SANDBOX_FILE_NOT_FOUND', `no file or directory ${path} in the sandbox`, { details: { path } });
  }
  if (/Read-only file system/i.test(stderr)) {
    return new KindlingError('SANDBOX_PATH_INVALID', `${path} is on the sandbox's read-only image: write under /work or /tmp`, { details: { path } });
  }
  return new KindlingError('SANDBOX_PATH_INVALID', `${path}: ${message || `failed (${exitCode})`}`, { details: { path } });
}
