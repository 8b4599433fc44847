import type { IncomingMessage } from 'node:http';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { KindlingError } from '../../core/errors.js';
import { ATTR } from '../../core/tracing.js';
import type { ExecuteRequest, ExecutionResult } from '../../core/types.js';
import type { ExecutionService } from '../../orchestrator/execution-service.js';
import { COLLECT_STDOUT } from '../../orchestrator/io-plan.js';
import { errorBody } from '../errors.js';
import { beginStreamedAnswer, breakStreamedAnswer, endStreamedAnswer, payloadLimit, streamUpload, type StreamedUpload } from '../raw-io.js';
import type { StreamRelay } from '../stream-relay.js';
import { ErrorResponseSchema, ExecuteRequestSchema, ExecutionResultSchema, RawExecuteSpecSchema } from '../schemas.js';
import { startSse, writeSseEvent } from '../sse.js';

const SSE_KEEPALIVE_MS = 15_000;
const RAW_CONTENT_TYPE = 'application/octet-stream';
const SPEC_HEADER = 'x-kindling-spec';
const rawSpecValidator = TypeCompiler.Compile(RawExecuteSpecSchema);

/** Raw stdout goes through node up to this many bytes; beyond, the splice relay (when there is one) takes the rest. */
const RELAY_OUTPUT_AFTER_BYTES = 1024 * 1024;

/** Result fields sent as HTTP trailers after a raw stdout stream (the headers left before the exit was known). */
const TRAILERS = ['x-kindling-exit-code', 'x-kindling-duration-ms', 'x-kindling-timed-out', 'x-kindling-oom-killed', 'x-kindling-truncated', 'x-kindling-stderr-base64'];

function parseRawSpec(request: FastifyRequest): ExecuteRequest {
  const header = request.headers[SPEC_HEADER];
  if (typeof header !== 'string' || header.length === 0) {
    throw new KindlingError('VALIDATION_FAILED', `a raw (${RAW_CONTENT_TYPE}) body needs the execution spec as JSON in the ${SPEC_HEADER} header, e.g. {"image":"kindling/base","command":["cat"]}`);
  }
  let spec: unknown;
  try {
    spec = JSON.parse(header);
  } catch {
    throw new KindlingError('INVALID_JSON', `the ${SPEC_HEADER} header is not valid JSON`);
  }
  if (!rawSpecValidator.Check(spec)) {
    const first = rawSpecValidator.Errors(spec).First();
    const where = first?.path ? first.path.replace(/^\//, '').replace(/\//g, '.') : 'spec';
    throw new KindlingError('VALIDATION_FAILED', `${SPEC_HEADER} ${where}: ${first?.message ?? 'is invalid'} (stdin comes from the body; see GET /openapi.json)`, { details: { field: where } });
  }
  return spec as ExecuteRequest;
}

/** One structured line per execution, carrying both ids, so a request can be followed into its sandbox. */
function logFinished(request: FastifyRequest, result: ExecutionResult): void {
  request.log.info(
    { executionId: result.id, traceId: request.trace.traceId, executor: result.executor, exitCode: result.exitCode, durationMs: result.durationMs, coldStart: result.coldStart, timedOut: result.timedOut, oomKilled: result.oomKilled, truncated: result.truncated },
    'execution finished',
  );
}

export interface ExecuteRouteOptions {
  executionService: Pick<ExecutionService, 'execute'>;
  toError: (error: unknown) => KindlingError;
  /** Largest raw (streamed, never buffered) request body; JSON bodies have fastify's bodyLimit. */
  maxStreamBytes: number;
  /** The splice data plane for large raw streams; absent: they go through node streams. */
  streamRelay?: StreamRelay;
}

export function registerExecuteRoutes(app: FastifyInstance, options: ExecuteRouteOptions): void {
  const service = options.executionService;

  // Raw bodies are handed over as the request stream itself: stdin flows to the sandbox without being buffered here.
  app.addContentTypeParser(RAW_CONTENT_TYPE, (_request: FastifyRequest, payload: IncomingMessage, done: (error: Error | null, body?: unknown) => void) => done(null, payload));

  app.post(
    '/v1/execute',
    {
      schema: {
        tags: ['execute'],
        summary: 'Run code or a command once in a fresh sandbox',
        description: [
          'JSON body: a non-zero exit, a timeout or an OOM kill is still 200; the fields say what happened.',
          'With `Accept: text/event-stream` the output streams as SSE events `stdout`/`stderr`, then `exit` with the result.',
          `Raw mode for large payloads: \`Content-Type: ${RAW_CONTENT_TYPE}\`, the spec as JSON in the \`${SPEC_HEADER}\` header and the body streamed to stdin.`,
          `The answer is the JSON result, or with \`Accept: ${RAW_CONTENT_TYPE}\` the raw stdout streamed, with the result in trailers (${TRAILERS.join(', ')}).`,
        ].join(' '),
        body: {
          content: {
            'application/json': { schema: ExecuteRequestSchema },
            [RAW_CONTENT_TYPE]: { schema: {} },
          },
        },
        response: { 200: ExecutionResultSchema, '4xx': ErrorResponseSchema, '5xx': ErrorResponseSchema },
      },
    },
    async (request, reply) => {
      // A client that goes away cancels its execution and frees the sandbox.
      const abort = new AbortController();
      reply.raw.on('close', () => {
        if (!reply.raw.writableFinished) abort.abort(new KindlingError('CLIENT_DISCONNECTED', 'the client disconnected before the answer; the execution was cancelled'));
      });
      const accept = request.headers.accept ?? '';
      const isRaw = (request.headers['content-type'] ?? '').startsWith(RAW_CONTENT_TYPE);
      // Output as it is produced (SSE, raw stdout) or one answer at the end.
      request.trace.span?.setAttributes({ [ATTR.mode]: accept.includes('text/event-stream') || accept.includes(RAW_CONTENT_TYPE) ? 'stream' : 'sync' });
      if (isRaw) {
        if (accept.includes('text/event-stream')) {
          throw new KindlingError('NOT_ACCEPTABLE', `a raw body answers JSON or, with Accept: ${RAW_CONTENT_TYPE}, raw stdout; for SSE send the spec as application/json`);
        }
        return executeRaw(request, reply, abort.signal, accept.includes(RAW_CONTENT_TYPE));
      }
      if (!(request.headers['content-type'] ?? '').startsWith('application/json')) {
        throw new KindlingError('UNSUPPORTED_MEDIA_TYPE', `send the spec as application/json, or a raw body as ${RAW_CONTENT_TYPE} with the spec in the ${SPEC_HEADER} header`);
      }
      const body = request.body as ExecuteRequest;
      if (accept.includes('text/event-stream')) return executeSse(request, reply, body, abort.signal);
      const result = await service.execute(body, { signal: abort.signal, trace: request.trace, tenant: request.scope });
      logFinished(request, result);
      reply.header('x-kindling-execution-id', result.id);
      return result;
    },
  );

  async function executeSse(request: FastifyRequest, reply: FastifyReply, body: ExecuteRequest, signal: AbortSignal): Promise<FastifyReply> {
    // Errors before the sandbox starts are ordinary HTTP errors; after, they are an `error` event.
    let streaming = false;
    const raw = reply.raw;
    // Quiet programs must not look like a dead connection to proxies and clients (fetch gives up after 300 s idle).
    let keepAlive: NodeJS.Timeout | null = null;
    try {
      const result: ExecutionResult = await service.execute(body, {
        signal,
        trace: request.trace,
        tenant: request.scope,
        onStarted: (id) => {
          streaming = true;
          reply.hijack();
          startSse(raw, { 'x-kindling-execution-id': id, 'x-request-id': request.id });
          keepAlive = setInterval(() => raw.write(': keep-alive\n\n'), SSE_KEEPALIVE_MS);
        },
        onOutput: (stream, text) => writeSseEvent(raw, stream, text),
      });
      logFinished(request, result);
      writeSseEvent(raw, 'exit', JSON.stringify(result));
      raw.end();
    } catch (error) {
      if (!streaming) throw error;
      const failure = options.toError(error);
      request.log.error({ err: error }, 'execution failed after the stream started');
      writeSseEvent(raw, 'error', JSON.stringify(errorBody(failure, request.id)));
      raw.end();
    } finally {
      if (keepAlive) clearInterval(keepAlive);
    }
    return reply;
  }

  async function executeRaw(request: FastifyRequest, reply: FastifyReply, signal: AbortSignal, rawOutput: boolean): Promise<unknown> {
    const spec = parseRawSpec(request);
    const input = streamUpload(request, reply, request.body as IncomingMessage, payloadLimit(request, options.maxStreamBytes, '--max-stream-bytes'), options.streamRelay);
    try {
      return await (rawOutput ? answerRaw : answerJson)(request, reply, signal, spec, input);
    } finally {
      input.release();
    }
  }

  /** A raw body in, the JSON result out. */
  async function answerJson(request: FastifyRequest, reply: FastifyReply, signal: AbortSignal, spec: ExecuteRequest, input: StreamedUpload): Promise<unknown> {
    const result = await service.execute(spec, { signal, io: { stdin: input.stdin, stdout: COLLECT_STDOUT }, trace: request.trace, tenant: request.scope });
    if (input.error()) throw input.error();
    logFinished(request, result);
    reply.header('x-kindling-execution-id', result.id);
    return result;
  }

  /** A raw body in, raw stdout out as it is produced, the result in trailers. */
  async function answerRaw(request: FastifyRequest, reply: FastifyReply, signal: AbortSignal, spec: ExecuteRequest, input: StreamedUpload): Promise<unknown> {
    const raw = reply.raw;
    let streaming = false;
    // Past the first MiB, the rest of stdout may go around this process (stream-relay.ts).
    const output = options.streamRelay?.outputBypass(raw, raw, RELAY_OUTPUT_AFTER_BYTES, () => streaming);
    try {
      const result = await service.execute(spec, {
        signal,
        trace: request.trace,
        tenant: request.scope,
        io: { stdin: input.stdin, stdout: { kind: 'sink', sink: raw, ...(output ? { bypass: output.bypass } : {}) } },
        onStarted: (id, info) => {
          streaming = true;
          beginStreamedAnswer(request, reply, { 'content-type': RAW_CONTENT_TYPE, 'x-kindling-execution-id': id, 'x-kindling-executor': info.executor, 'x-kindling-cold-start': String(info.coldStart) }, TRAILERS);
        },
      });
      const uploadError = input.error();
      if (uploadError) {
        breakStreamedAnswer(reply, uploadError);
        return reply;
      }
      logFinished(request, result);
      endStreamedAnswer(request, reply, {
        'x-kindling-exit-code': String(result.exitCode),
        'x-kindling-duration-ms': String(result.durationMs),
        'x-kindling-timed-out': String(result.timedOut),
        'x-kindling-oom-killed': String(result.oomKilled),
        'x-kindling-truncated': String(result.truncated),
        // The first 4 KiB of stderr; the whole of it is in the JSON modes.
        'x-kindling-stderr-base64': Buffer.from(result.stderr, result.outputEncoding).subarray(0, 4096).toString('base64'),
      });
    } catch (error) {
      if (!streaming) throw error;
      request.log.error({ err: error }, 'raw execution failed after the stream started');
      breakStreamedAnswer(reply, error);
    }
    return reply;
  }
}
