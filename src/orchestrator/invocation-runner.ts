/**
 * One function invocation from start to outcome, whoever asked for it: an HTTP request answered directly (sync), a
 * claim of the async dispatcher, and next a worker pulling from a queue or an operator reading a chain. The steps are
 * the same for all: resolve the version, run it through the function service (tenant quota, per-function queue,
 * sandbox, I/O plan, timeout), tell the log bus (start, output, end), work out the outcome with one rule, and record it.
 * Transports (routes, the dispatcher) only say where the bytes come from and go, and how they answer.
 */
import { systemClock, type Clock } from '../core/clock.js';
import { KindlingError, storageFullError } from '../core/errors.js';
import type { ExecutorName } from '../core/types.js';
import type { FinishedInvocation, InvocationOutcome } from '../store/store.js';
import type { TenantScope, TraceContext } from './execution-service.js';
import type { FunctionService, InvocationResult } from './function-service.js';
import type { IoPlan } from './io-plan.js';
import type { LogBus } from './log-bus.js';
import { ATTR } from '../core/tracing.js';
import { InvocationPhases, resultAttributes } from './phases.js';

export type InvocationStatus = InvocationOutcome['status'];

/** The rule for every invocation: it succeeded when its code exited 0 within its time; anything else failed, and why. */
export function outcomeOf(result: Pick<InvocationResult, 'exitCode' | 'timedOut'>): { status: InvocationStatus; error: string | null } {
  if (result.timedOut) return { status: 'failed', error: 'timed out' };
  if (result.exitCode !== 0) return { status: 'failed', error: `exited with code ${result.exitCode}` };
  return { status: 'succeeded', error: null };
}

/** A failure the platform knows by its stable code (a full disk included), or null for an unexpected error. */
export function knownFailure(error: unknown): KindlingError | null {
  return storageFullError(error) ?? (error instanceof KindlingError ? error : null);
}

/** How an invocation that did not produce a result is told in its record: the stable code and message, or what broke. */
export function failureMessage(error: unknown): string {
  const known = knownFailure(error);
  if (known) return `${known.code}: ${known.message}`;
  return `the platform failed: ${error instanceof Error ? error.message : String(error)}`;
}

export interface Invocation {
  tenant: string;
  functionName: string;
  /** The invocation's id when it has one before it runs (an async record); a sync one takes its execution's id. */
  id?: string;
  /** Runs this version (an async invocation: the latest when it was queued); default the latest now. */
  version?: number;
  /** A handler's argument; a command's stdin unless `io.stdin` says otherwise. */
  payload: Buffer;
  io?: Partial<IoPlan>;
  scope?: TenantScope;
  /** Its trace; with a span (tracing on) the runner records the phases under it and the outcome on it. */
  trace?: TraceContext;
  /** How the caller gets the answer (the `kindling.mode` attribute of its span). Default sync. */
  mode?: 'sync' | 'async' | 'stream';
  /** When it started waiting (epoch ms on the span clock, spanClockMs): an async invocation's enqueue; default when run() is called. */
  queuedSinceMs?: number;
  signal?: AbortSignal;
  /** Called once it runs (a sandbox started or a warm one was leased), before any output. */
  onStarted?: (id: string, info: { coldStart: boolean; executor: ExecutorName }) => void;
  /** The input broke off (an upload cut short, over its limit): that error explains a failure better than the run's. */
  inputError?: () => unknown;
}

export interface StartedRun {
  id: string;
  coldStart: boolean;
  executor: ExecutorName;
  startedAtMs: number;
}

/** What one run came to. `failed` is a platform failure (no result); a failing function is `finished` with its outcome. */
export type RunReport = (
  | { kind: 'finished'; result: InvocationResult; outcome: InvocationOutcome; started: StartedRun | null }
  | { kind: 'failed'; error: unknown; outcome: InvocationOutcome; started: StartedRun | null; version: number }
) & {
  /** Its phases when traced (`record` under way for a finished run); the caller ends them once the outcome is stored (or not). */
  phases?: InvocationPhases;
};

export interface InvocationRunnerOptions {
  functions: Pick<FunctionService, 'invoke' | 'resolve'>;
  logBus: LogBus;
  /** Where finished synchronous invocations are kept (batched by the invocation store); `done` once written (or refused). */
  record: (finished: FinishedInvocation, done?: () => void) => void;
  /** Bytes of stdout and of stderr a sync invocation's record keeps. */
  recordLogBytes: number;
  clock?: Clock;
}

export class InvocationRunner {
  private readonly clock: Clock;

  constructor(private readonly options: InvocationRunnerOptions) {
    this.clock = options.clock ?? systemClock;
  }

  /** Bytes of stdout and of stderr a sync invocation's record keeps (a sink plan keeps that much of its head). */
  get recordLogBytes(): number {
    return this.options.recordLogBytes;
  }

  /**
   * Runs one invocation and tells the log bus as it goes. It never ends the bus entry: the caller does once the outcome
   * is kept (`end`), so that followers never see an end the store does not hold. Never rejects.
   */
  async run(invocation: Invocation): Promise<RunReport> {
    const bus = this.options.logBus;
    const { tenant, functionName } = invocation;
    let busId: string | null = invocation.id ?? null;
    if (busId !== null) bus.start(busId, tenant, functionName);
    let started: StartedRun | null = null;
    const streamed = { stdout: false, stderr: false };
    let version = invocation.version ?? 0;
    const span = invocation.trace?.span;
    const phases = span ? new InvocationPhases(span) : undefined;
    if (span) {
      phases!.enter('queue', undefined, invocation.queuedSinceMs);
      span.setAttributes({ [ATTR.tenant]: tenant, [ATTR.function]: functionName, [ATTR.mode]: invocation.mode ?? 'sync', ...(busId === null ? {} : { [ATTR.invocationId]: busId }) });
    }
    try {
      // Pinned once: a redeploy during the run does not change which version this invocation runs and is recorded as.
      if (invocation.version === undefined) version = this.options.functions.resolve(tenant, functionName).version.version;
      span?.setAttributes({ [ATTR.version]: version });
      const stdout = invocation.io?.stdout;
      const result = await this.options.functions.invoke(tenant, functionName, invocation.payload, {
        version,
        ...(invocation.io ? { io: stdout?.kind === 'sink' ? { ...invocation.io, stdout: { textWanted: () => bus.followed, ...stdout } } : invocation.io } : {}),
        ...(invocation.scope ? { scope: invocation.scope } : {}),
        ...(invocation.trace ? { trace: phases ? { ...invocation.trace, phases } : invocation.trace } : {}),
        ...(invocation.signal ? { signal: invocation.signal } : {}),
        onStarted: (id, info) => {
          started = { id, ...info, startedAtMs: this.clock.nowMs() };
          span?.setAttributes({ [ATTR.invocationId]: busId ?? id, [ATTR.executor]: info.executor, [ATTR.coldStart]: info.coldStart });
          // Always on the bus (two map operations): a follower who joins mid-run sees it start and end.
          if (busId === null) {
            busId = id;
            bus.start(id, tenant, functionName);
          }
          invocation.onStarted?.(id, info);
        },
        onOutput: (stream, text) => {
          if (busId === null) return;
          streamed[stream] = true;
          bus.output(busId, tenant, functionName, stream, text);
        },
      });
      // What did not stream live (a handler's return value, and its logs) shows at the end.
      if (busId !== null && bus.followed) {
        if (!streamed.stderr && result.stderr.length > 0) bus.output(busId, tenant, functionName, 'stderr', result.stderr.toString('utf8'));
        if (!streamed.stdout && result.body.length > 0) bus.output(busId, tenant, functionName, 'stdout', result.body.toString('utf8'));
      }
      const { status, error } = outcomeOf(result);
      if (phases) {
        span!.setAttributes({ [ATTR.invocationId]: busId ?? result.invocationId, [ATTR.executor]: result.executor, ...resultAttributes(result) });
        phases.enter('record');
      }
      const outcome: InvocationOutcome = {
        status,
        exitCode: result.exitCode,
        durationMs: result.durationMs,
        coldStart: result.coldStart,
        timedOut: result.timedOut,
        error,
        stdout: result.body,
        stderr: result.stderr,
        finishedAtMs: this.clock.nowMs(),
      };
      return { kind: 'finished', result, outcome, started, ...(phases ? { phases } : {}) };
    } catch (thrown) {
      const error = invocation.inputError?.() ?? thrown;
      if (phases) {
        const known = knownFailure(error);
        const code = known?.code ?? 'INTERNAL';
        phases.fail(code, known?.message ?? 'the platform failed');
        // Whether its failure is recorded is the caller's to say (a sync invocation that never started is not).
        span!.setAttributes({ [ATTR.outcome]: 'error', [ATTR.errorCode]: code });
      }
      const outcome: InvocationOutcome = {
        status: 'failed',
        exitCode: null,
        durationMs: null,
        coldStart: (started as StartedRun | null)?.coldStart ?? null,
        timedOut: null,
        error: failureMessage(error),
        stdout: Buffer.alloc(0),
        stderr: Buffer.alloc(0),
        finishedAtMs: this.clock.nowMs(),
      };
      return { kind: 'failed', error, outcome, started, version, ...(phases ? { phases } : {}) };
    }
  }

  /** Ends an invocation on the log bus with its final status (`queued` when it went back to the queue). */
  end(id: string, tenant: string, functionName: string, status: InvocationStatus | 'queued'): void {
    this.options.logBus.end(id, tenant, functionName, status);
  }

  /**
   * A synchronous invocation, answered directly: run, ended on the bus, recorded like an async one (status, exit code,
   * duration, the head of its output). A platform failure after the start is recorded too, then thrown.
   * `measured` counts what went around the result (a streamed stdin, stdout sent to a sink).
   */
  async invoke(invocation: Invocation, measured: { payloadBytes?: () => number; stdoutBytes?: () => number } = {}): Promise<InvocationResult> {
    const createdAtMs = this.clock.nowMs();
    const report = await this.run(invocation);
    const payloadBytes = measured.payloadBytes?.() ?? invocation.payload.length;
    const cap = this.options.recordLogBytes;
    const recorded = report.phases ? () => report.phases!.end() : undefined;
    if (report.kind === 'finished') {
      const { result, outcome } = report;
      this.end(result.invocationId, invocation.tenant, invocation.functionName, outcome.status);
      this.options.record({
        id: result.invocationId,
        tenant: invocation.tenant,
        functionName: invocation.functionName,
        version: result.version,
        ...outcome,
        payloadBytes,
        stdout: result.body.subarray(0, cap),
        stderr: result.stderr.subarray(0, cap),
        stdoutBytes: measured.stdoutBytes?.() ?? result.body.length,
        createdAtMs,
        startedAtMs: report.started?.startedAtMs ?? createdAtMs,
      }, recorded);
      return result;
    }
    const started = report.started;
    if (started !== null) {
      report.phases?.enter('record');
      this.end(started.id, invocation.tenant, invocation.functionName, 'failed');
      this.options.record({
        id: started.id,
        tenant: invocation.tenant,
        functionName: invocation.functionName,
        version: report.version,
        ...report.outcome,
        payloadBytes,
        stdoutBytes: measured.stdoutBytes?.() ?? 0,
        createdAtMs,
        startedAtMs: started.startedAtMs,
      }, recorded);
    } else {
      // Never started: nothing to record.
      report.phases?.end();
    }
    throw report.error;
  }
}
