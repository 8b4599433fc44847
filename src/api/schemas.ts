import { Type, type Static } from '@sinclair/typebox';
import { EXECUTOR_NAMES, RUNTIME_NAMES } from '../core/types.js';

/**
 * JSON schemas of the HTTP API. Types and shapes only; semantic checks (limits in range, image exists) live in the
 * orchestrator so that every transport gets them. Unknown fields are rejected: a typo must not be silently ignored.
 */
const envName = '^[A-Za-z_][A-Za-z0-9_]*$';
/**
 * Base64 with line breaks anywhere and up to two `=` at the end. Every `pattern` here runs on input up to
 * --max-body-bytes with a backtracking engine, so each must fail in linear time: no two adjacent repetitions may
 * match the same character. (`[A-Za-z0-9+/\n\r]*={0,2}[\n\r]*` shared the line breaks between its first and last
 * part and took a minute on 300k newlines and a "!"; here line breaks after the end are matched only after a `=`: the same texts, one pass.)
 */
export const BASE64_TEXT = '^[A-Za-z0-9+/\\n\\r]*(?:={1,2}[\\n\\r]*)?$';

export const ExecuteRequestSchema = Type.Object(
  {
    runtime: Type.Optional(Type.String({ description: `One of ${RUNTIME_NAMES.join(', ')}; needs "code".`, examples: ['python'] })),
    code: Type.Optional(Type.String({ description: 'Source code for the runtime.', maxLength: 4 * 1024 * 1024 })),
    image: Type.Optional(Type.String({ description: 'Image to run "command" in, e.g. kindling/base; with "runtime" + "code": a custom image built from the runtime\'s (kindling images create NAME --from RUNTIME --apt PKG).', minLength: 1, maxLength: 256, pattern: '^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9._-]+)?$' })),
    command: Type.Optional(Type.Array(Type.String({ maxLength: 128 * 1024 }), { minItems: 1, maxItems: 4096, description: 'argv, e.g. ["sh","-c","echo hi"].' })),
    stdin: Type.Optional(Type.String({ description: 'Text fed to stdin (UTF-8).' })),
    stdinBase64: Type.Optional(Type.String({ description: 'Bytes fed to stdin, base64 (line breaks allowed).', pattern: BASE64_TEXT })),
    env: Type.Optional(Type.Record(Type.String({ pattern: envName, maxLength: 256 }), Type.String({ maxLength: 128 * 1024 }), { maxProperties: 1024, description: 'Environment variables; the sandbox gets these plus PATH, HOME and LANG.' })),
    workdir: Type.Optional(Type.String({ pattern: '^/[^\\u0000]*$', maxLength: 1024, description: 'Absolute working directory (a writable tmpfs); default /work.' })),
    timeoutMs: Type.Optional(Type.Number({ description: 'Wall-clock limit in ms; default 30000.' })),
    memoryMb: Type.Optional(Type.Number({ description: 'Memory limit in MiB; default 256 (rust: 1024).' })),
    cpus: Type.Optional(Type.Number({ description: 'CPU quota in cores; default 1.' })),
    pids: Type.Optional(Type.Integer({ description: 'Max processes/threads; default 256.' })),
    outputBytes: Type.Optional(Type.Integer({ description: 'Bytes kept per output stream; default 10485760.' })),
    diskMb: Type.Optional(Type.Number({ description: 'Size of /tmp and the work dir in MiB; default 256.' })),
    openFiles: Type.Optional(Type.Integer({ description: 'Open file descriptors per process (RLIMIT_NOFILE); default 1024, 16..65536.' })),
    network: Type.Optional(Type.Union([Type.Literal('none'), Type.Literal('egress')], { description: 'Default none (loopback only). egress: outbound to public addresses (never the host, link-local/metadata, or private ranges unless the operator allows them); sandbox and docker executors only.' })),
    executor: Type.Optional(Type.String({ description: `One of ${EXECUTOR_NAMES.join(', ')}; default: the server's.` })),
    outputEncoding: Type.Optional(Type.Union([Type.Literal('utf8'), Type.Literal('base64')], { description: 'Encoding of stdout/stderr in the result; base64 for binary output. Default utf8.' })),
  },
  { additionalProperties: false, examples: [{ runtime: 'python', code: 'print(sum(range(10)))', timeoutMs: 5000 }] },
);
export type ExecuteRequestBody = Static<typeof ExecuteRequestSchema>;

/** The spec of a raw execution (header `x-kindling-spec`): the same fields, stdin being the request body. */
export const RawExecuteSpecSchema = Type.Omit(ExecuteRequestSchema, ['stdin', 'stdinBase64'], { additionalProperties: false });

export const ExecutionResultSchema = Type.Object({
  id: Type.String(),
  exitCode: Type.Integer(),
  signal: Type.Union([Type.String(), Type.Null()]),
  stdout: Type.String(),
  stderr: Type.String(),
  outputEncoding: Type.String(),
  durationMs: Type.Number(),
  coldStart: Type.Boolean(),
  executor: Type.String(),
  timedOut: Type.Boolean(),
  oomKilled: Type.Boolean(),
  truncated: Type.Boolean(),
  stdoutTruncated: Type.Boolean(),
  stderrTruncated: Type.Boolean(),
  timings: Type.Object({ queuedMs: Type.Number(), startMs: Type.Number(), runMs: Type.Number() }),
  usage: Type.Optional(
    Type.Object(
      { cpuMs: Type.Union([Type.Number(), Type.Null()]), memoryPeakBytes: Type.Union([Type.Number(), Type.Null()]) },
      { description: 'Kernel accounting of the execution (cgroup): CPU time in ms and peak memory in bytes; null when unknown' },
    ),
  ),
}, {
  examples: [
    {
      id: 'ex_01JDXK3V9Q6M2T8R4B7N5C1F0A',
      exitCode: 0,
      signal: null,
      stdout: '45\n',
      stderr: '',
      outputEncoding: 'utf8',
      durationMs: 21.3,
      coldStart: false,
      executor: 'sandbox',
      timedOut: false,
      oomKilled: false,
      truncated: false,
      stdoutTruncated: false,
      stderrTruncated: false,
      timings: { queuedMs: 0.1, startMs: 6.2, runMs: 15 },
      usage: { cpuMs: 12, memoryPeakBytes: 9437184 },
    },
  ],
});

export const ErrorResponseSchema = Type.Object(
  {
    error: Type.Object({ code: Type.String(), message: Type.String(), details: Type.Optional(Type.Unknown()) }),
    requestId: Type.String(),
  },
  {
    examples: [
      {
        error: { code: 'LIMIT_OUT_OF_RANGE', message: 'memoryMb must be between 16 and 4096, got 100000', details: { field: 'memoryMb', min: 16, max: 4096 } },
        requestId: 'req_01JDXK3V9Q6M2T8R4B7N5C1F0B',
      },
    ],
  },
);

export const FunctionNameParamsSchema = Type.Object({
  name: Type.String({ description: 'Function name: ^[a-z0-9][a-z0-9-]{0,62}$', maxLength: 256 }),
});
export type FunctionNameParams = Static<typeof FunctionNameParamsSchema>;

export const FunctionSpecSchema = Type.Object(
  {
    runtime: Type.Optional(Type.String({ description: `One of ${RUNTIME_NAMES.join(', ')}; needs "code". Handlers: the node and python ones.` })),
    code: Type.Optional(Type.String({ description: 'Source: a program (command style) or a module defining "handler".', maxLength: 4 * 1024 * 1024 })),
    handler: Type.Optional(Type.String({ description: 'Handler style: the function (node: exported from the ES module; python: defined) that receives the body and returns the response. Without it the code is a program: stdin is the body, stdout the response. A bundle names it FILE:FUNCTION (handler.py:main, src/index.js:handler), FILE relative to the bundle\'s root.', maxLength: 1024 })),
    image: Type.Optional(ExecuteRequestSchema.properties.image),
    command: Type.Optional(ExecuteRequestSchema.properties.command),
    env: Type.Optional(ExecuteRequestSchema.properties.env),
    timeoutMs: Type.Optional(Type.Number({ description: 'Wall-clock limit of one invocation in ms; default 30000.' })),
    memoryMb: Type.Optional(Type.Number({ description: 'Memory limit per sandbox in MiB; default 256.' })),
    cpus: Type.Optional(Type.Number({ description: 'CPU quota per sandbox in cores; default 1.' })),
    minWarm: Type.Optional(Type.Integer({ description: 'Handler style: warm sandboxes started at deploy and kept through idle periods; default 0.' })),
    maxConcurrency: Type.Optional(Type.Integer({ description: 'Invocations of this function running at once; more wait in a bounded queue, then get 429. Default: the server\'s.' })),
    maxQueued: Type.Optional(Type.Integer({ description: 'Handler style: invocations that may wait for a sandbox beyond maxConcurrency; more get 429 at once. Default: the server\'s (256).' })),
    executor: Type.Optional(Type.String({ description: `One of ${EXECUTOR_NAMES.join(', ')}; default: the server's.` })),
    apt: Type.Optional(
      Type.Array(Type.String({ maxLength: 100 }), {
        maxItems: 64,
        description: 'Debian packages the function needs on top of its runtime\'s image (with "runtime"; a bundle may list them in kindling.json instead: {"apt": [...]}). The deploy builds an image of the runtime\'s plus these once per package set (reused by every function and version that lists the same set; 422 BUILD_FAILED when apt fails) and the function runs on it.',
      }),
    ),
  },
  { additionalProperties: false, examples: [{ runtime: 'python', handler: 'handler', code: 'def handler(body):\n    return b"hello " + body\n', minWarm: 1 }] },
);
export type FunctionSpecBody = Static<typeof FunctionSpecSchema>;

export const FunctionVersionListSchema = Type.Object(
  {
    versions: Type.Array(
      Type.Object(
        {
          name: Type.String(),
          version: Type.Integer(),
          style: Type.String({ description: 'handler or command' }),
          latest: Type.Boolean({ description: 'Whether new invocations run this version' }),
          createdAtMs: Type.Number({ description: 'When this version was deployed (ms since the epoch)' }),
        },
        { additionalProperties: true, description: "One version: its spec as deployed (runtime, code, handler, image, command, env, limits), flattened" },
      ),
    ),
  },
  {
    examples: [
      {
        versions: [
          { name: 'hello', version: 1, style: 'handler', latest: false, createdAtMs: 1796169600000, runtime: 'python', handler: 'handler', code: 'def handler(body):\n    return body\n' },
          { name: 'hello', version: 2, style: 'handler', latest: true, createdAtMs: 1796173200000, runtime: 'python', handler: 'handler', code: 'def handler(body):\n    return b"hello " + body\n' },
        ],
      },
    ],
  },
);

/** What a version records of its bundle (deployed from a tar of a directory). */
export const FunctionBundleSchema = Type.Object(
  {
    sha256: Type.String({ description: 'sha256 of the archive as uploaded (hex): the content hash' }),
    bytes: Type.Integer({ description: 'Bytes of the archive (counted against the tenant\'s maxCodeBytes)' }),
    entries: Type.Integer({ description: 'Files, directories and links in it' }),
  },
  { description: 'Present when the version was deployed from a bundle: its files are the sandbox\'s /work (read-only)' },
);

/** What a version records of its dependency layer (npm ci of a node bundle's package-lock.json). */
export const FunctionLayerSchema = Type.Object(
  {
    sha256: Type.String({ description: 'sha256 of package-lock.json + runtime image + npm version (hex): versions with the same lockfile share the layer' }),
    bytes: Type.Integer({ description: 'Bytes of the installed tree (counted against the tenant\'s maxCodeBytes, per version)' }),
    reused: Type.Boolean({ description: 'true when no build ran for this version (the layer was built before)' }),
    buildMs: Type.Integer({ description: 'How long this version\'s build took (0 when reused)' }),
    kind: Type.Optional(Type.String({ description: 'npm (absent on layers recorded before pip builds), pip, or compile (the program of go or rust code, or of a go bundle, at /kindling-bin/main)' })),
    buildId: Type.Optional(Type.String({ description: 'The build of this version\'s deploy (GET /v1/functions/NAME/builds/ID/logs)' })),
  },
  { description: 'Present when a node bundle had package.json + package-lock.json (its dependencies, read-only at /work/node_modules), a python bundle a requirements.txt (read-only at /work/.deps, on PYTHONPATH), or the function is go or rust code or a go bundle without a command (compiled at deploy; the program runs from /kindling-bin/main, on the sandbox and docker executors)' },
);

/** One dependency build of a function's deploy. */
export const FunctionBuildSchema = Type.Object(
  {
    id: Type.String({ example: 'bld_0mi8x2k1c4f9e2a7b3d10c5e8' }),
    tenant: Type.String(),
    function: Type.String(),
    kind: Type.String({ description: 'npm, pip, compile or apt (the image for the function\'s Debian packages; a deploy with packages and npm or pip dependencies records npm or pip, and its log has both)' }),
    status: Type.String({ description: 'building, ready or failed', enum: ['building', 'ready', 'failed'] }),
    error: Type.Optional(Type.String({ description: 'Why a failed build failed (its BUILD_FAILED message)' })),
    layerSha256: Type.Optional(Type.String({ description: 'The layer a ready build made or reused' })),
    version: Type.Optional(Type.Integer({ description: 'The function version a ready build\'s deploy stored' })),
    startedAtMs: Type.Number(),
    finishedAtMs: Type.Optional(Type.Number()),
  },
  { description: 'A dependency build: every deploy of a bundle with dependencies has one (reused layers too)' },
);

/** The 202 of a deploy that asked not to wait for its build (Prefer: respond-async, ?wait=false). */
export const DeployAcceptedSchema = Type.Object(
  {
    name: Type.String(),
    status: Type.String({ description: 'building: the version is stored once the build is ready; until then the previous version serves', enum: ['building'] }),
    build: FunctionBuildSchema,
  },
  { description: 'The deploy\'s build runs on: follow GET /v1/functions/NAME/builds/ID/logs?follow=true or poll GET /v1/functions/NAME/builds/ID' },
);

export const DeployQuerySchema = Type.Object({
  wait: Type.Optional(Type.String({ description: 'false: answer 202 once the dependency build started instead of when it ended (as Prefer: respond-async)', enum: ['true', 'false'] })),
});
export type DeployQuery = Static<typeof DeployQuerySchema>;

export const BuildLogQuerySchema = Type.Object({
  follow: Type.Optional(Type.String({ description: 'true: an SSE stream of the log as it is written, ending with the build\'s end event', enum: ['true', 'false'] })),
});
export type BuildLogQuery = Static<typeof BuildLogQuerySchema>;

export const FunctionBuildListSchema = Type.Object({ builds: Type.Array(FunctionBuildSchema, { description: 'Newest first; the newest 20 per function are kept' }) });

export const FunctionBuildParamsSchema = Type.Object({
  name: Type.String({ description: 'Function name: ^[a-z0-9][a-z0-9-]{0,62}$', maxLength: 256 }),
  id: Type.String({ description: 'Build id (bld_...)', maxLength: 256 }),
});
export type FunctionBuildParams = Static<typeof FunctionBuildParamsSchema>;

export const FunctionViewSchema = Type.Object(
  {
    name: Type.String(),
    version: Type.Integer(),
    style: Type.String({ description: 'handler or command' }),
    createdAtMs: Type.Number(),
    updatedAtMs: Type.Number(),
    bundle: Type.Optional(FunctionBundleSchema),
    layer: Type.Optional(FunctionLayerSchema),
    lastBuild: Type.Optional(Type.Unsafe<Static<typeof FunctionBuildSchema>>({ ...FunctionBuildSchema, description: 'The function\'s newest dependency build: building while a deploy installs, failed when the last deploy\'s build failed (this version keeps serving)' })),
  },
  { additionalProperties: true },
);

const quota = (description: string) => Type.Optional(Type.Union([Type.Number(), Type.Null()], { description }));
/** Per-tenant quotas; absent fields take the server's defaults; null (PATCH) removes a field. */
export const TenantQuotasSchema = Type.Object(
  {
    maxConcurrency: quota('Executions running at once (one-off, invocations, WebSocket); beyond: 429 TENANT_CONCURRENCY_LIMIT.'),
    maxConcurrentBuilds: quota('Dependency builds (npm ci, pip install of deploys) running at once (default 2); a deploy that needs a build beyond: 429 TENANT_BUILD_LIMIT, nothing stored.'),
    requestsPerSecond: quota('Token bucket refill rate for /v1 requests; beyond: 429 TENANT_RATE_LIMITED with Retry-After.'),
    burst: quota('Token bucket size (default: requestsPerSecond rounded up).'),
    maxMemoryMb: quota('Cap on memoryMb per sandbox.'),
    maxTimeoutMs: quota('Cap on timeoutMs.'),
    maxCpus: quota('Cap on cpus.'),
    maxPids: quota('Cap on pids.'),
    maxOpenFiles: quota('Cap on openFiles.'),
    maxOutputBytes: quota('Cap on outputBytes.'),
    maxDiskMb: quota('Cap on diskMb.'),
    maxPayloadBytes: quota('Largest request body in bytes (413 beyond).'),
    maxFunctionVersions: quota('Function versions kept, all functions together (default 1000); a deploy beyond: 409 TENANT_STORAGE_LIMIT.'),
    maxCodeBytes: quota('Bytes of code of the kept versions (default 1 GiB); a deploy beyond: 409 TENANT_STORAGE_LIMIT.'),
    maxQueuedPayloadBytes: quota('Bytes of payloads of queued and running async invocations (default 1 GiB); an enqueue beyond: 409 TENANT_STORAGE_LIMIT.'),
    maxImageBytes: quota("Bytes of custom images' root file systems, its own and those made for its functions' packages (default 8 GiB); a build with no room left: 409 TENANT_STORAGE_LIMIT; one that ends past it: failed, its files removed."),
    maxSandboxes: quota('Persistent sandboxes running at once (default --max-sandboxes-per-tenant); a create, resume or restart beyond: 429 TENANT_SANDBOX_LIMIT.'),
    maxPausedSandboxes: quota('Persistent sandboxes paused at once (default --max-sandboxes-per-tenant); a pause beyond: 429 TENANT_SANDBOX_LIMIT.'),
    maxSandboxMemoryMb: quota('Sum of memoryMb of running and paused sandboxes; a create beyond: 429 TENANT_SANDBOX_LIMIT.'),
    maxSandboxDiskMb: quota('Sum of diskMb of sandboxes that keep a disk (stopped ones included); a create beyond: 409 TENANT_STORAGE_LIMIT.'),
    maxSnapshotBytes: quota('Bytes of snapshots kept; a snapshot beyond: 409 TENANT_STORAGE_LIMIT (nothing kept).'),
  },
  { additionalProperties: false },
);
export const TenantNameParamsSchema = Type.Object({ name: Type.String({ description: 'Tenant name: ^[a-z0-9][a-z0-9-]{0,62}$', maxLength: 256 }) });
export type TenantNameParams = Static<typeof TenantNameParamsSchema>;
export const CreateTenantSchema = Type.Object({ name: Type.String({ maxLength: 256 }), quotas: Type.Optional(TenantQuotasSchema) }, { additionalProperties: false });
export type CreateTenantBody = Static<typeof CreateTenantSchema>;
export const UpdateTenantSchema = Type.Object({ quotas: TenantQuotasSchema }, { additionalProperties: false });
export type UpdateTenantBody = Static<typeof UpdateTenantSchema>;

const nullableNumber = Type.Union([Type.Number(), Type.Null()]);
/** A tenant as the admin routes answer it. */
export const TenantViewSchema = Type.Object({
  name: Type.String(),
  quotas: Type.Record(Type.String(), Type.Number(), { description: 'The quotas set for this tenant.' }),
  effectiveQuotas: Type.Record(Type.String(), nullableNumber, { description: "The quotas in effect (the tenant's, else the server's defaults); null: no cap beyond the server's ranges." }),
  usage: Type.Optional(
    Type.Object(
      {
        functionVersions: Type.Integer({ description: 'Function versions kept (against maxFunctionVersions).' }),
        codeBytes: Type.Integer({ description: 'Bytes of their code (against maxCodeBytes).' }),
        queuedPayloadBytes: Type.Integer({ description: 'Bytes of payloads of queued and running async invocations (against maxQueuedPayloadBytes).' }),
        imageBytes: Type.Optional(Type.Integer({ description: "Bytes of its custom images' root file systems (against maxImageBytes)." })),
      },
      { description: 'What the tenant keeps on the server now, next to its storage quotas.' },
    ),
  ),
  createdAt: Type.String({ format: 'date-time' }),
});
export const CreatedTenantSchema = Type.Object({
  ...TenantViewSchema.properties,
  apiKey: Type.String({ description: "The tenant's first API key: shown only in this answer." }),
  keyId: Type.String(),
  adminKey: Type.Optional(Type.String({ description: 'Only in open local mode (no keys yet): the admin key the server made, shown only here.' })),
});
export const TenantSelfSchema = Type.Object({
  ...TenantViewSchema.properties,
  admin: Type.Boolean(),
  keyId: Type.Union([Type.String(), Type.Null()]),
  running: Type.Integer({ description: 'Executions of the tenant running now.' }),
  authEnabled: Type.Boolean(),
});
export const ApiKeyViewSchema = Type.Object({
  id: Type.String(),
  tenant: Type.String(),
  prefix: Type.String({ description: 'The first characters of the key.' }),
  admin: Type.Boolean(),
  createdAt: Type.String({ format: 'date-time' }),
  revokedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
});
export const CreatedApiKeySchema = Type.Object({ ...ApiKeyViewSchema.properties, apiKey: Type.String({ description: 'The key: shown only in this answer.' }) });

/*
 * Response schemas of the routes that answered without one (the OpenAPI document is the contract clients are generated
 * from). Objects keep `additionalProperties: true` and optional fields so that the serializer passes every field the
 * handler returns through unchanged: documenting a route must not change what it answers.
 */
const open = (properties: Parameters<typeof Type.Object>[0], description: string) => Type.Object(properties, { additionalProperties: true, description });
const loose = <T extends Parameters<typeof Type.Optional>[0]>(schema: T) => Type.Optional(schema);
const nullable = <T extends Parameters<typeof Type.Union>[0][number]>(schema: T) => Type.Union([schema, Type.Null()]);

export const HealthSchema = Type.Object({ status: Type.Literal('ok') }, { description: 'The server accepts work' });
export const ReadySchema = open(
  {
    status: Type.String({ description: 'ready or not_ready' }),
    reasons: loose(Type.Array(Type.String(), { description: 'Why not ready (empty when ready); fixed wording, no host paths' })),
    defaultExecutor: Type.String(),
    defaultExecutorReason: loose(Type.String({ description: 'With the admin key (or in open local mode) only' })),
    draining: loose(Type.Boolean()),
    executors: Type.Array(open({ name: Type.String(), ready: Type.Boolean() }, "One executor's state")),
  },
  'Readiness (200 ready, 503 not ready); without the admin key each executor shows only its name and whether it is ready',
);
export const InvocationViewSchema = open(
  {
    id: Type.String(),
    function: Type.String(),
    version: Type.Integer(),
    mode: loose(Type.String({ description: 'async or sync' })),
    status: Type.String({ description: 'queued, running, succeeded or failed' }),
    exitCode: loose(nullable(Type.Integer())),
    durationMs: loose(nullable(Type.Number())),
    coldStart: loose(nullable(Type.Boolean())),
    timedOut: loose(nullable(Type.Boolean())),
    error: loose(Type.String()),
    idempotencyKey: loose(Type.String()),
    payloadBytes: loose(Type.Integer()),
    outputBytes: loose(nullable(Type.Integer())),
    attempts: loose(Type.Integer({ description: 'Times it was started: more than 1 when its cluster worker was lost mid-run and it was delivered again' })),
    createdAt: Type.String({ format: 'date-time' }),
    startedAt: loose(nullable(Type.String({ format: 'date-time' }))),
    finishedAt: loose(nullable(Type.String({ format: 'date-time' }))),
  },
  'An invocation (async or sync)',
);
export const InvocationListSchema = Type.Object({ invocations: Type.Array(InvocationViewSchema) });
export const AsyncInvokeAcceptedSchema = Type.Object({
  invocationId: Type.String(),
  status: Type.String(),
  function: Type.String(),
  version: Type.Integer(),
  created: Type.Boolean({ description: 'false when an Idempotency-Key returned an earlier invocation' }),
});
/** Raw bytes (invoke output, invocation output). */
export const BinaryBodySchema = { type: 'string', format: 'binary' } as const;
/** Server-sent events (log streams); the event names and data are in the route's summary. */
export const EventStreamSchema = { type: 'string', description: 'text/event-stream' } as const;
export const UsageSchema = open(
  {
    from: Type.String({ format: 'date-time' }),
    to: Type.String({ format: 'date-time' }),
    groupBy: Type.String({ description: 'function or day' }),
    rows: Type.Array(open({ tenant: Type.String(), invocations: Type.Number(), cpuMs: Type.Number(), gbSeconds: Type.Number(), storageGbHours: Type.Number({ description: "GB-hours of persistent sandboxes' kept disks and snapshots" }), bytesIn: Type.Number(), bytesOut: Type.Number() }, 'One row; the key is named by groupBy')),
    totals: open({ invocations: Type.Number(), cpuMs: Type.Number(), gbSeconds: Type.Number(), storageGbHours: Type.Number(), bytesIn: Type.Number(), bytesOut: Type.Number() }, 'Sums of the rows'),
  },
  'Metered usage',
);
export const UsageInvocationsSchema = Type.Object({ invocations: Type.Array(open({}, 'A metered invocation')) });
export const UsageTimeseriesSchema = open({ fromMs: Type.Number(), toMs: Type.Number(), bucketMs: Type.Number(), buckets: Type.Array(open({}, 'One time bucket')) }, 'Usage per time bucket');
export const ClusterSchema = open(
  {
    mode: Type.String({ description: 'single (a server on its own) or cluster' }),
    role: loose(Type.String({ description: 'gateway, worker or all' })),
    nodeId: loose(Type.String()),
    nats: loose(Type.String({ description: 'connected, reconnecting or closed' })),
    workers: loose(Type.Array(open({ nodeId: Type.String(), capacity: Type.Number(), inFlight: Type.Number(), warm: Type.Array(Type.String()) }, 'A worker as its last heartbeat says'), { description: 'The workers this node sees (a gateway or all; empty on a worker)' })),
  },
  'This node in its cluster',
);
export const PoolsSchema = open({ pools: Type.Array(open({}, 'A warm pool of one function version')) }, "Warm pools of the caller's tenant");

/* Persistent sandboxes (/v1/sandboxes) ------------------------------------------------------------------------------ */

const metadataSchema = Type.Record(Type.String({ maxLength: 128 }), Type.String({ maxLength: 1024 }), { maxProperties: 64, description: 'Free key/value labels of yours, listed back as given.' });

export const CreateSandboxRequestSchema = Type.Object(
  {
    runtime: Type.Optional(Type.String({ description: `One of ${RUNTIME_NAMES.join(', ')} (its image); or give "image".` })),
    image: Type.Optional(Type.String({ minLength: 1, maxLength: 256, pattern: '^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9._-]+)?$', description: 'Image, e.g. kindling/base.' })),
    executor: Type.Optional(Type.String({ description: 'Default: the server\'s. "sandbox", "docker", "gvisor" and "microvm" (its QEMU driver) host persistent sandboxes; others (microvm on the Firecracker driver) answer 400 SANDBOXES_UNSUPPORTED.' })),
    limits: Type.Optional(
      Type.Object(
        {
          memoryMb: Type.Optional(Type.Number({ description: 'Memory of the whole sandbox in MiB (its files in /work and /tmp count too); default 256.' })),
          cpus: Type.Optional(Type.Number({ description: 'CPU quota in cores; default 1.' })),
          pids: Type.Optional(Type.Integer({ description: 'Processes/threads at once; default 256.' })),
          diskMb: Type.Optional(Type.Number({ description: 'Size in MiB of the sandbox\'s writable space: on the sandbox and docker executors a disk of its own holding /work and /tmp (kept while the sandbox is stopped, until it is deleted; a full disk is ENOSPC inside); default 256.' })),
        },
        { additionalProperties: false },
      ),
    ),
    env: Type.Optional(Type.Record(Type.String({ pattern: envName, maxLength: 256 }), Type.String({ maxLength: 128 * 1024 }), { maxProperties: 1024, description: 'Environment of every command (plus PATH, HOME, LANG).' })),
    idleTimeoutMs: Type.Optional(Type.Integer({ description: 'After this long without a command or file operation the sandbox is paused (never stopped). Default 600000, at most maxLifetimeMs.' })),
    maxLifetimeMs: Type.Optional(Type.Integer({ description: 'The sandbox is stopped and its resources removed this long after its creation. Default 3600000, at most 86400000.' })),
    metadata: Type.Optional(metadataSchema),
    fromSnapshot: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'A snapshot id: /work starts as the snapshot\'s files (a shared read-only layer under a disk of the sandbox\'s own; nothing is copied). Image, runtime and limits default to the snapshot\'s.' })),
  },
  { additionalProperties: false, examples: [{ runtime: 'python', limits: { memoryMb: 512, diskMb: 256 }, idleTimeoutMs: 300000, metadata: { owner: 'agent-7' } }, { fromSnapshot: 'snap_0mi5k2x7b1a2b3c4d5e6f7a8' }] },
);

export const SandboxSchema = Type.Object(
  {
    id: Type.String(),
    state: Type.Union([Type.Literal('running'), Type.Literal('paused'), Type.Literal('hibernated'), Type.Literal('stopped')]),
    executor: Type.String(),
    image: Type.String(),
    runtime: Type.Union([Type.String(), Type.Null()]),
    limits: Type.Object({ memoryMb: Type.Number(), cpus: Type.Number(), pids: Type.Integer(), diskMb: Type.Number() }),
    envNames: Type.Array(Type.String(), { description: 'Names of the env given at creation (values are not shown).' }),
    workdir: Type.String(),
    idleTimeoutMs: Type.Integer(),
    maxLifetimeMs: Type.Integer(),
    metadata: Type.Record(Type.String(), Type.String()),
    createdAt: Type.String({ format: 'date-time' }),
    lastActiveAt: Type.String({ format: 'date-time' }),
    expiresAt: Type.String({ format: 'date-time' }),
    stoppedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
    stopReason: Type.Union([Type.String(), Type.Null()]),
    usage: Type.Union([Type.Object({ cpuMs: Type.Union([Type.Number(), Type.Null()]), memoryPeakBytes: Type.Union([Type.Number(), Type.Null()]) }), Type.Null()], { description: 'Kernel accounting of the whole sandbox so far (cgroup); null once stopped.' }),
    storage: Type.Object(
      {
        persistent: Type.Boolean({ description: 'True: the files are on a disk of the sandbox\'s own and are kept while it is stopped (server restart, max lifetime) until it is deleted; the next command starts it again. False: tmpfs, gone with the processes.' }),
        fromSnapshot: Type.Union([Type.String(), Type.Null()], { description: 'The snapshot its files started from.' }),
      },
    ),
    hibernation: Type.Union(
      [
        Type.Object({
          processesKept: Type.Boolean({ description: 'True: its processes and memory were saved and come back on resume (executors with the hibernate capability). False: only its files were kept; its processes ended and a resume starts a new process tree.' }),
          bytes: Type.Union([Type.Integer(), Type.Null()], { description: 'Size of the saved processes\' image; null when none was saved.' }),
          at: Type.String({ format: 'date-time' }),
        }),
        Type.Null(),
      ],
      { description: 'Set while the state is hibernated (POST /v1/sandboxes/ID/hibernate, or idle past the tenant\'s maxPausedSandboxes).' },
    ),
  },
  {
    examples: [
      {
        id: 'sb_0mi5k2x7a3f9c2d1e8b7a6',
        state: 'running',
        executor: 'sandbox',
        image: 'kindling/python',
        runtime: 'python',
        limits: { memoryMb: 512, cpus: 1, pids: 256, diskMb: 256 },
        envNames: [],
        workdir: '/work',
        idleTimeoutMs: 300000,
        maxLifetimeMs: 3600000,
        metadata: { owner: 'agent-7' },
        createdAt: '2026-12-02T00:00:00.000Z',
        lastActiveAt: '2026-12-02T00:00:00.000Z',
        expiresAt: '2026-12-02T01:00:00.000Z',
        stoppedAt: null,
        stopReason: null,
        usage: { cpuMs: 12.5, memoryPeakBytes: 2301952 },
        storage: { persistent: true, fromSnapshot: null },
        hibernation: null,
      },
    ],
  },
);

/* -- snapshots and forks ------------------------------------------------------------------------------------------- */

export const SnapshotSchema = Type.Object(
  {
    id: Type.String(),
    sandboxId: Type.String({ description: 'The sandbox it was taken of (which may since have been deleted).' }),
    executor: Type.String(),
    image: Type.String(),
    runtime: Type.Union([Type.String(), Type.Null()]),
    limits: Type.Object({ memoryMb: Type.Number(), cpus: Type.Number(), pids: Type.Integer(), diskMb: Type.Number() }),
    createdAt: Type.String({ format: 'date-time' }),
    bytes: Type.Integer({ description: 'Bytes of files it holds (counted per tenant).' }),
    memory: Type.Boolean({ description: 'Whether memory and processes are kept: true on gvisor (a sandbox made from it goes on with the processes); false on the sandbox and docker executors (files only).' }),
    note: Type.String({ description: 'What the snapshot holds, in words.' }),
  },
  {
    examples: [
      {
        id: 'snap_0mi5k2x7b1a2b3c4d5e6f7a8',
        sandboxId: 'sb_0mi5k2x7a3f9c2d1e8b7a6',
        executor: 'sandbox',
        image: 'kindling/python',
        runtime: 'python',
        limits: { memoryMb: 512, cpus: 1, pids: 256, diskMb: 256 },
        createdAt: '2026-12-02T00:05:00.000Z',
        bytes: 104857600,
        memory: false,
        note: 'files of /work only: this executor keeps no memory or processes, so a sandbox made from this snapshot starts a new process tree on its files',
      },
    ],
  },
);
export const SnapshotListSchema = Type.Object({ snapshots: Type.Array(SnapshotSchema) });
export const SnapshotListQuerySchema = Type.Object({ sandboxId: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'Only the snapshots of this sandbox.' })) }, { additionalProperties: false });
export const ForkRequestSchema = Type.Object(
  { count: Type.Integer({ minimum: 1, description: 'How many sandboxes to make from one snapshot of this one: at most the tenant\'s sandbox cap (maxSandboxes; above it 400 LIMIT_OUT_OF_RANGE naming the range) and at most what the cap leaves (else 429); both before anything is made.' }) },
  { additionalProperties: false, examples: [{ count: 3 }] },
);
export const ForkResultSchema = Type.Object({ snapshot: SnapshotSchema, sandboxes: Type.Array(SandboxSchema) });

/* ------------------------------------------------------------------------------------------------------------------- */

export const SandboxListSchema = Type.Object({ sandboxes: Type.Array(SandboxSchema) });
export const SandboxIdParamsSchema = Type.Object({ id: Type.String({ minLength: 1, maxLength: 128 }) });
export const SandboxListQuerySchema = Type.Object(
  { state: Type.Optional(Type.Union([Type.Literal('running'), Type.Literal('paused'), Type.Literal('hibernated'), Type.Literal('stopped')])) },
  {
    // metadata.KEY=VALUE: only sandboxes whose metadata has KEY equal to VALUE (every pair given must match; at most 16).
    patternProperties: { '^metadata\\.': Type.String({ maxLength: 1024 }) },
    additionalProperties: false,
  },
);
export const UpdateSandboxRequestSchema = Type.Object(
  {
    timeoutMs: Type.Optional(Type.Integer({ description: "The sandbox stops this long from now (E2B's setTimeout): extends or shortens its max lifetime; its whole lifetime stays within the server's cap (default 86400000). On a stopped or hibernated sandbox: the lifetime of its next run." })),
    idleTimeoutMs: Type.Optional(Type.Integer({ description: 'New idle timeout (auto-pause after this long without activity); at most its max lifetime.' })),
  },
  { additionalProperties: false, minProperties: 1, examples: [{ timeoutMs: 600000 }] },
);
export const SandboxPathQuerySchema = Type.Object({ path: Type.String({ minLength: 1, maxLength: 4096, description: 'Path inside the sandbox; relative paths start at /work. ".." is refused.' }) }, { additionalProperties: false });

export const SandboxCommandRequestSchema = Type.Object(
  {
    command: Type.Array(Type.String({ maxLength: 128 * 1024 }), { minItems: 1, maxItems: 4096, description: 'argv, e.g. ["sh","-c","echo hi"]; runs in the live sandbox beside what runs there already.' }),
    stdin: Type.Optional(Type.String({ description: 'Text fed to stdin (UTF-8); without it stdin is /dev/null.' })),
    env: Type.Optional(Type.Record(Type.String({ pattern: envName, maxLength: 256 }), Type.String({ maxLength: 128 * 1024 }), { maxProperties: 1024, description: 'Added to the sandbox\'s env for this command.' })),
    workdir: Type.Optional(Type.String({ maxLength: 4096, description: 'Directory the command starts in; default /work.' })),
    timeoutMs: Type.Optional(Type.Integer({ description: 'Wall-clock limit in ms (default 60000, at most 900000): the command\'s process tree is killed, the sandbox lives on.' })),
    outputBytes: Type.Optional(Type.Integer({ description: 'Bytes kept per output stream; default 1048576. The rest is dropped and the result says truncated.' })),
    autoResume: Type.Optional(Type.Boolean({ description: 'Default true: a paused sandbox is resumed first; false: 409 SANDBOX_PAUSED instead.' })),
    stdinBase64: Type.Optional(Type.String({ description: 'Bytes fed to stdin, base64 (instead of stdin).', pattern: BASE64_TEXT })),
    background: Type.Optional(Type.Boolean({ description: 'Start the command and answer 202 with its handle at once (GET/DELETE .../commands/CID, .../logs). No timeout unless timeoutMs is given; outputBytes (default and at most 1048576) bounds the output kept for its logs, stdout and stderr together, newest kept.' })),
  },
  { additionalProperties: false, examples: [{ command: ['sh', '-c', 'echo hello > note.txt && cat note.txt'], timeoutMs: 10000 }] },
);

/* Background commands of a sandbox ----------------------------------------------------------------------------------- */

export const SandboxCommandParamsSchema = Type.Object({ id: Type.String({ minLength: 1, maxLength: 128 }), cid: Type.String({ minLength: 1, maxLength: 128 }) });
export const SandboxCommandSchema = Type.Object(
  {
    id: Type.String({ description: 'The command id (cmd_...).' }),
    command: Type.Array(Type.String()),
    pid: Type.Union([Type.Integer(), Type.Null()], { description: 'Its pid inside the sandbox; null if it never started.' }),
    state: Type.Union([Type.Literal('running'), Type.Literal('exited')]),
    exitCode: Type.Union([Type.Integer(), Type.Null()], { description: 'Null while running; 137 when killed or timed out.' }),
    signal: Type.Union([Type.String(), Type.Null()]),
    killed: Type.Boolean({ description: 'Ended by DELETE .../commands/CID.' }),
    timedOut: Type.Boolean(),
    startedAt: Type.String({ format: 'date-time' }),
    endedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
    outputBytes: Type.Integer({ description: 'The most output kept for its logs (stdout and stderr together); older output is dropped first.' }),
    droppedBytes: Type.Integer({ description: 'Output dropped from the head of the kept logs so far.' }),
  },
  {
    examples: [
      {
        id: 'cmd_0mi5k2x7b1c2d3e4f5a6b7',
        command: ['python3', '-m', 'http.server', '8000'],
        pid: 42,
        state: 'running',
        exitCode: null,
        signal: null,
        killed: false,
        timedOut: false,
        startedAt: '2026-12-02T00:00:00.000Z',
        endedAt: null,
        outputBytes: 1048576,
        droppedBytes: 0,
      },
    ],
  },
);
export const SandboxCommandListSchema = Type.Object({ commands: Type.Array(SandboxCommandSchema) });

export const SandboxFileWrittenSchema = Type.Object({ path: Type.String(), size: Type.Integer() });
export const SandboxMkdirRequestSchema = Type.Object(
  {
    path: Type.String({ minLength: 1, maxLength: 4096, description: 'Directory to make; relative paths start at /work. ".." is refused.' }),
    parents: Type.Optional(Type.Boolean({ description: 'Default true: missing parents are made too (mkdir -p); false: a missing parent is 404 SANDBOX_FILE_NOT_FOUND.' })),
  },
  { additionalProperties: false, examples: [{ path: 'data/raw' }] },
);
export const SandboxMkdirResultSchema = Type.Object({ path: Type.String(), created: Type.Boolean({ description: 'False when the directory existed already.' }) });
export const SandboxTarWrittenSchema = Type.Object({ path: Type.String(), entries: Type.Integer({ description: 'Entries extracted (files, directories, links).' }), bytes: Type.Integer({ description: 'Bytes of file contents.' }) });
export const SandboxFileListSchema = Type.Object({
  path: Type.String(),
  entries: Type.Array(
    Type.Object({
      name: Type.String(),
      path: Type.String(),
      type: Type.Union([Type.Literal('file'), Type.Literal('dir'), Type.Literal('symlink'), Type.Literal('other')]),
      size: Type.Integer(),
      mode: Type.String({ description: 'Permission bits, octal (e.g. "644").' }),
      modifiedAt: Type.String({ format: 'date-time' }),
    }),
  ),
});
