/**
 * Wire types of the Kindling HTTP API, as the SDK sends and receives them. Units are in the names (`timeoutMs`,
 * `memoryMb`). Defaults marked "server default" are chosen by the server you talk to; the values given are those of a
 * stock server and may be configured differently.
 */

/** A built-in runtime. Other names are passed through so newer servers can add runtimes without an SDK release. */
export type Runtime = 'bash' | 'python' | 'node' | 'rust' | 'python3.11' | 'python3.13' | 'node18' | 'node20' | 'deno' | 'bun' | 'go' | 'java' | (string & {});

/** An execution backend of the server. Other names are passed through for newer servers. */
export type ExecutorName = 'docker' | 'sandbox' | 'microvm' | 'gvisor' | (string & {});

/**
 * What to run, for `POST /v1/execute`. Give either `runtime` + `code`, or `image` + `command`.
 * Every field is optional on the wire; the server validates the combination and answers 400 when it is wrong.
 */
export interface ExecuteSpec {
  /** Language runtime that runs `code`: `bash`, `python`, `node` or `rust`. */
  runtime?: Runtime;
  /** Source code for `runtime`. */
  code?: string;
  /** Container image to run `command` in (e.g. `kindling/base`). */
  image?: string;
  /** Program and arguments, not run through a shell (use `['sh', '-c', '...']` for one). */
  command?: string[];
  /**
   * Standard input. A string is sent as UTF-8 text; a `Uint8Array` is sent base64-encoded as `stdinBase64`.
   * Default: none (the program reads end-of-file). At most one of `stdin` and `stdinBase64`.
   */
  stdin?: string | Uint8Array;
  /** Standard input as base64, for binary input. Default: none. */
  stdinBase64?: string;
  /** Extra environment variables. Default: none beyond the runtime's own. */
  env?: Record<string, string>;
  /** Working directory inside the sandbox. Server default: `/work`. */
  workdir?: string;
  /** Wall-clock limit in milliseconds; the whole process tree is killed when it passes. Server default: 30000. */
  timeoutMs?: number;
  /** Memory limit in MiB. Server default: 256. */
  memoryMb?: number;
  /** CPU quota in cores (0.5 = half a core). Server default: 1. */
  cpus?: number;
  /** Maximum number of processes/threads. Server default: 256. */
  pids?: number;
  /** Bytes kept per output stream (stdout, stderr); the rest is dropped and the result says `truncated`. Server default. */
  outputBytes?: number;
  /** Size in MiB of the writable scratch space (/tmp and the work dir). Server default. */
  diskMb?: number;
  /** Open file descriptors per process (RLIMIT_NOFILE, soft and hard). Server default 1024. */
  openFiles?: number;
  /**
   * Network access. `none`: loopback only. `egress`: outbound to public addresses, never to the server's host,
   * link-local/metadata or private ranges (unless the operator allows them with --egress-allow); sandbox and docker
   * executors. Default: `none`.
   */
  network?: 'none' | 'egress';
  /** Executor to run on. Default: the server's default executor (see `ready().defaultExecutor`). */
  executor?: ExecutorName;
  /**
   * Encoding of `stdout`/`stderr` in the result: `utf8` (default; invalid bytes become U+FFFD) or `base64` for
   * byte-exact binary output (decode with `Buffer.from(result.stdout, 'base64')`).
   */
  outputEncoding?: 'utf8' | 'base64';
}

/** The outcome of one execution. A non-zero exit, a timeout or an OOM kill is a normal result, not an error. */
export interface ExecutionResult {
  /** Execution id, for logs and support. */
  id: string;
  /** Exit status of the program (non-zero on failure; by convention 128+N when killed by signal N). */
  exitCode: number;
  /** The signal that ended the process when one did (e.g. `SIGKILL`), else null. */
  signal: string | null;
  /** Everything the program wrote to stdout (UTF-8), up to `outputBytes`. */
  stdout: string;
  /** Everything the program wrote to stderr (UTF-8), up to `outputBytes`. */
  stderr: string;
  /** How `stdout` and `stderr` are encoded: as asked with `outputEncoding`. */
  outputEncoding: 'utf8' | 'base64';
  /** Wall-clock run time of the program in milliseconds. */
  durationMs: number;
  /** True when a new sandbox had to be started for this execution (no warm one was available). */
  coldStart: boolean;
  /** The executor that ran it. */
  executor: ExecutorName;
  /** True when the program was killed for passing `timeoutMs`. */
  timedOut: boolean;
  /** True when the program was killed for passing `memoryMb`. */
  oomKilled: boolean;
  /** True when stdout or stderr was cut at `outputBytes`. */
  truncated: boolean;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  /** Phase timings in milliseconds: waiting in the queue, starting the sandbox, running the program. */
  timings: { queuedMs: number; startMs: number; runMs: number };
}

/** One chunk of output while an execution streams. */
export interface OutputEvent {
  type: 'stdout' | 'stderr';
  /** The text as the program produced it (chunk boundaries are arbitrary, not lines). */
  data: string;
}

/** `GET /healthz`. */
export interface HealthStatus {
  status: 'ok';
}

/** One executor's state in `GET /readyz`. */
export interface ExecutorStatus {
  name: ExecutorName;
  ready: boolean;
  /** What the server found: why it is not ready (e.g. "docker socket not reachable"), or what it checked. */
  reason?: string | null;
  /** Executor-specific facts (engine version, images, ...). */
  details?: Record<string, unknown>;
}

/** `GET /readyz`. */
export interface ReadyStatus {
  status: 'ready' | 'not_ready';
  defaultExecutor: ExecutorName;
  /** Why the server picked its default executor (e.g. with `--executor auto`). */
  defaultExecutorReason?: string;
  /** True while the server is shutting down and refuses new work. */
  draining?: boolean;
  executors: ExecutorStatus[];
}

/** `GET /v1/cluster`: a server on its own, or a node of a cluster and the workers it sees. */
export type ClusterStatus =
  | { mode: 'single' }
  | {
      mode: 'cluster';
      role: 'gateway' | 'worker' | 'all';
      nodeId: string;
      nats: 'connected' | 'reconnecting' | 'closed';
      /** As each worker's last heartbeat says; empty on a worker (it does not watch the others). */
      workers: { nodeId: string; role: string; capacity: number; inFlight: number; warm: string[]; startedAt: string; heartbeatAt: string }[];
    };

/**
 * A function to deploy with `functions.deploy(name, spec)`. Give `runtime` + `code` (+ `handler` for handler style) or
 * `image` + `command`. Every deploy makes a new immutable version.
 */
export interface FunctionSpec {
  /** `python`, `node` (handlers or programs), `bash`, `rust` (programs). */
  runtime?: Runtime;
  /** Source: a program (stdin is the body, stdout the response) or, with `handler`, a module defining it. */
  code?: string;
  /**
   * Handler style: the function that receives the request body (node: a Buffer; python: bytes) and returns the
   * response (string or bytes; node may return a Promise). Node code is an ES module exporting it. The module stays
   * loaded between warm invocations. Default: none (the code is a program).
   */
  handler?: string;
  /** Image of a command function, e.g. `kindling/base`. */
  image?: string;
  /** argv of a command function; reads the body on stdin, writes the response to stdout. */
  command?: string[];
  /** Environment variables. Default: none beyond the runtime's own. */
  env?: Record<string, string>;
  /** Wall-clock limit of one invocation in milliseconds. Server default: 30000. */
  timeoutMs?: number;
  /** Memory limit per sandbox in MiB. Server default: 256. */
  memoryMb?: number;
  /** CPU quota per sandbox in cores. Server default: 1. */
  cpus?: number;
  /** Handler style: warm sandboxes started at deploy and kept through idle periods. Default: 0. */
  minWarm?: number;
  /** Invocations running at once; more wait in a bounded queue, then get 429 (`RateLimitError`). Server default. */
  maxConcurrency?: number;
  /** Handler style: invocations that may wait beyond `maxConcurrency`; more get 429 at once. Server default: 256. */
  maxQueued?: number;
  /** Executor to run on. Default: the server's. */
  executor?: ExecutorName;
  /**
   * Debian packages the function needs on top of its runtime's image (with `runtime`; a bundle may list them in its
   * kindling.json, `{"apt": [...]}`). The deploy builds an image of the runtime's plus these once per package set and
   * the function runs on it; apt's failure is a `BuildFailedError`.
   */
  apt?: string[];
}

/** A deployed function as the server describes it: the latest version's spec plus identity and times. */
/** What a version deployed from a bundle records of it. */
export interface FunctionBundleInfo {
  /** sha256 (hex) of the archive as uploaded: the content hash. */
  sha256: string;
  /** Bytes of the archive. */
  bytes: number;
  /** Files, directories and links in it. */
  entries: number;
}

/**
 * What a version records of its dependency layer: a node bundle with package.json + package-lock.json had `npm ci` run
 * by a build when it was deployed (the deploy answers once the build is done); the installed tree is /work/node_modules.
 */
export interface FunctionLayerInfo {
  /** sha256 (hex) of package-lock.json + runtime image + npm version: versions with the same lockfile share the layer. */
  sha256: string;
  /** Bytes of the installed tree (counted in the tenant's code bytes, per version). */
  bytes: number;
  /** true when no build ran for this version (the layer was built before). */
  reused: boolean;
  /** How long this version's build took, in ms (0 when reused). */
  buildMs: number;
  /**
   * `npm` (a node bundle's package-lock.json; absent on layers recorded before pip builds), `pip` (requirements.txt, at
   * /work/.deps) or `compile` (go or rust code, or a go bundle without a command: the program compiled at deploy).
   */
  kind?: 'npm' | 'pip' | 'compile';
  /** The build of this version's deploy (`functions.buildLogs(name, buildId)`). */
  buildId?: string;
}

/** One dependency build of a deploy (`functions.builds`, `FunctionInfo.lastBuild`). */
export interface FunctionBuildInfo {
  id: string;
  tenant: string;
  function: string;
  kind: 'npm' | 'pip' | 'compile';
  /** `building` while the deploy installs, `ready` once a layer was made or reused, `failed` (see `error`). */
  status: 'building' | 'ready' | 'failed';
  /** Why a failed build failed (its BUILD_FAILED message). */
  error?: string;
  /** The layer a ready build made or reused. */
  layerSha256?: string;
  /** The function version a ready build's deploy stored. */
  version?: number;
  startedAtMs: number;
  finishedAtMs?: number;
}

/**
 * The 202 of `functions.deployBundle(..., { wait: false })` when the bundle needs a build: the build runs on, the
 * version is stored once it is ready (until then the previous version serves). Follow it with
 * `functions.followBuildLog(name, build.id)` or poll `functions.build(name, build.id)`.
 */
export interface DeployAccepted {
  name: string;
  status: 'building';
  build: FunctionBuildInfo;
}

/**
 * What `functions.followBuildLog()` yields: `log` text as npm/pip write it; `skipped` when the server left log text
 * out (the reader was slower than the build, or joined after the head of a long log was dropped); `end` last, with the
 * build's final record (`status` ready with its `version`, or failed with its `error`).
 */
export type BuildLogEvent = { type: 'log'; text: string } | { type: 'skipped'; bytes: number } | { type: 'end'; build: FunctionBuildInfo };

export interface FunctionInfo extends FunctionSpec {
  /** Present when the version was deployed from a bundle (`functions.deployBundle`). */
  bundle?: FunctionBundleInfo;
  /** Present when the bundle's dependencies were installed (node bundles with a package-lock.json, python bundles with a requirements.txt). */
  layer?: FunctionLayerInfo;
  /** With `apt`: the image the deploy made (or reused) for the packages, which the function runs on. */
  aptImage?: string;
  /**
   * `functions.get` only: the function's newest dependency build. `building` while a deploy installs, `failed` when the
   * last deploy's build failed (this version keeps serving), `ready` when it made or reused the layer.
   */
  lastBuild?: FunctionBuildInfo;
  name: string;
  /** The latest version: 1 for the first deploy, +1 for each deploy after. */
  version: number;
  style: 'handler' | 'command';
  createdAtMs: number;
  updatedAtMs: number;
}

/** One kept version of a function (`functions.versions()`): its spec as deployed, flattened. */
export interface FunctionVersionInfo extends FunctionSpec {
  /** Present when the version was deployed from a bundle. */
  bundle?: FunctionBundleInfo;
  /** Present when the bundle's npm dependencies were installed. */
  layer?: FunctionLayerInfo;
  name: string;
  version: number;
  style: 'handler' | 'command';
  /** Whether new invocations run this version. */
  latest: boolean;
  /** When this version was deployed (ms since the epoch). */
  createdAtMs: number;
}

/** The outcome of `functions.invoke()`: the raw response body and the `x-kindling-*` facts. */
export interface InvocationResult {
  /** The response body: stdout of a command, the return value of a handler (the error text when it threw). */
  body: Uint8Array;
  /** `body` decoded as UTF-8. */
  text(): string;
  invocationId: string;
  /** The function version that ran. */
  version: number;
  /**
   * 0 on success; a command's exit status; 1 when a handler threw. When the output was larger than 1 MiB and
   * streamed (`streamed`), the server sends it as an HTTP trailer, which `fetch` cannot read: the SDK then reads it
   * from the invocation's record (`GET /v1/invocations/ID`, one more request). NaN only from an older server that
   * keeps no record of synchronous invocations.
   */
  exitCode: number;
  /** Server-side run time in milliseconds (from the record when `streamed`, as `exitCode`). */
  durationMs: number;
  /** True when a sandbox was started for this invocation (no warm one was free). */
  coldStart: boolean;
  /** True when the output (over 1 MiB) was streamed with the exit code and duration in trailers. */
  streamed: boolean;
  /** Cluster mode: the worker that ran it (absent when the server that answered ran it). */
  node?: string;
}

export type InvocationStatus = 'queued' | 'running' | 'succeeded' | 'failed';

/** An invocation as `GET /v1/invocations/ID` describes it. Times are ISO 8601 strings. */
export interface Invocation {
  id: string;
  function: string;
  version: number;
  /**
   * `async`: queued with `invokeAsync`; `sync`: a direct `invoke`, recorded once it finished (its output and logs are
   * the first `--sync-log-bytes` of each stream). Absent from servers that record async invocations only.
   */
  mode?: 'sync' | 'async';
  status: InvocationStatus;
  /** Set once it finished (null for a platform failure or a run cut off by a server crash). */
  exitCode: number | null;
  durationMs: number | null;
  coldStart: boolean | null;
  timedOut: boolean | null;
  /** Why it failed: `exited with code N`, `timed out`, `server stopped during the run`, or a platform error. */
  error?: string;
  idempotencyKey?: string;
  callback?: { url: string; state: 'pending' | 'delivered' | 'failed' | null; attempts: number };
  payloadBytes: number;
  outputBytes: number | null;
  /**
   * Times it was started: more than 1 when its cluster worker was lost mid-run and it was delivered again (at most
   * `--async-max-deliveries`). Absent from older servers.
   */
  attempts?: number;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
}

/** One log event of `functions.logs()` / `invocations.logs()`. */
export interface LogEvent {
  type: 'start' | 'stdout' | 'stderr' | 'end';
  invocationId: string;
  /** The text printed (stdout/stderr events). */
  text?: string;
  /** The final status (end events). */
  status?: string;
}

/** Per-tenant quotas; absent fields take the server's defaults. */
export interface TenantQuotas {
  /** Executions running at once (one-off, invocations, WebSocket); beyond: 429 `TENANT_CONCURRENCY_LIMIT`. */
  maxConcurrency?: number;
  /** Dependency builds running at once (default 2); a deploy that needs a build beyond: 429 `TENANT_BUILD_LIMIT`. */
  maxConcurrentBuilds?: number;
  /** Token bucket: /v1 requests a second (refill rate); beyond: 429 `TENANT_RATE_LIMITED` with Retry-After. */
  requestsPerSecond?: number;
  /** Token bucket size. Default: requestsPerSecond rounded up. */
  burst?: number;
  /** Caps on per-request limits: above one, 400 `TENANT_LIMIT_EXCEEDED`; defaults are lowered to them. */
  maxMemoryMb?: number;
  maxTimeoutMs?: number;
  maxCpus?: number;
  maxPids?: number;
  maxOpenFiles?: number;
  maxOutputBytes?: number;
  maxDiskMb?: number;
  /** Largest request body in bytes (413 beyond). */
  maxPayloadBytes?: number;
  /** Storage: function versions kept, all functions together (default 1000); a deploy beyond: 409 `TENANT_STORAGE_LIMIT`. */
  maxFunctionVersions?: number;
  /** Storage: bytes of code of the kept versions (default 1 GiB); a deploy beyond: 409 `TENANT_STORAGE_LIMIT`. */
  maxCodeBytes?: number;
  /** Storage: bytes of payloads of queued and running async invocations (default 1 GiB); an enqueue beyond: 409 `TENANT_STORAGE_LIMIT`. */
  maxQueuedPayloadBytes?: number;
  /** Bytes of custom images' root file systems (its own and those for its functions' packages). */
  maxImageBytes?: number;
  /** Persistent sandboxes running at once. */
  maxSandboxes?: number;
  /** Persistent sandboxes paused at once. */
  maxPausedSandboxes?: number;
  /** Sum of memoryMb of live (running or paused) sandboxes. */
  maxSandboxMemoryMb?: number;
  /** Sum of diskMb of sandboxes keeping a disk (stopped ones included). */
  maxSandboxDiskMb?: number;
  /** Bytes of snapshots kept. */
  maxSnapshotBytes?: number;
}

/** What a tenant keeps on the server now, next to its storage quotas. */
export interface TenantStorageUsage {
  functionVersions: number;
  codeBytes: number;
  queuedPayloadBytes: number;
  /** Bytes of its custom images' root file systems (against maxImageBytes). */
  imageBytes?: number;
}

export interface TenantInfo {
  name: string;
  /** The quotas set for this tenant. */
  quotas: TenantQuotas;
  /** The quotas in effect (the tenant's, else the server's defaults); null: no cap beyond the server's ranges. */
  effectiveQuotas: { [K in keyof TenantQuotas]-?: number | null };
  /** What the tenant keeps on the server now (servers with storage quotas). */
  usage?: TenantStorageUsage;
  createdAt: string;
}

export interface CreatedTenant extends TenantInfo {
  /** The tenant's first API key: shown only in this answer. */
  apiKey: string;
  keyId: string;
  /** Only when the server was in open local mode: the admin key it made, shown only here. */
  adminKey?: string;
}

export interface TenantSelf extends TenantInfo {
  /** Whether the key used is the admin key. */
  admin: boolean;
  /** The key's id (`env` for KINDLING_ADMIN_KEY, null in open local mode). */
  keyId: string | null;
  /** Executions of the tenant running now. */
  running: number;
  /** Whether the server asks for keys (false in open local mode). */
  authEnabled: boolean;
}

export interface ApiKeyInfo {
  id: string;
  tenant: string;
  /** The first characters of the key, to tell keys apart. */
  prefix: string;
  admin: boolean;
  createdAt: string;
  revokedAt: string | null;
}

export interface CreatedApiKey extends ApiKeyInfo {
  /** The key: shown only in this answer. */
  apiKey: string;
}

/** What `images.create()` takes: a built-in image plus Debian packages (and, with `files`, a tar of files). */
export interface CustomImageSpec {
  /** base, python, node, rust, python3.13, node20, deno, bun, go or java (or a runtime name). */
  from: string;
  /** Debian packages from the server's mirror, e.g. ["python3-numpy"]. */
  apt?: string[];
  /** Where the files go: a directory under /opt, /srv or /usr/local; default /opt/NAME. */
  filesDest?: string;
  /** The admin key only: an image every tenant may use. */
  shared?: boolean;
}

/** A custom image (`GET /v1/images/NAME`). */
export interface CustomImageInfo {
  name: string;
  /** What requests name as `image`: `kindling/NAME`. */
  image: string;
  shared: boolean;
  from: string;
  apt: string[];
  files: { sha256: string; bytes: number; entries: number; dest: string } | null;
  /** Made by a deploy for functions' Debian packages (`apt`): the server removes it once no kept function version uses it. */
  forFunctions: boolean;
  status: 'building' | 'ready' | 'failed';
  error: string | null;
  sizeBytes: number | null;
  recipeHash: string;
  createdAt: string;
  finishedAt: string | null;
  /** The end of the build log (a GET of one image). */
  log?: string;
}
