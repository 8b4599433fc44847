/**
 * Test support (not product code): the gateway built with fakes of the services behind it, for route-level tests
 * through fastify's inject(). No socket, no sandbox, no root: what is tested is the HTTP layer (auth, the Host/Origin
 * guard, validation, error mapping, content negotiation). Tenants and keys are the real TenantService on an in-memory
 * SQLite store (auth is answered from memory, so it is as fast as a fake and tests the real key handling); the
 * services that would run code are fakes that record what they were asked.
 */
import { Writable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { KindlingError } from '../core/errors.js';
import type { ExecuteRequest, ExecutionResult, ResourceLimits } from '../core/types.js';
import type { ExecuteOptions } from '../orchestrator/execution-service.js';
import type { FunctionService, FunctionView, InvocationResult, InvokeOptions } from '../orchestrator/function-service.js';
import { InvocationRunner } from '../orchestrator/invocation-runner.js';
import { toInvocationView, type EnqueueRequest } from '../orchestrator/invocations.js';
import { DEFAULT_LIMIT_POLICY, resolveLimits } from '../orchestrator/limits.js';
import { LogBus } from '../orchestrator/log-bus.js';
import { TenantService } from '../orchestrator/tenants.js';
import type { FunctionSpec, InvocationRecord } from '../store/store.js';
import { SqliteTenantStore } from '../store/tenants-sqlite.js';
import type { UsageQuery, UsageRecord, UsageRow } from '../store/usage.js';
import { buildApi, type ApiExecutionService, type ApiFunctionService, type ApiInvocations, type ApiMetrics, type ApiOptions } from './build.js';

export const ADMIN_KEY = 'kdl_test-admin-key';
/** A Host header the guard answers to. */
export const HOST = '127.0.0.1:3000';

/** What a fake was asked, in order: `execute`, `invoke`, `enqueue`, `deploy`, ... with their arguments. */
export type Call = { method: string; args: unknown[] };

export interface FakeFunction {
  style: 'handler' | 'command';
  version: number;
  spec: FunctionSpec;
}

export interface Harness {
  app: FastifyInstance;
  tenants: TenantService;
  /** A key of tenant `alpha` (not an admin). */
  alphaKey: string;
  calls: Call[];
  /** Functions the fake function service knows, by `tenant/name`. */
  functions: Map<string, FakeFunction>;
  /** Invocation records the fake invocation service knows, by id; `outputs` their stdout. */
  records: Map<string, InvocationRecord>;
  outputs: Map<string, Buffer>;
  /** Counted by the fake metrics: `code status` per error answer. */
  httpErrors: string[];
  /** The next call of a fake service method throws `error` (a service failing as the real ones can). */
  failNext(error: unknown): void;
  /** Headers for a request with a key (default: the admin's) and a Host the guard answers to. */
  headers(key?: string | null, extra?: Record<string, string>): Record<string, string>;
  close(): Promise<void>;
}

export interface HarnessOptions {
  /** Server-side keys on (KINDLING_ADMIN_KEY set); false: open local mode. Default true. */
  auth?: boolean;
  /** Quotas of tenant `alpha`. */
  alphaQuotas?: Record<string, unknown>;
  /** Replaces fakes or options of buildApi. */
  api?: Partial<ApiOptions>;
  /** The fake execution service's behaviour (default: a run that prints `out` and exits 0). */
  execute?: (request: ExecuteRequest, options: ExecuteOptions) => Promise<ExecutionResult>;
  /** Methods added to (or replacing) the fake function service's (builds, build logs). */
  functions?: Partial<ApiFunctionService>;
  /** The fake function service's invoke (default: echoes the body as a handler would). */
  invoke?: (tenant: string, name: string, body: Buffer, options: InvokeOptions) => Promise<InvocationResult>;
}

export function executionResult(overrides: Partial<ExecutionResult> = {}): ExecutionResult {
  return {
    id: 'exec_fake',
    exitCode: 0,
    signal: null,
    stdout: 'out\n',
    stderr: '',
    durationMs: 3,
    coldStart: true,
    executor: 'sandbox',
    timedOut: false,
    oomKilled: false,
    truncated: false,
    outputEncoding: 'utf8',
    stdoutTruncated: false,
    stderrTruncated: false,
    timings: { queuedMs: 0, startMs: 1, runMs: 2 },
    ...overrides,
  };
}

/** The limits of a request checked as the real execution service checks them (range, tenant caps). */
function checkLimits(request: ExecuteRequest, caps: Partial<ResourceLimits> | undefined): void {
  const requested: Partial<ResourceLimits> = {};
  for (const key of Object.keys(DEFAULT_LIMIT_POLICY.defaults) as (keyof ResourceLimits)[]) {
    const value = (request as Partial<Record<keyof ResourceLimits, number>>)[key];
    if (value !== undefined) requested[key] = value;
  }
  resolveLimits(requested, {}, DEFAULT_LIMIT_POLICY, caps);
}

/** A run as an executor would do it: started, stdin read, output written, result. */
async function defaultExecute(request: ExecuteRequest, options: ExecuteOptions): Promise<ExecutionResult> {
  checkLimits(request, options.tenant?.caps);
  if (request.image !== undefined && request.image !== 'kindling/base') throw new KindlingError('UNKNOWN_IMAGE', `no image "${request.image}"`);
  options.onStarted?.('exec_fake', { executor: 'sandbox', coldStart: true });
  let stdin = Buffer.from(request.stdin ?? '');
  const plan = options.io;
  if (plan?.stdin.kind === 'stream') {
    const chunks: Buffer[] = [];
    for await (const chunk of plan.stdin.stream) chunks.push(Buffer.from(chunk as Buffer));
    stdin = Buffer.concat(chunks);
  }
  const stdout = stdin.length > 0 ? stdin : Buffer.from('out\n');
  options.onOutput?.('stdout', stdout.toString('utf8'));
  const sink = plan?.stdout.kind === 'sink' ? plan.stdout.sink : null;
  if (sink) await new Promise<void>((resolve, reject) => sink.write(stdout, (error) => (error ? reject(error) : resolve())));
  return executionResult({ stdout: sink ? '' : stdout.toString('utf8') });
}

function view(name: string, fn: FakeFunction): FunctionView {
  return { ...fn.spec, name, version: fn.version, style: fn.style, createdAtMs: 1, updatedAtMs: 1 };
}

export async function buildHarness(options: HarnessOptions = {}): Promise<Harness> {
  const calls: Call[] = [];
  let failure: { error: unknown } | null = null;
  const record = (method: string, ...args: unknown[]): void => {
    calls.push({ method, args });
    if (failure) {
      const { error } = failure;
      failure = null;
      throw error;
    }
  };
  const functions = new Map<string, FakeFunction>();
  const records = new Map<string, InvocationRecord>();
  const outputs = new Map<string, Buffer>();
  const httpErrors: string[] = [];
  const store = new SqliteTenantStore(':memory:');
  const tenants = new TenantService({ store, ...(options.auth === false ? {} : { envAdminKey: ADMIN_KEY }) });
  const alphaKey = options.auth === false ? '' : (await tenants.create('alpha', options.alphaQuotas ?? {})).apiKey;

  const find = (tenant: string, name: string): FakeFunction => {
    const fn = functions.get(`${tenant}/${name}`);
    if (!fn) throw new KindlingError('FUNCTION_NOT_FOUND', `no function "${name}"`);
    return fn;
  };
  const functionService: ApiFunctionService & Pick<FunctionService, 'invoke'> = {
    async deploy(tenant, name, spec) {
      record('deploy', tenant, name, spec);
      const previous = functions.get(`${tenant}/${name}`);
      const fn: FakeFunction = { style: spec.handler === undefined ? 'command' : 'handler', version: (previous?.version ?? 0) + 1, spec };
      functions.set(`${tenant}/${name}`, fn);
      return { view: view(name, fn), created: previous === undefined };
    },
    list: (tenant) => (record('list', tenant), [...functions]).filter(([key]) => key.startsWith(`${tenant}/`)).map(([key, fn]) => view(key.slice(tenant.length + 1), fn)),
    get: (tenant, name) => (record('get', tenant, name), view(name, find(tenant, name))),
    versions: (tenant, name) => {
      const fn = find(tenant, name);
      return [{ ...fn.spec, name, version: fn.version, style: fn.style, latest: true, createdAtMs: 1 }];
    },
    async delete(tenant, name) {
      record('delete', tenant, name);
      find(tenant, name);
      functions.delete(`${tenant}/${name}`);
    },
    resolve: (tenant, name) => {
      const fn = find(tenant, name);
      return { version: { tenant, name, version: fn.version, spec: fn.spec, createdAtMs: 1 }, style: fn.style };
    },
    async invoke(tenant, name, body, invokeOptions = {}) {
      record('invoke', tenant, name, body);
      if (options.invoke) return options.invoke(tenant, name, body, invokeOptions);
      const fn = find(tenant, name);
      invokeOptions.onStarted?.('inv_fake', { coldStart: false, executor: 'sandbox' });
      return { invocationId: 'inv_fake', tenant, functionName: name, version: fn.version, exitCode: 0, body: Buffer.concat([Buffer.from('echo:'), body]), stderr: Buffer.alloc(0), durationMs: 2, coldStart: false, timedOut: false, executor: 'sandbox' };
    },
    ...options.functions,
  };

  const logBus = new LogBus();
  // The real runner over the fake functions: what the routes hand it and what it records are the real thing.
  const runner = new InvocationRunner({ functions: functionService, logBus, record: (finished) => record('recordFinished', finished), recordLogBytes: 1024 });
  const invocations: ApiInvocations = {
    checkQueuedPayload: (tenant, bytes) => record('checkQueuedPayload', tenant, bytes),
    async enqueue(request: EnqueueRequest) {
      record('enqueue', request);
      const id = `inv_${records.size + 1}`;
      const created: InvocationRecord = { id, tenant: request.tenant ?? 'default', functionName: request.functionName, version: 1, mode: 'async', status: 'queued', idempotencyKey: request.idempotencyKey ?? null, callbackUrl: request.callbackUrl ?? null, callbackState: null, callbackAttempts: 0, attempts: 0, exitCode: null, durationMs: null, coldStart: null, timedOut: null, error: null, payloadBytes: request.payload.length, stdoutBytes: null, createdAtMs: 1, startedAtMs: null, finishedAtMs: null, traceparent: request.traceparent ?? null };
      records.set(id, created);
      return { view: toInvocationView(created), created: true };
    },
    list: (filter, tenant = 'default') => [...records.values()].filter((r) => r.tenant === tenant && (filter.functionName === undefined || r.functionName === filter.functionName)),
    get: (id, tenant = 'default') => {
      const found = records.get(id);
      if (!found || found.tenant !== tenant) throw new KindlingError('NOT_FOUND', `no invocation "${id}"`);
      return found;
    },
    output(id, tenant) {
      const found = this.get(id, tenant);
      return { record: found, stdout: outputs.get(id) ?? Buffer.alloc(0), stderr: Buffer.alloc(0) };
    },
  };

  const executionService: ApiExecutionService = {
    async execute(request, executeOptions = {}) {
      record('execute', request);
      return (options.execute ?? defaultExecute)(request, executeOptions);
    },
  };

  const metrics: ApiMetrics = {
    onHttpError: (code, status) => httpErrors.push(`${code} ${status}`),
    onHttpResponse: () => undefined,
    registry: { contentType: 'text/plain; version=0.0.4; charset=utf-8', metrics: async () => '# HELP kindling_fake 1\nkindling_fake 1\n' } as ApiMetrics['registry'],
  };

  const usageRows: UsageRow[] = [{ tenant: 'alpha', key: 'fn', invocations: 2, cpuMs: 10, gbSeconds: 0.5, storageGbHours: 0, bytesIn: 3, bytesOut: 4 }];
  const usage = {
    summarize: (query: UsageQuery): UsageRow[] => usageRows.filter((row) => query.tenant === undefined || row.tenant === query.tenant),
    recent: (): UsageRecord[] => [],
  };

  const app = await buildApi({
    executionService,
    functionService,
    invocations,
    runner,
    logBus,
    executors: new Map([['sandbox', { probe: async () => ({ name: 'sandbox', ready: true, reason: 'fake', details: {} }) }]]) as ApiOptions['executors'],
    defaultExecutor: 'sandbox',
    defaultExecutorReason: 'the only one',
    metrics,
    tenants,
    maxBodyBytes: 64 * 1024,
    maxStreamBytes: 256 * 1024,
    version: 'test',
    usage,
    ...options.api,
  });
  await app.ready();
  return {
    app,
    tenants,
    alphaKey,
    calls,
    functions,
    records,
    outputs,
    httpErrors,
    failNext: (error) => {
      failure = { error };
    },
    headers: (key = ADMIN_KEY, extra = {}) => ({ host: HOST, ...(key === null ? {} : { authorization: `Bearer ${key}` }), ...extra }),
    close: async () => {
      await app.close();
      store.close();
    },
  };
}

/** A Writable that keeps what it is given (a stand-in stdout sink). */
export class Collect extends Writable {
  readonly chunks: Buffer[] = [];
  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: () => void): void {
    this.chunks.push(chunk);
    callback();
  }
}
