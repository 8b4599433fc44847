import { Type, type Static, type TSchema } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { KindlingError } from '../../core/errors.js';
import type { ExecuteRequest, ExecutionResult, ExecutorName } from '../../core/types.js';
import type { ExecutionService } from '../../orchestrator/execution-service.js';
import { imageOfAlias, resolveImageAlias } from '../../orchestrator/image-aliases.js';
import { RUNTIMES } from '../../orchestrator/runtimes.js';
import type { SandboxService } from '../../orchestrator/sandboxes.js';

/*
 * The gateway of the FaaS blueprint Kindling descends from (tangle-network/faas-infra-blueprint, crate
 * faas-gateway-server) answered its TypeScript and Python SDKs on /api/v1/... and /health. These routes translate what
 * those SDKs send onto Kindling's own services, so the SDKs run unchanged; what has no faithful translation answers
 * 501 COMPAT_UNSUPPORTED naming the Kindling route that does the job. The mapping is documented in docs/operator.md
 * ("Migrating from the FaaS blueprint"). The routes are kept out of /openapi.json: they are a foreign contract for
 * migration, and generated Kindling clients should not grow its shapes.
 */

/** The original used serde `Option<T>`: a field may be absent or null (the Python SDK sends `"description": null`). */
const optional = <T extends TSchema>(schema: T) => Type.Optional(Type.Union([schema, Type.Null()]));

/** The modes of the original (its `ExecutionMode`); it read any other string as ephemeral, Kindling refuses it. */
const MODES = ['ephemeral', 'cached', 'checkpointed', 'branched', 'persistent'] as const;

/**
 * `POST /api/v1/execute`, the fields of the original's ExecuteRequest. Unknown fields are ignored as serde did (the
 * TypeScript SDK's forkExecution spreads its camelCase options into the body).
 */
export const CompatExecuteSchema = Type.Object({
  command: Type.String({ minLength: 1, description: 'Run as `sh -c COMMAND` in the image.' }),
  image: optional(Type.String({ description: 'An image name of the original, mapped by resolveImageAlias; default alpine:latest.' })),
  runtime: optional(Type.Union([Type.Literal('docker'), Type.Literal('firecracker'), Type.Literal('auto')])),
  mode: optional(Type.Union(MODES.map((mode) => Type.Literal(mode)))),
  timeout_ms: optional(Type.Integer()),
  memory_mb: optional(Type.Integer()),
  cpu_cores: optional(Type.Integer({ minimum: 0, maximum: 255 })),
  env_vars: optional(Type.Array(Type.Tuple([Type.String(), Type.String()]))),
  working_dir: optional(Type.String()),
  cache_key: optional(Type.String()),
  snapshot_id: optional(Type.String()),
  branch_from: optional(Type.String()),
});
type CompatExecute = Static<typeof CompatExecuteSchema>;

/** `POST /api/v1/snapshots`, the original's CreateSnapshotRequest (+ the SDKs' `description`, ignored there too). */
const CompatSnapshotSchema = Type.Object({
  container_id: Type.String({ minLength: 1 }),
  name: optional(Type.String()),
  tags: optional(Type.Array(Type.String())),
  description: optional(Type.String()),
});
type CompatSnapshot = Static<typeof CompatSnapshotSchema>;

/** The original's default image when a request names none. */
const DEFAULT_IMAGE = 'alpine:latest';

/**
 * Debian's python3 image has no `python` command; python:* images of Docker Hub do, and the original TypeScript SDK's
 * runPython sends `python -c ...`. A shell function in the command's own shell keeps that working without changing
 * the image (nested shells that call `python` do not see it: docs/operator.md).
 */
const PYTHON_PRELUDE = 'python() { python3 "$@"; }\n';

/** What the original's InvokeResponse carried (snake_case), plus Kindling's facts the original had no field for. */
function invokeResponse(result: ExecutionResult, timeoutMs: number | undefined): Record<string, unknown> {
  let error: string | null = null;
  if (result.timedOut) error = `Timed out after ${timeoutMs ?? 'the default'} ms (Kindling ended the process; exit code ${result.exitCode})`;
  else if (result.oomKilled) error = `Killed: out of memory (exit code ${result.exitCode}); raise memory_mb`;
  else if (result.exitCode !== 0) error = `Process exited with code ${result.exitCode}`;
  return {
    request_id: result.id,
    exit_code: result.exitCode,
    stdout: result.stdout,
    stderr: result.stderr,
    // The original's field is a whole u64; a real run takes more than 0 ms, and its SDK tests check `> 0`.
    duration_ms: Math.ceil(result.durationMs),
    output: result.stdout,
    logs: result.stderr,
    error,
    timed_out: result.timedOut,
    oom_killed: result.oomKilled,
    truncated: result.truncated,
  };
}

/** Translates the original's request onto Kindling's ExecuteRequest (throws 4xx/501 for what does not translate). */
export function translateExecute(body: CompatExecute): ExecuteRequest {
  if (body.mode === 'checkpointed') {
    throw new KindlingError('COMPAT_UNSUPPORTED', 'mode "checkpointed" is not translated: keep state in a persistent sandbox (POST /v1/sandboxes, then POST /v1/sandboxes/ID/commands), snapshot it with POST /v1/sandboxes/ID/snapshots and start from one with POST /v1/sandboxes {"fromSnapshot":ID}');
  }
  if (body.mode === 'branched') {
    throw new KindlingError('COMPAT_UNSUPPORTED', 'mode "branched" (fork_execution) is not translated: an execution here keeps no state to branch from; fork a persistent sandbox with POST /v1/sandboxes/ID/fork and run commands in the forks');
  }
  const alias = resolveImageAlias(body.image ?? DEFAULT_IMAGE);
  const prelude = 'runtime' in alias && RUNTIMES[alias.runtime].family === 'python' ? PYTHON_PRELUDE : '';
  const request: ExecuteRequest = { image: imageOfAlias(alias), command: ['sh', '-c', prelude + body.command] };
  if (body.env_vars) {
    // As the original's HashMap collect: a name given twice keeps its last value.
    request.env = Object.fromEntries(new Map(body.env_vars.map(([name, value]) => [name, value])));
  }
  if (body.working_dir != null) request.workdir = body.working_dir;
  if (body.timeout_ms != null) request.timeoutMs = body.timeout_ms;
  if (body.memory_mb != null) request.memoryMb = body.memory_mb;
  if (body.cpu_cores != null) request.cpus = body.cpu_cores;
  return request;
}

export interface CompatRouteOptions {
  executionService: Pick<ExecutionService, 'execute'>;
  /** Persistent sandboxes, for POST /api/v1/snapshots; absent: that route answers 501. */
  sandboxes?: Pick<SandboxService, 'snapshot'>;
  /** The executors this server runs (GET /health reports docker and firecracker from it). */
  executorNames: readonly ExecutorName[];
  isDraining: () => boolean;
}

/** Routes of the original gateway answered 501, each with the Kindling route to use instead. */
const UNSUPPORTED: { method: 'GET' | 'POST'; url: string; instead: string }[] = [
  { method: 'POST', url: '/api/v1/prewarm', instead: 'warm sandboxes are kept per function: deploy it with PUT /v1/functions/NAME {"minWarm":N}' },
  { method: 'GET', url: '/api/v1/logs/:id/stream', instead: 'stream an execution with POST /v1/execute and "Accept: text/event-stream", or an invocation\'s logs with GET /v1/invocations/ID/logs' },
  { method: 'GET', url: '/api/v1/metrics', instead: 'Prometheus metrics are at GET /metrics, usage per tenant at GET /v1/usage' },
];

/** The public route of the original (no key: its Python SDK sent none). */
export const COMPAT_PUBLIC_ROUTES = ['/health'] as const;

export function registerCompatRoutes(app: FastifyInstance, options: CompatRouteOptions): void {
  const startedAtMs = Date.now();
  const hide = true;

  app.get('/health', { schema: { hide } }, async (_request, reply) => {
    const draining = options.isDraining();
    reply.code(draining ? 503 : 200);
    return {
      status: draining ? 'draining' : 'healthy',
      docker: options.executorNames.includes('docker'),
      // The original's microVMs were Firecracker; Kindling's microvm executor is Firecracker or QEMU (docs/executors.md).
      firecracker: options.executorNames.includes('microvm'),
      uptime_ms: Date.now() - startedAtMs,
    };
  });

  app.post<{ Body: CompatExecute }>('/api/v1/execute', { schema: { hide, body: CompatExecuteSchema } }, async (request, reply) => {
    const translated = translateExecute(request.body);
    // A client that goes away cancels its execution and frees the sandbox (as POST /v1/execute).
    const abort = new AbortController();
    reply.raw.on('close', () => {
      if (!reply.raw.writableFinished) abort.abort(new KindlingError('CLIENT_DISCONNECTED', 'the client disconnected before the answer; the execution was cancelled'));
    });
    const result = await options.executionService.execute(translated, { signal: abort.signal, trace: request.trace, tenant: request.scope });
    request.log.info({ executionId: result.id, exitCode: result.exitCode, durationMs: result.durationMs, timedOut: result.timedOut }, 'compat execution finished');
    reply.header('x-kindling-execution-id', result.id);
    return invokeResponse(result, translated.timeoutMs);
  });

  app.post<{ Body: CompatSnapshot }>('/api/v1/snapshots', { schema: { hide, body: CompatSnapshotSchema } }, async (request) => {
    const sandboxes = options.sandboxes;
    if (!sandboxes) {
      throw new KindlingError('COMPAT_UNSUPPORTED', 'this server runs no persistent sandboxes, so there is nothing to snapshot; see POST /v1/sandboxes/ID/snapshots');
    }
    // container_id is a Kindling persistent sandbox's id (the original's containers had no other meaning here).
    const snapshot = await sandboxes.snapshot(request.principal.tenant, request.body.container_id);
    return { id: snapshot.id, name: request.body.name ?? null, container_id: snapshot.sandboxId, created_at: snapshot.createdAt, size_bytes: snapshot.bytes };
  });

  for (const route of UNSUPPORTED) {
    app.route({
      method: route.method,
      url: route.url,
      schema: { hide },
      handler: async () => {
        throw new KindlingError('COMPAT_UNSUPPORTED', `${route.method} ${route.url} of the FaaS blueprint gateway is not translated: ${route.instead}`);
      },
    });
  }
  // The rest of the original gateway (its SDKs never called them): one answer that says where the mapping is.
  app.all('/api/v1/*', { schema: { hide } }, async (request) => {
    throw new KindlingError('COMPAT_UNSUPPORTED', `${request.method} ${request.url.split('?')[0]} of the FaaS blueprint gateway is not translated; Kindling serves POST /api/v1/execute, POST /api/v1/snapshots and GET /health of it (docs/operator.md, "Migrating from the FaaS blueprint"), its own API is under /v1 (GET /openapi.json)`);
  });
}
