/**
 * Interactive executions over `GET /v1/execute/ws`: stdin as you send it, output as it is produced. The protocol: the
 * spec as the first text message; binary messages are stdin; `{"type":"stdin_end"}` closes stdin. The server sends
 * `started`, `stdout`/`stderr` messages, then `exit` (the result) and closes with 1000, or `error` and closes with
 * 1008/1009 (the client's fault) or 1011 (the server's). Closing the socket kills the execution.
 *
 * Node 20 has no global WebSocket that can send an `Authorization` header, so this uses the `ws` package (loaded on
 * first use).
 */
import { AbortError, ConnectionError, KindlingError, errorFromPayload } from './errors.js';
import type { ExecuteSpec, ExecutionResult } from './types.js';

/** Options of `interactive()`. */
export interface InteractiveOptions {
  /** Called with each piece of stdout text as the process produces it. */
  onStdout?: (text: string) => void;
  /** Called with each piece of stderr text as the process produces it. */
  onStderr?: (text: string) => void;
  /** Aborting closes the socket, which kills the execution; `result` then rejects with `AbortError`. */
  signal?: AbortSignal;
}

/** What the server said when the process started. */
export interface InteractiveStart {
  id: string;
  executor: string;
  coldStart: boolean;
}

/** The subset of the `ws` WebSocket this module uses. */
interface Socket {
  readonly readyState: number;
  readonly bufferedAmount: number;
  send(data: string | Uint8Array, callback?: (error?: Error) => void): void;
  close(code?: number, reason?: string): void;
  terminate(): void;
  on(event: 'open', listener: () => void): void;
  on(event: 'message', listener: (data: Buffer, isBinary: boolean) => void): void;
  on(event: 'close', listener: (code: number, reason: Buffer) => void): void;
  on(event: 'error', listener: (error: Error) => void): void;
  on(event: 'unexpected-response', listener: (request: unknown, response: IncomingLike) => void): void;
}
interface IncomingLike {
  readonly statusCode?: number;
  on(event: 'data', listener: (chunk: Buffer) => void): void;
  on(event: 'end', listener: () => void): void;
  resume(): void;
}
type SocketConstructor = new (url: string, options: { headers: Record<string, string> }) => Socket;

const OPEN = 1;

/**
 * One interactive execution. `write()` sends stdin (resolves when the bytes went out: await it for backpressure),
 * `end()` closes stdin, `close()` kills it; `started` resolves once the sandbox runs, `result` with the final result
 * (a non-zero exit is a result) or rejects with a `KindlingError`.
 */
export class InteractiveExecution {
  readonly started: Promise<InteractiveStart>;
  readonly result: Promise<ExecutionResult>;
  readonly #socket: Promise<Socket>;
  #closed = false;

  /** @internal Created by `Kindling.interactive()`. */
  constructor(url: string, apiKey: string | undefined, spec: ExecuteSpec, options: InteractiveOptions = {}) {
    const wsUrl = `${url.replace(/^http/, 'ws')}/v1/execute/ws`;
    let onStarted!: (start: InteractiveStart) => void;
    let onFailed!: (error: KindlingError) => void;
    this.started = new Promise((resolve, reject) => {
      onStarted = resolve;
      onFailed = reject;
    });
    let resolveResult!: (result: ExecutionResult) => void;
    let rejectResult!: (error: KindlingError) => void;
    this.result = new Promise((resolve, reject) => {
      resolveResult = resolve;
      rejectResult = reject;
    });
    // Whoever only awaits `result` must not see an unhandled rejection of `started`, and the other way round.
    this.started.catch(() => undefined);
    this.result.catch(() => undefined);

    let settled = false;
    const fail = (error: KindlingError): void => {
      if (settled) return;
      settled = true;
      onFailed(error);
      rejectResult(error);
    };

    this.#socket = loadWebSocket().then((WebSocket) => {
      const socket = new WebSocket(wsUrl, { headers: apiKey === undefined ? {} : { authorization: `Bearer ${apiKey}` } });
      const onAbort = (): void => {
        fail(new AbortError({ code: 'ABORTED', message: 'The interactive execution was aborted; it was killed on the server' }));
        socket.close(1000);
      };
      if (options.signal?.aborted) onAbort();
      else options.signal?.addEventListener('abort', onAbort, { once: true });
      let serverError: Record<string, unknown> | null = null;
      socket.on('open', () => socket.send(JSON.stringify(spec)));
      socket.on('message', (data, isBinary) => {
        if (isBinary) return;
        let message: Record<string, unknown>;
        try {
          message = JSON.parse(data.toString('utf8')) as Record<string, unknown>;
        } catch {
          return;
        }
        switch (message.type) {
          case 'started':
            onStarted({ id: String(message.id), executor: String(message.executor), coldStart: message.coldStart === true });
            break;
          case 'stdout':
            options.onStdout?.(String(message.data));
            break;
          case 'stderr':
            options.onStderr?.(String(message.data));
            break;
          case 'exit': {
            const { type: _type, ...result } = message;
            if (!settled) {
              settled = true;
              resolveResult(result as unknown as ExecutionResult);
            }
            break;
          }
          case 'error':
            // The close code that follows says whose fault it was (1008/1009 the client's, 1011 the server's).
            serverError = message;
            break;
          default:
            break;
        }
      });
      socket.on('error', (error) => fail(new ConnectionError({ code: 'CONNECTION_FAILED', message: `WebSocket to ${wsUrl} failed: ${error.message}`, cause: error })));
      socket.on('unexpected-response', (_request, response) => {
        // The upgrade was refused (401 without a valid key, 404, 503 while shutting down): an HTTP error answer.
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () => {
          let payload: unknown = null;
          try {
            payload = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            // not JSON: the status decides
          }
          fail(errorFromPayload(payload, { status: response.statusCode }));
          socket.terminate();
        });
        response.resume();
      });
      socket.on('close', (code, reason) => {
        this.#closed = true;
        options.signal?.removeEventListener('abort', onAbort);
        if (serverError !== null) fail(errorFromPayload(serverError, { status: code === 1011 ? 500 : code === 1009 ? 413 : 400 }));
        fail(new ConnectionError({ code: 'CONNECTION_CLOSED', message: `The WebSocket closed (${code}${reason.length > 0 ? `: ${reason.toString('utf8')}` : ''}) before the execution ended` }));
      });
      return socket;
    });
    this.#socket.catch((error: unknown) => fail(error instanceof KindlingError ? error : new ConnectionError({ code: 'CONNECTION_FAILED', message: String(error), cause: error })));
  }

  /** Sends bytes (a string as UTF-8) to stdin; resolves once they went out. */
  async write(data: Uint8Array | string): Promise<void> {
    const socket = await this.#ready();
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    await new Promise<void>((resolve, reject) => socket.send(bytes, (error) => (error ? reject(new ConnectionError({ code: 'CONNECTION_FAILED', message: error.message, cause: error })) : resolve())));
  }

  /** Closes stdin (end of file for the process). */
  async end(): Promise<void> {
    const socket = await this.#ready();
    socket.send(JSON.stringify({ type: 'stdin_end' }));
  }

  /** Closes the socket: the server kills the execution. `result` rejects unless it had already ended. */
  close(): void {
    void this.#socket.then((socket) => socket.close(1000), () => undefined);
  }

  async #ready(): Promise<Socket> {
    await this.started;
    const socket = await this.#socket;
    if (this.#closed || socket.readyState !== OPEN) throw new ConnectionError({ code: 'CONNECTION_CLOSED', message: 'The interactive execution is over' });
    return socket;
  }
}

async function loadWebSocket(): Promise<SocketConstructor> {
  try {
    const module = (await import('ws')) as unknown as { WebSocket: SocketConstructor };
    return module.WebSocket;
  } catch (error) {
    throw new KindlingError({ code: 'WEBSOCKET_UNAVAILABLE', message: 'interactive() needs the "ws" package (npm install ws)', cause: error });
  }
}
