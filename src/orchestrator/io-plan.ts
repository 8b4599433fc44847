import type { Readable, Writable } from 'node:stream';

/**
 * Where an execution's stdin comes from and where its stdout goes: one plan instead of a bag of optional transport
 * fields, so every caller (HTTP JSON and raw bodies, WebSockets, async invocations, a queue or a chain next) states its
 * I/O the same way and the execution cannot be handed two stdin sources at once.
 */
export type StdinPlan =
  /** No stdin: the request's own `stdin`/`stdinBase64` (JSON) if it has one, else none. */
  | { kind: 'none' }
  /** These bytes, then end of input. */
  | { kind: 'bytes'; bytes: Buffer }
  /** Piped from this stream with backpressure; an error on it (an upload that broke off) kills the execution. */
  | { kind: 'stream'; stream: Readable }
  /**
   * The caller fills stdin itself (e.g. a splice relay from the client's socket): resolves with the bytes the program
   * took; a rejection (the input broke off) kills the execution.
   */
  | { kind: 'pump'; pump: (stdin: Writable) => Promise<number> };

export type StdoutPlan =
  /** Held in memory up to the execution's `outputBytes` and returned in the result. */
  | { kind: 'collect' }
  /**
   * Streamed raw into `sink` with backpressure (the sink is not ended: the caller ends it after the result). The result
   * keeps only the first `keepBytes` (an invocation's stored log); `outputBytes` then caps stderr only.
   */
  | {
      kind: 'sink';
      sink: Writable;
      keepBytes?: number;
      /** Whether anyone wants stdout as text right now (log followers); decoding a large stream for nobody costs real time. Default: always. */
      textWanted?: () => boolean;
      /** A way for the rest of stdout to go around this process (a splice relay to the client's socket): the sink's business. */
      bypass?: StdoutBypass;
    };

export interface IoPlan {
  stdin: StdinPlan;
  stdout: StdoutPlan;
}

/**
 * Asked after each stdout chunk once the kept head is complete and nobody needs the text: `ready()` (given the bytes so
 * far) says whether it can take over now; `start` is given the stream (the execution's listener removed) and resolves,
 * never rejects, with the bytes it moved. The result waits for it.
 */
export interface StdoutBypass {
  ready(stdout: Readable, bytesSoFar: number): boolean;
  start(stdout: Readable): Promise<number>;
}

export const COLLECT_STDOUT: StdoutPlan = { kind: 'collect' };
export const NO_STDIN: StdinPlan = { kind: 'none' };
/** The plan of a JSON request: its own stdin field (if any) in, stdout collected. */
export const DEFAULT_IO: IoPlan = { stdin: NO_STDIN, stdout: COLLECT_STDOUT };

/** Whether the plan gives the execution a stdin of its own (a stream or a pump, whose length is not known up front). */
export const streamsStdin = (plan: StdinPlan): boolean => plan.kind === 'stream' || plan.kind === 'pump';
