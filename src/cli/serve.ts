import { DEFAULT_MAX_CONCURRENT_BUILDS } from '../orchestrator/builds.js';
import type { Command } from 'commander';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { checkNodeName } from '../metrics/node.js';
import { CLUSTER_ROLES, nodeIdOf, type ClusterConfig, type ClusterRole } from '../cluster/roles.js';
import { addClusterSecurityOptions, clusterSecurity } from './cluster-security.js';
import type { Level, Logger } from 'pino';
import type { ResultStore } from '../operator/result-store.js';
import type { OperatorSettings, RunningOperator } from '../operator/service.js';
import { readOperatorConfig } from './operator.js';
import { EXECUTOR_NAMES, type ExecutorName } from '../core/types.js';
import { parseAllowList } from '../network/policy.js';
import { parseAllowedHosts } from '../api/host-guard.js';
import { parseOtlpHeaders, parseSamplingRatio, tracesUrl, type OtlpTracingConfig } from '../tracing/options.js';
import type { ExecutorChoice, RunningServer } from '../server.js';
import { DEFAULT_FUNCTION_POOLS, SERVER_FDS_PER_WARM_SANDBOX } from '../server-defaults.js';
import { DEFAULT_CHAIN_TENANT_QUOTAS } from '../operator/defaults.js';
import type { MicroVmSettings } from '../executors/registry.js';
import { DEFAULT_PREWARM_PER_SHAPE } from '../executors/shared/options.js';
import type { ResolvedQuotas } from '../orchestrator/tenants.js';
import { DEFAULT_STORAGE_QUOTAS, DEFAULT_VERSIONS_KEPT } from '../orchestrator/storage-quotas.js';

export interface ServeDefaults {
  port: number;
  host: string;
  dataDir: string;
  imagesDir: string;
  adminKey: string | undefined;
  /** KINDLING_METRICS_TOKEN: the scrape token (also --metrics-token). */
  metricsToken?: string | undefined;
  /** KINDLING_OTLP_HEADERS: headers of span exports, `name=value,...` (also --otlp-headers; kept out of `ps`). */
  otlpHeaders?: string | undefined;
  logLevel: string;
  dockerSocketPath: string;
  /** NODE_EXTRA_CA_CERTS when set: the default of --build-ca-file ("" for none). */
  buildCaFile?: string;
  /** microvm executor: assets dir (kernel, initramfs, agent disk) and driver; defaults in the executor. */
  microvm?: MicroVmSettings;
  version: string;
}

const int = (name: string) => (value: string): number => {
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed < 0) throw new Error(`${name} must be a whole number >= 0, got "${value}"`);
  return parsed;
};

const num = (name: string) => (value: string): number => {
  const parsed = Number(value);
  if (!Number.isFinite(parsed) || parsed < 0) throw new Error(`${name} must be a number >= 0, got "${value}"`);
  return parsed;
};

/** --enable-executors: names of EXECUTOR_NAMES, comma-separated (empty: none beside the default). */
export function parseExecutorList(value: string): ExecutorName[] {
  const names = value.split(',').map((name) => name.trim()).filter((name) => name !== '');
  for (const name of names) {
    if (!(EXECUTOR_NAMES as readonly string[]).includes(name)) throw new Error(`--enable-executors takes names of ${EXECUTOR_NAMES.join(', ')}, got "${name}"`);
  }
  return names as ExecutorName[];
}

/** The --tenant-* flags as default quotas; 0 means no cap. */
function tenantQuotaDefaults(options: Record<string, unknown>): Partial<ResolvedQuotas> {
  const positive = (value: unknown): number | null => (typeof value === 'number' && value > 0 ? value : null);
  return {
    maxConcurrency: positive(options.tenantMaxConcurrency),
    requestsPerSecond: positive(options.tenantRps),
    burst: positive(options.tenantBurst),
    maxMemoryMb: positive(options.tenantMaxMemoryMb),
    maxTimeoutMs: positive(options.tenantMaxTimeoutMs),
    maxFunctionVersions: positive(options.tenantMaxFunctionVersions),
    maxCodeBytes: positive(options.tenantMaxCodeBytes),
    maxQueuedPayloadBytes: positive(options.tenantMaxQueuedPayloadBytes),
    maxImageBytes: positive(options.tenantMaxImageBytes),
  };
}

/** `kindling serve`: the server in the foreground; SIGTERM/SIGINT drain in-flight work, then stop. */
export function registerServeCommand(program: Command, defaults: ServeDefaults): void {
  addServeOptions(program.command('serve').description('start the Kindling server'), defaults)
    .option('--operator-config <file>', 'also run as a chain operator (docs/operator.md): a JSON file with the options of kindling operator (rpcUrl, chainId, keyFile, jobsContract, serviceManager, serviceId, ...)')
    .action(async (options) => {
      const file = options.operatorConfig as string | undefined;
      await runServe(options, defaults, file === undefined ? null : await readOperatorConfig(file));
    });
}

/** The options of `kindling serve`, shared with `kindling operator` (the same server, plus the chain). */
export function addServeOptions(command: Command, defaults: ServeDefaults): Command {
  command
    .option('-p, --port <port>', 'TCP port (0 picks a free one)', int('--port'), defaults.port)
    .option('--host <host>', 'address to bind; on a non-loopback address without KINDLING_ADMIN_KEY the first start prints a generated admin key', defaults.host)
    .option('--data-dir <dir>', 'where the server keeps its state', defaults.dataDir)
    .option('--images-dir <dir>', 'where runtime images (rootfs dirs) live', defaults.imagesDir)
    .option('--executor <name>', `default executor: auto | ${EXECUTOR_NAMES.join(' | ')}`, 'auto')
    .option('--enable-executors <names>', 'more executors to enable beside the default, comma-separated (e.g. gvisor,microvm); one that is not ready here is left out with a warning', 'docker')
    .option('--max-concurrent <n>', 'executions running at once', int('--max-concurrent'), 32)
    .option('--max-queued <n>', 'executions waiting for a slot before 429', int('--max-queued'), 256)
    .option('--queue-timeout-ms <ms>', 'longest wait for a slot before 429', int('--queue-timeout-ms'), 30_000)
    .option('--max-body-bytes <n>', 'largest JSON request body; beyond it 413', int('--max-body-bytes'), 64 * 1024 * 1024)
    .option('--build-registry <url>', 'npm registry dependency builds install from (network "egress": see docs/security.md section 17)', 'https://registry.npmjs.org/')
    .option('--build-timeout-ms <n>', 'time budget of one dependency build (npm ci)', int('--build-timeout-ms'), 300_000)
    .option('--build-memory-mb <n>', 'memory budget of one dependency build', int('--build-memory-mb'), 1024)
    .option('--build-cpus <n>', 'CPUs of one dependency build', Number, 1)
    .option('--build-disk-mb <n>', 'scratch disk of one dependency build, and the largest layer it may produce', int('--build-disk-mb'), 1024)
    .option('--max-concurrent-builds <n>', 'dependency builds running at once on this server (default: half the cores, at least 1); more wait in a bounded queue (64), then 429; a tenant runs at most its quota maxConcurrentBuilds (default 2)', int('--max-concurrent-builds'), DEFAULT_MAX_CONCURRENT_BUILDS)
    .option('--build-ca-file <path>', 'PEM bundle of extra CAs dependency builds trust (a registry mirror or TLS proxy with its own CA); default: $NODE_EXTRA_CA_CERTS if set; "" for none', defaults.buildCaFile ?? '')
    .option('--build-npm-dir <dir>', 'host directory of the npm package builds run (default: the npm installed next to this node)')
    .option('--pip-index-url <url>', 'package index (PEP 503 simple) python dependency builds install from (network "egress": see docs/security.md section 17)', 'https://pypi.org/simple')
    .option('--build-pip-wheel <path>', 'host path of the pip wheel python dependency builds run (default: the newest in /usr/share/python-wheels, Debian\'s python3-pip-whl)')
    .option('--build-go-proxy <url>', 'GOPROXY of Go bundle builds (go code and bundles are compiled at deploy); "off": a bundle carries its modules (go mod vendor); a proxy gives the build network "egress"', 'off')
    .option('--max-bundle-bytes <n>', 'largest function bundle (a tar of a directory, as uploaded); beyond it 413', int('--max-bundle-bytes'), 64 * 1024 * 1024)
    .option('--max-stream-bytes <n>', 'largest raw (application/octet-stream) body, streamed to stdin; beyond it 413', int('--max-stream-bytes'), 1024 * 1024 * 1024)
    .option('--stream-relay <on|off>', 'large raw streams (uploads of 4 MiB+, outputs past 1 MiB) move between the client socket and the sandbox by splice(2), around the node process; off keeps them in node', 'on')
    .option('--shutdown-timeout-ms <ms>', 'how long SIGTERM waits for in-flight executions', int('--shutdown-timeout-ms'), 30_000)
    .option('--prewarm <n>', `sandboxes each executor keeps started ahead of demand, per recently used shape (image + limits): docker containers, sandbox launchers (one pool shared by all shapes), microvm restored VMs (at most 4 in all); 0 disables; default per executor: docker ${DEFAULT_PREWARM_PER_SHAPE.docker}, sandbox ${DEFAULT_PREWARM_PER_SHAPE.sandbox}, microvm ${DEFAULT_PREWARM_PER_SHAPE.microvm}`, int('--prewarm'))
    .option('--docker-create-timeout-ms <ms>', 'creating + starting one container may take this long; past it a retryable 503 (a stuck engine)', int('--docker-create-timeout-ms'), 60_000)
    .option('--function-max-concurrency <n>', 'maxConcurrency of functions that set none', int('--function-max-concurrency'), DEFAULT_FUNCTION_POOLS.defaultMaxConcurrency)
    .option('--function-idle-ttl-ms <ms>', 'idle warm sandboxes (beyond minWarm) go after this long', int('--function-idle-ttl-ms'), DEFAULT_FUNCTION_POOLS.idleTtlMs)
    .option('--microvm-max-snapshots <n>', 'microvm executor: shape snapshots kept on disk at most (one per image, memory size and bundle; each the memory of a booted VM); beyond it the least recently restored are removed, as are those not restored from for 24 h', int('--microvm-max-snapshots'), 64)
    .option('--max-warm-sandboxes <n>', `warm sandboxes of all functions at most (LRU idle ones are evicted); default one per 8 MiB of RAM, within the open-file limit (${SERVER_FDS_PER_WARM_SANDBOX} per sandbox), at least 64`, int('--max-warm-sandboxes'))
    .option('--max-warm-sandboxes-per-tenant <n>', "warm sandboxes of one tenant at most (its own LRU idle one is evicted first); default 3/4 of --max-warm-sandboxes", int('--max-warm-sandboxes-per-tenant'))
    .option('--generic-sandboxes <n>', 'code-less node/python sandboxes kept per shape to speed up cold starts of handlers; 0 disables', int('--generic-sandboxes'), DEFAULT_FUNCTION_POOLS.genericPerShape)
    .option('--max-warm-memory-mb <mb>', 'memory all warm sandboxes use together at most (measured per sandbox after each call, an estimate per runtime before; LRU idle ones are evicted); default 75% of RAM', int('--max-warm-memory-mb'))
    .option('--min-available-memory-mb <mb>', "idle warm sandboxes are evicted (one per sandbox start) while the host has less memory available; default 5% of RAM, at least 256", int('--min-available-memory-mb'))
    .option('--max-concurrent-warm-starts <n>', 'cold starts of warm sandboxes at once across all functions; the rest wait their turn (default: 2 per CPU core)', int('--max-concurrent-warm-starts'))
    .option('--sandbox-start-timeout-ms <ms>', 'a sandbox not started after this long (a warm one: agent handshake, code loaded) is killed; the call fails with 503 SANDBOX_START_TIMEOUT (retryable), a warm sandbox is replaced', int('--sandbox-start-timeout-ms'), DEFAULT_FUNCTION_POOLS.startTimeoutMs)
    .option('--node-name <name>', 'the node label of every metric in GET /metrics (tells servers apart in one Prometheus); default: the host name', checkNodeName, hostname())
    .option('--metrics-token <token>', 'a scrape token for GET /metrics ("Authorization: Bearer <token>"; the admin key works too; with auth on and no token only the admin key); env KINDLING_METRICS_TOKEN')
    .option('--async-concurrency <n>', 'async invocations running at once', int('--async-concurrency'), 8)
    .option('--async-max-deliveries <n>', 'cluster: an async invocation whose worker was lost mid-run is started again, up to this many times in all; then it is failed with the reason', int('--async-max-deliveries'), 3)
    .option('--invocation-retention-ms <ms>', 'finished invocations (output, logs, idempotency keys) are kept this long', int('--invocation-retention-ms'), 7 * 24 * 3600_000)
    .option('--sync-log-bytes <n>', 'synchronous invocations are recorded with the first this many bytes of stdout and of stderr', int('--sync-log-bytes'), 64 * 1024)
    .option('--callback-allow <host:port,...>', 'destinations async callbacks may be POSTed to (none by default)', '')
    .option('--egress-allow <cidrs>', 'comma-separated private CIDRs that network "egress" may reach (loopback, link-local/metadata and the host stay denied)', '')
    .option('--tenant-max-concurrency <n>', 'default quota: executions a tenant runs at once (0: no cap but --max-concurrent)', int('--tenant-max-concurrency'), 0)
    .option('--tenant-rps <n>', 'default quota: /v1 requests a second per tenant, a refilling token bucket (0: unlimited)', num('--tenant-rps'), 0)
    .option('--tenant-burst <n>', 'default quota: token bucket size (0: the rate rounded up)', int('--tenant-burst'), 0)
    .option('--tenant-max-memory-mb <mb>', 'default quota: largest memoryMb a tenant may ask for (0: the server range)', int('--tenant-max-memory-mb'), 0)
    .option('--tenant-max-timeout-ms <ms>', 'default quota: largest timeoutMs a tenant may ask for (0: the server range)', int('--tenant-max-timeout-ms'), 0)
    .option('--tenant-max-function-versions <n>', 'default quota: function versions a tenant keeps, all its functions together; a deploy beyond gets 409 TENANT_STORAGE_LIMIT (0: no cap)', int('--tenant-max-function-versions'), DEFAULT_STORAGE_QUOTAS.maxFunctionVersions!)
    .option('--tenant-max-code-bytes <n>', 'default quota: bytes of code of the versions a tenant keeps; a deploy beyond gets 409 TENANT_STORAGE_LIMIT (0: no cap)', int('--tenant-max-code-bytes'), DEFAULT_STORAGE_QUOTAS.maxCodeBytes!)
    .option('--tenant-max-queued-payload-bytes <n>', "default quota: bytes of a tenant's queued and running async payloads; an enqueue beyond gets 409 TENANT_STORAGE_LIMIT (0: no cap)", int('--tenant-max-queued-payload-bytes'), DEFAULT_STORAGE_QUOTAS.maxQueuedPayloadBytes!)
    .option('--tenant-max-image-bytes <n>', "default quota: bytes of a tenant's custom images (its own and those for its functions' packages); a build beyond is refused with 409 TENANT_STORAGE_LIMIT (0: no cap)", int('--tenant-max-image-bytes'), DEFAULT_STORAGE_QUOTAS.maxImageBytes!)
    .option('--max-sandboxes-per-tenant <n>', 'default quotas maxSandboxes and maxPausedSandboxes: persistent sandboxes a tenant may have running, and paused, at once', int('--max-sandboxes-per-tenant'), 10)
    .option('--max-custom-images-per-tenant <n>', 'custom images (PUT /v1/images/NAME) a tenant may keep; the shared ones count apart, with the same limit', int('--max-custom-images-per-tenant'), 10)
    .option('--max-snapshots-per-tenant <n>', 'snapshots of persistent sandboxes a tenant may keep', int('--max-snapshots-per-tenant'), 20)
    .option('--max-sandbox-port-connections <n>', 'proxied connections (/v1/sandboxes/ID/ports/PORT) open at once per persistent sandbox', int('--max-sandbox-port-connections'), 64)
    .option('--function-versions-kept <n>', 'versions kept per function (the newest); older ones are deleted on deploy, except those a queued or running invocation needs (at least 1)', int('--function-versions-kept'), DEFAULT_VERSIONS_KEPT)
    .option('--allowed-hosts <name[:port],...>', 'host names the server answers to besides IP addresses, localhost and --host (e.g. behind a proxy: kindling.example.com); other Host headers get 421 and pages of other origins may not change state (DNS rebinding, cross-site requests)', '')
    .option('--otlp-endpoint <url>', 'export spans of API requests and invocation phases (queue, start, run, record) over OTLP/HTTP to this receiver (an OpenTelemetry Collector, Jaeger, Tempo: e.g. http://127.0.0.1:4318; spans go to its /v1/traces); unset: no tracing')
    .option('--otlp-sampling-ratio <ratio>', "share of new traces exported, 0 to 1 (a caller's traceparent decides for the traces it continues)", parseSamplingRatio, 1)
    .option('--otlp-export-timeout-ms <ms>', 'one span export may take this long; then its spans are dropped', int('--otlp-export-timeout-ms'), 10_000)
    .option('--otlp-batch-delay-ms <ms>', 'ended spans are sent in batches at least this often', int('--otlp-batch-delay-ms'), 5000)
    .option('--otlp-max-queue-spans <n>', 'ended spans held for export at most (a receiver that is down costs no more memory; beyond, spans are dropped)', int('--otlp-max-queue-spans'), 2048)
    .option('--otlp-headers <name=value,...>', 'headers of each span export (e.g. an API key of a hosted backend); env KINDLING_OTLP_HEADERS')
    .option('--cluster <urls>', 'join a cluster through NATS JetStream (docs/cluster.md): nats://h1:4222,nats://h2:4222; unset: a server on its own, as always')
    .option('--role <role>', 'with --cluster, required: gateway (serves the API, sends invocations to workers), worker (runs what gateways send) or all (both)')
    .option('--cluster-advertise-url <url>', "with --cluster: where the other gateways reach this one's API (they forward reads of invocations it holds here); default: its listening address, with the machine's first external IPv4 address when it listens on every address (a host name given here must be in the other gateways' --allowed-hosts)");
  return addClusterSecurityOptions(command).option('--log-level <level>', 'trace | debug | info | warn | error', defaults.logLevel);
}

/** The --otlp-* options, checked (a bad URL stops the start with a message saying how to fix it); null without --otlp-endpoint. */
export function otlpConfig(options: Record<string, unknown>, defaults: Pick<ServeDefaults, 'otlpHeaders'>): OtlpTracingConfig | null {
  const endpoint = options.otlpEndpoint as string | undefined;
  if (endpoint === undefined || endpoint === '') return null;
  const headers = (options.otlpHeaders as string | undefined) ?? defaults.otlpHeaders;
  return {
    url: tracesUrl(endpoint),
    samplingRatio: options.otlpSamplingRatio as number,
    exportTimeoutMs: Math.max(1, options.otlpExportTimeoutMs as number),
    batchDelayMs: Math.max(1, options.otlpBatchDelayMs as number),
    maxQueueSpans: Math.max(1, options.otlpMaxQueueSpans as number),
    ...(headers ? { headers: parseOtlpHeaders(headers) } : {}),
  };
}

/** The --cluster and --role options, checked; null without --cluster. The node id is the node name made subject-safe. */
export async function clusterConfig(options: Record<string, unknown>): Promise<ClusterConfig | null> {
  const role = options.role as string | undefined;
  if (role !== undefined && !(CLUSTER_ROLES as readonly string[]).includes(role)) throw new Error(`--role must be one of ${CLUSTER_ROLES.join(', ')}, got "${role}"`);
  const urls = options.cluster as string | undefined;
  if (urls === undefined || urls === '') {
    if (role !== undefined) throw new Error(`--role ${role} needs --cluster nats://host:4222,... (a server on its own is always both)`);
    if (clusterSecurity(options) !== undefined) throw new Error('the --cluster-tls-*, --cluster-user, --cluster-*-file and --cluster-creds options need --cluster');
    return null;
  }
  // No default: two servers started with --cluster alone would both be gateways, each with its own functions.
  if (role === undefined) throw new Error(`--cluster needs --role: ${CLUSTER_ROLES.join(', ')} (one gateway keeps the state; see docs/cluster.md)`);
  // Loaded here: only a cluster node needs the NATS client.
  const { parseClusterUrls } = await import('../cluster/connection.js');
  const security = clusterSecurity(options);
  const advertiseUrl = options.clusterAdvertiseUrl as string | undefined;
  if (advertiseUrl !== undefined && !/^https?:\/\/[^/\s]+\/?$/.test(advertiseUrl)) throw new Error(`--cluster-advertise-url must be http(s)://host:port, got "${advertiseUrl.slice(0, 120)}"`);
  return {
    urls: parseClusterUrls(urls),
    role: role as ClusterRole,
    nodeId: nodeIdOf(options.nodeName as string),
    ...(security ? { security } : {}),
    ...(advertiseUrl === undefined ? {} : { advertiseUrl: advertiseUrl.replace(/\/$/, '') }),
  };
}

/**
 * Starts the server from parsed serve options and runs it until SIGTERM/SIGINT; with operator settings it also runs
 * the chain operator on the same orchestrator (the drain lets running jobs finish and post their results first).
 */
export async function runServe(options: Record<string, unknown>, defaults: ServeDefaults, operatorSettings: OperatorSettings | null): Promise<void> {
  {
      const executor = options.executor as string;
      if (executor !== 'auto' && !(EXECUTOR_NAMES as readonly string[]).includes(executor)) {
        throw new Error(`--executor must be auto or one of ${EXECUTOR_NAMES.join(', ')}, got "${executor}"`);
      }
      const relay = options.streamRelay as string;
      if (relay !== 'on' && relay !== 'off') throw new Error(`--stream-relay must be on or off, got "${relay}"`);
      const allowedHosts = parseAllowedHosts(options.allowedHosts as string);
      const metricsToken = (options.metricsToken as string | undefined) ?? defaults.metricsToken;
      const otlp = otlpConfig(options, defaults);
      const cluster = await clusterConfig(options);
      // Loaded here, not at the top: the other commands must not pay for loading the whole platform.
      const [{ pino }, { startServer }] = await Promise.all([import('pino'), import('../server.js')]);
      const logger = pino({ level: options.logLevel as Level, base: { service: 'kindling' } });
      const dataDir = options.dataDir as string;
      const operatorResults = operatorSettings === null ? null : new (await import('../operator/result-store.js')).ResultStore({ dir: join(dataDir, 'operator-results') });
      // Caught from here on: a signal while the server starts (or just after it listens) is kept and acted on once it
      // runs, instead of killing the process with its sandboxes' mounts and cgroups in place.
      let pendingSignal: string | null = null;
      let onSignal = (signal: string): void => {
        pendingSignal ??= signal;
      };
      process.on('SIGTERM', () => onSignal('SIGTERM'));
      process.on('SIGINT', () => onSignal('SIGINT'));
      const server = await startServer({
        host: options.host as string,
        port: options.port as number,
        dataDir: options.dataDir as string,
        imagesDir: options.imagesDir as string,
        executor: executor as ExecutorChoice,
        enableExecutors: parseExecutorList(options.enableExecutors as string),
        ...(defaults.adminKey ? { adminKey: defaults.adminKey } : {}),
        tenantQuotas: tenantQuotaDefaults(options),
        functionVersionsKept: Math.max(1, options.functionVersionsKept as number),
        maxSandboxesPerTenant: Math.max(0, options.maxSandboxesPerTenant as number),
        maxCustomImagesPerTenant: Math.max(0, options.maxCustomImagesPerTenant as number),
        maxSnapshotsPerTenant: Math.max(0, options.maxSnapshotsPerTenant as number),
        maxSandboxPortConnections: Math.max(1, options.maxSandboxPortConnections as number),
        maxConcurrent: options.maxConcurrent as number,
        maxQueued: options.maxQueued as number,
        queueTimeoutMs: options.queueTimeoutMs as number,
        maxBodyBytes: options.maxBodyBytes as number,
        maxStreamBytes: options.maxStreamBytes as number,
        maxBundleBytes: options.maxBundleBytes as number,
        build: {
          registry: options.buildRegistry as string,
          timeoutMs: options.buildTimeoutMs as number,
          memoryMb: options.buildMemoryMb as number,
          cpus: options.buildCpus as number,
          diskMb: options.buildDiskMb as number,
          maxConcurrent: Math.max(1, options.maxConcurrentBuilds as number),
          ...(options.buildNpmDir === undefined ? {} : { npmDir: options.buildNpmDir as string }),
          ...(options.buildCaFile === '' ? {} : { caFile: options.buildCaFile as string }),
          pipIndexUrl: options.pipIndexUrl as string,
          ...(options.buildPipWheel === undefined ? {} : { pipWheel: options.buildPipWheel as string }),
          goProxy: options.buildGoProxy as string,
        },
        ...(relay === 'off' ? { streamRelayPath: null } : {}),
        shutdownTimeoutMs: options.shutdownTimeoutMs as number,
        dockerSocketPath: defaults.dockerSocketPath,
        microvm: { ...defaults.microvm, maxSnapshots: Math.max(1, options.microvmMaxSnapshots as number) },
        ...(options.prewarm === undefined ? {} : { prewarmPerShape: options.prewarm as number }),
        dockerCreateTimeoutMs: Math.max(1, options.dockerCreateTimeoutMs as number),
        egressAllow: parseAllowList(options.egressAllow as string),
        allowedHosts,
        functionPools: {
          defaultMaxConcurrency: Math.max(1, options.functionMaxConcurrency as number),
          idleTtlMs: options.functionIdleTtlMs as number,
          // Unset: derived from the machine (warmCapacityDefaults).
          ...(options.maxWarmSandboxes === undefined ? {} : { maxWarmSandboxes: Math.max(1, options.maxWarmSandboxes as number) }),
          ...(options.maxWarmSandboxesPerTenant === undefined ? {} : { maxWarmSandboxesPerTenant: Math.max(1, options.maxWarmSandboxesPerTenant as number) }),
          ...(options.maxWarmMemoryMb === undefined ? {} : { maxWarmMemoryMb: options.maxWarmMemoryMb as number }),
          ...(options.minAvailableMemoryMb === undefined ? {} : { minAvailableMemoryMb: options.minAvailableMemoryMb as number }),
          genericPerShape: options.genericSandboxes as number,
          queueTimeoutMs: options.queueTimeoutMs as number,
          startTimeoutMs: Math.max(1, options.sandboxStartTimeoutMs as number),
          ...(options.maxConcurrentWarmStarts === undefined ? {} : { maxConcurrentStarts: Math.max(1, options.maxConcurrentWarmStarts as number) }),
        },
        asyncInvocations: {
          concurrency: Math.max(1, options.asyncConcurrency as number),
          maxDeliveries: Math.max(1, options.asyncMaxDeliveries as number),
          retentionMs: options.invocationRetentionMs as number,
          syncLogBytes: options.syncLogBytes as number,
          callbackAllow: (options.callbackAllow as string).split(',').map((entry) => entry.trim()).filter((entry) => entry.length > 0),
        },
        version: defaults.version,
        logger,
        ...(metricsToken ? { metricsToken } : {}),
        nodeName: options.nodeName as string,
        ...(operatorResults ? { operatorResults } : {}),
        ...(otlp ? { otlp } : {}),
        ...(cluster ? { cluster } : {}),
      });
      let operator: RunningOperator | null = null;
      if (operatorSettings !== null && operatorResults !== null) {
        try {
          operator = await startOperator(server, operatorSettings, operatorResults, { dataDir, logger, publicUrl: operatorSettings.publicUrl ?? server.url });
        } catch (error) {
          await server.close();
          throw error;
        }
      }
      let stopping = false;
      const stop = (signal: string): void => {
        if (stopping) {
          // A second signal during the drain: stop now (kill what runs) instead of waiting for the deadline.
          logger.info({ signal }, 'stopping now: killing the executions still running');
          void operator?.close({ abort: true });
          void server.destroy();
          return;
        }
        stopping = true;
        logger.info({ signal }, 'stopping: draining in-flight executions (a second SIGINT or SIGTERM stops at once)');
        // The operator drains first: its running jobs finish and their results go on chain while the server still runs.
        (operator ? operator.close().catch((error: unknown) => logger.error({ err: error }, 'draining the operator failed')) : Promise.resolve()).then(() => server.close()).then(
          () => process.exit(0),
          (error: unknown) => {
            logger.error({ err: error }, 'shutdown failed');
            process.exit(1);
          },
        );
      };
      onSignal = stop;
      if (pendingSignal !== null) stop(pendingSignal);
  }
}

/** The job runner on the server's orchestrator services, and the operator around it. */
async function startOperator(server: RunningServer, settings: OperatorSettings, results: ResultStore, context: { dataDir: string; logger: Logger; publicUrl: string }): Promise<RunningOperator> {
  // Loaded here: only a server that runs the operator needs viem and the operator's modules.
  const [{ createJobRunner }, { startOperatorService }] = await Promise.all([import('../operator/job-runner.js'), import('../operator/service.js')]);
  const tenantQuotas = { ...DEFAULT_CHAIN_TENANT_QUOTAS, ...settings.chainTenantQuotas };
  const runner = createJobRunner({ ...server.services, publicUrl: context.publicUrl, tenantQuotas, logger: context.logger.child({ component: 'jobs' }) });
  return startOperatorService({ settings, runner, resultStore: results, publicUrl: context.publicUrl, dataDir: context.dataDir, logger: context.logger });
}
