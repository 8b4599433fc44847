import type { IncomingMessage, ServerResponse } from 'node:http';
import { Writable } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { KindlingError } from '../../core/errors.js';
import { ATTR } from '../../core/tracing.js';
import type { ExecutorName, RuntimeName } from '../../core/types.js';
import type { DeployQuota, FunctionService, InvocationResult } from '../../orchestrator/function-service.js';
import type { TenantScope } from '../../orchestrator/execution-service.js';
import type { InvocationService } from '../../orchestrator/invocations.js';
import type { Invocation, InvocationRunner } from '../../orchestrator/invocation-runner.js';
import { startSse, writeSseEvent } from '../sse.js';
import { parseSpecHeader } from '../spec-header.js';
import type { BuildLogMessage } from '../../orchestrator/build-logs.js';
import { checkDeclaredLength, limitUpload, readUpload } from '../raw-body.js';
import type { BundleStore } from '../../orchestrator/bundles.js';
import { beginStreamedAnswer, breakStreamedAnswer, endStreamedAnswer, payloadLimit, streamUpload } from '../raw-io.js';
import type { StreamRelay } from '../stream-relay.js';
import type { FunctionSpec } from '../../store/store.js';
import {
  AsyncInvokeAcceptedSchema,
  BinaryBodySchema,
  ErrorResponseSchema,
  FunctionNameParamsSchema,
  FunctionSpecSchema,
  FunctionVersionListSchema,
  FunctionViewSchema,
  FunctionBuildListSchema,
  FunctionBuildParamsSchema,
  FunctionBuildSchema,
  DeployAcceptedSchema,
  DeployQuerySchema,
  BuildLogQuerySchema,
  EventStreamSchema,
  type BuildLogQuery,
  type DeployQuery,
  type FunctionBuildParams,
  type FunctionNameParams,
  type FunctionSpecBody,
} from '../schemas.js';

const errors = { '4xx': ErrorResponseSchema, '5xx': ErrorResponseSchema };

/** What the function routes use of each service (tests pass small fakes of these). */
export type FunctionRouteFunctions = Pick<FunctionService, 'deploy' | 'list' | 'get' | 'versions' | 'delete' | 'resolve'> & Partial<Pick<FunctionService, 'collectBundles' | 'builds' | 'buildLog' | 'build' | 'followBuildLog' | 'startDeploy'>>;
export type FunctionRouteInvocations = Pick<InvocationService, 'checkQueuedPayload' | 'enqueue'>;
export type FunctionRouteRunner = Pick<InvocationRunner, 'invoke' | 'recordLogBytes'>;

export interface FunctionRouteOptions {
  functionService: FunctionRouteFunctions;
  invocations: FunctionRouteInvocations;
  /** Runs the synchronous invocations (the async ones are the invocation service's). */
  runner: FunctionRouteRunner;
  /** Largest body held in memory (async payloads, handler events). */
  maxBodyBytes: number;
  /** Largest streamed body (command functions' stdin). */
  maxStreamBytes: number;
  /** The splice data plane for large streams; absent: they go through node streams. */
  streamRelay?: StreamRelay;
  /** Checks and unpacks uploaded bundles; absent: a bundle deploy answers 415. */
  bundles?: Pick<BundleStore, 'ingest' | 'maxBytes' | 'release'>;
}

const BUNDLE_TYPES = ['application/x-tar', 'application/tar'];
const ZIP_TYPES = ['application/zip', 'application/x-zip-compressed'];
const SPEC_HEADER = 'kindling-function-spec';

/** The spec of a bundle deploy: JSON in the Kindling-Function-Spec header, checked against the same schema as a JSON deploy. */
function parseFunctionSpecHeader(value: string | string[] | undefined): FunctionSpecBody {
  const parsed = parseSpecHeader(value, FunctionSpecSchema, 'Kindling-Function-Spec', 'a bundle deploy needs its spec as JSON in the Kindling-Function-Spec header, e.g. {"runtime":"node","handler":"index.js:handler"}');
  if (parsed !== null && typeof parsed === 'object' && 'code' in parsed) {
    throw new KindlingError('CONFLICTING_FIELDS', 'a bundle brings its own code: drop "code" from Kindling-Function-Spec (the handler names the file, FILE:FUNCTION)');
  }
  return parsed as FunctionSpecBody;
}

/** An upload refused before (or while) it was read: the rest is drained, and the connection closed after the answer. */
function refuseUpload(upload: IncomingMessage, reply: FastifyReply): void {
  if (upload.complete) return;
  upload.unpipe();
  upload.resume();
  reply.header('connection', 'close');
}

export function registerFunctionRoutes(app: FastifyInstance, options: FunctionRouteOptions): void {
  const service = options.functionService;

  // The deploy route takes JSON (the spec) or a bundle (a tar of a directory, the spec in the Kindling-Function-Spec
  // header): its own scope hands a tar body over as a stream, checked and unpacked as it arrives, never buffered.
  void app.register(async (scope) => {
    const asStream = (_request: FastifyRequest, payload: IncomingMessage, done: (error: Error | null, body?: unknown) => void): void => done(null, payload);
    scope.addContentTypeParser(BUNDLE_TYPES, asStream);
    scope.addContentTypeParser(ZIP_TYPES, asStream);
    scope.put<{ Params: FunctionNameParams; Body: FunctionSpecBody; Querystring: DeployQuery }>(
      '/v1/functions/:name',
      {
        schema: {
          tags: ['functions'],
          summary: 'Deploy a function: every PUT makes a new immutable version that invocations then run',
          description: [
            'JSON body: the spec. Bundle: a tar of a directory as the body (Content-Type application/x-tar, at most --max-bundle-bytes) with the spec as JSON in the Kindling-Function-Spec header; the handler is FILE:FUNCTION (handler.py:main, src/index.js:handler) or the function runs "command" in the bundle\'s directory.',
            'The bundle\'s files are the sandbox\'s work dir /work (read-only); its sha256 is the version\'s bundle.sha256. Entries that leave the bundle (absolute names, "..", links out), devices and fifos: 400 BUNDLE_INVALID naming the entry. Zip archives: 415 (send a tar). Every executor: sandbox and docker (handlers and commands), gvisor and microvm (commands; microvm attaches the bundle and its layer as read-only disks).',
            'A bundle with dependencies, go and rust code (compiled) and a function with Debian packages ("apt", or a bundle\'s kindling.json {"apt": [...]}: an image of its runtime\'s plus those, made once per package set) are built before the version is stored: the answer waits for the build (a failed build: 422 BUILD_FAILED, the previous version keeps serving). With Prefer: respond-async or ?wait=false the answer is 202 {name, status: building, build} once the build started (Location: the build); the version is stored when the build is ready. While a deploy of the function builds, another deploy of it answers 409 BUILD_IN_PROGRESS.',
          ].join('\n\n'),
          params: FunctionNameParamsSchema,
          querystring: DeployQuerySchema,
          body: {
            content: {
              'application/json': { schema: FunctionSpecSchema },
              // Any bytes (a stream, never validated as JSON): described, not checked.
              'application/x-tar': { schema: {} },
            },
          },
          headers: { type: 'object', properties: { 'kindling-function-spec': { type: 'string', description: 'The spec (JSON) of a bundle deploy' } } },
          response: { 200: FunctionViewSchema, 201: FunctionViewSchema, 202: DeployAcceptedSchema, ...errors },
        },
      },
      async (request, reply) => {
        // RFC 7240: the client prefers an answer before the work is done (a deploy without a build has none to wait for).
        const respondAsync = request.query.wait === 'false' || String(request.headers.prefer ?? '').split(',').some((p) => p.split(';')[0]!.trim().toLowerCase() === 'respond-async');
        const contentType = (request.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
        const bundled = BUNDLE_TYPES.includes(contentType) || ZIP_TYPES.includes(contentType);
        const body = bundled ? parseFunctionSpecHeader(request.headers[SPEC_HEADER]) : request.body;
        const spec: FunctionSpec = { ...body } as FunctionSpec;
        if (body.runtime !== undefined) spec.runtime = body.runtime as RuntimeName;
        if (body.executor !== undefined) spec.executor = body.executor as ExecutorName;
        const deploy = (): ReturnType<FunctionRouteFunctions['deploy']> =>
          service.deploy(request.principal.tenant, request.params.name, spec, request.scope.caps, deployQuota(request.scope));
        /** The 202 of a deploy whose build runs on (the version is stored when it is ready). */
        const accepted = (building: { id: string }): { name: string; status: 'building'; build: typeof building } => {
          const location = `/v1/functions/${request.params.name}/builds/${building.id}`;
          reply.code(202).header('location', location).header('x-kindling-build-id', building.id).header('preference-applied', 'respond-async');
          return { name: request.params.name, status: 'building', build: building };
        };
        if (!bundled) {
          // A JSON deploy builds too (go and rust programs, the image for "apt" packages): it may answer early as well.
          if (respondAsync && service.startDeploy !== undefined) {
            const started = await service.startDeploy(request.principal.tenant, request.params.name, spec, request.scope.caps, deployQuota(request.scope));
            if (!('building' in started)) {
              reply.code(started.created ? 201 : 200);
              return started.view;
            }
            started.done.catch((error: unknown) => request.log.info({ err: error, buildId: started.building.id }, 'a deploy that did not wait failed'));
            return accepted(started.building);
          }
          const { view, created } = await deploy();
          reply.code(created ? 201 : 200);
          return view;
        }
        const upload = request.body as unknown as IncomingMessage;
        const bundles = options.bundles;
        if (ZIP_TYPES.includes(contentType) || bundles === undefined) {
          refuseUpload(upload, reply);
          throw new KindlingError(
            'UNSUPPORTED_MEDIA_TYPE',
            bundles === undefined ? 'this server takes no function bundles; deploy the code as JSON ("code")' : 'zip bundles are not taken: send a tar of the directory (Content-Type application/x-tar, e.g. tar -cf - -C DIR .), or use kindling deploy NAME --dir DIR',
          );
        }
        try {
          checkDeclaredLength(request.headers, bundles.maxBytes, '--max-bundle-bytes');
        } catch (error) {
          refuseUpload(upload, reply);
          throw error;
        }
        const limited = limitUpload(upload, reply, bundles.maxBytes, '--max-bundle-bytes');
        let info;
        try {
          info = await bundles.ingest(limited.stream);
        } catch (error) {
          refuseUpload(upload, reply);
          throw limited.error() ?? error;
        }
        let stored = false;
        // The uploaded bundle stays pinned until its version is stored or the deploy failed (after the answer, when a
        // deploy that did not wait builds on).
        const settle = (): void => {
          bundles.release(info.sha256);
          // A refused deploy (bad handler file, quota, failed build) leaves an unpacked bundle no version refers to.
          if (!stored) service.collectBundles?.();
        };
        let building = false;
        try {
          spec.bundle = info;
          if (respondAsync && service.startDeploy !== undefined) {
            const started = await service.startDeploy(request.principal.tenant, request.params.name, spec, request.scope.caps, deployQuota(request.scope));
            if ('building' in started) {
              building = true;
              started.done.then(
                () => (stored = true),
                (error: unknown) => request.log.info({ err: error, buildId: started.building.id }, 'a deploy that did not wait failed'),
              ).finally(settle);
              return accepted(started.building);
            }
            stored = true;
            reply.code(started.created ? 201 : 200);
            return started.view;
          }
          const { view, created } = await deploy();
          stored = true;
          reply.code(created ? 201 : 200);
          return view;
        } finally {
          if (!building) settle();
        }
      },
    );
  });

  app.get('/v1/functions', { schema: { tags: ['functions'], summary: 'List functions (latest versions)', response: { 200: { type: 'object', properties: { functions: { type: 'array', items: FunctionViewSchema } } }, ...errors } } }, async (request) => ({
    functions: service.list(request.principal.tenant),
  }));

  app.get<{ Params: FunctionNameParams }>(
    '/v1/functions/:name',
    { schema: { tags: ['functions'], summary: 'A function and its latest version', params: FunctionNameParamsSchema, response: { 200: FunctionViewSchema, ...errors } } },
    async (request) => service.get(request.principal.tenant, request.params.name),
  );

  app.get<{ Params: FunctionNameParams }>(
    '/v1/functions/:name/versions',
    {
      schema: {
        tags: ['functions'],
        summary: 'The versions kept of a function (the newest --function-versions-kept, plus any a queued invocation needs), oldest first',
        params: FunctionNameParamsSchema,
        response: { 200: FunctionVersionListSchema, ...errors },
      },
    },
    async (request) => ({ versions: service.versions(request.principal.tenant, request.params.name) }),
  );

  app.get<{ Params: FunctionNameParams }>(
    '/v1/functions/:name/builds',
    {
      schema: {
        tags: ['functions'],
        summary: 'The dependency builds of a function\'s deploys (npm ci, pip install), newest first: status, error, layer',
        params: FunctionNameParamsSchema,
        response: { 200: FunctionBuildListSchema, ...errors },
      },
    },
    async (request) => ({ builds: service.builds?.(request.principal.tenant, request.params.name) ?? [] }),
  );

  app.get<{ Params: FunctionBuildParams }>(
    '/v1/functions/:name/builds/:id',
    {
      schema: {
        tags: ['functions'],
        summary: 'One build of a function: building, ready (with the version it stored) or failed (with its error)',
        description: 'Another tenant\'s build, or an id the function does not have: 404 BUILD_NOT_FOUND.',
        params: FunctionBuildParamsSchema,
        response: { 200: FunctionBuildSchema, ...errors },
      },
    },
    async (request) => {
      if (service.build === undefined) throw new KindlingError('BUILD_NOT_FOUND', 'this server records no builds');
      return service.build(request.principal.tenant, request.params.name, request.params.id);
    },
  );

  app.get<{ Params: FunctionBuildParams; Querystring: BuildLogQuery }>(
    '/v1/functions/:name/builds/:id/logs',
    {
      schema: {
        tags: ['functions'],
        summary: 'A build\'s log (npm\'s or pip\'s output): as text, what it wrote so far while it runs and the last 64 KiB once it ended; with ?follow=true as SSE while it runs',
        description: [
          'Text (no follow): x-kindling-build-status is building, ready or failed.',
          `?follow=true: text/event-stream. Events: log {"text"} as npm/pip write it (first what it wrote so far); skipped {"bytes"} when log text was left out (the client read more slowly than the build wrote: at most ${FOLLOWER_BACKLOG_BYTES} bytes wait for one follower, the rest is dropped and counted; or the client joined late: it gets the newest 128 KiB of what the build wrote so far); end: the build record (status ready or failed, error, version) as the last event, then the stream ends. A build that ended answers its stored log and end at once.`,
          'Another tenant\'s build, or an id the function does not have: 404 BUILD_NOT_FOUND.',
        ].join(' '),
        params: FunctionBuildParamsSchema,
        querystring: BuildLogQuerySchema,
        response: { 200: { description: 'The log', content: { 'text/plain': { schema: { type: 'string' } }, 'text/event-stream': { schema: EventStreamSchema } } }, ...errors },
      },
    },
    async (request, reply) => {
      if (service.buildLog === undefined) throw new KindlingError('BUILD_NOT_FOUND', 'this server records no builds');
      const { name, id } = request.params;
      const tenant = request.principal.tenant;
      if (request.query.follow === 'true' && service.followBuildLog !== undefined && service.build !== undefined) {
        followBuild(reply, tenant, name, id);
        return reply;
      }
      const { build, log } = service.buildLog(tenant, name, id);
      reply.header('x-kindling-build-status', build.status).type('text/plain; charset=utf-8');
      return log;
    },
  );

  /**
   * Streams a build's log as SSE until it ends. The build's writer calls in synchronously and is never held: what one
   * follower has not read stays in its socket's buffer up to FOLLOWER_BACKLOG_BYTES, text beyond that is dropped
   * and reported as `skipped` once the follower catches up, and `end` (small) is always written.
   */
  function followBuild(reply: FastifyReply, tenant: string, name: string, id: string): void {
    const raw = reply.raw;
    let skipped = 0;
    // Set once the stream follows a running build.
    const live: { keepAlive?: NodeJS.Timeout; stop?: () => void } = {};
    const flushSkipped = (): void => {
      if (skipped === 0) return;
      writeSseEvent(raw, 'skipped', JSON.stringify({ bytes: skipped }));
      skipped = 0;
    };
    const sendLog = (text: string): void => {
      if (raw.destroyed || text === '') return;
      if (raw.writableLength > FOLLOWER_BACKLOG_BYTES) {
        skipped += Buffer.byteLength(text);
        return;
      }
      flushSkipped();
      writeSseEvent(raw, 'log', JSON.stringify({ text }));
    };
    const finish = (): void => {
      clearInterval(live.keepAlive);
      if (raw.destroyed) return;
      flushSkipped();
      // The record is final when `end` comes (a function deleted meanwhile took its builds with it).
      let record: unknown;
      try {
        record = service.build!(tenant, name, id);
      } catch {
        record = { id, status: 'failed', error: `function "${name}" was deleted while its build ran` };
      }
      writeSseEvent(raw, 'end', JSON.stringify(record));
      raw.end();
    };
    // The record read, the replay and the subscription happen in one tick: nothing the build writes is lost between them.
    const following = service.followBuildLog!(tenant, name, id, (message: BuildLogMessage) => {
      if (message.kind === 'log') sendLog(message.text);
      else {
        live.stop?.();
        finish();
      }
    });
    live.stop = following.stop;
    reply.hijack();
    startSse(raw, { 'x-request-id': reply.request.id, 'x-kindling-build-id': id });
    if (following.droppedBytes > 0) skipped += following.droppedBytes;
    // A client gone before the stream started never sees 'close' again: nothing is kept for it.
    if (raw.destroyed) {
      following.stop();
      return;
    }
    // The replay (up to the build's kept log) obeys the follower's bound too: only its newest part is sent.
    const replay = newestBytes(following.replay, FOLLOWER_BACKLOG_BYTES / 2);
    skipped += replay.skippedBytes;
    sendLog(replay.text);
    if (!following.running) {
      finish();
      return;
    }
    live.keepAlive = setInterval(() => raw.write(': keep-alive\n\n'), SSE_KEEPALIVE_MS);
    raw.on('close', () => {
      clearInterval(live.keepAlive);
      following.stop();
    });
  }

  app.delete<{ Params: FunctionNameParams }>(
    '/v1/functions/:name',
    { schema: { tags: ['functions'], summary: 'Delete a function, all its versions and its warm sandboxes', params: FunctionNameParamsSchema, response: { 204: { type: 'null' }, ...errors } } },
    async (request, reply) => {
      await service.delete(request.principal.tenant, request.params.name);
      reply.code(204);
      return null;
    },
  );

  // The invoke route takes any body as raw bytes: its own scope hands the request stream over unparsed (so a command
  // function's stdin is streamed, never buffered here), and every other route keeps parsing JSON.
  void app.register(async (scope) => {
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', (_request: FastifyRequest, payload: IncomingMessage, done: (error: Error | null, body?: unknown) => void) => done(null, payload));
    scope.post<{ Params: FunctionNameParams }>(
      '/v1/functions/:name/invoke',
      {
        // The body is any bytes, handed over as a stream (never validated as JSON): it is described in the document only.
        config: { swaggerTransform: ({ schema, url }) => ({ schema: { ...schema, body: { content: { 'application/octet-stream': { schema: BinaryBodySchema } } } } as typeof schema, url }) },
        schema: {
          tags: ['functions'],
          summary: 'Invoke a function: the raw body in, the raw output out (or async: 202 with an invocation id)',
          description: [
            'The request body (any content type) is the input: stdin of a command, the argument of a handler. The response body is the raw stdout / the handler\'s return value.',
            'Headers: x-kindling-invocation-id, x-kindling-function-version, x-kindling-exit-code, x-kindling-duration-ms, x-kindling-cold-start, x-kindling-truncated (true when the output passed outputBytes and was cut). A handler that throws answers 200 with x-kindling-exit-code 1 and the error text as the body.',
            `Command functions stream both ways: stdin from the body as it arrives (up to --max-stream-bytes, else 413), stdout as it is produced. An output of at most ${STREAM_THRESHOLD_BYTES} bytes is answered with all the headers above; a larger one streams with x-kindling-output: streamed, and x-kindling-exit-code, x-kindling-duration-ms and x-kindling-timed-out come as HTTP trailers.`,
            'Async: with `x-kindling-async: true` the body (up to --max-body-bytes) is stored and the answer is 202 {invocationId} once it is committed; `Idempotency-Key` deduplicates (same key + function: the first invocation), `x-kindling-callback: URL` (allowed hosts only) receives the result.',
          ].join(' '),
          params: FunctionNameParamsSchema,
          response: {
            200: { description: 'The raw output, with x-kindling-* headers', content: { 'application/octet-stream': { schema: BinaryBodySchema } } },
            202: AsyncInvokeAcceptedSchema,
            ...errors,
          },
        },
      },
      async (request, reply) => {
        const name = request.params.name;
        const tenant = request.principal.tenant;
        const upload = request.body as IncomingMessage | undefined;
        // 404 before a byte of the body is read.
        const { style, version: resolved } = service.resolve(tenant, name);
        const body = payloadLimit(request, options.maxBodyBytes, '--max-body-bytes');
        if (request.headers['x-kindling-async'] === 'true') {
          checkDeclaredLength(request.headers, body.maxBytes, body.flag);
          // A tenant at its queued-payload quota is refused before its body is read (enqueue checks the real size).
          const declared = Number(request.headers['content-length'] ?? 0);
          options.invocations.checkQueuedPayload(tenant, Number.isSafeInteger(declared) && declared > 0 ? declared : 0);
          const payload = await readUpload(upload, reply, body.maxBytes, body.flag);
          const { view, created } = await options.invocations.enqueue({
            tenant,
            functionName: name,
            payload,
            idempotencyKey: header(request, 'idempotency-key'),
            callbackUrl: header(request, 'x-kindling-callback'),
            // Its run continues this request's trace (this span as the parent), also after a restart.
            traceparent: request.trace.traceparent,
          });
          request.trace.span?.setAttributes({ [ATTR.tenant]: tenant, [ATTR.function]: name, [ATTR.version]: view.version, [ATTR.invocationId]: view.id, [ATTR.mode]: 'async' });
          reply.code(202).header('location', `/v1/invocations/${view.id}`).header('x-kindling-invocation-id', view.id);
          if (!created) reply.header('x-kindling-idempotent-replay', 'true');
          return { invocationId: view.id, status: view.status, function: view.function, version: view.version, created };
        }

        const abort = new AbortController();
        reply.raw.on('close', () => {
          if (!reply.raw.writableFinished) abort.abort(new KindlingError('CLIENT_DISCONNECTED', 'the client disconnected before the answer; the invocation was cancelled'));
        });
        const invocation = {
          tenant,
          functionName: name,
          version: resolved.version,
          signal: abort.signal,
          scope: request.scope,
          trace: { traceId: request.trace.traceId, traceparent: request.trace.traceparent, ...(request.trace.span ? { span: request.trace.span } : {}) },
        };
        if (style === 'handler') {
          checkDeclaredLength(request.headers, body.maxBytes, body.flag);
          const event = await readUpload(upload, reply, body.maxBytes, body.flag);
          const result = await options.runner.invoke({ ...invocation, payload: event });
          logFinished(request, result);
          reply.headers(resultHeaders(result));
          reply.type('application/octet-stream');
          return reply.send(result.body);
        }
        return invokeStreaming(request, reply, invocation, upload);
      },
    );
  });

  /**
   * A command function: stdin streamed from the body, stdout held up to the threshold and answered with every header,
   * streamed beyond it with the result in trailers.
   */
  async function invokeStreaming(request: FastifyRequest, reply: FastifyReply, invocation: Omit<Invocation, 'payload'> & { version: number }, upload: IncomingMessage | undefined): Promise<FastifyReply> {
    const relay = options.streamRelay;
    const raw = reply.raw;
    const input = streamUpload(request, reply, upload, payloadLimit(request, options.maxStreamBytes, '--max-stream-bytes'), relay);
    let started: { id: string; coldStart: boolean; executor: string } | null = null;
    const sink = new OutputSink(raw, STREAM_THRESHOLD_BYTES, () =>
      // Past the threshold: the headers known now go out, the rest follow as trailers.
      beginStreamedAnswer(
        request,
        reply,
        {
          'content-type': 'application/octet-stream',
          'x-kindling-invocation-id': started?.id ?? '',
          'x-kindling-function-version': String(version),
          'x-kindling-cold-start': String(started?.coldStart ?? false),
          'x-kindling-executor': started?.executor ?? '',
          'x-kindling-output': 'streamed',
        },
        STREAM_TRAILERS,
      ),
    );
    const version = invocation.version;
    raw.on('close', () => sink.destroy());
    // Past the threshold, the rest of stdout may go around this process (stream-relay.ts).
    const output = relay?.outputBypass(sink, raw, 0, () => sink.streaming);
    let result;
    try {
      result = await options.runner.invoke(
        {
          ...invocation,
          payload: Buffer.alloc(0),
          io: { stdin: input.stdin, stdout: { kind: 'sink', sink, keepBytes: options.runner.recordLogBytes, ...(output ? { bypass: output.bypass } : {}) } },
          onStarted: (id, info) => (started = { id, ...info }),
          inputError: input.error,
        },
        { payloadBytes: input.bytes, stdoutBytes: () => sink.totalBytes + (output?.sentBytes() ?? 0) },
      );
    } catch (error) {
      if (!sink.streaming) throw error;
      request.log.error({ err: error }, 'invocation failed after the output started streaming');
      breakStreamedAnswer(reply, error);
      return reply;
    } finally {
      input.release();
    }
    logFinished(request, result);
    if (sink.streaming) request.trace.span?.setAttributes({ [ATTR.mode]: 'stream' });
    // What the sink still holds (its writes wait for the client) goes out before the end of the response.
    await new Promise<void>((resolve) => sink.end(() => resolve()));
    const uploadError = input.error();
    if (!sink.streaming) {
      if (uploadError) throw uploadError;
      reply.headers(resultHeaders(result));
      reply.type('application/octet-stream');
      return reply.send(sink.buffered());
    }
    if (uploadError) {
      breakStreamedAnswer(reply, uploadError);
      return reply;
    }
    endStreamedAnswer(request, reply, {
      'x-kindling-exit-code': String(result.exitCode),
      'x-kindling-duration-ms': String(result.durationMs),
      'x-kindling-timed-out': String(result.timedOut),
    });
    return reply;
  }
}

/** One structured line per invocation answered. */
function logFinished(request: FastifyRequest, result: InvocationResult): void {
  request.log.info(
    { invocationId: result.invocationId, function: result.functionName, version: result.version, executor: result.executor, exitCode: result.exitCode, durationMs: result.durationMs, coldStart: result.coldStart, timedOut: result.timedOut },
    'invocation finished',
  );
}

/** Bytes of SSE one build-log follower may have unread before further log text is dropped (and counted as skipped). */
export const FOLLOWER_BACKLOG_BYTES = 256 * 1024;
const SSE_KEEPALIVE_MS = 15_000;

/** Outputs up to this size are answered with all the headers; larger ones stream with trailers. */
export const STREAM_THRESHOLD_BYTES = 1024 * 1024;
const STREAM_TRAILERS = ['x-kindling-exit-code', 'x-kindling-duration-ms', 'x-kindling-timed-out'];

const header = (request: FastifyRequest, name: string): string | undefined => {
  const value = request.headers[name];
  return typeof value === 'string' && value.length > 0 ? value : undefined;
};

function resultHeaders(result: InvocationResult): Record<string, string> {
  return {
    'x-kindling-invocation-id': result.invocationId,
    'x-kindling-function-version': String(result.version),
    'x-kindling-exit-code': String(result.exitCode),
    'x-kindling-duration-ms': String(result.durationMs),
    'x-kindling-cold-start': String(result.coldStart),
    'x-kindling-executor': result.executor,
    ...(result.timedOut ? { 'x-kindling-timed-out': 'true' } : {}),
    ...(result.truncated ? { 'x-kindling-truncated': 'true' } : {}),
    ...(result.node === undefined ? {} : { 'x-kindling-node': result.node }),
  };
}

/**
 * Holds stdout up to `thresholdBytes`; past it, calls `onStream` (which writes the head) and from then on writes
 * through to the response with its backpressure (a slow client slows the function instead of growing a buffer).
 */
class OutputSink extends Writable {
  private chunks: Buffer[] = [];
  private bytes = 0;
  /** Every byte written, held or passed on. */
  totalBytes = 0;
  streaming = false;

  constructor(
    private readonly response: ServerResponse,
    private readonly thresholdBytes: number,
    private readonly onStream: () => void,
  ) {
    super({ highWaterMark: 256 * 1024 });
  }

  buffered(): Buffer {
    return Buffer.concat(this.chunks, this.bytes);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.totalBytes += chunk.length;
    if (!this.streaming) {
      this.chunks.push(chunk);
      this.bytes += chunk.length;
      if (this.bytes <= this.thresholdBytes) {
        callback();
        return;
      }
      this.streaming = true;
      this.onStream();
      chunk = this.buffered();
      this.chunks = [];
    }
    if (this.response.destroyed) {
      callback();
      return;
    }
    if (this.response.write(chunk)) callback();
    else {
      const done = (): void => {
        this.response.off('drain', done);
        this.response.off('close', done);
        callback();
      };
      this.response.on('drain', done);
      this.response.on('close', done);
    }
  }
}

/** The tenant's quotas a deploy is checked against (warm sandboxes, builds running at once). */
function deployQuota(scope: TenantScope): DeployQuota {
  return {
    ...(scope.maxConcurrency === undefined ? {} : { maxWarm: scope.maxConcurrency }),
    ...(scope.maxConcurrentBuilds === undefined ? {} : { maxBuilds: scope.maxConcurrentBuilds }),
  };
}

/** The newest `maxBytes` of `text` (UTF-8, cut at a character boundary) and how many bytes were left out before it. */
export function newestBytes(text: string, maxBytes: number): { text: string; skippedBytes: number } {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= maxBytes) return { text, skippedBytes: 0 };
  let start = bytes.length - maxBytes;
  while (start < bytes.length && (bytes[start]! & 0xc0) === 0x80) start++;
  return { text: bytes.subarray(start).toString('utf8'), skippedBytes: start };
}
