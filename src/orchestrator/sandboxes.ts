/**
 * Persistent sandboxes: a resource a tenant creates, runs many commands in, reads and writes files of, pauses,
 * resumes and deletes. The executor makes and runs the sandbox (`Executor.createPersistentSandbox`); this service owns
 * the lifecycle around it: records (in the store), tenant isolation and caps, idle auto-pause, max lifetime, command
 * timeouts and output caps (the execute contract's result), and file operations, which run as commands INSIDE the
 * sandbox (its mount namespace, its uid), so a path is always resolved by the sandbox's own view of its file system:
 * a symlink planted there to /proc/1/root or to a host path leads to the sandbox's own files, never the host's.
 *
 * Processes are not kept across a restart of the server: they die with it; at start-up the executors reap what is
 * left and `recover()` marks every record that was running or paused as stopped. Files are kept where the executor
 * has `sandboxStorage` (the sandbox and docker executors: a disk per sandbox): a stopped sandbox keeps its files until it is
 * deleted, and the next command, file operation, resume or snapshot starts it again transparently (a new process tree
 * on the same files, with the env it was created with, its max lifetime counted from then). `reapStorage()` removes
 * the disks and snapshots whose records are gone.
 *
 * Snapshots (executors with `sandboxStorage`): an immutable copy of a sandbox's /work (files only: processes and
 * memory are not kept, and the answer says so), counted per tenant (`maxSnapshotsPerTenant`), kept until deleted and
 * across restarts. `create({fromSnapshot})` starts a sandbox on the snapshot's files as a read-only lower layer under
 * a disk of its own (nothing copied); `fork` = a snapshot + N such creates, refused before anything is made when the
 * tenant's sandbox cap cannot take N more.
 */
import { posix } from 'node:path';
import type { Duplex, Readable } from 'node:stream';
import { KindlingError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { RUNTIME_NAMES, unknownExecutorMessage, type ExecutionResult, type ExecutorName, type ResourceLimits, type RuntimeName } from '../core/types.js';
import type { BodyPump, Executor, PersistentSandbox, SandboxCommand } from '../executors/executor.js';
import type { SandboxRecord, SandboxState, SnapshotRecord, SqliteSandboxStore } from '../store/sandboxes-sqlite.js';
import { BASE_ENV, type ImageResolver } from './execution-service.js';
import { DEFAULT_LIMIT_POLICY, resolveLimits, type LimitPolicy } from './limits.js';
import { RUNTIMES, concreteRuntime } from './runtimes.js';
import { BackgroundCommand, CommandRegistry, DEFAULT_BACKGROUND_OUTPUT_BYTES, MAX_BACKGROUND_OUTPUT_BYTES, type CommandEvent, type OutputChunk, type SandboxCommandView } from './sandbox-commands.js';
import { StringDecoder } from 'node:string_decoder';
import { SandboxAccounting, type SandboxMeterHooks } from './sandbox-accounting.js';
import type { SandboxQuotas } from './sandbox-quotas.js';
import { PTY_MAX_DIMENSION, PTY_RELAY, PtySession } from './sandbox-pty.js';
import { TarGuard } from './tar-guard.js';

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
  /** A snapshot id: the sandbox's /work starts as the snapshot's files; image, runtime and limits default to its own. */
  fromSnapshot?: string;
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
  /** Bytes fed to stdin, base64 (instead of `stdin`). */
  stdinBase64?: string;
  /** Start it and answer a handle at once (`start()`); its output is kept bounded for `.../logs`. */
  background?: boolean;
}

/** Live output of a foreground command (SSE): called once it started, then per decoded chunk. */
export interface RunHooks {
  /** Kills the command (never the sandbox) when it aborts: its caller went away. */
  signal?: AbortSignal;
  onStarted?: (commandId: string) => void;
  onOutput?: (stream: 'stdout' | 'stderr', text: string) => void;
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
  /** Custom images: a tenant's `kindling/<name>` becomes its own image (custom-images.ts). */
  images?: ImageResolver;
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
  /** Snapshots a tenant may keep (--max-snapshots-per-tenant). Default 20. */
  maxSnapshotsPerTenant?: number;
  /** Tenant quotas on sandboxes (sandbox-quotas.ts); default: maxPerTenant running and paused, nothing else capped. */
  quotasOf?: (tenant: string) => SandboxQuotas;
  /** Usage metering of running sandboxes (sandbox-accounting.ts). */
  meter?: SandboxMeterHooks;
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
  /** Whether the files outlive the processes (kept while stopped, until deleted), and the snapshot they start from. */
  storage: { persistent: boolean; fromSnapshot: string | null };
  /**
   * While hibernated: whether its processes and memory were saved (they come back on resume) or only its files were
   * kept (the executor cannot save processes: a resume starts a new process tree), the saved image's bytes and when.
   */
  hibernation: { processesKept: boolean; bytes: number | null; at: string } | null;
}

/** What may be changed on a live sandbox (PATCH /v1/sandboxes/ID). */
export interface UpdateSandboxRequest {
  /** The sandbox stops this long from now (E2B's `setTimeout`): extends or shortens its max lifetime. */
  timeoutMs?: number;
  idleTimeoutMs?: number;
}

/** GET /v1/sandboxes filters: a state, and metadata pairs that must all match exactly. */
export interface SandboxListFilter {
  state?: SandboxState;
  metadata?: Record<string, string>;
}

/** Metadata pairs one list may filter on. */
export const MAX_METADATA_FILTERS = 16;

/** What the API answers for a snapshot. */
export interface SnapshotView {
  id: string;
  sandboxId: string;
  executor: string;
  image: string;
  runtime: string | null;
  limits: SandboxRecord['limits'];
  createdAt: string;
  /** Bytes of files it holds. */
  bytes: number;
  /**
   * Whether memory and processes are kept (gvisor: a sandbox made from it goes on with the processes; false on the
   * sandbox and docker executors: it starts fresh processes on the files).
   */
  memory: boolean;
  note: string;
}

const SNAPSHOT_NOTE = 'files of /work only: this executor keeps no memory or processes, so a sandbox made from this snapshot starts a new process tree on its files';
const MEMORY_SNAPSHOT_NOTE = 'files of /work, memory and processes: a sandbox made from this snapshot goes on with the processes where they were (commands running at the snapshot keep running but their output streams end)';

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
  /** Set while it is being hibernated: its end is a hibernation, not a stop. */
  hibernating: boolean;
}

export class SandboxService {
  private readonly live = new Map<string, Live>();
  /** Background commands per live sandbox (sandbox-commands.ts). */
  private readonly background = new Map<string, CommandRegistry>();
  /** Open proxied port connections per sandbox id. */
  private readonly portConnections = new Map<string, number>();
  private readonly limits: LimitPolicy;
  private readonly maxPerTenant: number;
  private readonly defaultIdleTimeoutMs: number;
  private readonly defaultMaxLifetimeMs: number;
  private readonly maxLifetimeCapMs: number;
  private readonly stoppedRetentionMs: number;
  private readonly maxSnapshotsPerTenant: number;
  /** Stopped sandboxes being started again, by id (one restart at a time). */
  private readonly restarting = new Map<string, Promise<Live>>();
  /** Snapshots being made, per tenant (counted against the cap). */
  private readonly snapshotting = new Map<string, number>();
  private closed = false;
  /** Tenant quotas and metering (sandbox-accounting.ts). */
  private readonly accounting: SandboxAccounting;

  constructor(private readonly options: SandboxesOptions) {
    this.limits = options.limits ?? DEFAULT_LIMIT_POLICY;
    this.maxPerTenant = options.maxPerTenant ?? 10;
    this.defaultIdleTimeoutMs = options.defaultIdleTimeoutMs ?? 10 * 60_000;
    this.defaultMaxLifetimeMs = options.defaultMaxLifetimeMs ?? 60 * 60_000;
    this.maxLifetimeCapMs = options.maxLifetimeCapMs ?? 24 * 60 * 60_000;
    this.stoppedRetentionMs = options.stoppedRetentionMs ?? 60 * 60_000;
    this.maxSnapshotsPerTenant = options.maxSnapshotsPerTenant ?? 20;
    this.accounting = new SandboxAccounting({
      store: options.store,
      live: () => [...this.live.values()].map((entry) => ({ record: entry.record, sandbox: entry.sandbox })),
      quotasOf: options.quotasOf ?? (() => ({ maxSandboxes: this.maxPerTenant, maxPausedSandboxes: this.maxPerTenant, maxSandboxMemoryMb: null, maxSandboxDiskMb: null, maxSnapshotBytes: null })),
      ...(options.meter === undefined ? {} : { meter: options.meter }),
    });
  }

  /** What tenants' sandboxes hold now (running, paused, memory, disks, snapshot bytes), for metrics. */
  /** Per tenant: live sandboxes (running, paused, their memory) and hibernated ones (records only: no process). */
  footprints(): Map<string, ReturnType<SandboxAccounting['footprints']> extends Map<string, infer Row> ? Row & { hibernated: number } : never> {
    const hibernated = this.options.store.countByTenant('hibernated');
    const out = new Map([...this.accounting.footprints()].map(([tenant, row]) => [tenant, { ...row, hibernated: hibernated.get(tenant) ?? 0 }]));
    for (const [tenant, count] of hibernated) if (!out.has(tenant)) out.set(tenant, { running: 0, paused: 0, memoryMb: 0, hibernated: count });
    return out;
  }

  /** At start-up, after the executors reaped their orphans: records of a previous run's sandboxes say stopped. */
  recover(): number {
    const now = Date.now();
    this.options.store.pruneStopped(now - this.stoppedRetentionMs);
    return this.options.store.markAllStopped('server restarted: its processes ended with the previous server process', now);
  }

  /** At start-up, after recover(): removes kept disks and snapshots whose records are gone. Returns how many. */
  async reapStorage(): Promise<number> {
    const keepSandboxes = new Set(this.options.store.allIds());
    const keepSnapshots = new Set(this.options.store.listSnapshots(null).map((snapshot) => snapshot.id));
    let removed = 0;
    for (const executor of this.options.executors.values()) removed += (await executor.sandboxStorage?.reap(keepSandboxes, keepSnapshots)) ?? 0;
    return removed;
  }

  async create(tenant: string, request: CreateSandboxRequest): Promise<SandboxView> {
    const entry = await this.createEntry(tenant, request, false);
    return this.view(entry.record, entry.sandbox);
  }

  /** `reserved`: the caller (fork) already counted this sandbox against the tenant's cap. */
  private async createEntry(tenant: string, request: CreateSandboxRequest, reserved: boolean): Promise<Live> {
    if (this.closed) throw new KindlingError('SHUTTING_DOWN', 'the server is shutting down');
    let snapshot: SnapshotRecord | null = null;
    if (request.fromSnapshot !== undefined) {
      snapshot = this.snapshotRecord(tenant, request.fromSnapshot);
      if (request.executor !== undefined && request.executor !== snapshot.executor) {
        throw new KindlingError('CONFLICTING_FIELDS', `snapshot ${snapshot.id} was made on the ${snapshot.executor} executor; leave "executor" out`, { details: { fields: ['executor', 'fromSnapshot'] } });
      }
      if (request.runtime === undefined && request.image === undefined) request = snapshot.runtime === null ? { ...request, image: snapshot.image } : { ...request, runtime: snapshot.runtime };
      request = { memoryMb: snapshot.limits.memoryMb, cpus: snapshot.limits.cpus, pids: snapshot.limits.pids, diskMb: snapshot.limits.diskMb, executor: snapshot.executor, ...definedOnly(request) };
    }
    const executorName = (request.executor ?? this.options.defaultExecutor) as ExecutorName;
    const executor = this.options.executors.get(executorName);
    if (executor === undefined) {
      throw new KindlingError('UNKNOWN_EXECUTOR', unknownExecutorMessage(executorName, this.options.executors.keys()), { details: { field: 'executor' } });
    }
    if (executor.createPersistentSandbox === undefined) {
      const supported = [...this.options.executors.values()].filter((e) => e.createPersistentSandbox !== undefined).map((e) => e.name);
      throw new KindlingError('SANDBOXES_UNSUPPORTED', `the ${executorName} executor cannot host persistent sandboxes in this version (no long-lived sandbox, exec, files or freezer there yet); use executor ${supported.length === 0 ? '"sandbox" or "docker" (neither is enabled on this server)' : supported.map((name) => `"${name}"`).join(' or ')}`, { details: { executor: executorName, supported } });
    }
    if ((request.runtime === undefined) === (request.image === undefined)) {
      throw new KindlingError('CONFLICTING_FIELDS', 'give exactly one of "runtime" or "image"', { details: { fields: ['runtime', 'image'] } });
    }
    let image: string;
    if (request.runtime !== undefined) {
      if (!(RUNTIME_NAMES as readonly string[]).includes(request.runtime)) throw new KindlingError('UNKNOWN_RUNTIME', `unknown runtime "${request.runtime}" (one of ${RUNTIME_NAMES.join(', ')})`, { details: { field: 'runtime' } });
      image = RUNTIMES[request.runtime as RuntimeName].image;
    } else {
      image = this.options.images?.resolve(request.image!, tenant) ?? request.image!;
    }
    if (!executor.hasImage(image)) throw new KindlingError('UNKNOWN_IMAGE', `image "${image}" is not available on the ${executorName} executor`, { details: { field: 'image', executor: executorName } });
    const caps = this.options.capsOf?.(tenant) ?? {};
    const limits = resolveLimits({ memoryMb: request.memoryMb, cpus: request.cpus, pids: request.pids, diskMb: request.diskMb } as Partial<ResourceLimits>, {}, this.limits, caps);
    const maxLifetimeMs = this.duration('maxLifetimeMs', request.maxLifetimeMs, this.defaultMaxLifetimeMs, 1000, this.maxLifetimeCapMs);
    const idleTimeoutMs = this.duration('idleTimeoutMs', request.idleTimeoutMs, Math.min(this.defaultIdleTimeoutMs, maxLifetimeMs), 1000, maxLifetimeMs);
    const env = { ...BASE_ENV, ...request.env };
    if (snapshot !== null && executor.sandboxStorage === undefined) throw this.noSnapshots(executorName);
    const adding = { running: 1, memoryMb: limits.memoryMb, diskMb: executor.sandboxStorage === undefined ? 0 : limits.diskMb };
    // A fork reserved the counts of its sandboxes (`reserved`); their memory and disks are checked here, one by one.
    const release = this.accounting.reserve(tenant, reserved ? { ...adding, running: 0 } : adding);
    const id = newId('sb');
    const now = Date.now();
    const record: SandboxRecord = {
      id,
      tenant,
      state: 'running',
      executor: executorName,
      image,
      // The concrete runtime (`python` -> `python3.13`): a restart or a fork gets the same image however `python` moves.
      runtime: concreteRuntime(request.runtime ?? null),
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
      storage: executor.sandboxStorage === undefined ? null : { fromSnapshot: snapshot?.id ?? null },
      env,
      startedAtMs: now,
    };
    try {
      return await this.launch(record, executor);
    } finally {
      release();
    }
  }

  /** Starts the record's sandbox (made, or started again on its kept files) and tracks it as live. */
  private async launch(record: SandboxRecord, executor: Executor, restore = false): Promise<Live> {
    const id = record.id;
    const sandbox = await executor.createPersistentSandbox!(
      {
        id,
        image: record.image,
        command: [],
        env: record.env ?? { ...BASE_ENV },
        workdir: record.workdir,
        limits: { ...resolveLimits(record.limits, {}, this.limits, {}), timeoutMs: record.maxLifetimeMs + LIFETIME_BACKSTOP_MS },
        network: 'none',
        stdin: false,
        files: [],
        labels: { 'dev.kindling.sandbox': id, 'dev.kindling.tenant': record.tenant },
      },
      {
        ...((record.storage ?? null) === null ? {} : { storage: { fromSnapshot: record.storage!.fromSnapshot } }),
        ...(restore ? { restore: 'hibernated' as const } : {}),
      },
    );
    this.options.store.put(record);
    const entry: Live = {
      record,
      sandbox,
      busy: 0,
      idleTimer: null,
      lifetimeTimer: setTimeout(() => void this.stop(entry, 'maxLifetimeMs passed').catch((error: unknown) => this.options.onError?.(error, { sandbox: id })), record.maxLifetimeMs),
      chain: Promise.resolve(),
      stopping: null,
      hibernating: false,
    };
    entry.lifetimeTimer.unref();
    this.live.set(id, entry);
    this.accounting.meterStart(record, sandbox);
    // A sandbox that dies on its own (its supervisor killed, OOM) is stopped.
    void sandbox.disposed.then(() => {
      if (this.live.get(id) === entry && !entry.hibernating) this.finish(entry, entry.stopping ?? 'the sandbox ended on its own (out of memory, or its processes were killed)');
    });
    this.armIdle(entry);
    return entry;
  }

  /** A stopped sandbox whose files were kept, started again: a new process tree on the same files. */
  private restart(record: SandboxRecord): Promise<Live> {
    let pending = this.restarting.get(record.id);
    if (pending !== undefined) return pending;
    pending = (async () => {
      if (this.closed) throw new KindlingError('SHUTTING_DOWN', 'the server is shutting down');
      const executor = this.options.executors.get(record.executor as ExecutorName);
      if (executor?.createPersistentSandbox === undefined) {
        throw new KindlingError('SANDBOX_NOT_RUNNING', `sandbox ${record.id} has stopped and its executor (${record.executor}) is not enabled on this server`, { details: { sandbox: record.id, state: record.state } });
      }
      // Its disk is already counted (kept while stopped): it needs a running slot and its memory.
      const release = this.accounting.reserve(record.tenant, { running: 1, memoryMb: record.limits.memoryMb });
      // A hibernated sandbox whose processes were saved gets them back; one hibernated with its files only starts anew.
      const restore = record.state === 'hibernated' && record.hibernation?.processesKept === true;
      try {
        const now = Date.now();
        return await this.launch({ ...record, state: 'running', stoppedAtMs: null, stopReason: null, lastActiveAtMs: now, startedAtMs: now, hibernation: null }, executor, restore);
      } catch (error) {
        if (restore && error instanceof KindlingError && error.code === 'SANDBOX_STATE_LOST') {
          // The saved processes are gone for good: the files stay, and the next command starts a new process tree.
          this.options.store.put({ ...record, state: 'stopped', hibernation: null, stoppedAtMs: Date.now(), stopReason: `its hibernated processes could not be restored (${error.message.slice(0, 300)}); its files are kept and the next command starts a new process tree` });
        }
        throw error;
      } finally {
        release();
      }
    })();
    this.restarting.set(record.id, pending);
    void pending.then(
      () => this.restarting.delete(record.id),
      () => this.restarting.delete(record.id),
    );
    return pending;
  }

  /**
   * The live entry of a sandbox, started again first when it stopped with its files kept, or woken when hibernated
   * (unless `autoResume` is false: 409 SANDBOX_PAUSED, as for a paused one).
   */
  private async liveEntry(tenant: string, id: string, autoResume = true): Promise<Live> {
    const record = this.record(tenant, id);
    const entry = this.live.get(id);
    if (entry !== undefined && entry.sandbox.alive) return entry;
    const restarting = this.restarting.get(id);
    if (restarting !== undefined) return restarting;
    if (entry === undefined && record.state === 'hibernated') {
      if (!autoResume) throw new KindlingError('SANDBOX_PAUSED', `sandbox ${id} is hibernated: resume it (POST /v1/sandboxes/${id}/resume) or send autoResume: true`, { details: { sandbox: id, state: 'hibernated' } });
      return this.restart(record);
    }
    if (entry === undefined && record.state === 'stopped' && (record.storage ?? null) !== null) return this.restart(record);
    return this.entry(tenant, id);
  }

  private noSnapshots(executor: string): KindlingError {
    return new KindlingError('SNAPSHOTS_UNSUPPORTED', `the ${executor} executor keeps no sandbox files on disk in this version: no snapshots, forks or fromSnapshot there; use executor "sandbox", "docker" or "gvisor"`, { details: { executor } });
  }

  /** The tenant's sandboxes in `filter.state` (any when absent) whose metadata holds every pair of `filter.metadata`. */
  list(tenant: string, filter: SandboxListFilter | SandboxState = {}): SandboxView[] {
    const { state, metadata = {} } = typeof filter === 'string' ? { state: filter } : filter;
    const pairs = Object.entries(metadata);
    if (pairs.length > MAX_METADATA_FILTERS) {
      throw new KindlingError('VALIDATION_FAILED', `filter on at most ${MAX_METADATA_FILTERS} metadata keys at once, got ${pairs.length}`, { details: { field: 'metadata', max: MAX_METADATA_FILTERS } });
    }
    return this.options.store
      .list(tenant)
      .map((record) => this.live.get(record.id)?.record ?? record)
      .filter((record) => (state === undefined || record.state === state) && pairs.every(([key, value]) => Object.hasOwn(record.metadata, key) && record.metadata[key] === value))
      .map((record) => this.view(record, this.live.get(record.id)?.sandbox ?? null));
  }

  /**
   * PATCH: `timeoutMs` makes the sandbox stop that long from now (its max lifetime moved; at most the server's cap
   * counted from when its processes started), `idleTimeoutMs` replaces its idle timeout (at most its max lifetime). On
   * a sandbox without processes (stopped or hibernated) `timeoutMs` is the lifetime of its next run.
   */
  update(tenant: string, id: string, request: UpdateSandboxRequest): SandboxView {
    const stored = this.record(tenant, id);
    const entry = this.live.get(id);
    const record = entry?.record ?? stored;
    const now = Date.now();
    const running = entry !== undefined && entry.sandbox.alive;
    // Time already lived counts against the cap (a live sandbox); a sandbox without processes starts its clock anew.
    const lived = running ? now - (record.startedAtMs ?? record.createdAtMs) : 0;
    let maxLifetimeMs = record.maxLifetimeMs;
    if (request.timeoutMs !== undefined) maxLifetimeMs = lived + this.duration('timeoutMs', request.timeoutMs, 0, 1000, this.maxLifetimeCapMs - lived);
    const idleTimeoutMs = this.duration('idleTimeoutMs', request.idleTimeoutMs, Math.min(record.idleTimeoutMs, maxLifetimeMs), 1000, maxLifetimeMs);
    const next = { ...record, maxLifetimeMs, idleTimeoutMs };
    if (running) {
      entry.record = next;
      clearTimeout(entry.lifetimeTimer);
      entry.lifetimeTimer = setTimeout(() => void this.stop(entry, 'maxLifetimeMs passed').catch((error: unknown) => this.options.onError?.(error, { sandbox: id })), Math.max(0, maxLifetimeMs - lived));
      entry.lifetimeTimer.unref();
      this.armIdle(entry);
    }
    this.options.store.put(next);
    return this.view(next, running ? entry.sandbox : null);
  }

  /**
   * Hibernates the sandbox: it holds no RAM afterwards. On an executor with the `hibernate` capability its processes
   * and memory are saved and come back on resume (or the next command); elsewhere its files are kept and its processes
   * end (`hibernation.processesKept: false`; a resume starts a new process tree). Idempotent on a hibernated sandbox.
   * Refused on an executor that would lose the files with the processes (no persistent storage): pause it instead.
   */
  async hibernate(tenant: string, id: string): Promise<SandboxView> {
    await this.restarting.get(id)?.catch(() => {});
    const record = this.record(tenant, id);
    if (record.state === 'hibernated') return this.view(record, null);
    const entry = this.live.get(id);
    if (entry === undefined || !entry.sandbox.alive) {
      throw new KindlingError('SANDBOX_NOT_RUNNING', `sandbox ${id} has stopped (${record.stopReason ?? 'ended'}): no process is left to hibernate${(record.storage ?? null) === null ? '' : '; its files are kept and the next command starts it again'}`, { details: { sandbox: id, state: record.state } });
    }
    if (!this.canHibernate(entry)) {
      throw new KindlingError('SANDBOXES_UNSUPPORTED', `the ${record.executor} executor keeps no sandbox files once its processes end, so hibernating would lose them: pause it instead (POST /v1/sandboxes/${id}/pause)`, { details: { executor: record.executor } });
    }
    await this.hibernateEntry(entry, false);
    return this.view(entry.record, null);
  }

  private canHibernate(entry: Live): boolean {
    return (entry.sandbox.capabilities.hibernate && entry.sandbox.hibernate !== undefined) || (entry.record.storage ?? null) !== null;
  }

  /** Saves (or, without the capability, ends) the sandbox's processes; its record says hibernated. `idle`: only if still idle. */
  private hibernateEntry(entry: Live, idle: boolean): Promise<void> {
    return this.serial(entry, async () => {
      if (this.live.get(entry.record.id) !== entry || !entry.sandbox.alive) return;
      if (idle && (entry.record.state !== 'running' || entry.busy > 0)) return;
      const withProcesses = entry.sandbox.capabilities.hibernate && entry.sandbox.hibernate !== undefined;
      entry.hibernating = true;
      // The cgroup's last CPU count is read before the processes go.
      this.accounting.meterStop(entry.record.id);
      let bytes: number | null = null;
      try {
        if (withProcesses) bytes = (await entry.sandbox.hibernate!()).bytes;
        else await entry.sandbox.destroy();
      } catch (error) {
        entry.hibernating = false;
        if (entry.sandbox.alive) this.accounting.meterStart(entry.record, entry.sandbox);
        else this.finish(entry, `hibernating failed: ${(error as Error).message?.slice(0, 300) ?? 'unknown error'}`);
        throw error;
      }
      const reason = withProcesses ? 'hibernated: its processes and memory were saved and come back on resume' : `hibernated: its files are kept; its processes ended (the ${entry.record.executor} executor cannot save them) and a resume starts a new process tree`;
      this.finish(entry, reason, { processesKept: withProcesses, bytes, atMs: Date.now() });
    });
  }

  get(tenant: string, id: string): SandboxView {
    const record = this.record(tenant, id);
    return this.view(record, this.live.get(id)?.sandbox ?? null);
  }

  /** Destroys the sandbox (if still live), removes its kept files and forgets its record. */
  async delete(tenant: string, id: string): Promise<void> {
    const record = this.record(tenant, id);
    await this.restarting.get(id)?.catch(() => {});
    const entry = this.live.get(id);
    if (entry !== undefined) await this.stop(entry, 'deleted');
    // A saved hibernation image lives in the executor's storage under the sandbox's id too.
    if ((record.storage ?? null) !== null || (record.hibernation ?? null) !== null) await this.options.executors.get(record.executor as ExecutorName)?.sandboxStorage?.removeDisk(id);
    // Background commands kept across a hibernation go with the sandbox.
    this.background.delete(id);
    this.options.store.delete(id);
  }

  /* -- snapshots and forks ------------------------------------------------------------------------------------------ */

  /** Copies the sandbox's files into a new immutable snapshot (a stopped sandbox is started again first). */
  async snapshot(tenant: string, id: string): Promise<SnapshotView> {
    const record = this.record(tenant, id);
    if (this.options.executors.get(record.executor as ExecutorName)?.sandboxStorage === undefined || (record.storage ?? null) === null) throw this.noSnapshots(record.executor);
    const count = this.options.store.listSnapshots(tenant).length + (this.snapshotting.get(tenant) ?? 0);
    if (count >= this.maxSnapshotsPerTenant) {
      throw new KindlingError('TENANT_SNAPSHOT_LIMIT', `tenant "${tenant}" keeps ${count} snapshots, its cap (${this.maxSnapshotsPerTenant}); delete one (DELETE /v1/snapshots/ID) first`, { details: { cap: this.maxSnapshotsPerTenant } });
    }
    // maxSnapshotBytes: refused before when no byte is left, and after (the snapshot removed) when it did not fit.
    this.accounting.checkSnapshot(tenant, 1);
    this.snapshotting.set(tenant, (this.snapshotting.get(tenant) ?? 0) + 1);
    try {
      const entry = await this.liveEntry(tenant, id);
      const snapshotId = newId('snap');
      const { bytes, memory } = await this.serial(entry, () => entry.sandbox.snapshot!(snapshotId));
      this.touch(entry);
      try {
        this.accounting.checkSnapshot(tenant, bytes);
      } catch (error) {
        await this.options.executors.get(entry.record.executor as ExecutorName)?.sandboxStorage?.removeSnapshot(snapshotId).catch(() => {});
        throw error;
      }
      const snapshot: SnapshotRecord = {
        id: snapshotId,
        tenant,
        sandboxId: id,
        executor: entry.record.executor,
        image: entry.record.image,
        runtime: entry.record.runtime,
        limits: entry.record.limits,
        createdAtMs: Date.now(),
        bytes,
        memory: memory === true,
      };
      this.options.store.putSnapshot(snapshot);
      return snapshotView(snapshot);
    } finally {
      this.snapshotting.set(tenant, (this.snapshotting.get(tenant) ?? 1) - 1);
    }
  }

  listSnapshots(tenant: string, sandboxId?: string): SnapshotView[] {
    if (sandboxId !== undefined) this.record(tenant, sandboxId);
    return this.options.store.listSnapshots(tenant, sandboxId).map(snapshotView);
  }

  getSnapshot(tenant: string, id: string): SnapshotView {
    return snapshotView(this.snapshotRecord(tenant, id));
  }

  /** Removes a snapshot and its files; refused (409) while sandboxes are made from it. */
  async deleteSnapshot(tenant: string, id: string): Promise<void> {
    const snapshot = this.snapshotRecord(tenant, id);
    const users = this.options.store.sandboxesOn(id);
    if (users.length > 0) {
      throw new KindlingError('SNAPSHOT_IN_USE', `snapshot ${id} is the read-only layer under ${users.length} sandbox(es) (${users.slice(0, 5).join(', ')}): delete them first`, { details: { snapshot: id, sandboxes: users.slice(0, 100) } });
    }
    this.options.store.deleteSnapshot(id);
    await this.options.executors.get(snapshot.executor as ExecutorName)?.sandboxStorage?.removeSnapshot(id);
  }

  /**
   * A snapshot of the sandbox and `count` new sandboxes made from it (its settings, env and metadata), each on its own
   * disk: they never see each other's later writes. Refused before anything is made when the tenant's cap cannot take
   * `count` more; a failure half-way removes the forks made and the snapshot.
   */
  async fork(tenant: string, id: string, count: number): Promise<{ snapshot: SnapshotView; sandboxes: SandboxView[] }> {
    const record = this.record(tenant, id);
    const maxCount = this.accounting.quotasOf(tenant).maxSandboxes ?? this.maxPerTenant;
    if (!Number.isInteger(count) || count < 1 || count > Math.max(1, maxCount)) {
      throw new KindlingError('LIMIT_OUT_OF_RANGE', `count must be a whole number from 1 to ${Math.max(1, maxCount)} (the tenant's sandbox quota maxSandboxes)`, { details: { field: 'count', min: 1, max: Math.max(1, maxCount) } });
    }
    if (this.options.executors.get(record.executor as ExecutorName)?.sandboxStorage === undefined || (record.storage ?? null) === null) throw this.noSnapshots(record.executor);
    // The parent itself is started again when stopped: it needs room too.
    const parentRoom = this.live.has(id) ? 0 : 1;
    const limits = (this.live.get(id)?.record ?? record).limits;
    // Every fork counts (running, memory, disk) before the snapshot is made; the parent's restart needs a slot too.
    this.accounting.check(tenant, { running: count + parentRoom, memoryMb: (count + parentRoom) * limits.memoryMb, diskMb: count * limits.diskMb });
    const release = this.accounting.reserve(tenant, { running: count });
    try {
      const snapshot = await this.snapshot(tenant, id);
      const parent = this.live.get(id)?.record ?? record;
      const request: CreateSandboxRequest = {
        fromSnapshot: snapshot.id,
        env: Object.fromEntries(Object.entries(parent.env ?? {}).filter(([name]) => parent.envNames.includes(name))),
        idleTimeoutMs: parent.idleTimeoutMs,
        maxLifetimeMs: parent.maxLifetimeMs,
        metadata: parent.metadata,
      };
      const made = await Promise.allSettled(Array.from({ length: count }, () => this.createEntry(tenant, { ...request }, true)));
      const failed = made.find((result): result is PromiseRejectedResult => result.status === 'rejected');
      if (failed !== undefined) {
        for (const result of made) if (result.status === 'fulfilled') await this.delete(tenant, result.value.record.id).catch(() => {});
        await this.deleteSnapshot(tenant, snapshot.id).catch(() => {});
        throw failed.reason;
      }
      return { snapshot, sandboxes: made.map((result) => (result as PromiseFulfilledResult<Live>).value).map((entry) => this.view(entry.record, entry.sandbox)) };
    } finally {
      release();
    }
  }

  private snapshotRecord(tenant: string, id: string): SnapshotRecord {
    const snapshot = typeof id === 'string' ? this.options.store.getSnapshot(id) : null;
    if (snapshot === null || snapshot.tenant !== tenant) throw new KindlingError('SNAPSHOT_NOT_FOUND', `no snapshot "${String(id).slice(0, 100)}"`, { details: { snapshot: String(id).slice(0, 100) } });
    return snapshot;
  }

  /* ---------------------------------------------------------------------------------------------------------------- */

  async pause(tenant: string, id: string): Promise<SandboxView> {
    // A hibernated sandbox is paused already (and holds less).
    const hibernated = this.record(tenant, id);
    if (hibernated.state === 'hibernated' && !this.live.has(id)) return this.view(hibernated, null);
    const entry = this.entry(tenant, id);
    if (entry.record.state === 'running') this.accounting.check(tenant, { paused: 1 });
    await this.serial(entry, async () => {
      if (entry.record.state !== 'running') return;
      this.accounting.meterPause(entry.record.id);
      await entry.sandbox.pause();
      this.setState(entry, 'paused');
    });
    return this.view(entry.record, entry.sandbox);
  }

  async resume(tenant: string, id: string): Promise<SandboxView> {
    const entry = await this.liveEntry(tenant, id);
    await this.resumeEntry(entry);
    this.touch(entry);
    return this.view(entry.record, entry.sandbox);
  }

  /**
   * Runs a command and answers the execute contract's result: a non-zero exit or a timeout is a result. The timeout
   * kills the command's process tree, never the sandbox.
   */
  async run(tenant: string, id: string, input: SandboxCommandInput, hooks: RunHooks = {}): Promise<ExecutionResult> {
    const timeoutMs = this.duration('timeoutMs', input.timeoutMs, DEFAULT_COMMAND_TIMEOUT_MS, 1, this.limits.max.timeoutMs);
    const stdin = stdinOf(input);
    const outputBytes = input.outputBytes ?? DEFAULT_OUTPUT_BYTES;
    if (!Number.isInteger(outputBytes) || outputBytes < 0 || outputBytes > this.limits.max.outputBytes) {
      throw new KindlingError('LIMIT_OUT_OF_RANGE', `outputBytes must be a whole number from 0 to ${this.limits.max.outputBytes}`, { details: { field: 'outputBytes' } });
    }
    const workdir = input.workdir === undefined ? WORKDIR : this.cleanPath(input.workdir, 'workdir');
    return this.withCommand(tenant, id, input.autoResume ?? true, async (entry) => {
      const started = performance.now();
      const command = await entry.sandbox.exec({ command: input.command, env: input.env ?? {}, workdir, stdin: stdin !== undefined });
      if (command.stdin !== null) command.stdin.end(stdin ?? '');
      const resultId = newId('cmd');
      if (hooks.onOutput !== undefined) {
        for (const name of ['stdout', 'stderr'] as const) {
          const decoder = new StringDecoder('utf8');
          const emit = (text: string): void => {
            if (text !== '') hooks.onOutput!(name, text);
          };
          command[name].on('data', (chunk: Buffer) => emit(decoder.write(chunk)));
          command[name].once('end', () => emit(decoder.end()));
        }
      }
      hooks.onStarted?.(resultId);
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        command.kill();
      }, timeoutMs);
      const onAbort = (): void => command.kill();
      if (hooks.signal?.aborted) command.kill();
      hooks.signal?.addEventListener('abort', onAbort, { once: true });
      const [stdout, stderr] = [collect(command.stdout, outputBytes), collect(command.stderr, outputBytes)];
      const exit = await command.wait().finally(() => {
        clearTimeout(timer);
        hooks.signal?.removeEventListener('abort', onAbort);
      });
      const [out, err] = await Promise.all([stdout, stderr]);
      const durationMs = Math.round((performance.now() - started) * 100) / 100;
      return {
        id: resultId,
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

  /**
   * Writes `body` to `path` inside the sandbox (parents made); bounded by the sandbox's diskMb. `body` is a stream, or
   * a pump that moves it into a given stdin itself (the splice relay of a large upload).
   */
  async writeFile(tenant: string, id: string, path: string, body: Readable | BodyPump): Promise<{ path: string; size: number }> {
    const target = this.cleanPath(path, 'path');
    if (target === '/') throw new KindlingError('SANDBOX_PATH_INVALID', 'path must name a file, not /', { details: { field: 'path' } });
    return this.withCommand(tenant, id, true, async (entry) => {
      // On the sandbox's disk from the host where the executor can (no command, no FIFO: several times the speed);
      // null: this path is left to a command inside the sandbox (a symlink on the way, a directory, ...).
      if (entry.sandbox.writeFileDirect !== undefined) {
        let direct: { size: number } | null;
        try {
          direct = await entry.sandbox.writeFileDirect(target, body, entry.record.limits.diskMb);
        } catch (error) {
          // The partial file goes too (a full disk removed it already).
          if (!(error instanceof KindlingError && error.code === 'SANDBOX_DISK_FULL')) await this.cleanupPartial(entry, target);
          throw error;
        }
        if (direct !== null) return { path: target, size: direct.size };
      }
      const command = await entry.sandbox.exec({
        command: ['sh', '-c', 'd="${1%/*}"; [ -z "$d" ] || mkdir -p -- "$d" || exit 3; [ ! -d "$1" ] || { echo "is a directory" >&2; exit 4; }; cat > "$1" || { rm -f -- "$1"; exit 5; }; wc -c < "$1"', 'kindling-write', target],
        env: {},
        workdir: WORKDIR,
        stdin: true,
      });
      let sent = 0;
      let bodyError: unknown = null;
      const failed = (error: unknown): void => {
        bodyError = error;
        command.kill();
      };
      if (typeof body === 'function') {
        void body(command.stdin!).then((bytes) => (sent = bytes), failed);
      } else {
        body.on('data', (chunk: Buffer) => (sent += chunk.length));
        body.pipe(command.stdin!);
        body.on('error', failed);
      }
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
    const direct = await this.readDirect(tenant, id, target);
    if (direct !== null) return direct;
    return this.streamOut(tenant, id, target, ['sh', '-c', '[ -d "$1" ] && { echo "is a directory" >&2; exit 4; }; exec cat -- "$1"', 'kindling-read', target]);
  }

  /**
   * A regular file read on the sandbox's disk from the host where the executor can (see writeFile); null: left to a
   * command. The sandbox counts as busy until the stream ended, as with a command.
   */
  private async readDirect(tenant: string, id: string, target: string): Promise<Readable | null> {
    const entry = await this.liveEntry(tenant, id);
    if (entry.sandbox.readFileDirect === undefined) return null;
    await this.beforeCommand(entry, true);
    entry.busy++;
    let stream: Readable | null = null;
    try {
      stream = await entry.sandbox.readFileDirect(target);
    } finally {
      if (stream === null) this.done(entry);
    }
    if (stream !== null) stream.once('close', () => this.done(entry));
    return stream;
  }

  /**
   * A tar archive (GNU tar, inside the sandbox) of the directory `path`, streamed: names relative to it, symlinks
   * kept as symlinks (never followed), numeric owners. Rejects with a 4xx when it is not a directory.
   */
  async readTar(tenant: string, id: string, path: string): Promise<Readable> {
    const target = this.cleanPath(path, 'path');
    return this.streamOut(tenant, id, target, ['sh', '-c', '[ -d "$1" ] || { [ -e "$1" ] && { echo "not a directory" >&2; exit 4; }; echo "No such file" >&2; exit 1; }; exec tar -C "$1" --numeric-owner -cf - .', 'kindling-tar-read', target]);
  }

  /**
   * Makes the directory `path` (with its parents unless `parents` is false: then a missing parent is 404). Answers
   * whether it was made; an existing directory is fine, an existing file is 400.
   */
  async mkdir(tenant: string, id: string, path: string, parents = true): Promise<{ path: string; created: boolean }> {
    const target = this.cleanPath(path, 'path');
    return this.withCommand(tenant, id, true, async (entry) => {
      const command = await entry.sandbox.exec({
        command: ['sh', '-c', '[ -d "$1" ] && { echo exists; exit 0; }; [ -e "$1" ] || [ -L "$1" ] && { echo "exists and is not a directory" >&2; exit 4; }; if [ "$2" = 1 ]; then mkdir -p -- "$1" || exit 5; else [ -d "${1%/*}/" ] || { echo "No such file: parent" >&2; exit 6; }; mkdir -- "$1" || exit 5; fi', 'kindling-mkdir', target, parents ? '1' : '0'],
        env: {},
        workdir: WORKDIR,
        stdin: false,
      });
      const out = collect(command.stdout, 64);
      const err = collect(command.stderr, 4096);
      const exit = await command.wait();
      const [stdout, stderr] = await Promise.all([out, err]);
      if (exit.exitCode === 4) throw new KindlingError('SANDBOX_PATH_INVALID', `${target} exists and is not a directory`, { details: { path: target } });
      if (exit.exitCode === 6) {
        // Without parents only the parent can be missing: name it, and the two ways out.
        const parent = target.replace(/\/[^/]*\/*$/, '') || '/';
        throw new KindlingError('SANDBOX_FILE_NOT_FOUND', `cannot make ${target}: its parent directory ${parent} does not exist in the sandbox; make it first, or pass parents: true (CLI: leave out --no-parents)`, { details: { path: target, parent } });
      }
      if (exit.exitCode !== 0) throw fileError(target, exit.exitCode, stderr.text, entry.record.limits.diskMb);
      return { path: target, created: stdout.text.trim() !== 'exists' };
    });
  }

  /**
   * Extracts a tar archive streamed in `body` into the directory `path` (made when missing), inside the sandbox.
   * Each entry is checked as it passes (tar-guard.ts: nothing may leave the directory, no devices); the archive is
   * extracted into a staging directory beside the files and merged in (hard links, no copy) only once all of it was
   * read and accepted, so a refused or broken archive changes nothing. Bounded by the sandbox's diskMb.
   */
  async writeTar(tenant: string, id: string, path: string, body: Readable): Promise<{ path: string; entries: number; bytes: number }> {
    const target = this.cleanPath(path, 'path');
    return this.withCommand(tenant, id, true, async (entry) => {
      const stage = `${target === '/' ? '' : target}/.kindling-upload-${newId('tar')}`;
      const command = await entry.sandbox.exec({
        command: [
          'sh',
          '-c',
          '[ -d "$1" ] || { [ -e "$1" ] && { echo "exists and is not a directory" >&2; exit 4; }; mkdir -p -- "$1" || exit 5; }; mkdir -- "$2" || exit 5; ' +
            'tar -x --no-same-owner --delay-directory-restore -C "$2" -f - || { rm -rf -- "$2"; exit 5; }; ' +
            'cp -a -l --remove-destination -- "$2"/. "$1"/ || { rm -rf -- "$2"; exit 6; }; rm -rf -- "$2"',
          'kindling-tar-write',
          target,
          stage,
        ],
        env: {},
        workdir: WORKDIR,
        stdin: true,
      });
      const guard = new TarGuard();
      let refused: unknown = null;
      const fail = (error: unknown): void => {
        refused ??= error;
        // tar must not see the end of a refused archive as a complete one: it is killed (and the staging dir goes).
        command.kill();
      };
      guard.on('error', fail);
      body.on('error', fail);
      body.pipe(guard).pipe(command.stdin!);
      const err = collect(command.stderr, 4096);
      command.stdout.resume();
      const exit = await command.wait();
      const stderr = await err;
      if (refused !== null) {
        await this.cleanupPartial(entry, stage);
        throw refused;
      }
      if (exit.exitCode === 4) throw new KindlingError('SANDBOX_PATH_INVALID', `${target} exists and is not a directory`, { details: { path: target } });
      if (exit.exitCode !== 0) {
        await this.cleanupPartial(entry, stage);
        // GNU tar reports a full disk as a short write ("Wrote only N of M bytes") as often as by errno.
        if (/No space left|Disk quota|Wrote only/i.test(stderr.text)) throw new KindlingError('SANDBOX_DISK_FULL', `the archive does not fit in the sandbox's writable space (diskMb ${entry.record.limits.diskMb}); nothing was kept`, { details: { path: target, diskMb: entry.record.limits.diskMb } });
        const message = stderr.text.trim().split('\n').pop()?.slice(0, 300) ?? '';
        throw new KindlingError('SANDBOX_TAR_INVALID', `extracting into ${target} failed: ${message || `tar exited with ${exit.exitCode}`}`, { details: { path: target } });
      }
      return { path: target, ...guard.summary };
    });
  }

  /** Runs `command` (which writes the content to stdout) and answers its output as a stream once the first byte or the end arrived. */
  private async streamOut(tenant: string, id: string, target: string, argv: string[]): Promise<Readable> {
    const entry = await this.liveEntry(tenant, id);
    await this.beforeCommand(entry, true);
    entry.busy++;
    let command: SandboxCommand;
    try {
      command = await entry.sandbox.exec({ command: argv, env: {}, workdir: WORKDIR, stdin: false });
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
    const command = await entry.sandbox.exec({ command: ['rm', '-rf', '--', target], env: {}, workdir: WORKDIR, stdin: false });
    command.stdout.resume();
    command.stderr.resume();
    await command.wait();
  }

  async listFiles(tenant: string, id: string, path: string): Promise<{ path: string; entries: SandboxFileEntry[] }> {
    const target = this.cleanPath(path, 'path');
    return this.withCommand(tenant, id, true, async (entry) => {
      // One record per entry: "<type letter> <octal mode> <size> <mtime> <name>", NUL-terminated (a name may hold a
      // newline). find(1) rather than stat(1): gVisor's runsc refuses the statx flags coreutils' stat and ls use.
      const command = await entry.sandbox.exec({
        command: ['sh', '-c', 'cd -- "$1" || exit 2; find . -mindepth 1 -maxdepth 1 -printf "%y %m %s %T@ %f\\0" || exit 6', 'kindling-list', target],
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
          const [kind, mode, size, mtime] = line.split(' ', 4);
          const name = line.slice(kind!.length + mode!.length + size!.length + mtime!.length + 4);
          return {
            name,
            path: posix.join(target, name),
            type: kind === 'f' ? 'file' : kind === 'd' ? 'dir' : kind === 'l' ? 'symlink' : 'other',
            size: Number(size),
            mode: mode!.padStart(3, '0'),
            modifiedAt: new Date(Math.floor(Number(mtime)) * 1000).toISOString(),
          } satisfies SandboxFileEntry;
        })
        // find lists in directory order; the listing is by name.
        .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
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

  /* Background commands (POST .../commands {background: true}, GET/DELETE .../commands/CID, .../logs) ---------------- */

  /**
   * Starts a command in the background and answers its handle once it runs (its pid known). It runs until it exits,
   * is killed, reaches `timeoutMs` (none by default) or the sandbox stops; its output is kept bounded for `.../logs`.
   * A running background command does not keep the sandbox awake: idle auto-pause freezes it with the rest.
   */
  async start(tenant: string, id: string, input: SandboxCommandInput): Promise<SandboxCommandView> {
    const timeoutMs = input.timeoutMs === undefined ? null : this.duration('timeoutMs', input.timeoutMs, 0, 1, this.maxLifetimeCapMs);
    const outputBytes = input.outputBytes ?? DEFAULT_BACKGROUND_OUTPUT_BYTES;
    if (!Number.isInteger(outputBytes) || outputBytes < 0 || outputBytes > MAX_BACKGROUND_OUTPUT_BYTES) {
      throw new KindlingError('LIMIT_OUT_OF_RANGE', `outputBytes of a background command (its kept logs) must be a whole number from 0 to ${MAX_BACKGROUND_OUTPUT_BYTES}`, { details: { field: 'outputBytes' } });
    }
    const stdin = stdinOf(input);
    const workdir = input.workdir === undefined ? WORKDIR : this.cleanPath(input.workdir, 'workdir');
    return this.withCommand(tenant, id, input.autoResume ?? true, async (entry) => {
      const registry = this.commandsOf(entry.record.id);
      registry.assertRoom(entry.record.id);
      const command = await entry.sandbox.exec({ command: input.command, env: input.env ?? {}, workdir, stdin: stdin !== undefined, background: true });
      if (command.stdin !== null) command.stdin.end(stdin ?? '');
      const handle = new BackgroundCommand(newId('cmd'), [...input.command], command, outputBytes, timeoutMs);
      registry.add(handle);
      handle.pid = (await command.pid?.()) ?? null;
      return handle.view();
    });
  }

  /* -- pty (interactive terminal; see sandbox-pty.ts) ------------------------------------------------------------ */
  /**
   * Opens a terminal in the sandbox running `command` (default: bash, else sh) at cols x rows. The sandbox counts as
   * busy (no idle auto-pause) while the terminal is open. Needs python3 in the image: SANDBOX_PTY_UNSUPPORTED otherwise.
   */
  async openPty(tenant: string, id: string, input: { cols: number; rows: number; command?: string[]; env?: Record<string, string> }): Promise<PtySession> {
    for (const [field, value] of [['cols', input.cols], ['rows', input.rows]] as const) {
      if (!Number.isInteger(value) || value < 1 || value > PTY_MAX_DIMENSION) throw new KindlingError('VALIDATION_FAILED', `${field} must be a whole number from 1 to ${PTY_MAX_DIMENSION}`, { details: { field } });
    }
    if (input.command !== undefined && input.command.length === 0) throw new KindlingError('VALIDATION_FAILED', 'command must not be empty (leave it out for the shell)', { details: { field: 'command' } });
    const entry = await this.liveEntry(tenant, id);
    await this.beforeCommand(entry, true);
    entry.busy++;
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      this.done(entry);
    };
    try {
      const probe = await entry.sandbox.exec({ command: ['sh', '-c', 'command -v python3'], env: {}, workdir: WORKDIR, stdin: false });
      probe.stdout.resume();
      probe.stderr.resume();
      if ((await probe.wait()).exitCode !== 0) {
        throw new KindlingError('SANDBOX_PTY_UNSUPPORTED', `sandbox ${id} (image ${entry.record.image}) has no python3, which its terminal needs; use a python runtime or an image with python3, or run commands (POST /v1/sandboxes/${id}/commands)`, { details: { sandbox: id, image: entry.record.image } });
      }
      const command = await entry.sandbox.exec({
        command: ['python3', '-c', PTY_RELAY, String(input.cols), String(input.rows), ...(input.command ?? [])],
        // gVisor's line discipline (runsc 2022) sends no signal for Ctrl-C/Ctrl-\ or Ctrl-Z: the relay does (sandbox-pty.ts).
        env: { TERM: 'xterm-256color', ...(input.env ?? {}), ...(entry.record.executor === 'gvisor' ? { KINDLING_PTY_SIGNALS: '1' } : {}) },
        workdir: WORKDIR,
        stdin: true,
      });
      return new PtySession(command, release);
    } catch (error) {
      release();
      throw error;
    }
  }
  /* -- end pty ----------------------------------------------------------------------------------------------------- */

  listCommands(tenant: string, id: string): SandboxCommandView[] {
    const entry = this.entry(tenant, id);
    return this.commandsOf(entry.record.id).list().map((command) => command.view());
  }

  getCommand(tenant: string, id: string, commandId: string): SandboxCommandView {
    const entry = this.entry(tenant, id);
    return this.commandsOf(entry.record.id).get(id, commandId).view();
  }

  /**
   * Follows a background command's output: what was kept so far, then live chunks, then its exit. While followed, the
   * sandbox counts as busy (no idle pause). Call `release()` when the follower goes.
   */
  followCommand(tenant: string, id: string, commandId: string, listener: (event: CommandEvent) => void): { replay: OutputChunk[]; view: SandboxCommandView; release: () => void } {
    const entry = this.entry(tenant, id);
    const command = this.commandsOf(entry.record.id).get(id, commandId);
    const view = command.view();
    const { replay, unsubscribe } = command.follow(listener);
    entry.busy++;
    this.touch(entry);
    let released = false;
    return {
      replay,
      view,
      release: () => {
        if (released) return;
        released = true;
        unsubscribe();
        this.done(entry);
      },
    };
  }

  /** Kills a background command's process tree (the sandbox and its other processes live on); idempotent. */
  async killCommand(tenant: string, id: string, commandId: string): Promise<SandboxCommandView> {
    const entry = this.entry(tenant, id);
    const command = this.commandsOf(entry.record.id).get(id, commandId);
    if (!command.running) return command.view();
    // A frozen process dies only once thawed: a paused sandbox is resumed first.
    return this.withCommand(tenant, id, true, () => command.kill());
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
    // A sandbox hibernated with its processes saved gets them back first (its server may be one of them); without
    // them there is nothing listening to wake it for.
    const record = this.record(tenant, id);
    const wake = record.state === 'hibernated' && record.hibernation?.processesKept === true && !this.live.has(id);
    const entry = wake ? await this.liveEntry(tenant, id) : this.entry(tenant, id);
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

  private commandsOf(sandbox: string): CommandRegistry {
    let registry = this.background.get(sandbox);
    if (registry === undefined) this.background.set(sandbox, (registry = new CommandRegistry()));
    return registry;
  }

  /* ---------------------------------------------------------------------------------------------------------------- */

  /** A deleted tenant's sandboxes go with it (processes, files and records). */
  async deleteTenant(tenant: string): Promise<void> {
    await Promise.allSettled([...this.live.values()].filter((entry) => entry.record.tenant === tenant).map((entry) => this.stop(entry, 'tenant deleted')));
    for (const record of this.options.store.list(tenant)) {
      if ((record.storage ?? null) !== null || (record.hibernation ?? null) !== null) await this.options.executors.get(record.executor as ExecutorName)?.sandboxStorage?.removeDisk(record.id).catch(() => {});
      this.background.delete(record.id);
      this.options.store.delete(record.id);
    }
    for (const snapshot of this.options.store.listSnapshots(tenant)) {
      this.options.store.deleteSnapshot(snapshot.id);
      await this.options.executors.get(snapshot.executor as ExecutorName)?.sandboxStorage?.removeSnapshot(snapshot.id).catch(() => {});
    }
  }

  /** Destroys every live sandbox (their records say stopped). Before the executors close. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.live.values()].map((entry) => this.stop(entry, 'server stopped')));
  }

  /* ---------------------------------------------------------------------------------------------------------------- */

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
      throw new KindlingError('SANDBOX_NOT_RUNNING', `sandbox ${id} has stopped (${record.stopReason ?? 'ended'})${(record.storage ?? null) === null ? '; its processes and files are gone: create a new one' : ''}`, { details: { sandbox: id, state: record.state } });
    }
    return entry;
  }

  private async withCommand<T>(tenant: string, id: string, autoResume: boolean, work: (entry: Live) => Promise<T>): Promise<T> {
    const entry = await this.liveEntry(tenant, id, autoResume);
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
      // maxSandboxes counts running ones: a paused sandbox needs a slot (its memory is counted already).
      this.accounting.check(entry.record.tenant, { running: 1 });
      await entry.sandbox.resume();
      this.setState(entry, 'running');
      this.accounting.meterResume(entry.record.id);
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
      // Idle auto-pause counts against maxPausedSandboxes too: past it the sandbox is hibernated instead (no RAM held),
      // where that keeps its files; elsewhere (no persistent storage) it is paused anyway, as files are never lost.
      const quota = this.accounting.quotasOf(entry.record.tenant).maxPausedSandboxes;
      if (quota !== null && this.accounting.footprint(entry.record.tenant).paused >= quota && this.canHibernate(entry)) {
        void this.hibernateEntry(entry, true).catch((error: unknown) => {
          // An executor may refuse to save processes in some states (gvisor, while an API command's pipes are open).
          // Pausing still stops the CPU and keeps everything; leaving the sandbox running would not.
          if (error instanceof KindlingError && error.code === 'SANDBOX_COMMANDS_RUNNING') return this.idlePause(entry);
          this.options.onError?.(error, { sandbox: entry.record.id, during: 'idle hibernate' });
        });
        return;
      }
      void this.idlePause(entry);
    }, entry.record.idleTimeoutMs);
    entry.idleTimer.unref();
  }

  /** Freezes a sandbox that is still idle; failures go to onError (nothing waits on it). */
  private idlePause(entry: Live): Promise<void> {
    return this.serial(entry, async () => {
      if (this.live.get(entry.record.id) !== entry || entry.record.state !== 'running' || entry.busy > 0) return;
      this.accounting.meterPause(entry.record.id);
      await entry.sandbox.pause();
      this.setState(entry, 'paused');
    }).catch((error: unknown) => this.options.onError?.(error, { sandbox: entry.record.id, during: 'idle pause' }));
  }

  private async stop(entry: Live, reason: string): Promise<void> {
    entry.stopping ??= reason;
    await this.serial(entry, async () => {
      // The cgroup's last CPU count is read before it goes.
      this.accounting.meterStop(entry.record.id);
      await entry.sandbox.destroy();
      this.finish(entry, reason);
    });
  }

  /** The sandbox's processes are gone: stopped, or hibernated when `hibernation` is given. */
  private finish(entry: Live, reason: string, hibernation: SandboxRecord['hibernation'] = null): void {
    if (this.live.get(entry.record.id) !== entry) return;
    this.accounting.meterStop(entry.record.id);
    this.live.delete(entry.record.id);
    // Background commands ended with the sandbox (their waits resolve as killed); their handles go with it. A
    // hibernation that saved the processes keeps them listed: an executor that keeps their streams too (microvm)
    // carries them on after the wake (logs, exit, kill); the others' end as killed, which their list then says.
    if (hibernation?.processesKept !== true) this.background.delete(entry.record.id);
    if (entry.idleTimer !== null) clearTimeout(entry.idleTimer);
    clearTimeout(entry.lifetimeTimer);
    entry.record = { ...entry.record, state: hibernation === null ? 'stopped' : 'hibernated', stoppedAtMs: Date.now(), stopReason: reason, hibernation };
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
      expiresAt: new Date((record.startedAtMs ?? record.createdAtMs) + record.maxLifetimeMs).toISOString(),
      stoppedAt: record.stoppedAtMs === null ? null : new Date(record.stoppedAtMs).toISOString(),
      stopReason: record.stopReason,
      usage: sandbox?.usage() ?? null,
      storage: { persistent: (record.storage ?? null) !== null, fromSnapshot: record.storage?.fromSnapshot ?? null },
      hibernation: record.state !== 'hibernated' || (record.hibernation ?? null) === null ? null : { processesKept: record.hibernation!.processesKept, bytes: record.hibernation!.bytes, at: new Date(record.hibernation!.atMs).toISOString() },
    };
  }
}

/** A command's stdin: `stdin` (text) or `stdinBase64` (bytes), at most one; undefined: /dev/null. */
function stdinOf(input: SandboxCommandInput): string | Buffer | undefined {
  if (input.stdin !== undefined && input.stdinBase64 !== undefined) {
    throw new KindlingError('CONFLICTING_FIELDS', 'give at most one of "stdin" and "stdinBase64"', { details: { fields: ['stdin', 'stdinBase64'] } });
  }
  return input.stdinBase64 !== undefined ? Buffer.from(input.stdinBase64, 'base64') : input.stdin;
}

function snapshotView(record: SnapshotRecord): SnapshotView {
  return {
    id: record.id,
    sandboxId: record.sandboxId,
    executor: record.executor,
    image: record.image,
    runtime: record.runtime,
    limits: record.limits,
    createdAt: new Date(record.createdAtMs).toISOString(),
    bytes: record.bytes,
    memory: record.memory === true,
    note: record.memory === true ? MEMORY_SNAPSHOT_NOTE : SNAPSHOT_NOTE,
  };
}

/** The fields of `value` that are not undefined (so that spreading it keeps defaults). */
function definedOnly<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
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
