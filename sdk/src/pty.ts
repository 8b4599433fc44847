/**
 * Terminals in persistent sandboxes over `GET /v1/sandboxes/ID/pty`: the first text message is
 * `{cols, rows, command?, env?}`; binary messages are terminal bytes both ways; `{"type":"resize","cols","rows"}`
 * resizes; the server ends with `{"type":"exit","exitCode"}` and close 1000, or `{"type":"error"}` and close
 * 1008/1009/1011. Closing the socket kills the terminal's process tree. Uses the `ws` package in Node.
 */
import { ConnectionError, KindlingError, errorFromPayload } from './errors.js';

export interface PtyCreateOptions {
  cols: number;
  rows: number;
  /** Default: the image's shell (bash, else sh). */
  command?: string[];
  env?: Record<string, string>;
  /** Called with each piece of terminal output (raw bytes: escape sequences included). */
  onData?: (data: Uint8Array) => void;
}

interface Socket {
  readonly readyState: number;
  send(data: string | Uint8Array, callback?: (error?: Error) => void): void;
  close(code?: number, reason?: string): void;
  terminate(): void;
  on(event: 'open', listener: () => void): void;
  on(event: 'message', listener: (data: Buffer, isBinary: boolean) => void): void;
  on(event: 'close', listener: (code: number, reason: Buffer) => void): void;
  on(event: 'error', listener: (error: Error) => void): void;
  on(event: 'unexpected-response', listener: (request: unknown, response: { statusCode?: number; on(event: string, listener: (chunk?: Buffer) => void): void; resume(): void }) => void): void;
}
type SocketConstructor = new (url: string, options: { headers: Record<string, string>; maxPayload?: number }) => Socket;

/** One terminal. `started` resolves once it runs; `wait()` with its exit code (rejects with a `KindlingError`). */
export class PtyHandle {
  readonly started: Promise<void>;
  readonly #exit: Promise<{ exitCode: number }>;
  readonly #socket: Promise<Socket>;

  /** @internal Created by `sandbox.pty.create()`. */
  constructor(url: string, apiKey: string | undefined, sandboxId: string, options: PtyCreateOptions) {
    const wsUrl = `${url.replace(/^http/, 'ws')}/v1/sandboxes/${encodeURIComponent(sandboxId)}/pty`;
    let onStarted!: () => void;
    let onFailed!: (error: KindlingError) => void;
    this.started = new Promise((resolve, reject) => ((onStarted = resolve), (onFailed = reject)));
    let resolveExit!: (exit: { exitCode: number }) => void;
    let rejectExit!: (error: KindlingError) => void;
    this.#exit = new Promise((resolve, reject) => ((resolveExit = resolve), (rejectExit = reject)));
    this.started.catch(() => undefined);
    this.#exit.catch(() => undefined);
    let settled = false;
    const fail = (error: KindlingError): void => {
      if (settled) return;
      settled = true;
      onFailed(error);
      rejectExit(error);
    };
    const { onData, ...open } = options;
    this.#socket = loadWebSocket().then((WebSocket) => {
      const socket = new WebSocket(wsUrl, { headers: apiKey === undefined ? {} : { authorization: `Bearer ${apiKey}` } });
      let serverError: Record<string, unknown> | null = null;
      socket.on('open', () => socket.send(JSON.stringify(open)));
      socket.on('message', (data, isBinary) => {
        if (isBinary) {
          onData?.(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
          return;
        }
        let message: Record<string, unknown>;
        try {
          message = JSON.parse(data.toString('utf8')) as Record<string, unknown>;
        } catch {
          return;
        }
        if (message.type === 'started') onStarted();
        else if (message.type === 'error') serverError = message;
        else if (message.type === 'exit' && !settled) {
          settled = true;
          onStarted();
          resolveExit({ exitCode: Number(message.exitCode) });
        }
      });
      socket.on('error', (error) => fail(new ConnectionError({ code: 'CONNECTION_FAILED', message: `WebSocket to ${wsUrl} failed: ${error.message}`, cause: error })));
      socket.on('unexpected-response', (_request, response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk) => chunks.push(chunk!));
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
        if (serverError !== null) fail(errorFromPayload(serverError, { status: typeof serverError.status === 'number' ? serverError.status : code === 1011 ? 500 : code === 1009 ? 413 : 400 }));
        fail(new ConnectionError({ code: 'CONNECTION_CLOSED', message: `The WebSocket closed (${code}${reason.length > 0 ? `: ${reason.toString('utf8')}` : ''}) before the terminal ended` }));
      });
      return socket;
    });
    this.#socket.catch((error: unknown) => fail(error instanceof KindlingError ? error : new ConnectionError({ code: 'CONNECTION_FAILED', message: String(error), cause: error })));
  }

  /** Sends terminal input (a string as UTF-8; "\x03" is Ctrl-C); resolves once it went out. */
  async write(data: Uint8Array | string): Promise<void> {
    const socket = await this.#ready();
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    await new Promise<void>((resolve, reject) => socket.send(bytes, (error) => (error ? reject(new ConnectionError({ code: 'CONNECTION_FAILED', message: error.message, cause: error })) : resolve())));
  }

  /** Changes the terminal's size (the foreground process gets SIGWINCH). */
  async resize(cols: number, rows: number): Promise<void> {
    const socket = await this.#ready();
    socket.send(JSON.stringify({ type: 'resize', cols, rows }));
  }

  /** Closes the socket: the server kills the terminal's process tree; `wait()` rejects unless it had ended. */
  kill(): void {
    void this.#socket.then((socket) => socket.close(1000), () => undefined);
  }

  /** The exit code of the terminal's command once it ended. */
  wait(): Promise<{ exitCode: number }> {
    return this.#exit;
  }

  async #ready(): Promise<Socket> {
    await this.started;
    const socket = await this.#socket;
    if (socket.readyState !== 1) throw new ConnectionError({ code: 'CONNECTION_CLOSED', message: 'The terminal is closed' });
    return socket;
  }
}

async function loadWebSocket(): Promise<SocketConstructor> {
  try {
    return ((await import('ws')) as unknown as { WebSocket: SocketConstructor }).WebSocket;
  } catch (error) {
    throw new KindlingError({ code: 'WEBSOCKET_UNAVAILABLE', message: 'pty.create() needs the "ws" package (npm install ws)', cause: error });
  }
}
