/**
 * Interactive executions over `GET /v1/execute/ws`: stdin as you send it, output as it is produced. The protocol: the
 * spec as the first text message; binary messages are stdin; `{"type":"stdin_end"}` closes stdin. The server sends
 * `started`, `stdout`/`stderr` messages, then `exit` (the result) and closes with 1000, or `error` and closes with
 * 1008/1009 (the client's fault) or 1011 (the server's). Closing the socket kills the execution.
 * The socket's plumbing is ws-session.ts's.
 */
import { AbortError, ConnectionError, type KindlingError } from './errors.js';
import type { ExecuteSpec, ExecutionResult } from './types.js';
import { OPEN, openSession, sendBytes, type Socket } from './ws-session.js';

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

    let abortListener: (() => void) | null = null;
    this.#socket = openSession(wsUrl, apiKey, {
      what: 'the execution',
      caller: 'interactive()',
      spec,
      fail,
      onMessage: (message) => {
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
          default:
            break;
        }
      },
      onClose: () => {
        this.#closed = true;
        if (abortListener !== null) options.signal?.removeEventListener('abort', abortListener);
      },
    });
    void this.#socket.then((socket) => {
      const onAbort = (): void => {
        fail(new AbortError({ code: 'ABORTED', message: 'The interactive execution was aborted; it was killed on the server' }));
        socket.close(1000);
      };
      if (options.signal?.aborted) onAbort();
      else if (options.signal !== undefined) {
        abortListener = onAbort;
        options.signal.addEventListener('abort', onAbort, { once: true });
      }
    }, () => undefined);
  }

  /** Sends bytes (a string as UTF-8) to stdin; resolves once they went out. */
  async write(data: Uint8Array | string): Promise<void> {
    await sendBytes(await this.#ready(), data);
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
