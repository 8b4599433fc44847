import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { KindlingError } from '../core/errors.js';
import type { ExecutionResult, ExecutorName } from '../core/types.js';
import type { ExecutionContext, ExecutionObserver } from '../orchestrator/execution-service.js';
import type { IdleUsageEvent, InvocationEvent, InvocationObserver } from '../orchestrator/handler-pools.js';
import { DEFAULT_TENANT } from '../store/usage.js';

/** One-off executions are counted under this function label, so one metric covers them and deployed functions. */
export const EXECUTE_FUNCTION_LABEL = '_execute';
/** The function label of dependency builds' executions (no function name starts with `_`, so none collides). */
export const BUILD_FUNCTION_LABEL = '_build';

export type InvocationStatus = 'succeeded' | 'failed' | 'timeout' | 'oom' | 'error';

export function statusOf(result: ExecutionResult): InvocationStatus {
  if (result.timedOut) return 'timeout';
  if (result.oomKilled) return 'oom';
  return result.exitCode === 0 ? 'succeeded' : 'failed';
}

/** What the metrics read at scrape time (gauges); each source is optional. */
export interface MetricsSources {
  /** The one-off execution queue: running and waiting executions. */
  queue?: () => { running: number; queued: number };
  /** Warm pools of handler-style functions, per function version. */
  pools?: () => { function: string; executor: ExecutorName; idle: number; busy: number; creating: number; waiting: number }[];
  /** What each tenant keeps on disk (function versions, code bytes, queued payload bytes). */
  storage?: () => TenantStorage[];
  /** The warm capacity: warm sandboxes and the memory they are counted for (used, measured), against the caps. */
  warmCapacity?: () => { sandboxes: number; memoryMb: number; maxSandboxes: number; maxMemoryMb: number };
  /** Persistent sandboxes per tenant: running, paused, and the memoryMb of both (quotas maxSandboxes, ...). */
  persistentSandboxes?: () => { tenant: string; running: number; paused: number; memoryMb: number; hibernated?: number }[];
  /** Free and total bytes of the data dir's filesystem (read at scrape time); null when it cannot be read. */
  dataDirSpace?: () => Promise<{ freeBytes: number; sizeBytes: number } | null>;
  collectProcess?: boolean;
  /** Cluster mode: whether the NATS connection is up and (gateways) how many workers this node sees; absent on a server on its own. */
  cluster?: () => { connected: boolean; workers: number | null };
  /**
   * The `node` label of every metric (--node-name): one dashboard and one set of alert rules tell servers apart by it,
   * whatever the scrape config calls their targets. Unset: no node label.
   */
  nodeName?: string;
}

export interface TenantStorage {
  tenant: string;
  functionVersions: number;
  codeBytes: number;
  queuedPayloadBytes: number;
  imageBytes?: number;
}

export const CLUSTER_RUN_OUTCOMES = ['answered', 'worker_lost', 'no_workers', 'cancelled'] as const;
export type ClusterRunOutcome = (typeof CLUSTER_RUN_OUTCOMES)[number];

const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];
const START_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/**
 * Prometheus metrics fed by events; they observe, never drive, behaviour. Every name is listed in docs/metrics.md
 * (a test keeps that table and this registry in step).
 */
export class Metrics implements ExecutionObserver, InvocationObserver {
  readonly registry = new Registry();
  private readonly invocations: Counter<'tenant' | 'function' | 'executor' | 'status' | 'cold'>;
  private readonly duration: Histogram<'function' | 'executor'>;
  private readonly startDuration: Histogram<'executor' | 'cold'>;
  private readonly queueWait: Histogram<'kind'>;
  private readonly payloadBytes: Counter<'direction'>;
  private readonly httpErrors: Counter<'code' | 'status'>;
  private readonly httpResponses: Counter<'method' | 'status'>;
  private readonly oomKills: Counter<'function' | 'executor'>;
  private readonly timeouts: Counter<'function' | 'executor'>;
  private readonly sandboxes: Counter<'executor' | 'event' | 'kind'>;
  private readonly sandboxesLive: Gauge<'executor'>;
  private readonly cpuSeconds: Counter<'tenant' | 'function' | 'executor'>;
  private readonly relayedBytes: Counter<'direction'>;
  private readonly relayFailures: Counter<'direction'>;
  private readonly warmEvictions: Counter<'reason'>;
  private readonly clusterRuns: Counter<'outcome'>;

  constructor(sources: MetricsSources = {}) {
    const registers = [this.registry];
    if (sources.nodeName !== undefined) this.registry.setDefaultLabels({ node: sources.nodeName });
    if (sources.collectProcess !== false) collectDefaultMetrics({ register: this.registry, prefix: 'kindling_' });
    this.invocations = new Counter({
      name: 'kindling_invocations_total',
      help: 'Finished invocations and executions by tenant, function, executor, status (succeeded|failed|timeout|oom|error) and cold start',
      labelNames: ['tenant', 'function', 'executor', 'status', 'cold'],
      registers,
    });
    this.duration = new Histogram({
      name: 'kindling_invocation_duration_seconds',
      help: 'Wall time of an invocation: sandbox start request (or warm call) to process exit',
      labelNames: ['function', 'executor'],
      buckets: DURATION_BUCKETS,
      registers,
    });
    this.startDuration = new Histogram({
      name: 'kindling_sandbox_start_seconds',
      help: 'Time to get a running sandbox; cold="true" is a cold start (created for the request), "false" a prewarmed one',
      labelNames: ['executor', 'cold'],
      buckets: START_BUCKETS,
      registers,
    });
    this.queueWait = new Histogram({
      name: 'kindling_queue_wait_seconds',
      help: 'Time waiting for an execution slot (kind="execution") or a warm sandbox (kind="handler")',
      labelNames: ['kind'],
      buckets: START_BUCKETS,
      registers,
    });
    this.payloadBytes = new Counter({
      name: 'kindling_payload_bytes_total',
      help: 'Bytes of input (in: stdin / request body) and output (out: stdout+stderr / response body)',
      labelNames: ['direction'],
      registers,
    });
    this.httpErrors = new Counter({
      name: 'kindling_http_errors_total',
      help: 'Error responses by stable error code and HTTP status',
      labelNames: ['code', 'status'],
      registers,
    });
    this.httpResponses = new Counter({
      name: 'kindling_http_responses_total',
      help: 'HTTP responses by method and status code (2xx, 4xx and 5xx alike)',
      labelNames: ['method', 'status'],
      registers,
    });
    this.oomKills = new Counter({
      name: 'kindling_oom_kills_total',
      help: 'Invocations ended by the kernel OOM killer (memory limit reached)',
      labelNames: ['function', 'executor'],
      registers,
    });
    this.timeouts = new Counter({
      name: 'kindling_timeouts_total',
      help: 'Invocations killed at their wall-clock timeout',
      labelNames: ['function', 'executor'],
      registers,
    });
    this.sandboxes = new Counter({
      name: 'kindling_sandboxes_total',
      help: 'Sandbox lifecycle events by executor: event=created|destroyed|failed (failed: the create itself failed), kind=execution|warm',
      labelNames: ['executor', 'event', 'kind'],
      registers,
    });
    this.warmEvictions = new Counter({
      name: 'kindling_warm_sandbox_evictions_total',
      help: 'Idle warm sandboxes evicted to make room, by the cap that needed it: reason=count|memory|tenant|pressure (never a busy one)',
      labelNames: ['reason'],
      registers,
    });
    for (const reason of ['count', 'memory', 'tenant', 'pressure']) this.warmEvictions.inc({ reason }, 0);
    this.clusterRuns = new Counter({
      name: 'kindling_cluster_runs_total',
      help: 'Calls a cluster gateway sent to workers, by how they ended: outcome=answered (a result, or the platform error the worker raised)|worker_lost (the worker went silent mid-run)|no_workers (none had a free slot)|cancelled (the caller went away)',
      labelNames: ['outcome'],
      registers,
    });
    const cluster = sources.cluster;
    if (cluster !== undefined) {
      for (const outcome of CLUSTER_RUN_OUTCOMES) this.clusterRuns.inc({ outcome }, 0);
      new Gauge({
        name: 'kindling_cluster_connected',
        help: "1 while this cluster node's NATS connection is up, 0 while it is down (reconnecting or closed)",
        registers,
        collect() {
          this.set(cluster().connected ? 1 : 0);
        },
      });
      new Gauge({
        name: 'kindling_cluster_workers',
        help: 'Workers this cluster gateway sees in the registry (heard from within the TTL); not set on a worker',
        registers,
        collect() {
          this.reset();
          const workers = cluster().workers;
          if (workers !== null) this.set(workers);
        },
      });
    }
    const warmCapacity = sources.warmCapacity;
    new Gauge({
      name: 'kindling_warm_capacity',
      help: 'Warm sandboxes of all handler functions against their caps: what=sandboxes|max_sandboxes|memory_mb (used, measured)|max_memory_mb',
      labelNames: ['what'],
      registers,
      collect() {
        this.reset();
        const stats = warmCapacity?.();
        if (stats === undefined) return;
        this.set({ what: 'sandboxes' }, stats.sandboxes);
        this.set({ what: 'max_sandboxes' }, stats.maxSandboxes);
        this.set({ what: 'memory_mb' }, stats.memoryMb);
        this.set({ what: 'max_memory_mb' }, stats.maxMemoryMb);
      },
    });
    this.sandboxesLive = new Gauge({
      name: 'kindling_sandboxes_live',
      help: 'Sandboxes that exist now (created and not yet destroyed) by executor',
      labelNames: ['executor'],
      registers,
    });
    this.cpuSeconds = new Counter({
      name: 'kindling_cpu_seconds_total',
      help: 'CPU time the kernel accounted to sandboxes (their cgroups, read by the server) by tenant and function: executions, warm handler calls and warm sandboxes between calls (idle)',
      labelNames: ['tenant', 'function', 'executor'],
      registers,
    });
    this.relayedBytes = new Counter({
      name: 'kindling_stream_relay_bytes_total',
      help: 'Bytes of large streams moved by the splice relay around the server process (in: request bodies to stdin, out: stdout to responses)',
      labelNames: ['direction'],
      registers,
    });
    this.relayFailures = new Counter({
      name: 'kindling_stream_relay_failures_total',
      help: 'Splice relay helpers that failed on their own (not because the client went away)',
      labelNames: ['direction'],
      registers,
    });
    // The data dir holds the database, code, payloads and disks: a full one fails deploys and invocations, so alerts
    // watch it. Read on scrape (one statfs, cheap); NaN when it cannot be read, which no threshold matches.
    const dataDirSpace = sources.dataDirSpace;
    const spaceGauge = (name: string, help: string, field: 'freeBytes' | 'sizeBytes'): void => {
      if (dataDirSpace === undefined) return;
      new Gauge({
        name,
        help,
        registers,
        async collect() {
          this.set((await dataDirSpace())?.[field] ?? Number.NaN);
        },
      });
    };
    spaceGauge('kindling_data_dir_free_bytes', "Bytes of the data dir's filesystem still free for the server's files (statfs: blocks available to unprivileged users)", 'freeBytes');
    spaceGauge('kindling_data_dir_size_bytes', "Total bytes of the data dir's filesystem (statfs)", 'sizeBytes');
    const queue = sources.queue;
    const pools = sources.pools;
    // The execution gauges keep their original, unlabelled form (dashboards and tests read them); warm calls have their own.
    new Gauge({
      name: 'kindling_executions_in_flight',
      help: 'Executions running now (one-off and command functions)',
      registers,
      collect() {
        this.set(queue?.().running ?? 0);
      },
    });
    new Gauge({
      name: 'kindling_queue_depth',
      help: 'Executions waiting for a slot',
      registers,
      collect() {
        this.set(queue?.().queued ?? 0);
      },
    });
    new Gauge({
      name: 'kindling_handler_invocations_in_flight',
      help: 'Handler-style invocations running now (busy warm sandboxes)',
      registers,
      collect() {
        this.set((pools?.() ?? []).reduce((sum, pool) => sum + pool.busy, 0));
      },
    });
    new Gauge({
      name: 'kindling_handler_queue_depth',
      help: 'Handler-style invocations waiting for a warm sandbox',
      registers,
      collect() {
        this.set((pools?.() ?? []).reduce((sum, pool) => sum + pool.waiting, 0));
      },
    });
    // Per tenant, against its storage quotas; read from the store's counts at scrape time (one row per tenant).
    const storage = sources.storage;
    const storageGauge = (name: string, help: string, field: 'functionVersions' | 'codeBytes' | 'queuedPayloadBytes' | 'imageBytes'): void => {
      new Gauge({
        name,
        help,
        labelNames: ['tenant'],
        registers,
        collect() {
          this.reset();
          for (const row of storage?.() ?? []) this.set({ tenant: row.tenant }, row[field] ?? 0);
        },
      });
    };
    storageGauge('kindling_tenant_function_versions', 'Function versions a tenant keeps (quota maxFunctionVersions)', 'functionVersions');
    storageGauge('kindling_tenant_code_bytes', 'Bytes of code of the function versions a tenant keeps (quota maxCodeBytes)', 'codeBytes');
    storageGauge('kindling_tenant_queued_payload_bytes', "Bytes of payloads of a tenant's queued and running async invocations (quota maxQueuedPayloadBytes)", 'queuedPayloadBytes');
    storageGauge('kindling_tenant_image_bytes', "Bytes of a tenant's custom images' root file systems (quota maxImageBytes)", 'imageBytes');
    // Persistent sandboxes per tenant, against its sandbox quotas (read from the live sandboxes at scrape time).
    const persistent = sources.persistentSandboxes;
    new Gauge({
      name: 'kindling_persistent_sandboxes',
      help: 'Persistent sandboxes per tenant and state (running|paused|hibernated; quotas maxSandboxes, maxPausedSandboxes)',
      labelNames: ['tenant', 'state'],
      registers,
      collect() {
        this.reset();
        for (const row of persistent?.() ?? []) {
          this.set({ tenant: row.tenant, state: 'running' }, row.running);
          this.set({ tenant: row.tenant, state: 'paused' }, row.paused);
          this.set({ tenant: row.tenant, state: 'hibernated' }, row.hibernated ?? 0);
        }
      },
    });
    new Gauge({
      name: 'kindling_persistent_sandbox_memory_mb',
      help: 'Sum of memoryMb of a tenant\'s running and paused persistent sandboxes (quota maxSandboxMemoryMb)',
      labelNames: ['tenant'],
      registers,
      collect() {
        this.reset();
        for (const row of persistent?.() ?? []) this.set({ tenant: row.tenant }, row.memoryMb);
      },
    });
    new Gauge({
      name: 'kindling_warm_sandboxes',
      help: 'Warm sandboxes of handler-style functions by function, executor and state (idle|busy|creating)',
      labelNames: ['function', 'executor', 'state'],
      registers,
      collect() {
        this.reset();
        for (const pool of pools?.() ?? []) {
          for (const state of ['idle', 'busy', 'creating'] as const) {
            this.inc({ function: pool.function, executor: pool.executor, state }, pool[state]);
          }
        }
      },
    });
  }

  onExecutionFinished(result: ExecutionResult, context: ExecutionContext): void {
    const fn = context.functionName ?? EXECUTE_FUNCTION_LABEL;
    const status = statusOf(result);
    // Work run without a tenant is counted for the default one, as its usage record is.
    const tenant = context.tenant ?? DEFAULT_TENANT;
    this.invocations.inc({ tenant, function: fn, executor: result.executor, status, cold: String(result.coldStart) });
    this.duration.observe({ function: fn, executor: result.executor }, result.durationMs / 1000);
    this.startDuration.observe({ executor: result.executor, cold: String(result.coldStart) }, result.timings.startMs / 1000);
    this.queueWait.observe({ kind: 'execution' }, result.timings.queuedMs / 1000);
    this.countOutcome(status, fn, result.executor);
    if (result.usage?.cpuMs != null) this.cpuSeconds.inc({ tenant, function: fn, executor: result.executor }, result.usage.cpuMs / 1000);
    this.payloadBytes.inc({ direction: 'in' }, context.stdinBytes);
    this.payloadBytes.inc({ direction: 'out' }, context.outputBytes);
  }

  onExecutionFailed(error: KindlingError, context: { executor: ExecutorName; functionName?: string; tenant?: string }): void {
    this.invocations.inc({ tenant: context.tenant ?? DEFAULT_TENANT, function: context.functionName ?? EXECUTE_FUNCTION_LABEL, executor: context.executor, status: 'error', cold: 'true' });
  }

  /** A handler-style invocation (warm pools); command functions are counted through onExecutionFinished. */
  onInvocation(event: InvocationEvent): void {
    this.invocations.inc({ tenant: event.tenant, function: event.functionName, executor: event.executor, status: event.status, cold: String(event.coldStart) });
    if (event.status !== 'error') this.duration.observe({ function: event.functionName, executor: event.executor }, event.durationMs / 1000);
    if (event.sandboxStartMs !== undefined) this.startDuration.observe({ executor: event.executor, cold: 'true' }, event.sandboxStartMs / 1000);
    this.queueWait.observe({ kind: 'handler' }, event.queuedMs / 1000);
    this.countOutcome(event.status, event.functionName, event.executor);
    if (event.cpuMs !== undefined) this.cpuSeconds.inc({ tenant: event.tenant, function: event.functionName, executor: event.executor }, event.cpuMs / 1000);
    this.payloadBytes.inc({ direction: 'in' }, event.inBytes);
    this.payloadBytes.inc({ direction: 'out' }, event.outBytes);
  }

  /** CPU a warm sandbox used between invocations: billed, so counted with the rest of the CPU. */
  onIdleUsage(event: IdleUsageEvent): void {
    this.cpuSeconds.inc({ tenant: event.tenant, function: event.functionName, executor: event.executor }, event.cpuMs / 1000);
  }

  /** Sandbox lifecycle, fed by the executor wrapper in instrument.ts. */
  onSandbox(executor: ExecutorName, event: 'created' | 'destroyed' | 'failed', kind: 'execution' | 'warm' | 'persistent'): void {
    this.sandboxes.inc({ executor, event, kind });
    if (event === 'created') this.sandboxesLive.inc({ executor });
    if (event === 'destroyed') this.sandboxesLive.dec({ executor });
  }

  /** A call a cluster gateway sent to a worker ended. */
  onClusterRun(outcome: ClusterRunOutcome): void {
    this.clusterRuns.inc({ outcome });
  }

  /** An idle warm sandbox was evicted under one of the warm capacity's caps. */
  onWarmEviction(reason: 'count' | 'memory' | 'tenant' | 'pressure'): void {
    this.warmEvictions.inc({ reason });
  }

  /** A splice relay ended (stream-relay.ts). */
  onRelayed(direction: 'in' | 'out', bytes: number): void {
    this.relayedBytes.inc({ direction }, bytes);
  }

  onRelayFailed(direction: 'in' | 'out'): void {
    this.relayFailures.inc({ direction });
  }

  onHttpError(code: string, statusCode: number): void {
    this.httpErrors.inc({ code, status: String(statusCode) });
  }

  onHttpResponse(method: string, statusCode: number): void {
    this.httpResponses.inc({ method, status: String(statusCode) });
  }

  private countOutcome(status: InvocationStatus, fn: string, executor: ExecutorName): void {
    if (status === 'oom') this.oomKills.inc({ function: fn, executor });
    if (status === 'timeout') this.timeouts.inc({ function: fn, executor });
  }
}
