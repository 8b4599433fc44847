/**
 * Terminals in persistent sandboxes over `GET /v1/sandboxes/ID/pty`: the first text message is
 * `{cols, rows, command?, env?}`; binary messages are terminal bytes both ways; `{"type":"resize","cols","rows"}`
 * resizes; the server ends with `{"type":"exit","exitCode"}` and close 1000, or `{"type":"error"}` and close
 * 1008/1009/1011. Closing the socket kills the terminal's process tree. Uses the `ws` package in Node.
 */
import { ConnectionError, type KindlingError } from './errors.js';
import { OPEN, openSession, sendBytes, type Socket } from './ws-session.js';

export interface PtyCreateOptions {
  cols: number;
  rows: number;
  /** Default: the image's shell (bash, else sh). */
  command?: string[];
  env?: Record<string, string>;
  /** Called with each piece of terminal output (raw bytes: escape sequences included). */
  onData?: (data: Uint8Array) => void;
}

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
    this.#socket = openSession(wsUrl, apiKey, {
      what: 'the terminal',
      caller: 'pty.create()',
      spec: open,
      fail,
      onBinary: onData,
      onMessage: (message) => {
        if (message.type === 'started') onStarted();
        else if (message.type === 'exit' && !settled) {
          settled = true;
          onStarted();
          resolveExit({ exitCode: Number(message.exitCode) });
        }
      },
    });
  }

  /** Sends terminal input (a string as UTF-8; "\x03" is Ctrl-C); resolves once it went out. */
  async write(data: Uint8Array | string): Promise<void> {
    await sendBytes(await this.#ready(), data);
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
    if (socket.readyState !== OPEN) throw new ConnectionError({ code: 'CONNECTION_CLOSED', message: 'The terminal is closed' });
    return socket;
  }
}
