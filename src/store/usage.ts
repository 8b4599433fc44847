import type { ExecutorName } from '../core/types.js';

/** Tenant of every usage record until tenants exist (issue 6). */
export const DEFAULT_TENANT = 'default';

/** One metered invocation or execution: what the kernel accounted, the wall time, the bytes. */
export interface UsageRecord {
  /** Invocation or execution id (`inv_…`, `ex_…`): the same id the response headers, logs and console show. */
  id: string;
  tenant: string;
  /** Function name, or `_execute` for one-off executions. */
  function: string;
  executor: ExecutorName;
  /** Epoch ms when the invocation finished. */
  atMs: number;
  status: 'succeeded' | 'failed' | 'timeout' | 'oom' | 'error';
  coldStart: boolean;
  /** Wall time of the invocation. */
  durationMs: number;
  /** CPU time from the cgroup; null when the executor cannot tell (warm handler calls, docker on some hosts). */
  cpuMs: number | null;
  memoryPeakBytes: number | null;
  /** The memory limit the sandbox had; GB-seconds = memoryMb / 1024 × durationMs / 1000, like AWS Lambda. */
  memoryMb: number;
  bytesIn: number;
  bytesOut: number;
  /** W3C trace id of the request, when there was one. */
  traceId: string | null;
}

export type UsageGroupBy = 'function' | 'day';

export interface UsageQuery {
  tenant?: string;
  /** Epoch ms, inclusive. */
  fromMs: number;
  /** Epoch ms, exclusive. */
  toMs: number;
  groupBy: UsageGroupBy;
}

export interface UsageRow {
  tenant: string;
  /** The group: a function name (groupBy=function) or a UTC day YYYY-MM-DD (groupBy=day). */
  key: string;
  invocations: number;
  cpuMs: number;
  gbSeconds: number;
  bytesIn: number;
  bytesOut: number;
}

/** Where usage records live (SQLite beside the functions by default). Synchronous like Store. */
export interface UsageStore {
  /** Stores a record; it may be written a moment later (within the event-loop turn), but every read sees it. */
  record(record: UsageRecord): void;
  summarize(query: UsageQuery): UsageRow[];
  /** The newest records first, at most `limit` (the console's invocation list and charts). */
  recent(options: { tenant?: string; limit: number; sinceMs?: number }): UsageRecord[];
  close(): void;
}
