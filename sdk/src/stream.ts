import type { ExecutionResult, OutputEvent } from './types.js';

/**
 * A running, streaming execution. Iterate it (`for await (const event of stream)`) for the output as it is produced,
 * and/or await `result` for the final `ExecutionResult`. The request starts when the stream is created; output is
 * buffered until you iterate, so iterating late loses nothing.
 *
 * - `result` resolves with the exit event's result, or rejects with a `KindlingError` (or with the error an
 *   `onStdout`/`onStderr` callback threw). Leaving it unawaited never causes an unhandled rejection.
 * - The iterator ends after the last output event, or throws the same error as `result`.
 * - Leaving a `for await` loop early (`break`, `return`, a throw) aborts the execution: `result` then rejects with
 *   `AbortError`, unless the exit event had already arrived.
 * - It can be iterated once.
 */
export class ExecutionStream implements AsyncIterable<OutputEvent> {
  /** The final result, resolved by the `exit` event. */
  readonly result: Promise<ExecutionResult>;
  readonly #buffer: OutputEvent[] = [];
  readonly #cancel: (reason?: unknown) => void;
  #finished = false;
  #failed = false;
  #failure: unknown;
  #wake: (() => void) | undefined;
  #iterated = false;

  /**
   * @internal Created by `Kindling.stream()`. `run` performs the request, calling `emit` for each output event in
   * order; `cancel` aborts it.
   */
  constructor(run: (emit: (event: OutputEvent) => void) => Promise<ExecutionResult>, cancel: (reason?: unknown) => void) {
    this.#cancel = cancel;
    this.result = run((event) => {
      this.#buffer.push(event);
      this.#notify();
    }).then(
      (result) => {
        this.#finished = true;
        this.#notify();
        return result;
      },
      (err: unknown) => {
        this.#finished = true;
        this.#failed = true;
        this.#failure = err;
        this.#notify();
        throw err;
      },
    );
    // Mark as handled: a caller who only iterates (and sees the error there) must not crash the process.
    this.result.catch(() => {});
  }

  /** Aborts the execution (closes the connection; the server stops the program). No-op once it has finished. */
  abort(reason?: unknown): void {
    if (!this.#finished) this.#cancel(reason);
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<OutputEvent, void, undefined> {
    if (this.#iterated) throw new TypeError('An ExecutionStream can be iterated only once');
    this.#iterated = true;
    let completed = false;
    try {
      let index = 0;
      for (;;) {
        if (index < this.#buffer.length) {
          const event = this.#buffer[index] as OutputEvent;
          index += 1;
          if (index > 1024) {
            this.#buffer.splice(0, index);
            index = 0;
          }
          yield event;
          continue;
        }
        this.#buffer.length = 0;
        index = 0;
        if (this.#finished) {
          completed = true;
          if (this.#failed) throw this.#failure;
          return;
        }
        await new Promise<void>((resolve) => {
          this.#wake = resolve;
        });
      }
    } finally {
      if (!completed) this.abort(new Error('The stream iterator was closed before the execution ended'));
    }
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}
