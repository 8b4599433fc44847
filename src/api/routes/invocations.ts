import type { ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { KindlingError } from '../../core/errors.js';
import type { FunctionService } from '../../orchestrator/function-service.js';
import { toInvocationView, type InvocationService, type InvocationView } from '../../orchestrator/invocations.js';
import type { LogBus, LogMessage } from '../../orchestrator/log-bus.js';
import { INVOCATION_STATUSES, type InvocationRecord, type InvocationStatus } from '../../store/store.js';
import { BinaryBodySchema, ErrorResponseSchema, EventStreamSchema, FunctionNameParamsSchema, InvocationListSchema, InvocationViewSchema, type FunctionNameParams } from '../schemas.js';
import { startSse, writeSseEvent } from '../sse.js';

const errors = { '4xx': ErrorResponseSchema, '5xx': ErrorResponseSchema };
const binary = { 200: { description: 'The raw bytes', content: { 'application/octet-stream': { schema: BinaryBodySchema } } }, ...errors };
const events = { 200: { description: 'Server-sent events', content: { 'text/event-stream': { schema: EventStreamSchema } } }, ...errors };
const SSE_KEEPALIVE_MS = 15_000;
/** Finished invocations whose logs `GET /v1/functions/NAME/logs` replays before it follows (or ends). */
const DEFAULT_TAIL = 10;
const MAX_FOLLOWER_BACKLOG_BYTES = 8 * 1024 * 1024;

/** What the invocation routes use of each service (tests pass small fakes of these). */
export type InvocationRouteInvocations = Pick<InvocationService, 'list' | 'get' | 'output'>;
export type InvocationRouteLogBus = Pick<LogBus, 'replay' | 'running' | 'subscribe'>;

export interface InvocationRouteOptions {
  invocations: InvocationRouteInvocations;
  /**
   * Cluster mode with several gateways: an id unknown here may be another gateway's. Answers the request from there
   * (the reply sent) or resolves null when no gateway has it.
   */
  elsewhere?: (request: FastifyRequest<{ Params: IdParams }>, reply: FastifyReply) => Promise<FastifyReply | null>;
  /**
   * Cluster mode with several gateways: the other gateways' invocations of the tenant matching a list's filter (at
   * most `limit` of each, newest first), and the createdAt below which they may be incomplete (null: none).
   */
  listElsewhere?: (filter: InvocationListFilter, tenant: string) => Promise<{ views: InvocationView[]; incompleteBefore: string | null; complete: boolean }>;
  functionService: Pick<FunctionService, 'get'>;
  logBus: InvocationRouteLogBus;
}

/** GET /v1/invocations's filter. */
export interface InvocationListFilter {
  functionName?: string;
  status?: InvocationStatus;
  sinceMs?: number;
  untilMs?: number;
  limit: number;
}

/** Newest first; equal times by id, so that merged lists have one order. */
function newestFirst(a: InvocationView, b: InvocationView): number {
  return a.createdAt === b.createdAt ? (a.id < b.id ? 1 : a.id > b.id ? -1 : 0) : a.createdAt < b.createdAt ? 1 : -1;
}

interface IdParams {
  id: string;
}
interface ListQuery {
  function?: string;
  status?: string;
  since?: string;
  until?: string;
  limit?: string;
}

const IdParamsSchema = { type: 'object', properties: { id: { type: 'string', maxLength: 128 } }, required: ['id'] } as const;

/** A time in a query: milliseconds since the epoch or an ISO 8601 date. */
function parseTime(field: string, value: string | undefined): number | undefined {
  if (value === undefined || value === '') return undefined;
  const ms = /^\d+$/.test(value) ? Number(value) : Date.parse(value);
  if (!Number.isFinite(ms)) throw new KindlingError('VALIDATION_FAILED', `${field} must be milliseconds since the epoch or an ISO 8601 time, got "${value.slice(0, 60)}"`, { details: { field } });
  return ms;
}

export function registerInvocationRoutes(app: FastifyInstance, options: InvocationRouteOptions): void {
  const service = options.invocations;
  const bus = options.logBus;
  /** Runs the local answer; an id this gateway does not have is looked for at the others (cluster mode). */
  const here = async (request: FastifyRequest<{ Params: IdParams }>, reply: FastifyReply, answer: () => unknown): Promise<unknown> => {
    try {
      return await answer();
    } catch (error) {
      if (!(error instanceof KindlingError && error.code === 'NOT_FOUND') || options.elsewhere === undefined) throw error;
      const forwarded = await options.elsewhere(request, reply);
      if (forwarded === null) throw error;
      return forwarded;
    }
  };

  app.get<{ Querystring: ListQuery }>(
    '/v1/invocations',
    {
      schema: {
        tags: ['invocations'],
        summary: 'List invocations, newest first: ?function=&status=queued|running|succeeded|failed&since=&until= (ms or ISO 8601)&limit= (1-1000, default 100)',
        querystring: { type: 'object', properties: { function: { type: 'string' }, status: { type: 'string' }, since: { type: 'string' }, until: { type: 'string' }, limit: { type: 'string' } } },
        response: { 200: InvocationListSchema, ...errors },
      },
    },
    async (request, reply) => {
      const query = request.query;
      if (query.status !== undefined && !(INVOCATION_STATUSES as readonly string[]).includes(query.status)) {
        throw new KindlingError('VALIDATION_FAILED', `status must be one of ${INVOCATION_STATUSES.join(', ')}`, { details: { field: 'status' } });
      }
      const limit = query.limit === undefined ? 100 : Number(query.limit);
      if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new KindlingError('LIMIT_OUT_OF_RANGE', 'limit must be a whole number from 1 to 1000', { details: { field: 'limit' } });
      const sinceMs = parseTime('since', query.since);
      const untilMs = parseTime('until', query.until);
      const filter: InvocationListFilter = {
        limit,
        ...(query.function ? { functionName: query.function } : {}),
        ...(query.status ? { status: query.status as InvocationStatus } : {}),
        ...(sinceMs === undefined ? {} : { sinceMs }),
        ...(untilMs === undefined ? {} : { untilMs }),
      };
      const views = service.list(filter, request.principal.tenant).map(toInvocationView);
      if (options.listElsewhere === undefined) return { invocations: views };
      // Several gateways: each holds the invocations it accepted; the list is theirs merged, newest first. Below the
      // oldest view of a gateway whose answer was cut (one NATS message) the merge may miss some: it stops there.
      let elsewhere: { views: InvocationView[]; incompleteBefore: string | null; complete: boolean };
      try {
        elsewhere = await options.listElsewhere(filter, request.principal.tenant);
      } catch (error) {
        // NATS down: this gateway's own invocations, marked as a part of the list (reads go on without NATS).
        if (!(error instanceof KindlingError && error.code === 'CLUSTER_UNAVAILABLE')) throw error;
        reply.header('x-kindling-list-partial', 'true');
        return { invocations: views };
      }
      // A gateway that is up but did not answer in time: the list may miss its invocations.
      if (!elsewhere.complete) reply.header('x-kindling-list-partial', 'true');
      const seen = new Set(views.map((view) => view.id));
      let merged = [...views, ...elsewhere.views.filter((view) => !seen.has(view.id))].sort(newestFirst);
      if (elsewhere.incompleteBefore !== null) merged = merged.filter((view) => view.createdAt >= elsewhere.incompleteBefore!);
      return { invocations: merged.slice(0, limit) };
    },
  );

  app.get<{ Params: IdParams }>(
    '/v1/invocations/:id',
    { schema: { tags: ['invocations'], summary: 'An invocation: {id, function, version, status, exitCode, durationMs, createdAt, startedAt, finishedAt, error?}', params: IdParamsSchema, response: { 200: InvocationViewSchema, ...errors } } },
    async (request, reply) => here(request, reply, () => toInvocationView(service.get(request.params.id, request.principal.tenant))),
  );

  app.get<{ Params: IdParams }>(
    '/v1/invocations/:id/output',
    { schema: { tags: ['invocations'], summary: 'The raw stdout of a finished invocation (409 while it is queued or running)', params: IdParamsSchema, response: binary } },
    async (request, reply) => here(request, reply, () => {
      const { record, stdout } = service.output(request.params.id, request.principal.tenant);
      if (record.status === 'queued' || record.status === 'running') {
        throw new KindlingError('INVOCATION_NOT_FINISHED', `invocation ${record.id} is ${record.status}; its output is there once it finished (GET /v1/invocations/${record.id})`, { retryAfterSeconds: 1 });
      }
      reply.headers({
        'x-kindling-invocation-id': record.id,
        'x-kindling-function-version': String(record.version),
        'x-kindling-status': record.status,
        ...(record.exitCode === null ? {} : { 'x-kindling-exit-code': String(record.exitCode) }),
        ...(record.durationMs === null ? {} : { 'x-kindling-duration-ms': String(record.durationMs) }),
      });
      reply.type('application/octet-stream');
      return reply.send(stdout);
    }),
  );

  app.get<{ Params: IdParams }>(
    '/v1/invocations/:id/logs',
    {
      schema: {
        tags: ['invocations'],
        summary: 'An invocation\'s stdout/stderr as SSE (events stdout, stderr: {"invocationId","text"}; end: the invocation); follows while it runs',
        params: IdParamsSchema,
        response: events,
      },
    },
    async (request, reply) => {
      const tenant = request.principal.tenant;
      let record: InvocationRecord;
      try {
        record = service.get(request.params.id, tenant);
      } catch (error) {
        return here(request, reply, () => {
          throw error;
        });
      }
      const raw = open(request, reply);
      if (record.status === 'succeeded' || record.status === 'failed') {
        writeStored(raw, record, service);
        writeSseEvent(raw, 'end', JSON.stringify(toInvocationView(record)));
        raw.end();
        return reply;
      }
      // Replay what it printed so far and subscribe in the same tick: nothing is missed, nothing is sent twice.
      for (const message of bus.replay(record.id) ?? []) writeMessage(raw, message);
      const stop = follow(raw, bus, (message) => message.invocationId === record.id, (message) => {
        if (message.kind !== 'end' || message.status === 'queued') return false;
        const finished = service.get(record.id, tenant);
        writeSseEvent(raw, 'end', JSON.stringify(toInvocationView(finished)));
        return true;
      });
      raw.on('close', stop);
      return reply;
    },
  );

  app.get<{ Params: FunctionNameParams; Querystring: { follow?: string; tail?: string } }>(
    '/v1/functions/:name/logs',
    {
      schema: {
        tags: ['functions'],
        summary: 'Logs of a function\'s invocations as SSE: the last ?tail= (default 10) finished async invocations, then with ?follow=true every invocation live (start, stdout, stderr, end events)',
        params: FunctionNameParamsSchema,
        querystring: { type: 'object', properties: { follow: { type: 'string' }, tail: { type: 'string' } } },
        response: events,
      },
    },
    async (request, reply) => {
      const name = request.params.name;
      const tenant = request.principal.tenant;
      options.functionService.get(tenant, name); // 404 for an unknown function (or another tenant's)
      const tail = request.query.tail === undefined ? DEFAULT_TAIL : Number(request.query.tail);
      if (!Number.isInteger(tail) || tail < 0 || tail > 1000) throw new KindlingError('LIMIT_OUT_OF_RANGE', 'tail must be a whole number from 0 to 1000', { details: { field: 'tail' } });
      const raw = open(request, reply);
      const recent = tail === 0 ? [] : service.list({ functionName: name, limit: tail * 2 }, tenant).filter((r) => r.status === 'succeeded' || r.status === 'failed').slice(0, tail).reverse();
      for (const record of recent) {
        writeSseEvent(raw, 'start', JSON.stringify({ invocationId: record.id }));
        writeStored(raw, record, service);
        writeSseEvent(raw, 'end', JSON.stringify({ invocationId: record.id, status: record.status }));
      }
      if (request.query.follow !== 'true') {
        raw.end();
        return reply;
      }
      for (const id of bus.running(tenant, name)) {
        writeSseEvent(raw, 'start', JSON.stringify({ invocationId: id }));
        for (const message of bus.replay(id) ?? []) writeMessage(raw, message);
      }
      const stop = follow(raw, bus, (message) => message.tenant === tenant && message.functionName === name, () => false);
      raw.on('close', stop);
      return reply;
    },
  );
}

function open(request: FastifyRequest, reply: FastifyReply): ServerResponse {
  reply.hijack();
  startSse(reply.raw, { 'x-request-id': request.id });
  return reply.raw;
}

function writeStored(raw: ServerResponse, record: InvocationRecord, service: InvocationRouteInvocations): void {
  const { stdout, stderr } = service.output(record.id, record.tenant);
  if (stdout.length > 0) writeSseEvent(raw, 'stdout', JSON.stringify({ invocationId: record.id, text: stdout.toString('utf8') }));
  if (stderr.length > 0) writeSseEvent(raw, 'stderr', JSON.stringify({ invocationId: record.id, text: stderr.toString('utf8') }));
}

function writeMessage(raw: ServerResponse, message: LogMessage): void {
  if (message.kind === 'output') writeSseEvent(raw, message.stream, JSON.stringify({ invocationId: message.invocationId, text: message.text }));
  else if (message.kind === 'start') writeSseEvent(raw, 'start', JSON.stringify({ invocationId: message.invocationId }));
  else writeSseEvent(raw, 'end', JSON.stringify({ invocationId: message.invocationId, status: message.status }));
}

/** Forwards matching bus messages to the SSE response until `onMessage` says it is over or the client leaves. */
function follow(raw: ServerResponse, bus: InvocationRouteLogBus, match: (message: LogMessage) => boolean, isLast: (message: LogMessage) => boolean): () => void {
  const keepAlive = setInterval(() => raw.write(': keep-alive\n\n'), SSE_KEEPALIVE_MS);
  let unsubscribe: () => void = () => undefined;
  const stop = (): void => {
    clearInterval(keepAlive);
    unsubscribe();
  };
  unsubscribe = bus.subscribe((message) => {
    if (!match(message) || raw.destroyed) return;
    // A follower that does not keep up is cut off rather than buffered without bound.
    if (raw.writableLength > MAX_FOLLOWER_BACKLOG_BYTES) {
      stop();
      raw.destroy();
      return;
    }
    if (isLast(message)) {
      stop();
      raw.end();
      return;
    }
    writeMessage(raw, message);
  });
  return stop;
}
