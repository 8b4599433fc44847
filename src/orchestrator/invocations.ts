/**
 * Durable asynchronous invocations.
 *
 * Lifecycle: `enqueue` commits the invocation (with its payload) to the store before it answers, so a 202 is never
 * lost. A dispatcher claims queued invocations oldest first (FIFO) and runs at most `concurrency` at once; the claim
 * (`queued` -> `running`) is committed before the function starts.
 *
 * Crash policy (at-least-once delivery of the request, at-most-once execution of a claim): at start-up, invocations
 * still `queued` run; invocations left `running` by a server that died (kill -9, power loss, OOM) are marked `failed`
 * with the error "server stopped during the run" and are NOT retried automatically, because the function may have had
 * side effects before the crash. A client that wants another attempt retries with a new `Idempotency-Key`. The same
 * key for the same function within the retention window returns the first invocation and never runs again.
 *
 * Durability: the store commits in WAL mode with synchronous=NORMAL, which survives a killed process; a power loss
 * may lose the last commits (an OS-level crash is outside this promise).
 */
import { systemClock, type Clock } from '../core/clock.js';
import { KindlingError, isStorageFull } from '../core/errors.js';
import { newId } from '../core/ids.js';
import type { FinishedInvocation, InvocationFilter, InvocationOutcome, InvocationRecord, NewInvocation, Store } from '../store/store.js';
import type { TenantScope } from './execution-service.js';
import type { FunctionService } from './function-service.js';
import type { LogBus } from './log-bus.js';
import { InvocationRunner, knownFailure } from './invocation-runner.js';
import { checkStorageQuota, type StorageQuotas } from './storage-quotas.js';
import { ATTR, parseTraceparent, wallToSpanClockMs, type Tracer, type TraceSpan } from '../core/tracing.js';

export const SERVER_STOPPED_REASON = 'server stopped during the run';
/** How long a tenant at its concurrency quota is passed over by the dispatcher before its invocations are tried again. */
const TENANT_RETRY_MS = 100;
/** Finished synchronous invocations are written at most this long after they answered... */
const RECORD_FLUSH_MS = 10;
/** ...or as soon as this many wait. */
const RECORD_BATCH_MAX = 256;
const DEFAULT_TENANT = 'default';
/** How often a store write that met a full disk is tried again. */
const STORE_RETRY_MS = 1000;

export interface InvocationServiceOptions {
  store: Store;
  functionService: FunctionService;
  logBus: LogBus;
  /** Async invocations running at once. Default 8. */
  concurrency?: number;
  /**
   * Times an async invocation is started at most when its run is lost with its cluster worker (WORKER_LOST: the worker
   * died or was cut off mid-run, so it may have run): it is queued again until then, and recorded `failed` with the
   * reason after. Default 3. (A single server loses no worker: its crash policy is `start`'s.)
   */
  maxDeliveries?: number;
  /**
   * Cluster gateways: invocations a stopped gateway left running (their runs were on workers, whose answers it never
   * got) are queued again at its start, as a lost worker's are, while they were started fewer than maxDeliveries
   * times; the rest are failed. Default false: a single server fails them all (they may have had side effects).
   */
  redeliverInterrupted?: boolean;
  /** Finished invocations (with their output and logs) are deleted after this long. Default 7 days. */
  retentionMs?: number;
  /** Synchronous invocations are recorded with at most this many bytes of stdout and of stderr. Default 64 KiB. */
  syncLogBytes?: number;
  /** How often expired invocations are swept. Default: min(retentionMs / 10, 60 s). */
  sweepIntervalMs?: number;
  /** `host:port` entries a callback URL may point to; empty: callbacks are refused. */
  callbackAllow?: string[];
  /** Delivery attempts per callback. Default 5. */
  callbackMaxAttempts?: number;
  /** Delay before the second attempt; doubles each time (at most 60 s). Default 500. */
  callbackBaseDelayMs?: number;
  /** Timeout of one callback POST. Default 10 s. */
  callbackTimeoutMs?: number;
  clock?: Clock;
  onError?: (error: unknown, context: Record<string, unknown>) => void;
  onInfo?: (message: string, context: Record<string, unknown>) => void;
  /** The tenant's caps and concurrency slot for a queued invocation it runs (absent: no quotas). */
  scopeOf?: (tenant: string) => TenantScope | undefined;
  /** The tenant's quota on bytes of queued payloads, checked before an enqueue is stored; absent: no quota. */
  storageQuotasOf?: (tenant: string) => Pick<StorageQuotas, 'maxQueuedPayloadBytes'>;
  /** Exports each run as a span continuing its accepting request's trace, with its phases (--otlp-endpoint); absent: none. */
  tracer?: Tracer;
  /**
   * Cluster mode with several gateways: an Idempotency-Key holds across gateways. `claim` answers which invocation
   * holds the tenant's key for the function (`id` when this claim won) and which gateway claimed it; `takeOver` takes a
   * claim whose invocation was never stored (compare-and-set: false when it changed meanwhile); `repoint` makes a claim
   * name an older invocation this gateway's store answered the key with; `release` gives up a claim whose invocation
   * was not stored; `locate` reads an invocation another gateway holds (view null: none answered that it does) and
   * says which gateways answered that they neither hold nor are storing it.
   */
  idempotency?: {
    nodeId: string;
    claim(tenant: string, functionName: string, key: string, id: string): Promise<IdempotencyHolder>;
    takeOver(tenant: string, functionName: string, key: string, id: string, holder: IdempotencyHolder): Promise<boolean>;
    repoint(tenant: string, functionName: string, key: string, from: string, to: string): Promise<void>;
    release(tenant: string, functionName: string, key: string, id: string): Promise<void>;
    locate(id: string, tenant: string): Promise<{ view: InvocationView | null; absentAt: readonly string[]; answeredBy: readonly string[] }>;
  };
}

/** The claim of an Idempotency-Key across gateways: its invocation, the gateway that claimed it (null: not known), its revision. */
export interface IdempotencyHolder {
  id: string;
  nodeId: string | null;
  revision: number;
}

export interface EnqueueRequest {
  functionName: string;
  payload: Buffer;
  idempotencyKey?: string | undefined;
  callbackUrl?: string | undefined;
  tenant?: string;
  /** W3C traceparent of the accepting request, stored with the invocation: its run continues that trace. */
  traceparent?: string;
}

/** The public view of an invocation (GET /v1/invocations/ID). */
export interface InvocationView {
  id: string;
  function: string;
  version: number;
  /** `sync`: answered directly (recorded when it finished, output and logs capped); `async`: queued. */
  mode: InvocationRecord['mode'];
  status: InvocationRecord['status'];
  exitCode: number | null;
  durationMs: number | null;
  coldStart: boolean | null;
  timedOut: boolean | null;
  error?: string;
  idempotencyKey?: string;
  callback?: { url: string; state: string | null; attempts: number };
  payloadBytes: number;
  outputBytes: number | null;
  /** Times it was started: more than 1 when its cluster worker was lost mid-run and it was delivered again. */
  attempts: number;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
}

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());

export function toInvocationView(record: InvocationRecord): InvocationView {
  return {
    id: record.id,
    function: record.functionName,
    version: record.version,
    mode: record.mode,
    status: record.status,
    exitCode: record.exitCode,
    durationMs: record.durationMs,
    coldStart: record.coldStart,
    timedOut: record.timedOut,
    ...(record.error === null ? {} : { error: record.error }),
    ...(record.idempotencyKey === null ? {} : { idempotencyKey: record.idempotencyKey }),
    ...(record.callbackUrl === null ? {} : { callback: { url: record.callbackUrl, state: record.callbackState, attempts: record.callbackAttempts } }),
    payloadBytes: record.payloadBytes,
    outputBytes: record.stdoutBytes,
    attempts: record.attempts,
    createdAt: iso(record.createdAtMs)!,
    startedAt: iso(record.startedAtMs),
    finishedAt: iso(record.finishedAtMs),
  };
}

const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,256}$/;

/** A dispatcher slot taken by a run; released once (by the commit of its outcome, or when the run ends). */
interface RunSlot {
  released: boolean;
}

interface PendingInsert {
  input: NewInvocation;
  resolve: (result: { invocation: InvocationRecord; created: boolean }) => void;
  reject: (error: unknown) => void;
}

interface PendingFinish {
  record: InvocationRecord;
  outcome: InvocationOutcome;
  slot: RunSlot;
  /** Called with whether the outcome was stored. */
  stored: (stored: boolean) => void;
}

export class InvocationService {
  private readonly store: Store;
  private readonly clock: Clock;
  private readonly concurrency: number;
  private readonly retentionMs: number;
  private readonly allow: Set<string>;
  private running = 0;
  private closed = false;
  private started = false;
  /** Set while the dispatcher pauses its claims; its firing ends the pause (see pause). */
  private pauseTimer: NodeJS.Timeout | null = null;
  private sweepTimer: NodeJS.Timeout | null = null;
  private readonly inFlight = new Set<Promise<void>>();
  private readonly callbackTimers = new Set<NodeJS.Timeout>();
  private readonly idle: (() => void)[] = [];
  /** Finished synchronous invocations not yet written: one transaction per event-loop turn, not one per call. */
  private unrecorded: FinishedInvocation[] = [];
  /** Called once `unrecorded` is written (traced invocations end their `record` phase). */
  private unrecordedDone: (() => void)[] = [];
  private recordTimer: NodeJS.Timeout | null = null;
  /** Invocations whose Idempotency-Key is being claimed across gateways (not in `uncommitted` yet). */
  private readonly claiming = new Map<string, { tenant: string; functionName: string; version: number }>();
  /** Enqueues of this event-loop turn, committed together at its end (see commitTurn). */
  private uncommitted: PendingInsert[] = [];
  /** Payload bytes of `uncommitted` per tenant: the store does not count them yet, the quota check must. */
  private readonly uncommittedBytes = new Map<string, number>();
  /** Outcomes of runs that ended in this turn, committed together at its end. */
  private unfinished: PendingFinish[] = [];
  /** Whether the dispatcher should claim queued invocations at the end of this turn (see pump). */
  private claimWanted = false;
  private commitImmediate: NodeJS.Immediate | null = null;

  private readonly maxDeliveries: number;

  constructor(private readonly options: InvocationServiceOptions) {
    this.store = options.store;
    this.clock = options.clock ?? systemClock;
    this.concurrency = Math.max(1, options.concurrency ?? 8);
    this.maxDeliveries = Math.max(1, options.maxDeliveries ?? 3);
    this.retentionMs = options.retentionMs ?? 7 * 24 * 3600_000;
    this.allow = new Set((options.callbackAllow ?? []).map((entry) => entry.toLowerCase()));
    this.runner = new InvocationRunner({
      functions: options.functionService,
      logBus: options.logBus,
      record: (finished, done) => this.recordFinished(finished, done),
      recordLogBytes: this.syncLogBytes,
      clock: this.clock,
    });
  }

  /**
   * Runs every invocation, async ones claimed here and sync ones answered by the API; its sync invocations are kept
   * in this service's store.
   */
  readonly runner: InvocationRunner;

  /** The cap of each output stream kept with a synchronous invocation's record. */
  get syncLogBytes(): number {
    return this.options.syncLogBytes ?? 64 * 1024;
  }

  get stats(): { running: number; concurrency: number } {
    return { running: this.running, concurrency: this.concurrency };
  }

  /** Crash recovery, then the dispatcher, the retention sweeper and callbacks left undelivered. */
  start(): { failed: number } {
    if (this.started) return { failed: 0 };
    this.started = true;
    const requeued = this.options.redeliverInterrupted === true ? this.store.requeueRunningInvocations(this.maxDeliveries) : 0;
    if (requeued > 0) this.options.onInfo?.('invocations left running by a stopped gateway were queued again', { requeued });
    const failed = this.store.failRunningInvocations(SERVER_STOPPED_REASON, this.clock.nowMs());
    if (failed > 0) this.options.onInfo?.('invocations left running by a stopped server were marked failed', { failed });
    for (const record of this.store.pendingCallbacks()) this.deliverCallback(record, record.callbackAttempts);
    this.sweep();
    const every = this.options.sweepIntervalMs ?? Math.min(Math.max(this.retentionMs / 10, 1000), 60_000);
    this.sweepTimer = setInterval(() => this.sweep(), every);
    this.sweepTimer.unref();
    this.pump();
    return { failed };
  }

  /**
   * Commits the invocation, then wakes the dispatcher; resolves once it is committed. Rejects with a 4xx for an unknown
   * function or a refused callback.
   *
   * Group commit: the enqueues of one event-loop turn (the requests of every connection that was readable) are
   * inserted in one transaction at the end of the turn (setImmediate), and each promise resolves only after that
   * commit. One commit costs ~50 µs, a row in a batch ~10 µs: under load this is most of what an enqueue costs, and a
   * lone enqueue waits for no timer, only for the end of its turn.
   */
  async enqueue(request: EnqueueRequest): Promise<{ view: InvocationView; created: boolean }> {
    if (this.closed) throw new KindlingError('SHUTTING_DOWN', 'the server is shutting down and takes no new work; retry shortly', { retryAfterSeconds: 5 });
    const tenant = request.tenant ?? DEFAULT_TENANT;
    const { version } = this.options.functionService.resolve(tenant, request.functionName);
    const key = request.idempotencyKey;
    if (key !== undefined && !IDEMPOTENCY_KEY.test(key)) {
      throw new KindlingError('VALIDATION_FAILED', 'Idempotency-Key must be 1 to 256 visible ASCII characters', { details: { field: 'Idempotency-Key' } });
    }
    const callbackUrl = request.callbackUrl === undefined ? null : this.checkCallback(request.callbackUrl);
    this.checkQueuedPayload(tenant, request.payload.length);
    let nowMs = this.clock.nowMs();
    const id = newId('inv', nowMs);
    const claims = key === undefined ? undefined : this.options.idempotency;
    let claimed = false;
    if (claims !== undefined && key !== undefined) {
      // Across gateways: the key is claimed first; an invocation another gateway holds for it is the answer.
      this.claiming.set(id, { tenant, functionName: version.name, version: version.version });
      try {
        const found = await this.claimKey(claims, tenant, version.name, key, id);
        if (found !== null) {
          this.claiming.delete(id);
          return { view: found, created: false };
        }
        claimed = true;
      } catch (error) {
        this.claiming.delete(id);
        throw error;
      }
      nowMs = this.clock.nowMs();
    }
    this.uncommittedBytes.set(tenant, (this.uncommittedBytes.get(tenant) ?? 0) + request.payload.length);
    const stored = new Promise<{ invocation: InvocationRecord; created: boolean }>((resolve, reject) => {
      this.uncommitted.push({
        input: {
          id,
          tenant,
          functionName: version.name,
          version: version.version,
          payload: request.payload,
          idempotencyKey: key ?? null,
          callbackUrl,
          createdAtMs: nowMs,
          traceparent: request.traceparent ?? null,
        },
        resolve,
        reject,
      });
      this.scheduleCommit();
    });
    let outcome: { invocation: InvocationRecord; created: boolean };
    try {
      try {
        outcome = await stored;
      } catch (error) {
        // Not stored: the key must not name an invocation that does not exist.
        if (claimed) await claims!.release(tenant, version.name, key!, id).catch(() => undefined);
        throw error;
      }
      if (claimed && !outcome.created && outcome.invocation.id !== id) {
        // This store had the key already (an invocation older than the claim): the claim must name that one. Until it
        // does, `id` stays "being stored" for other gateways, which would otherwise take the claim over.
        await claims!.repoint(tenant, version.name, key!, id, outcome.invocation.id).catch((error: unknown) => this.options.onError?.(error, { invocationId: outcome.invocation.id, phase: 'idempotency' }));
      }
    } finally {
      this.claiming.delete(id);
    }
    return { view: toInvocationView(outcome.invocation), created: outcome.created };
  }

  /** Whether this service is storing that invocation now (its Idempotency-Key claimed, or its insert not committed yet). */
  storing(id: string): boolean {
    return this.claiming.has(id) || this.uncommitted.some((entry) => entry.input.id === id);
  }

  /**
   * Claims the key for `id` across gateways. Null when `id` holds the claim (or an invocation of this service does, which
   * the insert answers: the store returns it for the key); else the view of the invocation that holds it elsewhere.
   */
  private async claimKey(claims: NonNullable<InvocationServiceOptions['idempotency']>, tenant: string, functionName: string, key: string, id: string): Promise<InvocationView | null> {
    const here = (holder: string): boolean => this.storing(holder) || this.has(holder, tenant);
    for (let round = 0; round < 3; round++) {
      const holder = await claims.claim(tenant, functionName, key, id);
      if (holder.id === id || here(holder.id)) return null;
      // The gateway that won the claim stores its invocation a moment later, so it is asked for up to a second. If it
      // answers that it neither holds nor is storing it, it stopped between the two (a crash). A claim in this
      // gateway's own name that no process of that name answers for was made by an earlier run of this gateway.
      const mine = holder.nodeId !== null && holder.nodeId === claims.nodeId;
      let orphaned = false;
      // About a second in all, however long each question takes (one waits up to 1 s for a gateway that is silent).
      const untilMs = this.clock.nowMs() + 1_000;
      for (;;) {
        if (here(holder.id)) return null;
        const where = await claims.locate(holder.id, tenant);
        if (where.view !== null) return where.view;
        orphaned = holder.nodeId !== null && (where.absentAt.includes(holder.nodeId) || (mine && !where.answeredBy.includes(holder.nodeId)));
        if (orphaned || this.clock.nowMs() >= untilMs) break;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      if (here(holder.id)) return null;
      if (!orphaned) {
        throw new KindlingError('CLUSTER_UNAVAILABLE', `this Idempotency-Key names invocation ${holder.id}, held by a gateway that does not answer now; retry shortly (it never runs twice)`, { retryAfterSeconds: 1 });
      }
      this.options.onInfo?.('an Idempotency-Key claimed by a gateway that never stored its invocation is taken over', { invocationId: id, claimedFor: holder.id, claimedBy: holder.nodeId });
      if (await claims.takeOver(tenant, functionName, key, id, holder)) return null;
      // Another gateway took it over first: whose it is now is read again.
    }
    throw new KindlingError('CLUSTER_UNAVAILABLE', 'this Idempotency-Key is being claimed by several gateways at once; retry shortly (it never runs twice)', { retryAfterSeconds: 1 });
  }

  /**
   * 409 TENANT_STORAGE_LIMIT when `bytes` more would take the tenant's queued payloads (stored, and enqueued in this
   * turn) past its quota. The gateway calls it with the declared length before it reads a body, enqueue with the body.
   * An idempotent replay is counted too (whether its key was used is known only at the insert).
   */
  checkQueuedPayload(tenant: string, bytes: number): void {
    const limit = this.options.storageQuotasOf?.(tenant).maxQueuedPayloadBytes ?? null;
    if (limit === null) return;
    checkStorageQuota(tenant, 'maxQueuedPayloadBytes', limit, this.store.storageUsage(tenant).queuedPayloadBytes + (this.uncommittedBytes.get(tenant) ?? 0), bytes);
  }

  /** Versions of the function that enqueues not committed yet (or claiming their Idempotency-Key) refer to: deploys must keep them. */
  uncommittedVersions(tenant: string, name: string): number[] {
    const claiming = [...this.claiming.values()].filter((entry) => entry.tenant === tenant && entry.functionName === name).map((entry) => entry.version);
    return [...claiming, ...this.uncommitted.filter((entry) => entry.input.tenant === tenant && entry.input.functionName === name).map((entry) => entry.input.version)];
  }

  private scheduleCommit(): void {
    this.commitImmediate ??= setImmediate(() => this.commitTurn());
  }

  /**
   * The dispatcher's and the enqueues' writes of one event-loop turn, in one transaction: the new invocations, the
   * outcomes of the runs that ended, and the claims of queued invocations for the free slots (those just freed
   * included). Only after the commit is each enqueue answered, each outcome announced and each claimed run started.
   * If the transaction fails, nothing of it was stored: each write is then made on its own, with its own error
   * handling (so one bad row, or a disk that filled up, answers for itself only).
   */
  private commitTurn(): void {
    if (this.commitImmediate !== null) clearImmediate(this.commitImmediate);
    this.commitImmediate = null;
    const inserts = this.uncommitted;
    const finishes = this.unfinished;
    this.uncommitted = [];
    // Stored (or refused) below, synchronously: from then on the store counts them.
    this.uncommittedBytes.clear();
    this.unfinished = [];
    const claim = (this.claimWanted || inserts.length > 0 || finishes.length > 0) && this.mayClaim();
    this.claimWanted = false;
    // The slots of the runs whose outcome commits now are free for the claims of the same transaction.
    const slots = claim ? this.concurrency - this.running + finishes.length : 0;
    if (inserts.length === 0 && finishes.length === 0 && slots <= 0) return;
    let results: { invocation: InvocationRecord; created: boolean }[] = [];
    let claimed: InvocationRecord[] = [];
    let committed = false;
    try {
      this.store.transaction(() => {
        results = inserts.map((entry) => this.store.insertInvocation(entry.input));
        for (const entry of finishes) this.store.finishInvocation(entry.record.id, entry.outcome);
        claimed = this.claimUpTo(slots);
      });
      committed = true;
    } catch {
      // Rolled back: each on its own below.
    }
    if (!committed) {
      for (const entry of inserts) {
        try {
          entry.resolve(this.store.insertInvocation(entry.input));
        } catch (error) {
          entry.reject(error);
        }
      }
      // Their slots stay taken until each is stored (or given up); the claims wait for them.
      for (const entry of finishes) void this.storeDurably(entry.record.id, () => this.store.finishInvocation(entry.record.id, entry.outcome)).then(entry.stored);
      if (claim) this.claimAlone();
      return;
    }
    for (const [i, entry] of inserts.entries()) entry.resolve(results[i]!);
    for (const entry of finishes) {
      entry.slot.released = true;
      this.running--;
      entry.stored(true);
    }
    for (const record of claimed) this.startRun(record);
    if (claim) this.settleIdle();
  }

  /**
   * Records a synchronous invocation that finished. The write is batched (within RECORD_FLUSH_MS, after the answer
   * went out): one SQLite transaction for many calls costs ~13 µs a row instead of ~90 µs alone, and nothing is added
   * to the call's latency. Reads flush first, so a record is never missing from the API; close() flushes what is
   * left (a kill -9 loses at most the last RECORD_FLUSH_MS of records, never a call's answer).
   */
  recordFinished(record: Omit<FinishedInvocation, 'tenant'> & { tenant?: string }, done?: () => void): void {
    this.unrecorded.push({ ...record, tenant: record.tenant ?? DEFAULT_TENANT });
    if (done !== undefined) this.unrecordedDone.push(done);
    if (this.unrecorded.length >= RECORD_BATCH_MAX) {
      this.flushRecords();
      return;
    }
    if (this.recordTimer !== null) return;
    this.recordTimer = setTimeout(() => this.flushRecords(), RECORD_FLUSH_MS);
    this.recordTimer.unref();
  }

  /** Writes the batched records now. */
  flushRecords(): void {
    if (this.recordTimer !== null) clearTimeout(this.recordTimer);
    this.recordTimer = null;
    if (this.unrecorded.length === 0) return;
    const batch = this.unrecorded;
    const done = this.unrecordedDone;
    this.unrecorded = [];
    this.unrecordedDone = [];
    try {
      this.store.insertFinishedInvocations(batch);
    } catch (error) {
      // The store refused (disk full, closed): the calls themselves were answered; say so rather than crash.
      this.options.onError?.(error, { phase: 'record', invocations: batch.length });
    }
    for (const callback of done) callback();
  }

  get(id: string, tenant = DEFAULT_TENANT): InvocationRecord {
    this.flushRecords();
    const record = this.store.getInvocation(id, tenant);
    if (record === null) throw new KindlingError('NOT_FOUND', `no invocation "${id.slice(0, 80)}" (finished invocations are kept for the retention period only)`);
    return record;
  }

  /** Whether the tenant's invocation is held here (queued, running or finished and kept). */
  has(id: string, tenant: string): boolean {
    this.flushRecords();
    return this.store.getInvocation(id, tenant) !== null;
  }

  output(id: string, tenant = DEFAULT_TENANT): { record: InvocationRecord; stdout: Buffer; stderr: Buffer } {
    const record = this.get(id, tenant);
    const output = this.store.getInvocationOutput(id) ?? { stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) };
    return { record, ...output };
  }

  list(filter: Omit<InvocationFilter, 'tenant'>, tenant = DEFAULT_TENANT): InvocationRecord[] {
    this.flushRecords();
    return this.store.listInvocations({ ...filter, tenant });
  }

  /** Stops claiming new work and waits (up to the deadline) for the running invocations; they stay queued otherwise. */
  async close(deadlineMs = 10_000): Promise<boolean> {
    this.closed = true;
    // Enqueues accepted before the close are committed (and answered) now, before the store can go.
    this.commitTurn();
    this.flushRecords();
    if (this.pauseTimer) clearTimeout(this.pauseTimer);
    for (const timer of this.blockedTenants.values()) clearTimeout(timer);
    this.blockedTenants.clear();
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    for (const timer of this.callbackTimers) clearTimeout(timer);
    this.callbackTimers.clear();
    if (this.inFlight.size === 0) return true;
    let timer: NodeJS.Timeout | undefined;
    const finished = await Promise.race([
      Promise.allSettled([...this.inFlight]).then(() => true),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), deadlineMs))),
    ]);
    clearTimeout(timer);
    return finished;
  }

  /** Resolves when nothing is queued or running (tests, bench). */
  whenIdle(): Promise<void> {
    if (this.running === 0 && this.uncommitted.length === 0 && this.store.listInvocations({ status: 'queued', limit: 1 }).length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idle.push(resolve));
  }

  /* ------------------------------------------------------------------------------------------------------------ */

  private checkCallback(raw: string): string {
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      throw new KindlingError('VALIDATION_FAILED', `x-kindling-callback "${raw.slice(0, 200)}" is not a URL`, { details: { field: 'x-kindling-callback' } });
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new KindlingError('VALIDATION_FAILED', 'x-kindling-callback must be an http: or https: URL', { details: { field: 'x-kindling-callback' } });
    }
    const port = url.port || (url.protocol === 'https:' ? '443' : '80');
    const hostPort = `${url.hostname}:${port}`.toLowerCase();
    if (!this.allow.has(hostPort)) {
      throw new KindlingError('VALIDATION_FAILED', `callbacks to ${hostPort} are not allowed on this server; the operator allows them with --callback-allow host:port`, { details: { field: 'x-kindling-callback' } });
    }
    return url.toString();
  }

  /** Asks for claims at the end of this turn (with the turn's other writes: see commitTurn). */
  private pump(): void {
    if (!this.started || this.closed) return;
    this.claimWanted = true;
    this.scheduleCommit();
  }

  /** Whether claims may be made now; a pause ends (and the dispatcher claims again) when its timer fires. */
  private mayClaim(): boolean {
    return this.started && !this.closed && this.pauseTimer === null;
  }

  /** Claims the oldest queued invocations (FIFO, passing over blocked tenants), at most `slots`. Throws what the store throws. */
  private claimUpTo(slots: number): InvocationRecord[] {
    const claimed: InvocationRecord[] = [];
    if (slots <= 0) return claimed;
    const blocked = [...this.blockedTenants.keys()];
    while (claimed.length < slots) {
      const record = this.store.claimNextInvocation(this.clock.nowMs(), blocked);
      if (record === null) break;
      claimed.push(record);
    }
    return claimed;
  }

  /** Claims and starts outside a turn's transaction (after that failed): a claim the store refuses pauses the dispatcher. */
  private claimAlone(): void {
    while (this.running < this.concurrency) {
      if (!this.mayClaim()) return;
      let claimed: InvocationRecord[];
      try {
        claimed = this.claimUpTo(1);
      } catch (error) {
        this.options.onError?.(error, { phase: 'claim' });
        this.pause(1000);
        return;
      }
      if (claimed.length === 0) break;
      this.startRun(claimed[0]!);
    }
    this.settleIdle();
  }

  /** Runs a claimed invocation in a slot; the slot is freed when the outcome is committed (or the run ends otherwise). */
  private startRun(record: InvocationRecord): void {
    this.running++;
    const slot: RunSlot = { released: false };
    const run = this.run(record, slot).finally(() => {
      this.inFlight.delete(run);
      if (slot.released) return;
      slot.released = true;
      this.running--;
      this.pump();
    });
    this.inFlight.add(run);
  }

  /** After claims that took what they could: idle means nothing runs and nothing waits for its tenant's quota. */
  private settleIdle(): void {
    if (this.running === 0 && this.blockedTenants.size === 0 && this.idle.length > 0) {
      for (const resolve of this.idle.splice(0)) resolve();
    }
  }

  /**
   * Runs a store write, retrying while the disk is full (each second, until it succeeds or the service closes) so that
   * an outcome or a requeue is not lost to a full data dir. False when it could not be stored.
   */
  private async storeDurably(invocationId: string, write: () => void): Promise<boolean> {
    for (let attempt = 0; ; attempt++) {
      try {
        write();
        return true;
      } catch (error) {
        if (attempt % 60 === 0) this.options.onError?.(error, { invocationId, phase: 'store', attempt });
        if (!isStorageFull(error) || this.closed) return false;
        await new Promise((resolve) => setTimeout(resolve, STORE_RETRY_MS));
      }
    }
  }

  /**
   * Tenants at their concurrency quota: their queued invocations are passed over (other tenants' go ahead) until the
   * tenant's timer fires, which unblocks it and makes the dispatcher claim again. The timer itself ends the block: a
   * block that ended by comparing the wall clock with a deadline could be seen as still running when its timer fired
   * (timers fire on the event loop's cached time, which lags Date.now()), and nothing would wake the dispatcher again.
   */
  private readonly blockedTenants = new Map<string, NodeJS.Timeout>();

  private blockTenant(tenant: string, ms: number): void {
    if (this.closed || this.blockedTenants.has(tenant)) return;
    this.blockedTenants.set(
      tenant,
      setTimeout(() => {
        this.blockedTenants.delete(tenant);
        this.pump();
      }, ms),
    );
  }

  /** Stops claims for `ms`; a pause already under way is kept (the claims after it pause again if they must). */
  private pause(ms: number): void {
    if (this.closed || this.pauseTimer !== null) return;
    this.pauseTimer = setTimeout(() => {
      this.pauseTimer = null;
      this.pump();
    }, ms);
  }

  private async run(record: InvocationRecord, slot: RunSlot): Promise<void> {
    const payload = this.store.getInvocationPayload(record.id) ?? Buffer.alloc(0);
    this.options.onInfo?.('invocation started', { invocationId: record.id, function: record.functionName, version: record.version });
    const scope = this.options.scopeOf?.(record.tenant);
    const end = (status: Parameters<InvocationRunner['end']>[3]): void => this.runner.end(record.id, record.tenant, record.functionName, status);
    // The outcome is worked out first and stored after: a store write that fails (a full disk) must never be taken
    // for a failure of the function, which would run it again or mark it failed although it succeeded.
    const queuedSinceMs = wallToSpanClockMs(record.createdAtMs);
    const span = this.startSpan(record, queuedSinceMs);
    const trace = span ? { traceId: span.traceId, traceparent: span.traceparent, span } : this.storedTrace(record);
    const report = await this.runner.run({
      id: record.id,
      tenant: record.tenant,
      functionName: record.functionName,
      version: record.version,
      payload,
      mode: 'async',
      queuedSinceMs,
      ...(scope ? { scope } : {}),
      ...(trace ? { trace } : {}),
    });
    // The run's span ends with its outcome stored (or given back to the queue).
    const finish = (outcome: string | null): void => {
      report.phases?.end();
      if (outcome !== null) span?.setAttributes({ [ATTR.outcome]: outcome });
      span?.end();
    };
    if (report.kind === 'failed') {
      const failure = knownFailure(report.error);
      // Sent to a cluster worker and not answered (it was lost, this gateway lost NATS or stopped first): it may have
      // run, so it counts as an attempt (before the branches below, which requeue what never started).
      if (failure?.code === 'WORKER_LOST' || ((failure?.code === 'SHUTTING_DOWN' || failure?.code === 'CLUSTER_UNAVAILABLE') && failure.details?.sent === true)) {
        if (record.attempts < this.maxDeliveries) {
          // Its worker died or was cut off mid-run (or this gateway stopped first): it may have run, but no outcome
          // came. Delivered again (to another worker: the router places nothing on a lost one until it heartbeats
          // again; after a restart, for a stopping gateway), in its place; the attempt stays counted.
          this.options.onInfo?.('invocation queued again: its run was lost mid-way', { invocationId: record.id, attempts: record.attempts, maxDeliveries: this.maxDeliveries });
          await this.storeDurably(record.id, () => this.store.requeueInvocation(record.id, { countAttempt: true }));
          finish('redelivered');
          end('queued');
          return;
        }
        // The last attempt: recorded failed below (not requeued by the branches that follow).
        report.outcome.error = `${report.outcome.error ?? failure.message} (started ${record.attempts} times, the most --async-max-deliveries allows)`;
      } else if (failure?.code === 'TENANT_CONCURRENCY_LIMIT') {
        // Its tenant runs all it may: back in the queue in its place; the tenant's invocations are passed over for a
        // moment while other tenants' run (one tenant's backlog never holds up the others).
        await this.storeDurably(record.id, () => this.store.requeueInvocation(record.id));
        finish('requeued');
        end('queued');
        this.blockTenant(record.tenant, TENANT_RETRY_MS);
        return;
      } else if (failure && (failure.code === 'TOO_MANY_REQUESTS' || failure.code === 'SHUTTING_DOWN' || failure.code === 'STORAGE_FULL' || failure.code === 'NO_WORKERS' || failure.code === 'CLUSTER_UNAVAILABLE')) {
        // It never started (the function is at its concurrency limit, the server is stopping, the disk is full so
        // the sandbox could not be prepared, no cluster worker has a free slot, or the cluster could not give the
        // tenant a slot of its quota): back in the queue, in its place
        // (it runs after the next start when stopping), and the dispatcher waits a little before it claims again.
        await this.storeDurably(record.id, () => this.store.requeueInvocation(record.id));
        finish('requeued');
        end('queued');
        this.pause(failure.code === 'STORAGE_FULL' || failure.code === 'NO_WORKERS' ? 1000 : 200);
        return;
      }
      if (!failure) this.options.onError?.(report.error, { invocationId: record.id });
      span?.fail(failure?.code ?? 'INTERNAL', failure?.message ?? 'the platform failed');
    }
    const outcome = report.outcome;
    report.phases?.enter('record');
    // Stored with this turn's other writes (commitTurn), which also frees the slot.
    const stored = await new Promise<boolean>((resolve) => {
      this.unfinished.push({ record, outcome, slot, stored: resolve });
      this.scheduleCommit();
    });
    if (!stored) {
      // Stays `running` in the store: the next start marks it failed (the crash policy above); nothing runs it twice.
      report.phases?.fail('STORAGE_FULL', 'the outcome could not be stored');
      finish(null);
      end('failed');
      return;
    }
    finish(null);
    end(outcome.status);
    if (record.callbackUrl !== null) {
      const finished = this.store.getInvocation(record.id);
      if (finished) this.deliverCallback(finished, 0);
    }
  }

  /**
   * The span of an async run (tracing on): a consumer span continuing the trace of the request that accepted it (its
   * traceparent was stored with the invocation), from the enqueue, so that its `queue` phase shows the time queued.
   */
  private startSpan(record: InvocationRecord, queuedSinceMs: number): TraceSpan | null {
    const tracer = this.options.tracer;
    if (tracer === undefined) return null;
    return tracer.startSpan(`invoke ${record.functionName}`, record.traceparent, {
      kind: 'consumer',
      startMs: queuedSinceMs,
      attributes: { [ATTR.tenant]: record.tenant, [ATTR.function]: record.functionName, [ATTR.version]: record.version, [ATTR.invocationId]: record.id, [ATTR.mode]: 'async' },
    });
  }

  /** Without a tracer: the accepting request's trace (the sandbox's TRACEPARENT, the usage record's trace id). */
  private storedTrace(record: InvocationRecord): { traceId: string; traceparent: string } | null {
    const parsed = parseTraceparent(record.traceparent);
    return parsed === null ? null : { traceId: parsed.traceId, traceparent: record.traceparent! };
  }

  private deliverCallback(record: InvocationRecord, attemptsSoFar: number): void {
    if (this.closed || record.callbackUrl === null) return;
    const maxAttempts = this.options.callbackMaxAttempts ?? 5;
    const attempt = async (n: number): Promise<void> => {
      if (this.closed) return;
      const output = this.store.getInvocationOutput(record.id);
      const body = JSON.stringify({
        ...toInvocationView(record),
        ...(output && output.stdout.length <= 1024 * 1024 ? { outputBase64: output.stdout.toString('base64') } : {}),
      });
      let ok = false;
      try {
        const response = await fetch(record.callbackUrl!, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-kindling-invocation-id': record.id, 'x-kindling-attempt': String(n) },
          body,
          redirect: 'manual',
          signal: AbortSignal.timeout(this.options.callbackTimeoutMs ?? 10_000),
        });
        await response.arrayBuffer().catch(() => undefined);
        ok = response.status >= 200 && response.status < 300;
      } catch {
        ok = false;
      }
      if (this.closed) return;
      if (ok) {
        this.store.setCallbackState(record.id, 'delivered', n);
        return;
      }
      if (n >= maxAttempts) {
        this.store.setCallbackState(record.id, 'failed', n);
        this.options.onInfo?.('callback not delivered; giving up', { invocationId: record.id, attempts: n });
        return;
      }
      this.store.setCallbackState(record.id, 'pending', n);
      const delay = Math.min((this.options.callbackBaseDelayMs ?? 500) * 2 ** (n - 1), 60_000);
      const timer = setTimeout(() => {
        this.callbackTimers.delete(timer);
        void attempt(n + 1);
      }, delay);
      this.callbackTimers.add(timer);
    };
    void attempt(attemptsSoFar + 1);
  }

  private sweep(): void {
    try {
      const removed = this.store.deleteInvocationsFinishedBefore(this.clock.nowMs() - this.retentionMs);
      if (removed > 0) this.options.onInfo?.('expired invocations removed', { removed });
    } catch (error) {
      this.options.onError?.(error, { phase: 'sweep' });
    }
  }
}
