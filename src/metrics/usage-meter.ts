import type { KindlingError } from '../core/errors.js';
import type { ExecutionResult, ExecutorName } from '../core/types.js';
import type { ExecutionContext, ExecutionObserver } from '../orchestrator/execution-service.js';
import { newId } from '../core/ids.js';
import type { IdleUsageEvent, InvocationEvent, InvocationObserver } from '../orchestrator/handler-pools.js';
import { DEFAULT_TENANT, type UsageRecord, type UsageStore } from '../store/usage.js';
import { EXECUTE_FUNCTION_LABEL, statusOf } from './metrics.js';

/**
 * Writes one usage record per finished invocation: the kernel's CPU time and peak memory (the sandbox's cgroup, read
 * by the server: at the end of a one-off execution, and around each call of a warm sandbox), wall time, the memory
 * limit (for GB-seconds) and bytes in/out; and `idle` records of the CPU warm sandboxes used between calls. Nothing
 * here comes from inside a sandbox, so user code cannot lower its bill. Observes only: a failing write is logged,
 * never turned into a failed invocation.
 */
export class UsageMeter implements ExecutionObserver, InvocationObserver {
  constructor(
    private readonly store: UsageStore,
    private readonly options: { now?: () => number; onError?: (error: unknown) => void; tenant?: string } = {},
  ) {}

  onExecutionFinished(result: ExecutionResult, context: ExecutionContext): void {
    // A cluster worker's run for a gateway is metered by the gateway.
    if (context.meteredElsewhere === true) return;
    this.write({
      id: result.id,
      tenant: context.tenant ?? this.options.tenant ?? DEFAULT_TENANT,
      function: context.functionName ?? EXECUTE_FUNCTION_LABEL,
      executor: result.executor,
      atMs: this.now(),
      status: statusOf(result),
      coldStart: result.coldStart,
      durationMs: result.durationMs,
      cpuMs: result.usage?.cpuMs ?? null,
      memoryPeakBytes: result.usage?.memoryPeakBytes ?? null,
      memoryMb: context.memoryMb,
      bytesIn: context.stdinBytes,
      bytesOut: context.outputBytes,
      traceId: context.traceId ?? null,
    });
  }

  onExecutionFailed(_error: KindlingError, _context: { executor: ExecutorName; functionName?: string }): void {
    // Nothing ran to completion: nothing to meter (the metrics count the error).
  }

  onInvocation(event: InvocationEvent): void {
    // A platform error is not billed; a cluster worker's run for a gateway is metered by the gateway.
    if (event.status === 'error' || event.meteredElsewhere === true) return;
    this.write({
      id: event.invocationId,
      tenant: event.tenant ?? this.options.tenant ?? DEFAULT_TENANT,
      function: event.functionName,
      executor: event.executor,
      atMs: this.now(),
      status: event.status,
      coldStart: event.coldStart,
      durationMs: event.durationMs,
      // A warm sandbox's cgroup serves many calls: each call gets the delta of its counter across the call.
      cpuMs: event.cpuMs ?? null,
      memoryPeakBytes: event.memoryPeakBytes ?? null,
      memoryMb: event.memoryMb,
      bytesIn: event.inBytes,
      bytesOut: event.outBytes,
      traceId: event.traceId ?? null,
    });
  }

  onIdleUsage(event: IdleUsageEvent): void {
    this.write({
      id: newId('idle'),
      tenant: event.tenant,
      function: event.functionName,
      executor: event.executor,
      atMs: this.now(),
      status: 'idle',
      coldStart: false,
      // No wall time: a warm sandbox's idle time is the platform's choice (keeping it warm), only its CPU is billed.
      durationMs: 0,
      cpuMs: event.cpuMs,
      memoryPeakBytes: null,
      memoryMb: event.memoryMb,
      bytesIn: 0,
      bytesOut: 0,
      traceId: null,
    });
  }

  private now(): number {
    return this.options.now?.() ?? Date.now();
  }

  private write(record: UsageRecord): void {
    try {
      this.store.record(record);
    } catch (error) {
      this.options.onError?.(error);
    }
  }
}
