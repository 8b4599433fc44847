import type { IncomingMessage, ServerResponse } from 'node:http';
import { Readable, Writable } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { KindlingError } from '../../core/errors.js';
import type { ExecutorName, RuntimeName } from '../../core/types.js';
import type { FunctionService, InvocationResult } from '../../orchestrator/function-service.js';
import type { InvocationService } from '../../orchestrator/invocations.js';
import type { LogBus } from '../../orchestrator/log-bus.js';
import { checkDeclaredLength, limitUpload, trailersAllowed, readUpload } from '../raw-body.js';
import type { HeldUpload, StreamRelay } from '../stream-relay.js';
import type { FunctionSpec } from '../../store/store.js';
import {
  AsyncInvokeAcceptedSchema,
  BinaryBodySchema,
  ErrorResponseSchema,
  FunctionNameParamsSchema,
  FunctionSpecSchema,
  FunctionVersionListSchema,
  FunctionViewSchema,
  type FunctionNameParams,
  type FunctionSpecBody,
} from '../schemas.js';

const errors = { '4xx': ErrorResponseSchema, '5xx': ErrorResponseSchema };

/** What the function routes use of each service (tests pass small fakes of these). */
export type FunctionRouteFunctions = Pick<FunctionService, 'deploy' | 'list' | 'get' | 'versions' | 'delete' | 'resolve' | 'invoke'>;
export type FunctionRouteInvocations = Pick<InvocationService, 'checkQueuedPayload' | 'enqueue' | 'recordFinished' | 'syncLogBytes'>;
export type FunctionRouteLogBus = Pick<LogBus, 'start' | 'output' | 'end' | 'followed'>;

export interface FunctionRouteOptions {
  functionService: FunctionRouteFunctions;
  invocations: FunctionRouteInvocations;
  logBus: FunctionRouteLogBus;
  /** Largest body held in memory (async payloads, handler events). */
  maxBodyBytes: number;
  /** Largest streamed body (command functions' stdin). */
  maxStreamBytes: number;
  /** The splice data plane for large streams; absent: they go through node streams. */
  streamRelay?: StreamRelay;
}

export function registerFunctionRoutes(app: FastifyInstance, options: FunctionRouteOptions): void {
  const service = options.functionService;

  app.put<{ Params: FunctionNameParams; Body: FunctionSpecBody }>(
    '/v1/functions/:name',
    {
      schema: {
        tags: ['functions'],
        summary: 'Deploy a function: every PUT makes a new immutable version that invocations then run',
        params: FunctionNameParamsSchema,
        body: FunctionSpecSchema,
        response: { 200: FunctionViewSchema, 201: FunctionViewSchema, ...errors },
      },
    },
    async (request, reply) => {
      const body = request.body;
      const spec: FunctionSpec = { ...body } as FunctionSpec;
      if (body.runtime !== undefined) spec.runtime = body.runtime as RuntimeName;
      if (body.executor !== undefined) spec.executor = body.executor as ExecutorName;
      const { view, created } = await service.deploy(request.principal.tenant, request.params.name, spec, request.scope.caps, request.scope.maxConcurrency === undefined ? {} : { maxWarm: request.scope.maxConcurrency });
      reply.code(created ? 201 : 200);
      return view;
    },
  );

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
        const { style } = service.resolve(tenant, name);
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
          });
          reply.code(202).header('location', `/v1/invocations/${view.id}`).header('x-kindling-invocation-id', view.id);
          if (!created) reply.header('x-kindling-idempotent-replay', 'true');
          return { invocationId: view.id, status: view.status, function: view.function, version: view.version, created };
        }

        const abort = new AbortController();
        reply.raw.on('close', () => {
          if (!reply.raw.writableFinished) abort.abort(new KindlingError('CLIENT_DISCONNECTED', 'the client disconnected before the answer; the invocation was cancelled'));
        });
        if (style === 'handler') {
          checkDeclaredLength(request.headers, body.maxBytes, body.flag);
          const event = await readUpload(upload, reply, body.maxBytes, body.flag);
          const startedAtMs = Date.now();
          let running: string | null = null;
          let result;
          try {
            result = await service.invoke(tenant, name, event, {
              signal: abort.signal,
              scope: request.scope,
              trace: { traceId: request.trace.traceId, traceparent: request.trace.traceparent },
              onStarted: (id) => {
                running = id;
                options.logBus.start(id, tenant, name);
              },
              // console.log / print of the handler, live for followers (and in the record at the end).
              onOutput: (stream, text) => {
                if (running !== null) options.logBus.output(running, tenant, name, stream, text);
              },
            });
          } catch (error) {
            if (running !== null) options.logBus.end(running, tenant, name, 'failed');
            throw error;
          }
          // The return value (the handler's stdout) shows at the end, as for async invocations.
          if (options.logBus.followed && result.body.length > 0) options.logBus.output(result.invocationId, tenant, name, 'stdout', result.body.toString('utf8'));
          options.logBus.end(result.invocationId, tenant, name, result.exitCode === 0 && !result.timedOut ? 'succeeded' : 'failed');
          record(result, startedAtMs, event.length, result.body.length);
          request.log.info(
            { invocationId: result.invocationId, function: result.functionName, version: result.version, executor: result.executor, exitCode: result.exitCode, durationMs: result.durationMs, coldStart: result.coldStart, timedOut: result.timedOut },
            'invocation finished',
          );
          reply.headers(resultHeaders(result));
          reply.type('application/octet-stream');
          return reply.send(result.body);
        }
        return invokeStreaming(request, reply, name, upload, abort.signal);
      },
    );
  });

  /** Every synchronous invocation is kept like an async one (status, exit code, duration, the head of its output). */
  function record(result: InvocationResult, startedAtMs: number, payloadBytes: number, stdoutBytes: number): void {
    const cap = options.invocations.syncLogBytes;
    const ok = result.exitCode === 0 && !result.timedOut;
    options.invocations.recordFinished({
      id: result.invocationId,
      tenant: result.tenant,
      functionName: result.functionName,
      version: result.version,
      status: ok ? 'succeeded' : 'failed',
      payloadBytes,
      exitCode: result.exitCode,
      durationMs: result.durationMs,
      coldStart: result.coldStart,
      timedOut: result.timedOut,
      error: result.timedOut ? 'timed out' : ok ? null : `exited with code ${result.exitCode}`,
      stdout: result.body.subarray(0, cap),
      stderr: result.stderr.subarray(0, cap),
      stdoutBytes,
      createdAtMs: startedAtMs,
      startedAtMs,
      finishedAtMs: Date.now(),
    });
  }

  /** A command function: stdin streamed from the body, stdout buffered up to the threshold, streamed beyond it. */
  async function invokeStreaming(request: FastifyRequest, reply: FastifyReply, name: string, upload: IncomingMessage | undefined, signal: AbortSignal): Promise<FastifyReply> {
    const tenant = request.principal.tenant;
    const body = payloadLimit(request, options.maxStreamBytes, '--max-stream-bytes');
    checkDeclaredLength(request.headers, body.maxBytes, body.flag);
    const relay = options.streamRelay;
    const raw = reply.raw;
    // A large upload with a declared length bypasses node (see stream-relay.ts); anything else is piped through it.
    const throughNode = (): { stream: Readable; error: () => unknown } =>
      upload ? limitUpload(upload, reply, body.maxBytes, body.flag) : { stream: Readable.from([]), error: () => null };
    const held: HeldUpload | null = upload && relay ? relay.holdUpload(upload, reply.raw, () => throughNode().stream) : null;
    const limited = held ? { stream: null, error: () => held.error() } : throughNode();
    const bus = options.logBus;
    let started: { id: string; coldStart: boolean; executor: string } | null = null;
    let version = 0;
    const sink = new OutputSink(raw, STREAM_THRESHOLD_BYTES, () => {
      // Past the threshold: the headers known now go out, the rest follow as trailers.
      reply.hijack();
      raw.writeHead(200, {
        'content-type': 'application/octet-stream',
        'x-kindling-invocation-id': started?.id ?? '',
        'x-kindling-function-version': String(version),
        'x-kindling-cold-start': String(started?.coldStart ?? false),
        'x-kindling-executor': started?.executor ?? '',
        'x-kindling-output': 'streamed',
        'x-request-id': request.id,
        // HTTP/1.0 has no chunked encoding, so no trailers (node throws on the header): the body ends with the connection.
        ...(trailersAllowed(request) ? { trailer: STREAM_TRAILERS.join(', ') } : {}),
      });
    });
    raw.on('close', () => sink.destroy());
    // Past the threshold, the rest of stdout may go around this process (stream-relay.ts).
    const output = relay?.outputBypass(sink, raw, 0, () => sink.streaming);
    // Counted by the limiter itself: a 'data' listener here would start the flow before the sandbox reads it.
    const stdinBytes = (): number => (limited.stream && 'bytes' in limited.stream ? (limited.stream.bytes as number) : (held?.deliveredBytes ?? 0));
    const startedAtMs = Date.now();
    let result;
    try {
      version = service.resolve(tenant, name).version.version;
      result = await service.invoke(tenant, name, Buffer.alloc(0), {
        signal,
        scope: request.scope,
        trace: { traceId: request.trace.traceId, traceparent: request.trace.traceparent },
        ...(held
          ? {
              stdinPump: (stdin: Writable) => held.pumpInto(stdin),
            }
          : { stdinStream: limited.stream ?? Readable.from([]) }),
        stdoutSink: sink,
        ...(output ? { stdoutBypass: output.bypass } : {}),
        keepStdoutBytes: options.invocations.syncLogBytes,
        onStarted: (id, info) => {
          started = { id, ...info };
          // Always on the bus (two map operations): a follower who joins mid-run sees it start and end.
          bus.start(id, tenant, name);
        },
        // Text for followers only while someone follows: decoding a large stream for nobody is wasted time.
        liveOutput: () => bus.followed,
        onOutput: (stream, text) => {
          if (started) bus.output(started.id, tenant, name, stream, text);
        },
      });
    } catch (error) {
      // Nothing read the held body (the execution did not start): node drops it, so that the error answer arrives.
      held?.release();
      const run = started as { id: string; coldStart: boolean; executor: string } | null;
      if (run) {
        bus.end(run.id, tenant, name, 'failed');
        const failure = limited.error() ?? error;
        options.invocations.recordFinished({
          id: run.id,
          tenant,
          functionName: name,
          version,
          status: 'failed',
          payloadBytes: stdinBytes(),
          exitCode: null,
          durationMs: null,
          coldStart: run.coldStart,
          timedOut: null,
          error: failure instanceof KindlingError ? `${failure.code}: ${failure.message}` : `the platform failed: ${failure instanceof Error ? failure.message : String(failure)}`,
          stdout: Buffer.alloc(0),
          stderr: Buffer.alloc(0),
          stdoutBytes: sink.totalBytes + (output?.sentBytes() ?? 0),
          createdAtMs: startedAtMs,
          startedAtMs,
          finishedAtMs: Date.now(),
        });
      }
      if (!sink.streaming) throw limited.error() ?? error;
      request.log.error({ err: error }, 'invocation failed after the output started streaming');
      raw.destroy(error instanceof Error ? error : new Error(String(error)));
      return reply;
    }
    bus.end(result.invocationId, tenant, name, result.exitCode === 0 && !result.timedOut ? 'succeeded' : 'failed');
    held?.release();
    record(result, startedAtMs, stdinBytes(), sink.totalBytes + (output?.sentBytes() ?? 0));
    // What the sink still holds (its writes wait for the client) goes out before the end of the response.
    await new Promise<void>((resolve) => sink.end(() => resolve()));
    const uploadError = limited.error();
    if (!sink.streaming) {
      if (uploadError) throw uploadError;
      reply.headers(resultHeaders(result));
      reply.type('application/octet-stream');
      return reply.send(sink.buffered());
    }
    if (uploadError) {
      // The headers said 200 already; a broken response is the only honest answer to a cut-off upload.
      raw.destroy(uploadError instanceof Error ? uploadError : new Error(String(uploadError)));
      return reply;
    }
    if (trailersAllowed(request)) {
      raw.addTrailers({
        'x-kindling-exit-code': String(result.exitCode),
        'x-kindling-duration-ms': String(result.durationMs),
        'x-kindling-timed-out': String(result.timedOut),
      });
    }
    raw.end();
    return reply;
  }
}

/** Outputs up to this size are answered with all the headers; larger ones stream with trailers. */
export const STREAM_THRESHOLD_BYTES = 1024 * 1024;
const STREAM_TRAILERS = ['x-kindling-exit-code', 'x-kindling-duration-ms', 'x-kindling-timed-out'];

/** The body limit of a request: the server's, or the tenant's quota maxPayloadBytes when that is lower. */
export function payloadLimit(request: FastifyRequest, serverMaxBytes: number, serverFlag: string): { maxBytes: number; flag: string } {
  const cap = request.scope.maxPayloadBytes;
  return cap !== undefined && cap < serverMaxBytes ? { maxBytes: cap, flag: "the tenant's quota maxPayloadBytes (ask an admin)" } : { maxBytes: serverMaxBytes, flag: serverFlag };
}

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
