import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { KindlingError } from '../core/errors.js';
import type { ExecutionResult, ExecutorName } from '../core/types.js';
import type { ExecutionObserver } from '../orchestrator/execution-service.js';
import type { InvocationObserver } from '../orchestrator/handler-pools.js';

/** One-off executions are counted under this function label, so one metric covers them and deployed functions. */
export const EXECUTE_FUNCTION_LABEL = '_execute';

export type InvocationStatus = 'succeeded' | 'failed' | 'timeout' | 'oom' | 'error';

export function statusOf(result: ExecutionResult): InvocationStatus {
  if (result.timedOut) return 'timeout';
  if (result.oomKilled) return 'oom';
  return result.exitCode === 0 ? 'succeeded' : 'failed';
}

/** Prometheus metrics fed by events; they observe, never drive, behaviour. Names are listed in docs/metrics.md. */
export class Metrics implements ExecutionObserver, InvocationObserver {
  readonly registry = new Registry();
  private readonly invocations: Counter<'function' | 'executor' | 'status' | 'cold'>;
  private readonly duration: Histogram<'function' | 'executor'>;
  private readonly startDuration: Histogram<'executor' | 'cold'>;
  private readonly payloadBytes: Counter<'direction'>;
  private readonly httpErrors: Counter<'code' | 'status'>;

  constructor(options: { queue?: () => { running: number; queued: number }; collectProcess?: boolean } = {}) {
    if (options.collectProcess !== false) collectDefaultMetrics({ register: this.registry, prefix: 'kindling_process_' });
    this.invocations = new Counter({
      name: 'kindling_invocations_total',
      help: 'Finished invocations and executions by function, executor, status (succeeded|failed|timeout|oom|error) and cold start',
      labelNames: ['function', 'executor', 'status', 'cold'],
      registers: [this.registry],
    });
    this.duration = new Histogram({
      name: 'kindling_invocation_duration_seconds',
      help: 'Wall time from sandbox start request to process exit',
      labelNames: ['function', 'executor'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers: [this.registry],
    });
    this.startDuration = new Histogram({
      name: 'kindling_sandbox_start_seconds',
      help: 'Time to get a running sandbox (cold: created for the request; warm: prewarmed)',
      labelNames: ['executor', 'cold'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [this.registry],
    });
    this.payloadBytes = new Counter({
      name: 'kindling_payload_bytes_total',
      help: 'Bytes of stdin (in) and kept stdout+stderr (out)',
      labelNames: ['direction'],
      registers: [this.registry],
    });
    this.httpErrors = new Counter({
      name: 'kindling_http_errors_total',
      help: 'Error responses by stable error code and HTTP status',
      labelNames: ['code', 'status'],
      registers: [this.registry],
    });
    const queue = options.queue;
    if (queue) {
      new Gauge({
        name: 'kindling_executions_in_flight',
        help: 'Executions running now',
        registers: [this.registry],
        collect() {
          this.set(queue().running);
        },
      });
      new Gauge({
        name: 'kindling_queue_depth',
        help: 'Executions waiting for a slot',
        registers: [this.registry],
        collect() {
          this.set(queue().queued);
        },
      });
    }
  }

  onExecutionFinished(result: ExecutionResult, context: { stdinBytes: number; streamedStdoutBytes?: number; functionName?: string }): void {
    const fn = context.functionName ?? EXECUTE_FUNCTION_LABEL;
    this.invocations.inc({ function: fn, executor: result.executor, status: statusOf(result), cold: String(result.coldStart) });
    this.duration.observe({ function: fn, executor: result.executor }, result.durationMs / 1000);
    this.startDuration.observe({ executor: result.executor, cold: String(result.coldStart) }, result.timings.startMs / 1000);
    this.payloadBytes.inc({ direction: 'in' }, context.stdinBytes);
    const outBytes = result.outputEncoding === 'base64'
      ? Buffer.byteLength(result.stdout, 'base64') + Buffer.byteLength(result.stderr, 'base64')
      : Buffer.byteLength(result.stdout) + Buffer.byteLength(result.stderr);
    this.payloadBytes.inc({ direction: 'out' }, outBytes + (context.streamedStdoutBytes ?? 0));
  }

  onExecutionFailed(error: KindlingError, context: { executor: ExecutorName; functionName?: string }): void {
    this.invocations.inc({ function: context.functionName ?? EXECUTE_FUNCTION_LABEL, executor: context.executor, status: 'error', cold: 'true' });
  }

  /** A handler-style invocation (warm pools); command functions are counted through onExecutionFinished. */
  onInvocation(event: { functionName: string; executor: ExecutorName; status: InvocationStatus; coldStart: boolean; durationMs: number; inBytes: number; outBytes: number }): void {
    this.invocations.inc({ function: event.functionName, executor: event.executor, status: event.status, cold: String(event.coldStart) });
    if (event.status !== 'error') this.duration.observe({ function: event.functionName, executor: event.executor }, event.durationMs / 1000);
    this.payloadBytes.inc({ direction: 'in' }, event.inBytes);
    this.payloadBytes.inc({ direction: 'out' }, event.outBytes);
  }

  onHttpError(code: string, statusCode: number): void {
    this.httpErrors.inc({ code, status: String(statusCode) });
  }
}
