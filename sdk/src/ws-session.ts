/**
 * The WebSocket plumbing shared by interactive executions (`/v1/execute/ws`) and terminals (`/v1/sandboxes/ID/pty`):
 * both send a JSON spec first, exchange binary bytes and JSON control messages, and end with an `exit` message and
 * close 1000, or an `error` message and close 1008/1009 (the client's fault) or 1011 (the server's). A refused upgrade
 * (401, 404, 503) is an HTTP answer. Errors are turned into `KindlingError`s here, in one place.
 *
 * Node 20 has no global WebSocket that can send an `Authorization` header, so this uses the `ws` package (loaded on
 * first use).
 */
import { ConnectionError, KindlingError, errorFromPayload } from './errors.js';

/** The subset of the `ws` WebSocket this SDK uses. */
export interface Socket {
  readonly readyState: number;
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

export const OPEN = 1;

export interface SessionHandlers {
  /** The session's name in messages ("the execution", "the terminal"). */
  what: string;
  /** Which call needs the `ws` package, for the error when it is missing. */
  caller: string;
  /** The first text message. */
  spec: unknown;
  onBinary?: (data: Uint8Array) => void;
  /** Every JSON control message but `error` (kept for the close that follows). */
  onMessage: (message: Record<string, unknown>) => void;
  /** Called once for any failure; the caller ignores failures after the session settled. */
  fail: (error: KindlingError) => void;
  onClose?: () => void;
}

/** Opens the socket and wires its events; the promise rejects (after `fail`) when `ws` cannot be loaded. */
export function openSession(wsUrl: string, apiKey: string | undefined, handlers: SessionHandlers): Promise<Socket> {
  const { fail } = handlers;
  const opened = loadWebSocket(handlers.caller).then((WebSocket) => {
    const socket = new WebSocket(wsUrl, { headers: apiKey === undefined ? {} : { authorization: `Bearer ${apiKey}` } });
    let serverError: Record<string, unknown> | null = null;
    socket.on('open', () => socket.send(JSON.stringify(handlers.spec)));
    socket.on('message', (data, isBinary) => {
      if (isBinary) {
        handlers.onBinary?.(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
        return;
      }
      let message: Record<string, unknown>;
      try {
        message = JSON.parse(data.toString('utf8')) as Record<string, unknown>;
      } catch {
        return;
      }
      // The close code that follows says whose fault it was.
      if (message.type === 'error') serverError = message;
      else handlers.onMessage(message);
    });
    socket.on('error', (error) => fail(new ConnectionError({ code: 'CONNECTION_FAILED', message: `WebSocket to ${wsUrl} failed: ${error.message}`, cause: error })));
    socket.on('unexpected-response', (_request, response) => {
      // The upgrade was refused (401 without a valid key, 404, 503 while shutting down): an HTTP error answer.
      const chunks: Buffer[] = [];
      response.on('data', (chunk) => chunks.push(chunk));
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
      handlers.onClose?.();
      if (serverError !== null) fail(errorFromPayload(serverError, { status: typeof serverError.status === 'number' ? serverError.status : code === 1011 ? 500 : code === 1009 ? 413 : 400 }));
      fail(new ConnectionError({ code: 'CONNECTION_CLOSED', message: `The WebSocket closed (${code}${reason.length > 0 ? `: ${reason.toString('utf8')}` : ''}) before ${handlers.what} ended` }));
    });
    return socket;
  });
  opened.catch((error: unknown) => fail(error instanceof KindlingError ? error : new ConnectionError({ code: 'CONNECTION_FAILED', message: String(error), cause: error })));
  return opened;
}

/** Sends bytes (a string as UTF-8); resolves once they went out, which is the caller's backpressure. */
export function sendBytes(socket: Socket, data: Uint8Array | string): Promise<void> {
  const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
  return new Promise<void>((resolve, reject) => socket.send(bytes, (error) => (error ? reject(new ConnectionError({ code: 'CONNECTION_FAILED', message: error.message, cause: error })) : resolve())));
}

async function loadWebSocket(caller: string): Promise<SocketConstructor> {
  try {
    return ((await import('ws')) as unknown as { WebSocket: SocketConstructor }).WebSocket;
  } catch (error) {
    throw new KindlingError({ code: 'WEBSOCKET_UNAVAILABLE', message: `${caller} needs the "ws" package (npm install ws)`, cause: error });
  }
}
