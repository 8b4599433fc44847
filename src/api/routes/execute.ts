import type { FastifyInstance } from 'fastify';
import { KindlingError } from '../../core/errors.js';
import type { ExecuteRequest, ExecutionResult } from '../../core/types.js';
import type { ExecutionService } from '../../orchestrator/execution-service.js';
import { errorBody } from '../errors.js';
import { ErrorResponseSchema, ExecuteRequestSchema, ExecutionResultSchema, type ExecuteRequestBody } from '../schemas.js';
import { startSse, writeSseEvent } from '../sse.js';

const SSE_KEEPALIVE_MS = 15_000;

export function registerExecuteRoutes(app: FastifyInstance, options: { executionService: ExecutionService; toError: (error: unknown) => KindlingError }): void {
  const service = options.executionService;

  app.post<{ Body: ExecuteRequestBody }>(
    '/v1/execute',
    {
      schema: {
        tags: ['execute'],
        summary: 'Run code or a command once in a fresh sandbox',
        description: 'A non-zero exit, a timeout or an OOM kill is still 200: the fields say what happened. With `Accept: text/event-stream` the output streams as SSE events `stdout`/`stderr`, then `exit` with this result.',
        body: ExecuteRequestSchema,
        response: { 200: ExecutionResultSchema, '4xx': ErrorResponseSchema, '5xx': ErrorResponseSchema },
      },
    },
    async (request, reply) => {
      // A client that goes away cancels its execution and frees the sandbox.
      const abort = new AbortController();
      reply.raw.on('close', () => {
        if (!reply.raw.writableFinished) abort.abort(new Error('client disconnected'));
      });
      const body = request.body as ExecuteRequest;
      const wantsStream = (request.headers.accept ?? '').includes('text/event-stream');
      if (!wantsStream) {
        const result = await service.execute(body, { signal: abort.signal });
        reply.header('x-kindling-execution-id', result.id);
        return result;
      }

      // Streaming: errors before the sandbox starts are ordinary HTTP errors; after, they are an `error` event.
      let streaming = false;
      const raw = reply.raw;
      // Quiet programs must not look like a dead connection to proxies and clients (fetch gives up after 300 s idle).
      let keepAlive: NodeJS.Timeout | null = null;
      try {
        const result: ExecutionResult = await service.execute(body, {
          signal: abort.signal,
          onStarted: (id) => {
            streaming = true;
            reply.hijack();
            startSse(raw, { 'x-kindling-execution-id': id, 'x-request-id': request.id });
            keepAlive = setInterval(() => raw.write(': keep-alive\n\n'), SSE_KEEPALIVE_MS);
          },
          onOutput: (stream, text) => writeSseEvent(raw, stream, text),
        });
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
    },
  );
}
