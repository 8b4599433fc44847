import { createHash } from 'node:crypto';
import { accessSync, constants, readFileSync } from 'node:fs';
import { chmod, mkdir, readFile, realpath, rm, stat, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { freemem, hostname, networkInterfaces, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { buildApi, type ApiOptions } from './api/build.js';
import { HostGuard, type AllowedHost } from './api/host-guard.js';
import { StreamRelay } from './api/stream-relay.js';
import { newInstanceId } from './core/ids.js';
import type { ExecutorName } from './core/types.js';
import type { Executor, ExecutorStatus } from './executors/executor.js';
import { createExecutor, type MicroVmSettings } from './executors/registry.js';
import { instrumentExecutor } from './metrics/instrument.js';
import { Metrics, type TenantStorage } from './metrics/metrics.js';
import { checkNodeName, filesystemSpace } from './metrics/node.js';
import { UsageMeter } from './metrics/usage-meter.js';
import { SandboxMeter } from './metrics/sandbox-meter.js';
import { EgressPolicy } from './network/policy.js';
import { ExecutionService } from './orchestrator/execution-service.js';
import { BundleStore } from './orchestrator/bundles.js';
import { ArtifactUse } from './cluster/artifact-use.js';
import { FunctionService } from './orchestrator/function-service.js';
import type { ClusterNode } from './cluster/node.js';
import type { ClusterConfig } from './cluster/roles.js';
import { HandlerPools, type HandlerPoolsOptions, type IdleUsageEvent, type InvocationObserver } from './orchestrator/handler-pools.js';
import { InvocationService, toInvocationView, type InvocationServiceOptions, type InvocationView } from './orchestrator/invocations.js';
import type { InvocationListFilter, InvocationOwners } from './cluster/invocation-owners.js';
import { INVOCATION_STATUSES, type InvocationFilter, type InvocationStatus } from './store/store.js';
import { LogBus } from './orchestrator/log-bus.js';
import { SqliteStore } from './store/sqlite.js';
import { SqliteUsageStore } from './store/usage-sqlite.js';
import type { UsageStore } from './store/usage.js';
import type { SharedUsage } from './cluster/shared-usage.js';
import { SqliteTenantStore } from './store/tenants-sqlite.js';
import { SqliteSandboxStore } from './store/sandboxes-sqlite.js';
import { SandboxService } from './orchestrator/sandboxes.js';
import { CustomImageService } from './orchestrator/custom-images.js';
import { DEFAULT_BUILD_DISK_MB, DependencyBuilder } from './orchestrator/builds.js';
import { forwardRead, wasForwarded } from './api/forward.js';
import { SqliteBuildStore } from './store/builds-sqlite.js';
import { TenantService, type ResolvedQuotas } from './orchestrator/tenants.js';
import { processAlive } from './executors/shared/process.js';
import { DEFAULT_FUNCTION_POOLS, tenantShareOf, warmCapacityDefaults, type MachineFacts } from './server-defaults.js';
import type { OtlpTracingConfig } from './tracing/options.js';
import type { Tracer } from './core/tracing.js';

export type ExecutorChoice = ExecutorName | 'auto';

/** The host's own addresses (every interface), which egress sandboxes must never reach. */
function hostAddresses(): string[] {
  return Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((i) => i.address));
}

/** After the drain, how long open connections get before they are cut. */
const CLOSE_GRACE_MS = 2000;

/** Everything the server needs, already parsed; built by main from flags and the environment. */
export interface ServerConfig {
  host: string;
  port: number;
  dataDir: string;
  imagesDir: string;
  executor: ExecutorChoice;
  /** Executors to enable besides the default (those that fail to come up are left out with a log line). */
  enableExecutors: ExecutorName[];
  /** KINDLING_ADMIN_KEY: an admin key kept only in memory (hashed); without it the server makes and stores one. */
  adminKey?: string;
  /**
   * Quotas of tenants that set none (--tenant-* flags); absent fields: the storage quotas' defaults
   * (DEFAULT_STORAGE_QUOTAS), no cap beyond the server's own limits for the others; null: no cap.
   */
  tenantQuotas?: Partial<ResolvedQuotas>;
  /** Live (running or paused) persistent sandboxes per tenant (--max-sandboxes-per-tenant). Default 10. */
  maxSandboxesPerTenant?: number;
  /** Custom images a tenant may keep (and the shared ones); default 10. */
  maxCustomImagesPerTenant?: number;
  /** Snapshots of persistent sandboxes a tenant may keep (--max-snapshots-per-tenant). Default 20. */
  maxSnapshotsPerTenant?: number;
  /** How often running persistent sandboxes are metered (their cgroups read) and stored GB-hours written; default 60 s. */
  sandboxMeterIntervalMs?: number;
  /** Proxied port connections open at once per persistent sandbox (--max-sandbox-port-connections). Default 64. */
  maxSandboxPortConnections?: number;
  /** A proxied port connection without a byte either way for this long ends. Default 300000 (5 min). */
  sandboxPortIdleTimeoutMs?: number;
  /** Versions kept per function (the newest); older ones go on deploy unless an invocation needs them. Default 10. */
  functionVersionsKept?: number;
  /**
   * Shows an admin key the server generated (once, at its first start on a non-loopback address). Default: a banner
   * on stderr, never the JSON log.
   */
  announceAdminKey?: (key: string) => void;
  maxConcurrent: number;
  maxQueued: number;
  queueTimeoutMs: number;
  maxBodyBytes: number;
  maxStreamBytes: number;
  /** Largest function bundle (a tar of a directory, as uploaded) (--max-bundle-bytes). Default 64 MiB. */
  maxBundleBytes?: number;
  /**
   * Dependency builds of node bundles (npm ci in a build sandbox): how many run at once (--max-concurrent-builds), the registry (--build-registry), the budget
   * (--build-timeout-ms, --build-memory-mb, --build-cpus, --build-disk-mb) and the host's npm package directory run by
   * builds (--build-npm-dir; default: the npm next to the node running the server); python builds: pip's index
   * (--pip-index-url, default https://pypi.org/simple) and the pip wheel they run (--build-pip-wheel); Go bundles'
   * GOPROXY (--build-go-proxy, default off).
   */
  build?: { maxConcurrent?: number; registry?: string; timeoutMs?: number; memoryMb?: number; cpus?: number; diskMb?: number; npmDir?: string; caFile?: string; pipIndexUrl?: string; pipWheel?: string; goProxy?: string };
  /**
   * The splice relay for large streams (native/kindling-splice.c, built into dist/native): its path, or null to keep
   * every stream in node. Default: the built one when it exists.
   */
  streamRelayPath?: string | null;
  shutdownTimeoutMs: number;
  dockerSocketPath: string;
  /** Docker: creating + starting one container may take this long before a retryable 503. Default 60000. */
  dockerCreateTimeoutMs?: number;
  microvm?: MicroVmSettings;
  /** Sandboxes each executor keeps started ahead of demand per shape (`--prewarm`); unset: each executor's default. */
  prewarmPerShape?: number;
  /** Async invocations: concurrency, retention, callbacks; every field has a default. */
  asyncInvocations?: AsyncInvocationConfig;
  /** CIDRs that `network: "egress"` may reach although private (--egress-allow); loopback, link-local and the host stay denied. */
  egressAllow?: string[];
  /** Warm pools of handler-style functions; every field has a default. */
  functionPools?: Partial<FunctionPoolConfig>;
  version: string;
  logger: Logger;
  /** When set, GET /metrics needs `Authorization: Bearer <token>` (an API key works too). */
  metricsToken?: string;
  /** The `node` label of every metric (--node-name). Default: the host name. */
  nodeName?: string;
  /** Cluster mode (`serve --cluster URLS --role ...`): absent, the server is a cluster of one, as always. */
  cluster?: ClusterConfig;
  /** The built web console; default web/dist of this checkout. */
  consoleDir?: string;
  /**
   * Host names (optionally with a port) the server answers to besides IP addresses, localhost and the --host name
   * (--allowed-hosts); other Host headers get 421 (DNS rebinding), and pages of their origins may change state.
   */
  allowedHosts?: AllowedHost[];
  /** Operator mode: the store of large job results, served by GET /v1/operator/results/:serviceId/:callId (public). */
  operatorResults?: ApiOptions['operatorResults'];
  /**
   * Export spans of requests and invocation phases over OTLP/HTTP (--otlp-endpoint and the --otlp-* options); absent:
   * no span is made and the OpenTelemetry SDK is not loaded.
   */
  otlp?: OtlpTracingConfig;
}

/** dist/native/kindling-splice, built by scripts/build-native.sh (dist/src/server.js -> dist/native). */
export { DEFAULT_FUNCTION_POOLS };

export const DEFAULT_STREAM_RELAY_PATH = join(dirname(fileURLToPath(import.meta.url)), '..', 'native', 'kindling-splice');

/** Large uploads (a declared length of at least this) bypass node; smaller ones are read before a helper would start. */
const STREAM_RELAY_MIN_UPLOAD_BYTES = 4 * 1024 * 1024;
/** A client that sends or accepts nothing of a relayed stream for this long is given up. */
const STREAM_RELAY_CLIENT_IDLE_MS = 120_000;
/** Helpers at once at most (each is a small process); past it, streams go through node. */
const STREAM_RELAY_MAX_HELPERS = 64;
/** How long an upload helper may go on dropping an unread body after the answer went out. */
const STREAM_RELAY_DRAIN_GRACE_MS = 5_000;

/** The splice relay when its helper is there and runs; else null with a log line (streams then stay in node). */
function openStreamRelay(path: string | null, metrics: Metrics, logger: Logger): StreamRelay | null {
  if (path === null) return null;
  try {
    accessSync(path, constants.X_OK);
  } catch {
    logger.warn({ path }, 'the splice relay is not built (no C compiler at build time?): large streams go through node, at about half the throughput; run scripts/setup.sh');
    return null;
  }
  return new StreamRelay({
    binaryPath: path,
    minUploadBytes: STREAM_RELAY_MIN_UPLOAD_BYTES,
    clientIdleMs: STREAM_RELAY_CLIENT_IDLE_MS,
    maxHelpers: STREAM_RELAY_MAX_HELPERS,
    drainGraceMs: STREAM_RELAY_DRAIN_GRACE_MS,
    onMoved: (direction, bytes) => metrics.onRelayed(direction, bytes),
    onFailure: (direction, detail) => {
      metrics.onRelayFailed(direction);
      logger.warn({ direction, detail }, 'the splice relay failed');
    },
  });
}

/** web/dist beside the compiled server (dist/src/server.js -> web/dist). */
export const DEFAULT_CONSOLE_DIR = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'web', 'dist');

/** The warm-pool settings an operator sets (see HandlerPoolsOptions for each one's meaning); defaults below. */
export type FunctionPoolConfig = Required<
  Pick<HandlerPoolsOptions, 'defaultMaxConcurrency' | 'defaultMaxQueued' | 'queueTimeoutMs' | 'idleTtlMs' | 'maxUses' | 'maxAgeMs' | 'genericPerShape' | 'startTimeoutMs'>
> &
  // Unset: derived from the machine (warmCapacityDefaults in server-defaults.ts).
  Partial<Pick<HandlerPoolsOptions, 'maxWarmSandboxes' | 'maxWarmMemoryMb' | 'maxWarmSandboxesPerTenant' | 'minAvailableMemoryMb' | 'maxConcurrentStarts'>>;

/** The machine's memory and this process's open-file limit, for the warm capacity's defaults. */
export function machineFacts(): MachineFacts {
  let openFilesLimit = 1024;
  try {
    // "Max open files  <soft>  <hard>  files": node raised the soft limit to the hard one at start.
    const soft = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1];
    if (soft !== undefined) openFilesLimit = soft === 'unlimited' ? Number.MAX_SAFE_INTEGER : Number(soft);
  } catch {
    // Not Linux: the conservative default stands.
  }
  return { totalMemoryMb: Math.floor(totalmem() / 1_048_576), openFilesLimit };
}

/** Async invocation settings (see InvocationServiceOptions for each one's meaning and default). */
export type AsyncInvocationConfig = Pick<
  InvocationServiceOptions,
  'concurrency' | 'maxDeliveries' | 'retentionMs' | 'syncLogBytes' | 'sweepIntervalMs' | 'callbackAllow' | 'callbackMaxAttempts' | 'callbackBaseDelayMs'
>;


/** A server built by createServer: everything made, nothing listening yet. */
export interface KindlingServer {
  app: FastifyInstance;
  defaultExecutor: ExecutorName;
  executors: ReadonlyMap<ExecutorName, Executor>;
  /** Warm pools of handler-style functions (stats for tests and /readyz). */
  handlers: HandlerPools;
  /** Metered usage records (tests, reports). */
  usage: SqliteUsageStore;
  /** Async invocations (stats and whenIdle for tests and the bench). */
  invocations: InvocationService;
  /** Live logs of running invocations (whether anyone follows: tests wait for a follower instead of sleeping). */
  logBus: Pick<LogBus, 'followed'>;
  /** The orchestrator services the gateway uses, for other clients of the orchestrator in this process (the chain operator). */
  services: { executions: ExecutionService; sandboxes: SandboxService; tenants: TenantService };
  /**
   * Listens on the configured host and port, then starts the work that needs a gateway: the async dispatcher (crash
   * recovery first) and the generic warm sandboxes. Resolves with the URL. A failure (the port is taken) leaves the
   * server as it was: destroy() it.
   */
  listen(): Promise<string>;
  /** Graceful: stop accepting, drain up to the shutdown deadline, then kill what is left and release everything. */
  close(): Promise<void>;
  /** Abort: kill every execution and sandbox now and release everything. Idempotent, and safe after close(). */
  destroy(): Promise<void>;
}

export interface RunningServer extends KindlingServer {
  url: string;
}

/**
 * What a build made so far, undone in reverse order when a later step fails (a half-built server leaves nothing:
 * no lock, no sandbox, no open store). The error of the failed step is the one rethrown; failures of the undo steps
 * are logged.
 */
class Rollback {
  private readonly steps: { what: string; undo: () => unknown }[] = [];
  constructor(private readonly logger: Logger) {}

  add(what: string, undo: () => unknown): void {
    this.steps.push({ what, undo });
  }

  async run(): Promise<void> {
    for (const { what, undo } of this.steps.splice(0).reverse()) {
      try {
        await undo();
      } catch (error) {
        this.logger.warn({ err: error, step: what }, 'undoing a step of a failed start failed');
      }
    }
  }
}

/** The generated admin key goes to stderr as a banner, once; the JSON log never carries it. */
function printAdminKeyBanner(key: string): void {
  process.stderr.write(
    [
      '',
      '================================================================================',
      ' Kindling generated an admin API key. It is shown only now (the server keeps only its hash):',
      '',
      `   export KINDLING_API_KEY=${key}`,
      '',
      ' Create tenants with: kindling tenants create NAME',
      '================================================================================',
      '',
    ].join('\n'),
  );
}

const isLoopback = (host: string): boolean =>
  host === 'localhost' || host === '::1' || (isIP(host) === 4 && host.startsWith('127.'));

/** One server per data dir: a pid file that a dead server's successor may take over. */
async function lockDataDir(dataDir: string): Promise<() => Promise<void>> {
  const lockPath = join(dataDir, 'server.pid');
  const existing = await readFile(lockPath, 'utf8').catch(() => null);
  const pid = existing === null ? NaN : Number.parseInt(existing, 10);
  if (Number.isInteger(pid) && pid !== process.pid && processAlive(pid)) {
    throw new Error(`another Kindling server (pid ${pid}) uses the data dir ${dataDir}; stop it or pass another --data-dir`);
  }
  // Replace a stale file, then create ours exclusively: of two servers starting at once, one loses here.
  if (existing !== null) await rm(lockPath, { force: true });
  try {
    await writeFile(lockPath, String(process.pid), { flag: 'wx' });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') throw new Error(`another Kindling server is starting with the data dir ${dataDir}; stop it or pass another --data-dir`);
    throw error;
  }
  return () => rm(lockPath, { force: true });
}

/** Picks the default executor: the one asked for, or for `auto` the sandbox where it works, else docker. */
export function chooseDefaultExecutor(
  choice: ExecutorChoice,
  statuses: ExecutorStatus[],
): { name: ExecutorName; reason: string } {
  if (choice !== 'auto') return { name: choice, reason: `--executor ${choice} was asked for` };
  const sandbox = statuses.find((status) => status.name === 'sandbox');
  if (sandbox?.ready) return { name: 'sandbox', reason: `auto: the native sandbox works here (${sandbox.reason})` };
  const docker = statuses.find((status) => status.name === 'docker');
  const why = sandbox ? `the native sandbox is not usable (${sandbox.reason})` : 'the native sandbox is not built into this server';
  if (docker?.ready) return { name: 'docker', reason: `auto: ${why}; using Docker (${docker.reason})` };
  return { name: docker ? 'docker' : 'sandbox', reason: `auto: ${why}, and Docker is not ready either (${docker?.reason ?? 'not enabled'})` };
}

/**
 * The database and its WAL/shm files are the server's alone (0600). SQLite gives the files it creates later the mode
 * of the database file, so creating that one 0600 before the first open is enough for new data dirs.
 */
async function restrictDatabaseFiles(dbPath: string): Promise<void> {
  await writeFile(dbPath, '', { flag: 'a', mode: 0o600 });
  for (const file of [dbPath, `${dbPath}-wal`, `${dbPath}-shm`, `${dbPath}-journal`]) {
    await chmod(file, 0o600).catch((error: unknown) => {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    });
  }
}

/** Builds and listens; a start that fails (the port is taken) leaves nothing behind. */
export async function startServer(config: ServerConfig): Promise<RunningServer> {
  const server = await createServer(config);
  try {
    const url = await server.listen();
    return Object.assign(server, { url });
  } catch (error) {
    await server.destroy();
    throw error;
  }
}

/**
 * The composition root: builds every part of the server (executors, stores, services, the gateway) without listening.
 * If a step fails, what the earlier steps made is destroyed before the error is rethrown.
 */
export async function createServer(config: ServerConfig): Promise<KindlingServer> {
  const rollback = new Rollback(config.logger);
  try {
    return await buildServer(config, rollback);
  } catch (error) {
    await rollback.run();
    throw error;
  }
}

async function buildServer(config: ServerConfig, rollback: Rollback): Promise<KindlingServer> {
  const logger = config.logger;
  const nodeName = checkNodeName(config.nodeName ?? hostname());
  await mkdir(config.dataDir, { recursive: true });
  const dataDir = await realpath(config.dataDir);
  const unlock = await lockDataDir(dataDir);
  rollback.add('data dir lock', unlock);
  // Resources are labelled with the data dir's identity: a restarted server finds what its predecessor left.
  const ownerId = createHash('sha256').update(dataDir).digest('hex').slice(0, 16);
  const instanceId = newInstanceId();
  const stateDir = join(dataDir, 'run');
  await mkdir(stateDir, { recursive: true });
  // Sandboxes run as an unprivileged uid that must traverse to their run dirs: others get search access, and nothing
  // more (no listing, no reading: the database holds code, env values and payloads; see docs/security.md, 7.).
  for (const dir of [dataDir, stateDir]) {
    const { mode } = await stat(dir);
    const wanted = ((mode & 0o7700) | 0o011) >>> 0;
    if ((mode & 0o7777) !== wanted) await chmod(dir, wanted);
  }
  await restrictDatabaseFiles(join(dataDir, 'kindling.db'));

  // Tracing: the SDK is loaded only when spans are exported.
  let tracer: Tracer | undefined;
  if (config.otlp !== undefined) {
    const { createOtlpTracer } = await import('./tracing/otlp.js');
    const made = createOtlpTracer({ ...config.otlp, serviceVersion: config.version, instanceId });
    tracer = made;
    rollback.add('tracer', () => made.shutdown());
    logger.info({ url: config.otlp.url, samplingRatio: config.otlp.samplingRatio ?? 1 }, 'exporting spans over OTLP/HTTP');
  }

  const egressPolicy = new EgressPolicy({ allow: config.egressAllow ?? [], hostAddresses: hostAddresses() });
  const wanted = new Set<ExecutorName>(config.enableExecutors);
  if (config.executor === 'auto') {
    wanted.add('sandbox');
    wanted.add('docker');
  } else {
    wanted.add(config.executor);
  }
  const executors = new Map<ExecutorName, Executor>();
  const statuses: ExecutorStatus[] = [];
  for (const name of wanted) {
    const executor = await createExecutor(name, {
      stateDir,
      imagesDir: config.imagesDir,
      ownerId,
      instanceId,
      dockerSocketPath: config.dockerSocketPath,
      ...(config.dockerCreateTimeoutMs === undefined ? {} : { dockerCreateTimeoutMs: config.dockerCreateTimeoutMs }),
      ...(config.microvm ? { microvm: config.microvm } : {}),
      ...(config.prewarmPerShape === undefined ? {} : { prewarmPerShape: config.prewarmPerShape }),
      egressPolicy,
      logger: logger.child({ executor: name }),
    });
    if (!executor) continue;
    rollback.add(`${name} executor`, () => executor.destroy());
    const status = await executor.probe();
    statuses.push(status);
    if (!status.ready && name !== config.executor && !(config.executor === 'auto' && name === 'docker')) {
      logger.warn({ executor: name, reason: status.reason }, 'executor not ready; left out');
      await executor.destroy();
      continue;
    }
    executors.set(name, executor);
    // Orphans of an earlier, crashed run of this data dir go before any new work arrives.
    if (status.ready) {
      const report = await executor.reap().catch((error: unknown) => {
        logger.warn({ err: error, executor: name }, 'reaping orphans failed');
        return { removed: 0 };
      });
      if (report.removed > 0) logger.info({ executor: name, removed: report.removed }, 'reaped orphans of an earlier run');
    }
  }
  const chosen = chooseDefaultExecutor(config.executor, statuses);
  // Under auto, an executor that is not ready and not the default is dropped.
  for (const status of statuses) {
    const executor = executors.get(status.name);
    if (executor && !status.ready && status.name !== chosen.name) {
      executors.delete(status.name);
      await executor.destroy();
    }
  }
  logger.info({ defaultExecutor: chosen.name, reason: chosen.reason, executors: statuses }, 'default executor chosen');

  let service: ExecutionService | null = null;
  let handlerPools: HandlerPools | null = null;
  let storage: (() => TenantStorage[]) | null = null;
  let clusterNodeRef: ClusterNode | null = null;
  const metrics = new Metrics({
    queue: () => service?.queueStats ?? { running: 0, queued: 0 },
    pools: () => handlerPools?.poolSizes() ?? [],
    warmCapacity: () => handlerPools?.capacity.stats ?? { sandboxes: 0, memoryMb: 0, maxSandboxes: 0, maxMemoryMb: 0 },
    storage: () => storage?.() ?? [],
    persistentSandboxes: () => [...(sandboxesRef?.footprints() ?? new Map())].map(([tenant, row]) => ({ tenant, ...row })),
    dataDirSpace: () => filesystemSpace(dataDir),
    ...(config.cluster
      ? {
          cluster: () => ({
            connected: clusterNodeRef?.status() === 'connected',
            workers: clusterNodeRef === null || config.cluster?.role === 'worker' ? null : clusterNodeRef.workers().length,
          }),
        }
      : {}),
    nodeName,
  });
  // Every sandbox handed out is counted (created/destroyed/failed) by a thin wrapper; the executors know no metrics.
  const served = new Map<ExecutorName, Executor>([...executors].map(([name, executor]) => [name, instrumentExecutor(executor, metrics)]));
  // Function definitions and usage records live beside the orchestrator in the data dir; they survive restarts.
  const store = new SqliteStore(join(dataDir, 'kindling.db'));
  rollback.add('store', () => store.close());
  const usageStore = new SqliteUsageStore(join(dataDir, 'kindling.db'), { onError: (error, records) => logger.warn({ err: error, records }, 'writing usage records failed') });
  rollback.add('usage store', () => usageStore.close());
  const buildStore = new SqliteBuildStore(join(dataDir, 'kindling.db'));
  rollback.add('build store', () => buildStore.close());
  // A build that was running when the server stopped never finishes: its deploy got no answer and stored nothing.
  buildStore.failInterrupted(Date.now());
  const tenantStore = new SqliteTenantStore(join(dataDir, 'kindling.db'));
  rollback.add('tenant store', () => tenantStore.close());
  let functionServiceRef: FunctionService | null = null;
  let sandboxesRef: SandboxService | null = null;
  let customImagesRef: CustomImageService | null = null;
  let tenantsRef: TenantService | null = null;
  let logBusRef: LogBus | null = null;
  // What the meters write to: this server's store and, on a cluster gateway, the cluster's usage stream.
  let sharedUsage: SharedUsage | null = null;
  const meteredUsage: UsageStore = {
    record: (record) => {
      usageStore.record(record);
      sharedUsage?.publish(record);
    },
    summarize: (query) => usageStore.summarize(query),
    recent: (options) => usageStore.recent(options),
    close: () => usageStore.close(),
  };
  const usageMeter = new UsageMeter(meteredUsage, { onError: (error) => logger.warn({ err: error }, 'writing a usage record failed') });
  // Cluster mode: joined before tenants and functions are read (a gateway's are the cluster's shared ones) and before
  // the function service, which sends invocations through the node's router.
  // Loaded only then: a server on its own does not load the NATS client.
  const clusterNode = config.cluster ? await (await import('./cluster/node.js')).ClusterNode.connect(config.cluster, logger.child({ component: 'cluster' }), {
        // Calls run on workers are the tenant's usage here, where its records are kept.
        onMetered: (facts) => usageMeter.onInvocation(facts),
        onIdleUsage: (event) => usageMeter.onIdleUsage(event),
        onOutcome: (outcome) => metrics.onClusterRun(outcome),
        // Workers send live output only while someone follows logs here.
        wantsOutput: () => logBusRef?.followed ?? true,
      })
    : null;
  clusterNodeRef = clusterNode;
  if (clusterNode) rollback.add('cluster', () => clusterNode.close());
  // Set once the invocation service exists (the shared state's watch may ask about versions in use before that).
  let invocationsRef: InvocationService | null = null;
  // Gateways share tenants, keys and functions through JetStream; each keeps a copy in its own stores, read as always.
  const shared = clusterNode && clusterNode.config.role !== 'worker'
    ? await clusterNode.shareState(
        { tenants: tenantStore, functions: store },
        {
          // What another gateway changed: caches here follow (a revoked key is refused from the next request).
          onChange: (change) => {
            if (change.kind !== 'function') tenantsRef?.reload();
            if (change.kind === 'tenant' && change.deleted) {
              void sandboxesRef?.deleteTenant(change.tenant).catch((error: unknown) => logger.warn({ err: error, tenant: change.tenant }, 'removing the sandboxes of a deleted tenant failed'));
            }
            if (change.kind === 'function' && change.deleted) functionServiceRef?.deletedElsewhere(change.tenant, change.name);
          },
          onError: (error) => logger.warn({ err: error }, "applying a change of the cluster's shared state failed"),
          inUse: (tenant, name, version) => invocationsRef?.uncommittedVersions(tenant, name).includes(version) ?? false,
        },
      )
    : null;
  // Every gateway's usage records reach every gateway: GET /v1/usage anywhere shows the cluster's.
  if (shared) {
    sharedUsage = await clusterNode!.shareUsage(usageStore, { onError: (error, context) => logger.warn({ err: error, ...context }, "the cluster's usage stream") });
  }
  // Tenants' concurrency quotas hold across gateways: their slots are shared too.
  const tenantSlots = shared ? await clusterNode!.shareTenantSlots({ onError: (error) => logger.warn({ err: error }, "a tenant slot's lease") }) : null;
  if (shared) logger.info(shared.report, shared.report.seeded ? "this gateway's tenants, keys and functions became the cluster's shared state" : "tenants, keys and functions are the cluster's shared state");
  const tenants = new TenantService({
    store: tenantStore,
    ...(shared ? { writes: shared.state } : {}),
    ...(tenantSlots ? { sharedSlots: tenantSlots } : {}),
    storageUsage: (tenant) => ({ ...store.storageUsage(tenant), ...(customImagesRef ? { imageBytes: customImagesRef.bytesOf(tenant) } : {}) }),
    // The server's sandbox caps are the defaults of tenants that set no sandbox quotas of their own.
    defaults: { maxSandboxes: config.maxSandboxesPerTenant ?? 10, maxPausedSandboxes: config.maxSandboxesPerTenant ?? 10, ...config.tenantQuotas },
    ...(config.adminKey ? { envAdminKey: config.adminKey } : {}),
    onTenantDeleted: (name) => {
      void sandboxesRef?.deleteTenant(name).catch((error: unknown) => logger.warn({ err: error, tenant: name }, 'removing the sandboxes of a deleted tenant failed'));
      return functionServiceRef?.deleteTenant(name);
    },
  });
  tenantsRef = tenants;
  // Live tenants only (a deleted tenant's counts are not shown); each view carries its usage (one row read per tenant).
  storage = () => tenants.list().flatMap((tenant) => (tenant.usage ? [{ tenant: tenant.name, ...tenant.usage }] : []));
  // Never open to the network without keys: a first start on a non-loopback address makes the admin key (shown once).
  if (!isLoopback(config.host)) {
    const generated = await tenants.bootstrapAdminKey();
    if (generated !== null) (config.announceAdminKey ?? printAdminKeyBanner)(generated);
  }
  // A cluster worker sends the idle usage of the sandboxes it keeps for gateways' functions to the gateways, which
  // meter those functions (set once the worker serves); everything else is recorded here.
  let idleUsageElsewhere: ((event: IdleUsageEvent) => Promise<boolean> | null) | null = null;
  const usageObserver: InvocationObserver = {
    onInvocation: (event) => usageMeter.onInvocation(event),
    onIdleUsage: (event) => {
      const sent = idleUsageElsewhere?.(event) ?? null;
      if (sent === null) usageMeter.onIdleUsage(event);
      // No gateway recorded it (none up, NATS down): kept here rather than lost.
      else void sent.then((recorded) => recorded || usageMeter.onIdleUsage(event));
    },
  };
  // Custom images, built with the images' own builder into the same images dir: imported into Docker when the docker
  // executor serves, written as ext4 when the microvm one does.
  const customImages = new CustomImageService({
    imagesDir: config.imagesDir,
    ...(served.has('docker') ? { docker: new (await import('dockerode')).default({ socketPath: config.dockerSocketPath }) } : {}),
    ext4: served.has('microvm'),
    ...(config.maxCustomImagesPerTenant === undefined ? {} : { maxPerTenant: config.maxCustomImagesPerTenant }),
    // Images for functions' packages are this data dir's, like its functions (the images dir may be shared).
    ownerId,
    imageReferences: () => store.imageReferences(),
    imageBytesQuotaOf: (tenant) => tenants.quotasOf(tenant).maxImageBytes,
    onImagesChanged: async () => {
      for (const executor of served.values()) await executor.refreshImages().catch(() => undefined);
    },
    log: logger.child({ component: 'custom-images' }),
  });
  customImagesRef = customImages;
  await customImages.start();
  // Images made for functions' packages that no kept version names (a crash between a delete and its collection).
  void customImages.collectFunctionImages();
  service = new ExecutionService({
    images: customImages,
    executors: served,
    defaultExecutor: chosen.name,
    concurrency: { maxConcurrent: config.maxConcurrent, maxQueued: config.maxQueued, queueTimeoutMs: config.queueTimeoutMs, limitName: '--max-concurrent' },
    observers: [metrics, usageMeter],
    startTimeoutMs: config.functionPools?.startTimeoutMs ?? DEFAULT_FUNCTION_POOLS.startTimeoutMs,
  });
  // Unpacked function bundles, one read-only directory per content hash, bound into sandboxes at /work.
  const bundles = new BundleStore({ dir: join(dataDir, 'bundles'), nodeModulesMountPoint: true, ...(config.maxBundleBytes === undefined ? {} : { maxBytes: config.maxBundleBytes }) });
  // Installed npm dependencies, one read-only directory per lockfile hash, bound at /work/node_modules.
  const buildDiskMb = config.build?.diskMb ?? DEFAULT_BUILD_DISK_MB;
  const layers = new BundleStore({ dir: join(dataDir, 'layers'), maxBytes: buildDiskMb * 1024 * 1024 });
  const builder = new DependencyBuilder({
    executionService: service,
    // Builds need egress (registries) and binds: the sandbox executor when it serves, else docker, else the default.
    ...(served.has('sandbox') ? { executor: 'sandbox' as const } : served.has('docker') ? { executor: 'docker' as const } : {}),
    layers,
    npmDir: config.build?.npmDir ?? join(dirname(dirname(process.execPath)), 'lib', 'node_modules', 'npm'),
    diskMb: buildDiskMb,
    ...(config.build?.maxConcurrent === undefined ? {} : { maxConcurrent: config.build.maxConcurrent }),
    ...(config.build?.registry === undefined ? {} : { registry: config.build.registry }),
    ...(config.build?.timeoutMs === undefined ? {} : { timeoutMs: config.build.timeoutMs }),
    ...(config.build?.memoryMb === undefined ? {} : { memoryMb: config.build.memoryMb }),
    ...(config.build?.cpus === undefined ? {} : { cpus: config.build.cpus }),
    ...(config.build?.caFile === undefined ? {} : { caFile: config.build.caFile }),
    ...(config.build?.pipIndexUrl === undefined ? {} : { pipIndexUrl: config.build.pipIndexUrl }),
    ...(config.build?.pipWheel === undefined ? {} : { pipWheel: config.build.pipWheel }),
    ...(config.build?.goProxy === undefined ? {} : { goProxy: config.build.goProxy }),
  });
  const handlers = new HandlerPools({
    resolveImage: (image, tenant) => customImages.resolve(image, tenant),
    bundlePath: (sha256) => bundles.pathOf(sha256),
    layerPath: (sha256) => layers.pathOf(sha256),
    ...DEFAULT_FUNCTION_POOLS,
    ...warmCapacityDefaults(machineFacts()),
    // A total given without a per-tenant cap: the tenant's share is of that total.
    ...(config.functionPools?.maxWarmSandboxes === undefined ? {} : { maxWarmSandboxesPerTenant: tenantShareOf(config.functionPools.maxWarmSandboxes) }),
    ...config.functionPools,
    // MemAvailable on Linux (libuv reads it from /proc/meminfo), read once per warm sandbox start.
    availableMemoryMb: () => freemem() / 1_048_576,
    onEvict: (reason) => metrics.onWarmEviction(reason),
    executors: served,
    observers: [metrics, usageObserver],
    // Cold starts of node and python handlers on the default executor take a generic sandbox that is already up.
    // Not on a cluster gateway: its node and python handlers run on workers.
    genericWarmAtStart:
      config.cluster?.role === 'gateway'
        ? []
        : [
            { executor: chosen.name, runtime: 'node' },
            { executor: chosen.name, runtime: 'python' },
          ],
    onError: (error, context) => logger.warn({ err: error, ...context }, 'a warm sandbox could not be started'),
    onStartFailed: (executor) => metrics.onSandbox(executor, 'failed', 'warm'),
  });
  handlerPools = handlers;
  const pools = { ...DEFAULT_FUNCTION_POOLS, ...config.functionPools };
  // Several gateways: bundles and layers go through the cluster's object store (a deploy through one, a call through any).
  const artifacts = shared
    ? await clusterNode!.shareArtifacts(
        { stores: { bundle: bundles, layer: layers }, referenced: (kind) => store.bundleHashes(kind) },
        { onError: (error, context) => logger.warn({ err: error, ...context }, "the cluster's bundles and layers") },
      )
    : null;
  // A worker fetches them for the versions gateways send it, and keeps those of the functions it ran (until deleted).
  const artifactUse = clusterNode?.config.role === 'worker' ? new ArtifactUse() : null;
  const workerArtifacts = artifactUse
    ? clusterNode!.artifactsReader({ stores: { bundle: bundles, layer: layers } }, { onError: (error, context) => logger.warn({ err: error, ...context }, "fetching a function's bundle or layer from the cluster") })
    : null;
  const functionService = new FunctionService({
    ...(artifacts ? { artifacts } : {}),
    ...(workerArtifacts && artifactUse ? { artifacts: workerArtifacts, referencesFile: (kind: 'bundle' | 'layer', sha256: string) => artifactUse.uses(kind, sha256) } : {}),
    ...(clusterNode?.router ? { remote: clusterNode.router } : {}),
    ...(shared ? { writes: shared.state } : {}),
    ...(config.functionVersionsKept === undefined ? {} : { versionsKept: config.functionVersionsKept }),
    versionsInUse: (tenant, name) => invocationsRef?.uncommittedVersions(tenant, name) ?? [],
    storageQuotasOf: (tenant) => tenants.quotasOf(tenant),
    store,
    images: customImages,
    packageImages: customImages,
    executionService: service,
    defaultExecutor: chosen.name,
    handlers,
    // A function's own maxConcurrency holds across gateways (its slots beside the tenants' in KINDLING_SLOTS); a
    // gateway alone counts its calls itself, as a single server does.
    ...(tenantSlots
      ? { sharedFunctionSlots: async (version, max, wait) => (tenantSlots.othersPresent() ? tenantSlots.acquireWaiting(`fn.${version.tenant}.${version.name}`, max, wait) : () => undefined) }
      : {}),
    defaultMaxConcurrency: pools.defaultMaxConcurrency,
    defaultMaxQueued: pools.defaultMaxQueued,
    queueTimeoutMs: pools.queueTimeoutMs,
    bundles,
    layers,
    builder,
    builds: buildStore,
    onError: (error) => logger.warn({ err: error }, 'removing unused function bundles failed'),
  });
  functionServiceRef = functionService;
  // Bundles of versions deleted while the server was down (or left half-unpacked by a crash) go now.
  functionService.collectBundles();
  rollback.add('warm pools', () => functionService.close());
  const logBus = new LogBus();
  logBusRef = logBus;
  // Several gateways: an Idempotency-Key holds across them (claimed in JetStream before the invocation is stored).
  const claims = shared ? await clusterNode!.idempotencyClaims({ ttlMs: config.asyncInvocations?.retentionMs ?? 7 * 24 * 3600_000 }) : null;
  let ownersRef: InvocationOwners | null = null;
  const invocations = new InvocationService({
    store,
    functionService,
    logBus,
    ...config.asyncInvocations,
    // A gateway's async runs were on workers: delivered again after its crash, as after a lost worker.
    ...(clusterNode && clusterNode.config.role !== 'worker' ? { redeliverInterrupted: true } : {}),
    ...(claims
      ? {
          idempotency: {
            nodeId: clusterNode!.config.nodeId,
            claim: (tenant, functionName, key, id) => claims.claim(tenant, functionName, key, id),
            takeOver: (tenant, functionName, key, id, holder) => claims.takeOver(tenant, functionName, key, id, holder),
            repoint: (tenant, functionName, key, from, to) => claims.repoint(tenant, functionName, key, from, to),
            release: (tenant, functionName, key, id) => claims.release(tenant, functionName, key, id),
            locate: async (id, tenant) => {
              const where = await ownersRef?.locate(id, tenant);
              return { view: (where?.owner?.view as InvocationView | undefined) ?? null, absentAt: where?.absentAt ?? [], answeredBy: where?.answeredBy ?? [] };
            },
          },
        }
      : {}),
    onError: (error, context) => logger.warn({ err: error, ...context }, 'async invocations'),
    onInfo: (message, context) => logger.info(context, message),
    scopeOf: (tenant) => tenants.scopeOf(tenant),
    storageQuotasOf: (tenant) => tenants.quotasOf(tenant),
    ...(tracer ? { tracer } : {}),
  });
  rollback.add('async invocations', () => invocations.close(0));
  invocationsRef = invocations;
  // Several gateways: a read of an invocation another gateway holds is forwarded there (records stay where accepted).
  let advertiseUrl: string | null = null;
  const owners =
    clusterNode && clusterNode.config.role !== 'worker'
      ? clusterNode.invocationOwners({
          advertiseUrl: () => advertiseUrl,
          trusted: (nodeId, url) => shared?.state.gatewayUrl(nodeId) === url,
          view: (id, tenant) => (invocations.has(id, tenant) ? toInvocationView(invocations.get(id, tenant)) : null),
          pending: (id) => invocations.storing(id),
          // The other gateways that are up: questions wait for their answers, and a lone gateway asks none.
          ...(tenantSlots ? { peers: () => tenantSlots.othersCount(), registered: (nodeId: string) => shared?.state.gatewayUrl(nodeId) !== undefined } : {}),
          list: (filter, tenant) => invocations.list(listFilterOf(filter), tenant).map(toInvocationView),
          onError: (error) => logger.warn({ err: error }, 'finding the gateway of an invocation'),
        })
      : null;
  ownersRef = owners;
  const streamRelay = openStreamRelay(config.streamRelayPath === undefined ? DEFAULT_STREAM_RELAY_PATH : config.streamRelayPath, metrics, logger);
  if (streamRelay) rollback.add('stream relay', () => streamRelay.close());
  // Persistent sandboxes: no process survives a restart (they ended with the old server; the executors reaped what was
  // left above), so their records say stopped before any request arrives; their files are kept (the sandbox executor's
  // disks), and the disks and snapshots whose records are gone are removed.
  const sandboxStore = new SqliteSandboxStore(join(dataDir, 'kindling.db'));
  rollback.add('sandbox store', () => sandboxStore.close());
  // Usage of persistent sandboxes: running time and CPU (their cgroups, read by the host) and stored GB-hours.
  const sandboxMeter = new SandboxMeter(meteredUsage, {
    ...(config.sandboxMeterIntervalMs === undefined ? {} : { intervalMs: config.sandboxMeterIntervalMs }),
    storage: () => [
      ...sandboxStore.allIds().flatMap((id) => sandboxStore.get(id) ?? []).flatMap((record) => ((record.storage ?? null) === null ? [] : [{ tenant: record.tenant, key: record.id, executor: record.executor, mb: record.limits.diskMb }])),
      ...sandboxStore.listSnapshots(null).map((snapshot) => ({ tenant: snapshot.tenant, key: snapshot.id, executor: snapshot.executor, mb: snapshot.bytes / 1024 ** 2 })),
    ],
    onError: (error) => logger.warn({ err: error }, 'metering persistent sandboxes failed'),
  }).start();
  rollback.add('sandbox meter', () => sandboxMeter.close());
  const sandboxes = new SandboxService({
    images: customImages,
    executors: served,
    defaultExecutor: chosen.name,
    store: sandboxStore,
    capsOf: (tenant) => tenants.capsOf(tenant),
    ...(config.maxSandboxesPerTenant === undefined ? {} : { maxPerTenant: config.maxSandboxesPerTenant }),
    ...(config.maxSnapshotsPerTenant === undefined ? {} : { maxSnapshotsPerTenant: config.maxSnapshotsPerTenant }),
    quotasOf: (tenant) => tenants.quotasOf(tenant),
    meter: sandboxMeter,
    ...(config.maxSandboxPortConnections === undefined ? {} : { maxPortConnections: config.maxSandboxPortConnections }),
    ...(config.sandboxPortIdleTimeoutMs === undefined ? {} : { portIdleTimeoutMs: config.sandboxPortIdleTimeoutMs }),
    onError: (error, context) => logger.warn({ err: error, ...context }, 'persistent sandboxes'),
  });
  rollback.add('persistent sandboxes', () => sandboxes.close());
  sandboxesRef = sandboxes;
  const recovered = sandboxes.recover();
  if (recovered > 0) logger.info({ sandboxes: recovered }, 'persistent sandboxes of the previous run marked stopped');
  const reapedStorage = await sandboxes.reapStorage();
  if (reapedStorage > 0) logger.info({ removed: reapedStorage }, 'disks and snapshots of deleted sandboxes removed');
  let draining = false;
  const app = await buildApi({
    sandboxes,
    customImages,
    executionService: service,
    functionService,
    executors: served,
    usage: usageStore,
    pools: () => ({ capacity: handlers.capacity.stats, pools: handlers.poolSizes() }),
    ...(config.metricsToken ? { metricsToken: config.metricsToken } : {}),
    consoleDir: config.consoleDir ?? DEFAULT_CONSOLE_DIR,
    allowedHosts: [...HostGuard.listeningName(config.host), ...(config.allowedHosts ?? [])],
    invocations,
    runner: invocations.runner,
    logBus,
    defaultExecutor: chosen.name,
    defaultExecutorReason: chosen.reason,
    metrics,
    tenants,
    maxBodyBytes: config.maxBodyBytes,
    maxStreamBytes: config.maxStreamBytes,
    bundles,
    ...(streamRelay ? { streamRelay } : {}),
    version: config.version,
    logger,
    isDraining: () => draining,
    ...(owners
      ? {
          invocationsElsewhere: async (request: FastifyRequest<{ Params: { id: string } }>, reply: FastifyReply) => {
            if (wasForwarded(request)) return null;
            const owner = await owners.find(request.params.id, request.principal.tenant);
            if (owner === null) return null;
            // The path from the route's own pattern and the checked id: never the raw target, which may name any host.
            const path = (request.routeOptions.url ?? '/v1/invocations/:id').replace(':id', encodeURIComponent(request.params.id));
            return forwardRead(request, reply, owner, path, nodeName);
          },
          invocationsListedElsewhere: (filter, tenant) => owners.listElsewhere<InvocationView>(filter, tenant),
        }
      : {}),
    ...(clusterNode ? { clusterReasons: () => clusterReasonsOf(clusterNode), cluster: () => ({ mode: 'cluster' as const, role: clusterNode.config.role, nodeId: clusterNode.config.nodeId, nats: clusterNode.status(), workers: clusterNode.workers() }) } : {}),
    ...(config.operatorResults ? { operatorResults: config.operatorResults } : {}),
    ...(tracer ? { tracer } : {}),
  });
  rollback.add('gateway', () => app.close());

  let listening = false;
  let closing: Promise<void> | null = null;
  let destroying: Promise<void> | null = null;
  const executionService = service;
  /** Releases what close() and destroy() both release, once everything that ran has ended. */
  const release = async (): Promise<void> => {
    // Connections still open now (an abandoned upload, an idle keep-alive) must not hold the process.
    streamRelay?.close();
    const closed = app.close();
    const timer = setTimeout(() => app.server.closeAllConnections(), CLOSE_GRACE_MS);
    await closed;
    clearTimeout(timer);
    // Requests answered and runs for gateways ended (drained or killed) by now: this node leaves the cluster.
    await clusterNode?.close().catch((error: unknown) => logger.warn({ err: error }, 'leaving the cluster failed'));
    await functionService.close().catch((error: unknown) => logger.warn({ err: error }, 'closing warm pools failed'));
    // Persistent sandboxes hold executions of their executor: they go before the executors drain.
    await sandboxes.close().catch((error: unknown) => logger.warn({ err: error }, 'closing persistent sandboxes failed'));
    sandboxMeter.close();
    await Promise.allSettled([...executors.values()].map((executor) => executor.close()));
    // Synchronous invocations answered during the drain are recorded before the store goes.
    invocations.flushRecords();
    store.close();
    usageStore.close();
    buildStore.close();
    tenantStore.close();
    sandboxStore.close();
    // The last spans (the drain's, the records written just above) go out before the process may end.
    await tracer?.shutdown().catch((error: unknown) => logger.warn({ err: error }, 'exporting the last spans failed'));
    await unlock();
    logger.info('Kindling stopped');
  };
  return {
    app,
    defaultExecutor: chosen.name,
    executors: served,
    handlers,
    usage: usageStore,
    invocations,
    logBus,
    services: { executions: executionService, sandboxes, tenants },
    async listen() {
      if (listening) throw new Error('the server listens already');
      await app.listen({ host: config.host, port: config.port });
      listening = true;
      const address = app.server.address();
      const port = typeof address === 'object' && address ? address.port : config.port;
      const url = `http://${config.host.includes(':') ? `[${config.host}]` : config.host}:${port}`;
      // On every address: the first external IPv4 address (the other gateways' requests pass the host guard, which
      // takes IP addresses but names only from --allowed-hosts).
      advertiseUrl = config.cluster?.advertiseUrl ?? (config.host === '0.0.0.0' || config.host === '::' ? `http://${externalAddress() ?? hostname()}:${port}` : url);
      if (owners && shared) {
        await shared.state.registerGateway(clusterNode!.config.nodeId, advertiseUrl);
        owners.serve();
        // Only now that it answers: the others count it (their questions wait for its answer, limits are shared).
        await tenantSlots?.announce().catch((error: unknown) => logger.warn({ err: error }, "this gateway's presence could not be written; the others will not count it until its next write"));
      }
      // Crash recovery (running -> failed, queued run again) and the dispatcher, once the gateway answers.
      invocations.start();
      handlers.startWarming();
      // A worker takes runs from gateways once it answers here too.
      // The newest version of each function a worker has run (its number and its deploy's time), per function.
      const newestSeen = new Map<string, { version: number; createdAtMs: number }>();
      // Functions a gateway sent here whose sandboxes may still run (until their pools closed after a delete).
      const gatewayFunctions = new Set<string>();
      if (clusterNode) idleUsageElsewhere = (event) => (gatewayFunctions.has(`${event.tenant}/${event.functionName}`) ? clusterNode.sendIdleUsage(event) : null);
      // A worker's start removes the bundles and layers a previous run left: done before it takes runs.
      if (artifactUse) await functionService.bundlesCollected();
      await clusterNode?.serve({
        run: async (version, body, options) => {
          // Its bundle and layer first (fetched from the cluster unless they are here): minWarm sandboxes bind them.
          // (Only for versions that have files: every other call goes on without an extra turn.)
          if (version.spec.bundle !== undefined || version.spec.layer !== undefined) {
            artifactUse?.use(`${version.tenant}/${version.name}`, version);
            await functionService.fetchFiles(version.spec);
          }
          // A worker learns of a deploy with its first call: as on a single server, the older versions' warm sandboxes
          // retire and the new one's minWarm start. A function deleted and deployed again starts from version 1 with a
          // newer deploy time: its earlier generation's sandboxes all go.
          const key = `${version.tenant}/${version.name}`;
          gatewayFunctions.add(key);
          const executor = version.spec.executor ?? chosen.name;
          const seen = newestSeen.get(key);
          const newer = seen === undefined || version.version > seen.version || (version.version < seen.version && version.createdAtMs > seen.createdAtMs) || (version.version === seen.version && version.createdAtMs !== seen.createdAtMs);
          if (newer && version.spec.handler !== undefined && handlers.supports(executor)) {
            handlers.deployed(version, executor, options.scope?.caps ?? {});
            newestSeen.set(key, { version: version.version, createdAtMs: version.createdAtMs });
          }
          return functionService.invokeVersion(version, body, options, { remote: false });
        },
        deleted: (tenant, name) => {
          const key = `${tenant}/${name}`;
          newestSeen.delete(key);
          const noticeAtMs = Date.now();
          void handlers
            .deleted(tenant, name)
            .catch((error: unknown) => logger.warn({ err: error, tenant, function: name }, 'closing the warm pools of a deleted function failed'))
            // Its sandboxes' last idle usage has gone to the gateways by now (unless it was deployed and called again).
            .finally(() => {
              // Its sandboxes here are gone: the bundles and layers only its versions deployed before the delete used go.
              if (artifactUse?.forget(key, noticeAtMs) === true) functionService.collectBundles();
              if (!newestSeen.has(key)) gatewayFunctions.delete(key);
            });
        },
        capacity: config.maxConcurrent,
        // Busy sandboxes count: a version whose only sandbox ran a call at heartbeat time is still warm here, and the
        // next calls belong here (queued for it or started beside it) rather than cold on another worker.
        warm: () => handlers.poolSizes().flatMap((pool) => (pool.idle + pool.busy > 0 ? [`${pool.tenant}/${pool.function}@${pool.version}`] : [])),
      });
      logger.info({ url, dataDir, instanceId, auth: tenants.authEnabled }, 'Kindling is listening');
      if (!process.execArgv.some((arg) => arg.startsWith('--initial-old-space-size'))) {
        // Not an environment read: the V8 flags this process was started with (bin/kindling.js sets them; see there why).
        logger.info('node runs without --initial-old-space-size=64: raw streams of hundreds of MiB cost up to 2x the CPU (full GCs)');
      }
      return url;
    },
    close() {
      closing ??=
        destroying ??
        (async () => {
          // Keep listening while draining: new work gets 503 SHUTTING_DOWN (and /readyz 503), so load balancers and
          // clients learn what is happening instead of seeing refused connections.
          draining = true;
          // Gateways stop placing here at once; runs already sent here finish within the drain.
          await clusterNode?.stopAccepting();
          // Async invocations still queued stay queued in the store and run after the next start.
          const invocationsDone = invocations.close(config.shutdownTimeoutMs);
          executionService.stopAccepting();
          const clusterRunsDone = clusterNode?.drain(config.shutdownTimeoutMs);
          const drained = await executionService.drain(config.shutdownTimeoutMs);
          await invocationsDone;
          await clusterRunsDone;
          if (!drained) {
            logger.warn({ deadlineMs: config.shutdownTimeoutMs }, 'shutdown deadline passed; killing the executions still running');
            await Promise.allSettled([...executors.values()].map((executor) => executor.destroy()));
          }
          await release();
        })();
      return closing;
    },
    destroy() {
      draining = true;
      executionService.stopAccepting();
      void clusterNode?.stopAccepting();
      // Everything running is killed now, also during a graceful close (which then ends without waiting for its deadline).
      const killed = Promise.allSettled([...executors.values()].map((executor) => executor.destroy()));
      destroying ??=
        closing ??
        (async () => {
          const invocationsDone = invocations.close(0);
          await killed;
          // The killed runs end as results (failed or timed out) and are recorded before the stores go.
          await executionService.drain(CLOSE_GRACE_MS);
          await invocationsDone;
          await release();
        })();
      return destroying;
    },
  };
}

/** The first IPv4 address of this machine that is not a loopback one, if any. */
function externalAddress(): string | null {
  for (const addresses of Object.values(networkInterfaces())) {
    for (const address of addresses ?? []) if (address.family === 'IPv4' && !address.internal) return address.address;
  }
  return null;
}

/** Why a cluster node is not ready: its NATS connection is down, or (a gateway) it sees no worker to send work to. */
function clusterReasonsOf(node: ClusterNode): string[] {
  const reasons: string[] = [];
  if (node.status() !== 'connected') reasons.push(`the cluster connection (NATS) is ${node.status()}`);
  if (node.config.role === 'gateway' && node.workers().length === 0) reasons.push('no worker is registered in the cluster');
  const displaced = node.displaced();
  if (displaced !== null) reasons.push(displaced);
  return reasons;
}

/** A list filter another gateway sent (over NATS): only its well-formed fields are used. */
function listFilterOf(filter: InvocationListFilter): Omit<InvocationFilter, 'tenant'> {
  const time = (value: unknown): number | undefined => (typeof value === 'number' && Number.isFinite(value) ? value : undefined);
  const sinceMs = time(filter.sinceMs);
  const untilMs = time(filter.untilMs);
  return {
    limit: filter.limit,
    ...(typeof filter.functionName === 'string' ? { functionName: filter.functionName } : {}),
    ...(typeof filter.status === 'string' && (INVOCATION_STATUSES as readonly string[]).includes(filter.status) ? { status: filter.status as InvocationStatus } : {}),
    ...(sinceMs === undefined ? {} : { sinceMs }),
    ...(untilMs === undefined ? {} : { untilMs }),
  };
}
