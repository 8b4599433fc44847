import { PassThrough } from 'node:stream';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { WebSocket } from 'ws';
import { KindlingError } from '../../core/errors.js';
import { ATTR } from '../../core/tracing.js';
import type { ExecuteRequest, ExecutionResult } from '../../core/types.js';
import type { ExecutionService } from '../../orchestrator/execution-service.js';
import { errorBody } from '../errors.js';
import { payloadLimit } from '../raw-io.js';
import { COLLECT_STDOUT } from '../../orchestrator/io-plan.js';
import { ErrorResponseSchema, RawExecuteSpecSchema } from '../schemas.js';

export const EXECUTE_WS_ROUTE = '/v1/execute/ws';
const specValidator = TypeCompiler.Compile(RawExecuteSpecSchema);
/** A client that opens the socket and never sends its spec holds no sandbox, but must not hold the socket either. */
const SPEC_TIMEOUT_MS = 30_000;

// Close codes (RFC 6455): normal end, policy violation (client's fault), message too big, server error.
const CLOSE_NORMAL = 1000;
const CLOSE_POLICY = 1008;
const CLOSE_TOO_BIG = 1009;
const CLOSE_SERVER_ERROR = 1011;

export interface ExecuteWsRouteOptions {
  executionService: Pick<ExecutionService, 'execute'>;
  toError: (error: unknown) => KindlingError;
  /** Largest total of stdin bytes one connection may send (as --max-stream-bytes for raw bodies). */
  maxStreamBytes: number;
}

function parseSpec(text: string): ExecuteRequest {
  let spec: unknown;
  try {
    spec = JSON.parse(text);
  } catch {
    throw new KindlingError('INVALID_JSON', 'the first message must be the execution spec as JSON');
  }
  if (!specValidator.Check(spec)) {
    const first = specValidator.Errors(spec).First();
    const where = first?.path ? first.path.replace(/^\//, '').replace(/\//g, '.') : 'spec';
    throw new KindlingError('VALIDATION_FAILED', `spec ${where}: ${first?.message ?? 'is invalid'} (stdin comes as binary messages; see docs/api.md)`, { details: { field: where } });
  }
  return spec as ExecuteRequest;
}

/**
 * GET /v1/execute/ws: an interactive execution over a WebSocket.
 *
 * Client → server: the first message is the spec as JSON text (POST /v1/execute's schema without stdin/stdinBase64);
 * then binary messages are written to the process's stdin as they come, and the text message {"type":"stdin_end"}
 * closes stdin. Any other text message is a protocol error.
 * Server → client: {"type":"started","id"}, {"type":"stdout"|"stderr","data"} as output is produced, then
 * {"type":"exit", ...result} and close 1000. Errors: {"type":"error","error":{code,message}} and close 1008 (the
 * client's fault) or 1011 (the server's). Closing the socket early kills the execution and frees the sandbox.
 */
export function registerExecuteWsRoute(app: FastifyInstance, options: ExecuteWsRouteOptions): void {
  const service = options.executionService;

  app.get(
    EXECUTE_WS_ROUTE,
    {
      websocket: true,
      // @fastify/websocket hides its routes from the OpenAPI document; this one is documented on purpose.
      config: { swaggerTransform: ({ schema, url }) => ({ schema: { ...schema, hide: false }, url }) },
      schema: {
        tags: ['execute'],
        summary: 'Interactive execution over a WebSocket (spec, stdin, live output)',
        description: [
          'Upgrade with `Authorization: Bearer KEY` (401 without it when the server has keys).',
          'Client → server: the first message is the spec as JSON text (the fields of POST /v1/execute without stdin/stdinBase64); then every binary message is written to stdin (with backpressure, at most --max-stream-bytes in all) and the text message {"type":"stdin_end"} closes stdin; any other text message is a protocol error.',
          'Server → client: {"type":"started","id","executor","coldStart"}, then {"type":"stdout"|"stderr","data"} as output is produced, then {"type":"exit", ...the execution result} and close 1000.',
          'Errors: {"type":"error","error":{"code","message"},"requestId"} then close 1008 (the client\'s fault), 1009 (too much stdin) or 1011 (the server\'s). Closing the socket kills the execution and frees the sandbox.',
          'SDK: client.interactive(spec, {onStdout, onStderr}) with write(), end(), close(), started and result.',
        ].join(' '),
        response: {
          101: { description: 'Switching Protocols: the WebSocket is open', type: 'null' },
          401: { description: 'No or a wrong API key', ...ErrorResponseSchema },
        },
      },
    },
    (socket: WebSocket, request: FastifyRequest) => {
      // Listeners attach synchronously: messages that arrive with the upgrade are not lost.
      const abort = new AbortController();
      const stdin = new PassThrough();
      let phase: 'awaiting-spec' | 'running' | 'done' = 'awaiting-spec';
      let stdinBytes = 0;
      let stdinEnded = false;
      // The tenant's quota maxPayloadBytes bounds stdin too when it is below the server's limit.
      const maxStdin = payloadLimit(request, options.maxStreamBytes, '--max-stream-bytes');

      const send = (message: object): void => {
        if (socket.readyState === socket.OPEN) socket.send(JSON.stringify(message));
      };
      const fail = (error: unknown): void => {
        if (phase === 'done') return;
        phase = 'done';
        const failure = options.toError(error);
        if (failure.statusCode >= 500) request.log.error({ err: error, code: failure.code }, 'websocket execution failed');
        else request.log.info({ code: failure.code, msg: failure.message }, 'websocket execution rejected');
        send({ type: 'error', ...errorBody(failure, request.id) });
        const code = failure.code === 'PAYLOAD_TOO_LARGE' ? CLOSE_TOO_BIG : failure.statusCode >= 500 ? CLOSE_SERVER_ERROR : CLOSE_POLICY;
        socket.close(code, failure.code);
        abort.abort(failure);
        stdin.destroy();
      };

      const specTimer = setTimeout(() => fail(new KindlingError('VALIDATION_FAILED', `no execution spec within ${SPEC_TIMEOUT_MS / 1000} s`)), SPEC_TIMEOUT_MS);

      socket.on('close', () => {
        clearTimeout(specTimer);
        if (phase !== 'done') {
          phase = 'done';
          abort.abort(new KindlingError('CLIENT_DISCONNECTED', 'the client closed the WebSocket; the execution was cancelled'));
        }
        stdin.destroy();
      });
      socket.on('error', (error) => fail(error));
      // Backpressure: while the process does not read its stdin, the socket is not read either.
      stdin.on('drain', () => socket.resume());

      socket.on('message', (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => {
        if (phase === 'done') return;
        const bytes = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
        if (phase === 'awaiting-spec') {
          clearTimeout(specTimer);
          if (isBinary) return fail(new KindlingError('VALIDATION_FAILED', 'the first message must be the execution spec as JSON text, not binary'));
          let spec: ExecuteRequest;
          try {
            spec = parseSpec(bytes.toString('utf8'));
          } catch (error) {
            return fail(error);
          }
          phase = 'running';
          void run(spec);
          return;
        }
        if (isBinary) {
          if (stdinEnded) return fail(new KindlingError('VALIDATION_FAILED', 'stdin data after {"type":"stdin_end"}'));
          stdinBytes += bytes.length;
          if (stdinBytes > maxStdin.maxBytes) return fail(new KindlingError('PAYLOAD_TOO_LARGE', `stdin is larger than this server accepts (${maxStdin.maxBytes} bytes; see ${maxStdin.flag})`));
          if (!stdin.write(bytes)) socket.pause();
          return;
        }
        let control: unknown;
        try {
          control = JSON.parse(bytes.toString('utf8'));
        } catch {
          control = null;
        }
        if (typeof control === 'object' && control !== null && (control as { type?: unknown }).type === 'stdin_end') {
          if (!stdinEnded) {
            stdinEnded = true;
            stdin.end();
          }
          return;
        }
        fail(new KindlingError('VALIDATION_FAILED', 'after the spec, send stdin as binary messages and {"type":"stdin_end"} as text; nothing else'));
      });

      async function run(spec: ExecuteRequest): Promise<void> {
        try {
          request.trace.span?.setAttributes({ [ATTR.mode]: 'stream' });
          const result: ExecutionResult = await service.execute(spec, {
            signal: abort.signal,
            trace: request.trace,
            tenant: request.scope,
            io: { stdin: { kind: 'stream', stream: stdin }, stdout: COLLECT_STDOUT },
            onStarted: (id, info) => send({ type: 'started', id, executor: info.executor, coldStart: info.coldStart }),
            onOutput: (stream, text) => send({ type: stream, data: text }),
          });
          if (phase === 'done') return;
          phase = 'done';
          request.log.info(
            { executionId: result.id, traceId: request.trace.traceId, executor: result.executor, exitCode: result.exitCode, durationMs: result.durationMs, timedOut: result.timedOut, oomKilled: result.oomKilled },
            'websocket execution finished',
          );
          send({ type: 'exit', ...result });
          socket.close(CLOSE_NORMAL);
          stdin.destroy();
        } catch (error) {
          if (phase === 'done') return;
          fail(error);
        }
      }
    },
  );
}
