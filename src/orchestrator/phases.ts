/**
 * The phases of one invocation as spans under its span (the API request's, or an async invocation's): `queue` (a
 * tenant or function slot, the server's queue, the async queue), `start` (a sandbox started or a warm one leased),
 * `run` (the code runs), `record` (the outcome stored). They follow each other: entering one ends the one before at
 * the same instant, so the phases tile the invocation without gaps or overlaps. Each layer marks the step it knows
 * (the runner the queue and the record, the execution service and the warm pools the start and the run).
 */
import { ATTR, spanClockMs, type SpanAttributes, type TraceSpan } from '../core/tracing.js';

export type PhaseName = 'queue' | 'start' | 'run' | 'record';

export class InvocationPhases {
  private current: TraceSpan | null = null;
  private currentName: PhaseName | null = null;
  private currentStartMs = 0;
  private ended = false;

  constructor(
    /** The invocation's span: the phases are its children. */
    readonly parent: TraceSpan,
    private readonly clockMs: () => number = spanClockMs,
  ) {}

  /** The phase under way, if any. */
  get phase(): PhaseName | null {
    return this.currentName;
  }

  /**
   * Ends the phase under way and starts `phase` at `atMs` (default now; never before the phase it ends started). The
   * phase already under way again: nothing changes (the runner and the execution service both say `queue`).
   */
  enter(phase: PhaseName, attributes?: SpanAttributes, atMs?: number): void {
    if (this.ended || this.currentName === phase) return;
    const at = Math.max(atMs ?? this.clockMs(), this.currentStartMs);
    this.current?.end(at);
    this.current = this.parent.startChild(phase, { kind: 'internal', startMs: at, ...(attributes ? { attributes } : {}) });
    this.currentName = phase;
    this.currentStartMs = at;
  }

  /** Attributes of the phase under way. */
  annotate(attributes: SpanAttributes): void {
    this.current?.setAttributes(attributes);
  }

  /** The phase under way failed for a reason of the platform (status ERROR with the stable code). */
  fail(code: string, message: string): void {
    this.current?.fail(code, message);
  }

  /** Ends the phase under way; later calls change nothing. */
  end(atMs?: number): void {
    if (this.ended) return;
    this.ended = true;
    this.current?.end(atMs === undefined ? undefined : Math.max(atMs, this.currentStartMs));
    this.current = null;
  }
}

/** How a finished run ended, for the `kindling.outcome` attribute: a failing function is a result, not an error. */
export function outcomeName(result: { exitCode: number | null; timedOut: boolean; oomKilled?: boolean }): 'succeeded' | 'failed' | 'timeout' | 'oom' {
  if (result.timedOut) return 'timeout';
  if (result.oomKilled === true) return 'oom';
  return result.exitCode === 0 ? 'succeeded' : 'failed';
}

/** The attributes of a finished run (exit code, outcome, timeout, OOM kill). */
export function resultAttributes(result: { exitCode: number | null; timedOut: boolean; oomKilled?: boolean }): SpanAttributes {
  return {
    ...(result.exitCode === null ? {} : { [ATTR.exitCode]: result.exitCode }),
    [ATTR.outcome]: outcomeName(result),
    [ATTR.timedOut]: result.timedOut,
    [ATTR.oomKilled]: result.oomKilled === true,
  };
}
