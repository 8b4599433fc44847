import type { StreamRelay } from './stream-relay.js';
import Fastify, { type FastifyInstance, type FastifyRequest, type FastifyServerOptions } from 'fastify';
import swagger from '@fastify/swagger';
import websocket from '@fastify/websocket';
import type { IncomingMessage } from 'node:http';
import { KindlingError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import type { ExecutorName } from '../core/types.js';
import type { Metrics } from '../metrics/metrics.js';
import { makeAuthenticator, matchesSecret, requireAdmin, selectWebSocketProtocol } from './auth.js';
import type { ClusterView } from '../cluster/roles.js';
import { ByteLimit } from './raw-body.js';
import { HostGuard, type AllowedHost } from './host-guard.js';
import type { Principal, TenantService } from '../orchestrator/tenants.js';
import type { TenantScope } from '../orchestrator/execution-service.js';
import { registerTenantRoutes, type TenantRouteTenants } from './routes/tenants.js';
import { errorBody, sendError, toKindlingError } from './errors.js';
import { registerExecuteRoutes, type ExecuteRouteOptions } from './routes/execute.js';
import { registerExecuteWsRoute, type ExecuteWsRouteOptions } from './routes/execute-ws.js';
import type { BundleStore } from '../orchestrator/bundles.js';
import { registerFunctionRoutes, type FunctionRouteFunctions, type FunctionRouteInvocations, type FunctionRouteRunner } from './routes/functions.js';
import { registerHealthRoutes, type HealthRouteOptions } from './routes/health.js';
import { OPERATOR_RESULTS_ROUTE, registerOperatorResultsRoute, type OperatorResultsRouteOptions } from './routes/operator-results.js';
import { CONSOLE_PUBLIC_ROUTES, registerConsoleRoutes } from './routes/console.js';
import { registerUsageRoutes } from './routes/usage.js';
import { COMPAT_PUBLIC_ROUTES, registerCompatRoutes } from './routes/compat.js';
import { registerSandboxRoutes } from './routes/sandboxes.js';
import { registerImageRoutes } from './routes/images.js';
import type { CustomImageService } from '../orchestrator/custom-images.js';
import { registerSandboxPtyRoute, SANDBOX_PTY_ROUTE } from './routes/sandbox-pty.js';
import type { SandboxService } from '../orchestrator/sandboxes.js';
import { addExamples } from './openapi-examples.js';
import { ClusterSchema, ErrorResponseSchema, PoolsSchema } from './schemas.js';
import type { UsageStore } from '../store/usage.js';
import { startRequestTrace, type RequestTrace } from './trace.js';
import { ATTR, HTTP_ATTR, type Tracer } from '../core/tracing.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** W3C trace context of this request (see trace.ts); set by the first hook. */
    trace: RequestTrace;
    /** Who the request acts for (tenant, admin or not, key id); set by the auth hook on every non-public route. */
    principal: Principal;
    /** The principal's tenant scope (caps, concurrency slot) that executions of this request carry. */
    scope: TenantScope;
  }
}
import { registerInvocationRoutes, type InvocationRouteInvocations, type InvocationRouteLogBus, type InvocationRouteOptions } from './routes/invocations.js';

/*
 * What the gateway needs of each service: the union of what its routes use (each route module names its own narrow
 * type) and what the hooks below use. The real services satisfy these; tests pass small fakes (see test-support.ts).
 */
/** A traced request's path attribute is cut here (the request line may be up to the server's header limit). */
const MAX_TRACED_PATH_CHARS = 512;

export type ApiExecutionService = ExecuteRouteOptions['executionService'] & ExecuteWsRouteOptions['executionService'];
export type ApiFunctionService = FunctionRouteFunctions & InvocationRouteOptions['functionService'];
export type ApiInvocations = FunctionRouteInvocations & InvocationRouteInvocations;
export type ApiLogBus = InvocationRouteLogBus;
/** The auth hook (keys, scope, rate, payload cap) and the tenant routes. */
export type ApiTenants = TenantRouteTenants & Pick<TenantService, 'authEnabled' | 'authenticate' | 'exists' | 'scopeOf' | 'checkRate' | 'maxPayloadBytes'>;
/** HTTP counters and the registry GET /metrics serves. */
export type ApiMetrics = Pick<Metrics, 'onHttpError' | 'onHttpResponse'> & { readonly registry: Pick<Metrics['registry'], 'contentType' | 'metrics'> };

export interface ApiOptions {
  executionService: ApiExecutionService;
  functionService: ApiFunctionService;
  invocations: ApiInvocations;
  /** Runs synchronous function invocations (src/orchestrator/invocation-runner.ts). */
  runner: FunctionRouteRunner;
  logBus: ApiLogBus;
  executors: HealthRouteOptions['executors'];
  defaultExecutor: ExecutorName;
  defaultExecutorReason: string;
  metrics: ApiMetrics;
  /** Tenants, API keys and quotas: who a request is, what it may see, how much it may do. */
  tenants: ApiTenants;
  /** Largest request body accepted, in bytes; beyond it: 413. */
  maxBodyBytes: number;
  /** Largest raw request body (streamed to stdin, never held in memory), in bytes; beyond it: 413. */
  maxStreamBytes: number;
  /** The splice data plane for large raw streams (stream-relay.ts); absent: they go through node streams. */
  streamRelay?: StreamRelay;
  /** Where uploaded function bundles are checked and unpacked; absent: bundle deploys answer 415. */
  bundles?: Pick<BundleStore, 'ingest' | 'maxBytes' | 'release'>;
  version: string;
  logger?: FastifyServerOptions['logger'] | FastifyServerOptions['loggerInstance'];
  isDraining?: () => boolean;
  /** Cluster mode: why this node is not ready in the cluster (see HealthRouteOptions). */
  clusterReasons?: () => string[];
  /** Cluster mode: this node and the workers it sees (GET /v1/cluster); absent: a server on its own. */
  cluster?: () => ClusterView;
  /** Cluster mode with several gateways: reads of invocations held by another gateway (see InvocationRouteOptions). */
  invocationsElsewhere?: InvocationRouteOptions['elsewhere'];
  invocationsListedElsewhere?: InvocationRouteOptions['listElsewhere'];
  /** Persistent sandboxes (/v1/sandboxes…); without it those routes are absent. */
  sandboxes?: SandboxService;
  /** Custom images (/v1/images…); without it those routes are absent. */
  customImages?: CustomImageService;
  /** Usage records (GET /v1/usage…); without it those routes are absent. */
  usage?: Pick<UsageStore, 'summarize' | 'recent'>;
  /** Warm pool sizes per function version (GET /v1/pools). */
  pools?: () => { capacity: unknown; pools: { tenant: string }[] };
  /** When set, GET /metrics needs `Authorization: Bearer <token>` (or the admin key). */
  metricsToken?: string;
  /** The built console (web/dist); without it `/` is not served. */
  consoleDir?: string;
  /**
   * Host names this server answers to besides IP addresses and localhost (--allowed-hosts, and the name it listens
   * on); requests naming another host get 421, state-changing requests from pages of other origins 403 (host-guard.ts).
   */
  allowedHosts?: readonly AllowedHost[];
  /** Operator mode's large results (GET /v1/operator/results/:serviceId/:callId, public); without it the route is absent. */
  operatorResults?: OperatorResultsRouteOptions['results'];
  /** Exports a span per request (--otlp-endpoint); absent: trace ids are made here and nothing is exported. */
  tracer?: Tracer;
}

/** Probes, scrapes and the console's files: answered from memory, many a minute, not worth a span each. */
const UNTRACED_GETS = new Set(['/healthz', '/readyz', '/metrics', '/health', '/openapi.json', '/', '/favicon.ico']);

/** Whether a request gets an exported span: every one but the GETs above (and the console's assets). */
function traced(method: string | undefined, url: string | undefined): boolean {
  if (method !== 'GET' && method !== 'HEAD') return true;
  const path = (url ?? '/').split('?')[0]!;
  return !UNTRACED_GETS.has(path) && !path.startsWith('/assets/');
}

/** Methods a page of another origin must not use here (a GET may be answered: the browser keeps the answer from it). */
const STATE_CHANGING_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

/**
 * Routes that answer without an API key: liveness, readiness, metrics scraping, the API description, and the FaaS
 * blueprint gateway's health check (its Python SDK sends no key there), and the operator's large results (their
 * sha256 on chain is the check).
 */
const PUBLIC_ROUTES = new Set(['/healthz', '/readyz', '/metrics', '/openapi.json', OPERATOR_RESULTS_ROUTE, ...CONSOLE_PUBLIC_ROUTES, ...COMPAT_PUBLIC_ROUTES]);

/** Builds the HTTP gateway without listening, so tests can use inject() and main decides where to listen. */
export async function buildApi(options: ApiOptions): Promise<FastifyInstance> {
  const loggerOption =
    options.logger && typeof options.logger === 'object' && 'child' in options.logger
      ? { loggerInstance: options.logger as FastifyServerOptions['loggerInstance'] }
      : { logger: (options.logger as FastifyServerOptions['logger']) ?? false };
  // Each request's trace is started where fastify makes its logger (below), so that one child logger carries both
  // the request id and the trace id: a child of that child (pino) cost ~12 µs a request, one child with both ~1 µs.
  const traces = new WeakMap<IncomingMessage, RequestTrace>();
  const tracer = options.tracer;
  const traceOf = (raw: IncomingMessage): RequestTrace => {
    let trace = traces.get(raw);
    if (trace === undefined) {
      const header = raw.headers.traceparent;
      const incoming = Array.isArray(header) ? header[0] : header;
      // The route is not known yet: the span is named after it once it is (see the onRequest hook below).
      trace =
        tracer !== undefined && traced(raw.method, raw.url)
          ? startRequestTrace(incoming, { tracer, name: raw.method ?? 'HTTP', attributes: { [HTTP_ATTR.method]: raw.method ?? '', [HTTP_ATTR.path]: (raw.url ?? '/').split('?')[0]!.slice(0, MAX_TRACED_PATH_CHARS) } })
          : startRequestTrace(incoming);
      traces.set(raw, trace);
    }
    return trace;
  };
  const app = Fastify({
    ...loggerOption,
    childLoggerFactory: (logger, bindings, loggerOptions, raw) => logger.child({ ...bindings, traceId: traceOf(raw as IncomingMessage).traceId }, loggerOptions),
    bodyLimit: options.maxBodyBytes,
    genReqId: (request) => {
      const given = request.headers['x-request-id'];
      return typeof given === 'string' && /^[A-Za-z0-9._-]{1,128}$/.test(given) ? given : newId('req');
    },
    return503OnClosing: true,
    // Errors before routing answer with the contract's shape too: a URL that is not valid percent-encoding ...
    frameworkErrors: (error, request, reply) => {
      const failure =
        error.code === 'FST_ERR_BAD_URL'
          ? new KindlingError('MALFORMED_REQUEST', 'the URL is not valid percent-encoded UTF-8')
          : new KindlingError('MALFORMED_REQUEST', `the request could not be routed: ${error.message}`);
      options.metrics.onHttpError(failure.code, failure.statusCode);
      void sendError(reply, request, failure);
    },
    // ... and a request Node's HTTP parser rejects (no Fastify request exists then: the answer is written raw).
    clientErrorHandler: (error: NodeJS.ErrnoException, socket) => {
      // After a response was already written on this connection (e.g. to a request whose body kept coming), a second
      // answer would corrupt the stream: just close it, as Node's own handler does.
      const inFlight = (socket as unknown as { _httpMessage?: { headersSent?: boolean } | null })._httpMessage;
      if (error.code === 'ECONNRESET' || !socket.writable || inFlight?.headersSent === true) {
        socket.destroy();
        return;
      }
      const failure =
        error.code === 'HPE_HEADER_OVERFLOW'
          ? new KindlingError('HEADERS_TOO_LARGE', 'the request headers are larger than this server accepts')
          : new KindlingError('MALFORMED_REQUEST', 'the request is not valid HTTP/1.1');
      options.metrics.onHttpError(failure.code, failure.statusCode);
      const body = JSON.stringify(errorBody(failure, newId('req')));
      const reason = failure.statusCode === 431 ? 'Request Header Fields Too Large' : 'Bad Request';
      socket.end(`HTTP/1.1 ${failure.statusCode} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    },
    ajv: {
      // Strict: no type coercion, no silent removal of unknown fields.
      customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false, allErrors: false },
    },
  }) as unknown as FastifyInstance;

  const toError = (error: unknown): KindlingError => toKindlingError(error, { maxBodyBytes: options.maxBodyBytes });

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'Kindling API',
        version: options.version,
        description: 'Run code and commands in isolated sandboxes. Errors: {"error":{"code","message"},"requestId"}.',
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
    // Every JSON body and answer gets an example (computed once: the document is cached).
    transformObject: (documents) => addExamples('openapiObject' in documents ? documents.openapiObject : documents.swaggerObject),
  });

  // The API speaks JSON (and raw bytes where a route says so): a text/plain body is an unsupported type (415, as on
  // POST /v1/execute), not a string for the schema to refuse as "must be object".
  app.removeContentTypeParser('text/plain');

  // WebSockets (GET /v1/execute/ws): the upgrade request goes through the hooks below, the auth hook included. One
  // message is at most a JSON body's size; total stdin is bounded by --max-stream-bytes in the route.
  // The answered subprotocol is never a key the console offered as one (see protocolKey in auth.ts).
  await app.register(websocket, { options: { maxPayload: options.maxBodyBytes, handleProtocols: selectWebSocketProtocol } });

  // A DELETE (or GET) without a body but with "Content-Type: application/json" (some HTTP clients always send it) is not
  // a malformed JSON body: the header goes, so no parser runs.
  app.addHook('onRequest', async (request) => {
    if ((request.method === 'DELETE' || request.method === 'GET') && request.headers['transfer-encoding'] === undefined && (request.headers['content-length'] ?? '0') === '0') {
      delete request.headers['content-type'];
    }
  });

  // Tracing first (the request's logger already carries the trace id: see childLoggerFactory above).
  app.decorateRequest('trace', null as unknown as RequestTrace);
  app.addHook('onRequest', async (request, reply) => {
    request.trace = traceOf(request.raw);
    const span = request.trace.span;
    if (span === undefined) return;
    const route = request.routeOptions.url;
    if (route !== undefined) {
      span.updateName(`${request.method} ${route}`);
      span.setAttributes({ [HTTP_ATTR.route]: route });
    }
    // Ended when the exchange is over, however it ends (answered, streamed, hijacked, cut off); a WebSocket's when
    // its connection closes. Only a real upgrade (node's parser saw `Connection: upgrade`) counts as one: an `Upgrade`
    // header alone is an ordinary request on a keep-alive socket, and ending its span on the socket's close would keep
    // every such request (and its span) in memory for as long as a client keeps the connection.
    const upgraded = (request.raw as { upgrade?: boolean }).upgrade === true;
    const end = (): void => {
      if (!upgraded) span.setAttributes({ [HTTP_ATTR.statusCode]: reply.raw.statusCode });
      span.end();
    };
    if (upgraded) request.raw.socket.once('close', end);
    else reply.raw.once('close', end);
  });

  // Before anything else reads the request (auth included, so also in open local mode): which host it names and,
  // for a browser's request that changes state or opens a WebSocket, which page sent it (see host-guard.ts).
  const hostGuard = new HostGuard(options.allowedHosts ?? []);
  app.addHook('onRequest', async (request) => {
    const { host, origin, upgrade } = request.headers;
    hostGuard.checkHost(host);
    if (STATE_CHANGING_METHODS.has(request.method) || upgrade !== undefined) hostGuard.checkOrigin(origin, host);
  });

  app.addHook('onSend', async (request, reply, payload) => {
    reply.header('x-request-id', request.id);
    reply.header('traceparent', request.trace.traceparent);
    return payload;
  });
  app.addHook('onResponse', async (request, reply) => {
    options.metrics.onHttpResponse(request.method, reply.statusCode);
  });

  // Deny by default: only these routes are public. Decided by the route the router matched (never by the raw URL,
  // which may be percent-encoded), and an unmatched URL needs the key too, so probing reveals nothing. Everything
  // here is answered from memory: the key's hash in a map, the tenant's token bucket, a content-length comparison.
  const tenants = options.tenants;
  const authenticate = makeAuthenticator(tenants, new Set([SANDBOX_PTY_ROUTE]));
  const metricsToken = options.metricsToken;
  app.decorateRequest('principal', null as unknown as Principal);
  app.decorateRequest('scope', null as unknown as TenantScope);
  app.addHook('onRequest', async (request) => {
    const route = request.routeOptions.url;
    if (route === '/metrics') {
      // The operator's view: its labels name every tenant's functions. With auth on it needs the scrape token or the
      // admin key; without keys (open local mode) and without a token it is public, as every route is then.
      const needed = metricsToken !== undefined || tenants.authEnabled;
      if (needed && !(metricsToken !== undefined && matchesSecret(request, metricsToken)) && !(tenants.authEnabled && isAdminRequest(request))) {
        throw new KindlingError('UNAUTHORIZED', 'GET /metrics needs "Authorization: Bearer TOKEN" with the --metrics-token or the admin key (its labels name the functions of every tenant)');
      }
      return;
    }
    if (route !== undefined && PUBLIC_ROUTES.has(route)) return;
    const principal = authenticate(request);
    request.principal = principal;
    request.scope = tenants.scopeOf(principal.tenant)!;
    tenants.checkRate(principal.tenant);
    const maxPayloadBytes = tenants.maxPayloadBytes(principal.tenant);
    const declared = Number(request.headers['content-length']);
    if (maxPayloadBytes !== null && Number.isFinite(declared) && declared > maxPayloadBytes) {
      throw new KindlingError('PAYLOAD_TOO_LARGE', `the request body (${declared} bytes) is larger than tenant "${principal.tenant}" may send (${maxPayloadBytes} bytes, quota maxPayloadBytes)`, { details: { quota: 'maxPayloadBytes', cap: maxPayloadBytes } });
    }
  });
  // A JSON body without a Content-Length (chunked) is counted as it is read: the tenant's maxPayloadBytes holds for it
  // too. Raw bodies (streamed to stdin, invoke payloads) are counted by their routes with the same limit.
  app.addHook('preParsing', async (request, _reply, payload) => {
    const cap = request.scope?.maxPayloadBytes;
    if (cap === undefined || cap >= options.maxBodyBytes || !(request.headers['content-type'] ?? '').startsWith('application/json')) return payload;
    return payload.pipe(new ByteLimit(cap, "the tenant's quota maxPayloadBytes (ask an admin)"));
  });
  const isAdminRequest = (request: FastifyRequest): boolean => {
    try {
      return authenticate(request).isAdmin;
    } catch {
      return false;
    }
  };

  app.setErrorHandler((error, request, reply) => {
    const failure = toError(error);
    options.metrics.onHttpError(failure.code, failure.statusCode);
    // A client's mistake (4xx) is named but is no error of the server's span (OpenTelemetry's HTTP conventions).
    if (failure.statusCode >= 500) request.trace?.span?.fail(failure.code, failure.message);
    else request.trace?.span?.setAttributes({ [ATTR.errorCode]: failure.code });
    if (failure.code === 'CLIENT_DISCONNECTED') request.log.info({ code: failure.code }, failure.message);
    else if (failure.statusCode >= 500) request.log.error({ err: error, code: failure.code }, failure.message);
    else request.log.info({ code: failure.code, msg: failure.message }, 'request rejected');
    return sendError(reply, request, failure);
  });

  app.setNotFoundHandler((request, reply) => {
    const failure = new KindlingError('ROUTE_NOT_FOUND', `no route ${request.method} ${request.url.split('?')[0]}; see GET /openapi.json for the routes`);
    options.metrics.onHttpError(failure.code, failure.statusCode);
    return sendError(reply, request, failure);
  });

  registerHealthRoutes(app, {
    // The executors' details name host paths, the sandbox uid and versions: the operator's, not the internet's.
    showDetails: (request) => !tenants.authEnabled || isAdminRequest(request),
    executors: options.executors,
    defaultExecutor: options.defaultExecutor,
    defaultExecutorReason: options.defaultExecutorReason,
    isDraining: options.isDraining ?? (() => false),
    ...(options.clusterReasons ? { clusterReasons: options.clusterReasons } : {}),
  });
  registerExecuteRoutes(app, { executionService: options.executionService, toError, maxStreamBytes: options.maxStreamBytes, ...(options.streamRelay ? { streamRelay: options.streamRelay } : {}) });
  registerExecuteWsRoute(app, { executionService: options.executionService, toError, maxStreamBytes: options.maxStreamBytes });
  registerFunctionRoutes(app, {
    functionService: options.functionService,
    invocations: options.invocations,
    runner: options.runner,
    maxBodyBytes: options.maxBodyBytes,
    maxStreamBytes: options.maxStreamBytes,
    ...(options.streamRelay ? { streamRelay: options.streamRelay } : {}),
    ...(options.bundles ? { bundles: options.bundles } : {}),
  });
  registerInvocationRoutes(app, {
    invocations: options.invocations,
    functionService: options.functionService,
    logBus: options.logBus,
    ...(options.invocationsElsewhere ? { elsewhere: options.invocationsElsewhere } : {}),
    ...(options.invocationsListedElsewhere ? { listElsewhere: options.invocationsListedElsewhere } : {}),
  });
  registerTenantRoutes(app, { tenants });
  if (options.usage) registerUsageRoutes(app, { usage: options.usage });
  if (options.customImages) registerImageRoutes(app, { images: options.customImages });
  if (options.sandboxes) registerSandboxRoutes(app, { sandboxes: options.sandboxes, toError, ...(options.streamRelay ? { streamRelay: options.streamRelay } : {}) });
  if (options.sandboxes) registerSandboxPtyRoute(app, { sandboxes: options.sandboxes, toError });
  const pools = options.pools;
  if (pools) {
    app.get(
      '/v1/pools',
      { schema: { tags: ['functions'], summary: "Warm pools of handler-style functions: idle, busy, creating and waiting per function version (the caller's tenant's; the shared capacity for the admin)", response: { 200: PoolsSchema, '4xx': ErrorResponseSchema, '5xx': ErrorResponseSchema } } },
      async (request) => {
        const { capacity, pools: all } = pools();
        const own = all.filter((pool) => pool.tenant === request.principal.tenant);
        // The shared capacity tells about other tenants' load: only the admin sees it.
        return request.principal.isAdmin ? { capacity, pools: own } : { pools: own };
      },
    );
  }
  app.get(
    '/v1/cluster',
    { schema: { tags: ['health'], summary: 'Cluster mode (admin): this node (role, id, NATS connection) and the workers it sees (capacity, in flight, warm versions, last heartbeat); `{mode: "single"}` on a server on its own', response: { 200: ClusterSchema, '4xx': ErrorResponseSchema, '5xx': ErrorResponseSchema } } },
    async (request) => {
      // Workers' load and warm functions tell about every tenant: the operator's view.
      requireAdmin(request);
      return options.cluster?.() ?? { mode: 'single' };
    },
  );
  // The FaaS blueprint gateway's routes, translated (docs/operator.md, "Migrating from the FaaS blueprint").
  registerCompatRoutes(app, {
    executionService: options.executionService,
    ...(options.sandboxes ? { sandboxes: options.sandboxes } : {}),
    executorNames: [...options.executors.keys()],
    isDraining: options.isDraining ?? (() => false),
  });
  if (options.operatorResults) registerOperatorResultsRoute(app, { results: options.operatorResults });
  if (options.consoleDir) registerConsoleRoutes(app, { dir: options.consoleDir });

  app.get('/metrics', { schema: { hide: true } }, async (_request, reply) => {
    reply.type(options.metrics.registry.contentType);
    return options.metrics.registry.metrics();
  });
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  return app;
}
