import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { WebSocket } from 'ws';
import { KindlingError } from '../../core/errors.js';
import type { SandboxService } from '../../orchestrator/sandboxes.js';
import type { PtySession } from '../../orchestrator/sandbox-pty.js';
import { errorBody } from '../errors.js';
import { ErrorResponseSchema, SandboxIdParamsSchema } from '../schemas.js';

export const SANDBOX_PTY_ROUTE = '/v1/sandboxes/:id/pty';
/** A client that opens the socket and never sends its first message holds no terminal, and not the socket either. */
const OPEN_TIMEOUT_MS = 30_000;
/** One message (input or control) at most; a terminal sends keystrokes and pastes, not files. */
export const PTY_MAX_MESSAGE_BYTES = 64 * 1024;
/** Terminal output held for a slow client at most (about; one chunk more): then the output is not read until it drains. */
const OUTPUT_HIGH_WATER_BYTES = 1024 * 1024;
/** All input one connection may send. */
export const PTY_MAX_INPUT_BYTES = 64 * 1024 * 1024;

const CLOSE_NORMAL = 1000;
const CLOSE_POLICY = 1008;
const CLOSE_TOO_BIG = 1009;
const CLOSE_SERVER_ERROR = 1011;

interface OpenMessage {
  cols: number;
  rows: number;
  command?: string[];
  env?: Record<string, string>;
}

function parseJson(bytes: Buffer): Record<string, unknown> | null {
  try {
    const value: unknown = JSON.parse(bytes.toString('utf8'));
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

function parseOpen(bytes: Buffer): OpenMessage {
  const value = parseJson(bytes);
  if (value === null) throw new KindlingError('INVALID_JSON', 'the first message must be {"cols","rows","command"?,"env"?} as JSON text');
  const { cols, rows, command, env } = value;
  if (typeof cols !== 'number' || typeof rows !== 'number') throw new KindlingError('VALIDATION_FAILED', 'cols and rows are required numbers', { details: { field: 'cols' } });
  if (command !== undefined && (!Array.isArray(command) || !command.every((arg) => typeof arg === 'string'))) {
    throw new KindlingError('VALIDATION_FAILED', 'command must be a list of strings', { details: { field: 'command' } });
  }
  if (env !== undefined && (typeof env !== 'object' || env === null || Array.isArray(env) || !Object.values(env).every((v) => typeof v === 'string'))) {
    throw new KindlingError('VALIDATION_FAILED', 'env must be an object of strings', { details: { field: 'env' } });
  }
  return { cols, rows, ...(command !== undefined ? { command: command as string[] } : {}), ...(env !== undefined ? { env: env as Record<string, string> } : {}) };
}

/**
 * GET /v1/sandboxes/ID/pty: an interactive terminal inside a persistent sandbox (see src/orchestrator/sandbox-pty.ts).
 * Client → server: first {"cols","rows","command"?,"env"?} as JSON text; then binary messages are terminal input and
 * {"type":"resize","cols","rows"} resizes. Server → client: {"type":"started"}, binary terminal output, at the end
 * {"type":"exit","exitCode"} and close 1000. Closing the socket kills the terminal's process tree.
 */
export function registerSandboxPtyRoute(app: FastifyInstance, options: { sandboxes: SandboxService; toError: (error: unknown) => KindlingError }): void {
  const service = options.sandboxes;
  app.get<{ Params: { id: string } }>(
    SANDBOX_PTY_ROUTE,
    {
      websocket: true,
      config: { swaggerTransform: ({ schema, url }) => ({ schema: { ...schema, hide: false }, url }) },
      // Before the upgrade: an unknown id (or another tenant's) answers a plain 404.
      preHandler: async (request) => {
        service.get(request.principal.tenant, request.params.id);
      },
      schema: {
        tags: ['sandboxes'],
        summary: 'Interactive terminal (PTY) in a sandbox over a WebSocket',
        params: SandboxIdParamsSchema,
        description: [
          'Upgrade with `Authorization: Bearer KEY`, or (a browser cannot set that header) offer the key as the subprotocol `kindling.key.BASE64URL(KEY)` after a real one such as `kindling.pty` (the answer names that one, never the key); an unknown id or another tenant\'s answers 404 SANDBOX_NOT_FOUND before the upgrade.',
          'Client → server: the first message is {"cols","rows","command"?,"env"?} as JSON text (default command: bash, else sh; cols/rows 1..1000), within 30 s; then binary messages are terminal input (Ctrl-C is byte 0x03) and the text {"type":"resize","cols","rows"} resizes. At most 64 KiB per message and 64 MiB in all.',
          'Server → client: {"type":"started"}, then binary messages with the terminal\'s output, then {"type":"exit","exitCode"} and close 1000.',
          'Errors: {"type":"error","status","error":{"code","message"},"requestId"} (status: the HTTP status the code has elsewhere) then close 1008 (the client\'s fault, e.g. 409 SANDBOX_PTY_UNSUPPORTED: the image has no python3), 1009 (message or input too large) or 1011 (the server\'s). Closing the socket kills the terminal\'s process tree.',
          'SDK: sandbox.pty.create({cols, rows, onData}) with write(), resize(), kill() and wait().',
        ].join(' '),
        response: {
          101: { description: 'Switching Protocols: the WebSocket is open', type: 'null' },
          401: { description: 'No or a wrong API key', ...ErrorResponseSchema },
          404: { description: 'No such sandbox in the caller\'s tenant', ...ErrorResponseSchema },
          '4xx': ErrorResponseSchema,
          '5xx': ErrorResponseSchema,
        },
      },
    },
    (socket: WebSocket, request: FastifyRequest<{ Params: { id: string } }>) => {
      let phase: 'awaiting-open' | 'opening' | 'running' | 'done' = 'awaiting-open';
      let session: PtySession | null = null;
      let inputBytes = 0;

      const send = (message: object): void => {
        if (socket.readyState === socket.OPEN) socket.send(JSON.stringify(message));
      };
      const fail = (error: unknown): void => {
        if (phase === 'done') return;
        phase = 'done';
        const failure = options.toError(error);
        if (failure.statusCode >= 500) request.log.error({ err: error, code: failure.code }, 'sandbox pty failed');
        else request.log.info({ code: failure.code, msg: failure.message }, 'sandbox pty rejected');
        // A socket paused while the terminal opened must read again, or the client's close reply waits for a timeout.
        socket.resume();
        send({ type: 'error', status: failure.statusCode, ...errorBody(failure, request.id) });
        socket.close(failure.code === 'PAYLOAD_TOO_LARGE' ? CLOSE_TOO_BIG : failure.statusCode >= 500 ? CLOSE_SERVER_ERROR : CLOSE_POLICY, failure.code);
        session?.kill();
      };
      const openTimer = setTimeout(() => fail(new KindlingError('VALIDATION_FAILED', `no first message within ${OPEN_TIMEOUT_MS / 1000} s`)), OPEN_TIMEOUT_MS);

      socket.on('close', () => {
        clearTimeout(openTimer);
        phase = 'done';
        session?.kill();
      });
      socket.on('error', (error) => fail(error));

      socket.on('message', (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => {
        if (phase === 'done') return;
        const bytes = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
        if (bytes.length > PTY_MAX_MESSAGE_BYTES) return fail(new KindlingError('PAYLOAD_TOO_LARGE', `a terminal message is at most ${PTY_MAX_MESSAGE_BYTES} bytes`));
        inputBytes += bytes.length;
        if (inputBytes > PTY_MAX_INPUT_BYTES) return fail(new KindlingError('PAYLOAD_TOO_LARGE', `a terminal connection sends at most ${PTY_MAX_INPUT_BYTES} bytes`));
        if (phase === 'awaiting-open') {
          clearTimeout(openTimer);
          if (isBinary) return fail(new KindlingError('VALIDATION_FAILED', 'the first message must be {"cols","rows"} as JSON text, not binary'));
          let open: OpenMessage;
          try {
            open = parseOpen(bytes);
          } catch (error) {
            return fail(error);
          }
          phase = 'opening';
          socket.pause();
          void start(open);
          return;
        }
        if (isBinary) {
          if (session !== null && !session.write(bytes)) {
            socket.pause();
            session.input?.once('drain', () => socket.resume());
          }
          return;
        }
        const control = parseJson(bytes);
        if (control?.type === 'resize' && typeof control.cols === 'number' && typeof control.rows === 'number' && [control.cols, control.rows].every((n) => Number.isInteger(n) && n >= 1 && n <= 1000)) {
          session?.resize(control.cols, control.rows);
          return;
        }
        fail(new KindlingError('VALIDATION_FAILED', 'after the first message, send terminal input as binary and {"type":"resize","cols","rows"} (1..1000) as text; nothing else'));
      });

      async function start(open: OpenMessage): Promise<void> {
        try {
          const opened = await service.openPty(request.principal.tenant, request.params.id, open);
          if (phase === 'done') {
            opened.kill();
            return;
          }
          session = opened;
          phase = 'running';
          send({ type: 'started' });
          // Backpressure: past OUTPUT_HIGH_WATER_BYTES not yet written to a slow client, the terminal's output is not read
          // (the relay then blocks on its pipe, and the program in the sandbox on its terminal) until the socket drains.
          let outputPaused = false;
          opened.output.on('data', (chunk: Buffer) => {
            if (socket.readyState !== socket.OPEN) return;
            socket.send(chunk, { binary: true }, () => {
              if (outputPaused && socket.bufferedAmount < OUTPUT_HIGH_WATER_BYTES / 2) {
                outputPaused = false;
                opened.output.resume();
              }
            });
            if (!outputPaused && socket.bufferedAmount > OUTPUT_HIGH_WATER_BYTES) {
              outputPaused = true;
              opened.output.pause();
            }
          });
          socket.resume();
          const outputEnded = new Promise<void>((resolve) => {
            opened.output.once('end', resolve);
            opened.output.once('close', resolve);
          });
          const [{ exitCode }] = await Promise.all([opened.done, outputEnded]);
          if ((phase as string) === 'done') return;
          phase = 'done';
          send({ type: 'exit', exitCode });
          socket.close(CLOSE_NORMAL);
        } catch (error) {
          fail(error);
        }
      }
    },
  );
}
