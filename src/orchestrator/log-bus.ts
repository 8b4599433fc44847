import type { OutputStreamName } from './execution-service.js';

/** What log followers see: an invocation starts, prints (stdout/stderr text as produced), ends. */
export type LogMessage =
  | { kind: 'start'; invocationId: string; tenant: string; functionName: string }
  | { kind: 'output'; invocationId: string; tenant: string; functionName: string; stream: OutputStreamName; text: string }
  | { kind: 'end'; invocationId: string; tenant: string; functionName: string; status: string };

/** Text kept per running invocation for followers that join late (beyond it, they see only what comes next). */
const REPLAY_CAP_BYTES = 1024 * 1024;

interface Live {
  tenant: string;
  functionName: string;
  output: Extract<LogMessage, { kind: 'output' }>[];
  bytes: number;
}

/**
 * Live log fan-out of running invocations (in-process). It observes; it never drives behaviour: a follower that is
 * slow or gone costs the running function nothing (SSE writers drop nothing but are not awaited here).
 */
export class LogBus {
  private readonly live = new Map<string, Live>();
  private readonly listeners = new Set<(message: LogMessage) => void>();

  /** Whether anyone follows (callers skip the work of producing log text when nobody does). */
  get followed(): boolean {
    return this.listeners.size > 0;
  }

  start(invocationId: string, tenant: string, functionName: string): void {
    this.live.set(invocationId, { tenant, functionName, output: [], bytes: 0 });
    this.emit({ kind: 'start', invocationId, tenant, functionName });
  }

  output(invocationId: string, tenant: string, functionName: string, stream: OutputStreamName, text: string): void {
    const message = { kind: 'output' as const, invocationId, tenant, functionName, stream, text };
    const live = this.live.get(invocationId);
    if (live && live.bytes < REPLAY_CAP_BYTES) {
      live.output.push(message);
      live.bytes += text.length;
    }
    this.emit(message);
  }

  end(invocationId: string, tenant: string, functionName: string, status: string): void {
    this.live.delete(invocationId);
    this.emit({ kind: 'end', invocationId, tenant, functionName, status });
  }

  /** The output a running invocation printed so far (up to the replay cap); undefined when it is not running. */
  replay(invocationId: string): LogMessage[] | undefined {
    return this.live.get(invocationId)?.output.slice();
  }

  /** Running invocations of a tenant's function. */
  running(tenant: string, functionName: string): string[] {
    return [...this.live].filter(([, live]) => live.tenant === tenant && live.functionName === functionName).map(([id]) => id);
  }

  subscribe(listener: (message: LogMessage) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(message: LogMessage): void {
    for (const listener of this.listeners) listener(message);
  }
}
