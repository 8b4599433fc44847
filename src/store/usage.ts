import type { ExecutorName } from '../core/types.js';

/** Tenant of every usage record until tenants exist (issue 6). */
export const DEFAULT_TENANT = 'default';

/** One metered invocation or execution: what the kernel accounted, the wall time, the bytes. */
export interface UsageRecord {
  /** Invocation or execution id (`inv_…`, `ex_…`): the same id the response headers, logs and console show. */
  id: string;
  tenant: string;
  /** Function name, `_execute` for one-off executions, `_build` for dependency builds. */
  function: string;
  executor: ExecutorName;
  /** Epoch ms when the invocation finished. */
  atMs: number;
  /**
   * `idle`: not an invocation but CPU a warm sandbox used between invocations (background work a handler left
   * running, its start), billed to the function; such records count in `cpuMs` sums, never as invocations.
   */
  status: 'succeeded' | 'failed' | 'timeout' | 'oom' | 'error' | 'idle' | 'sandbox' | 'storage';
  coldStart: boolean;
  /** Wall time of the invocation. */
  durationMs: number;
  /** CPU time from the cgroup, read by the server; null when the executor cannot tell (microvm guests). */
  cpuMs: number | null;
  memoryPeakBytes: number | null;
  /** The memory limit the sandbox had; GB-seconds = memoryMb / 1024 × durationMs / 1000, like AWS Lambda. */
  memoryMb: number;
  bytesIn: number;
  bytesOut: number;
  /** W3C trace id of the request, when there was one. */
  traceId: string | null;
  /**
   * `storage` records: GB-hours of a persistent sandbox's kept disk or of a snapshot (`function` holds its id).
   * (`sandbox` records are a running persistent sandbox's wall time and CPU, `function` its id; see sandbox-meter.ts.)
   */
  storageGbHours?: number;
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
  /** Invocations and executions (idle, sandbox and storage records excluded). */
  invocations: number;
  /** All CPU billed to the group: invocations' plus warm sandboxes' idle CPU. */
  cpuMs: number;
  gbSeconds: number;
  /** GB-hours of persistent sandboxes' kept disks and snapshots. */
  storageGbHours: number;
  bytesIn: number;
  bytesOut: number;
}

/** Where usage records live (SQLite beside the functions by default). Synchronous like Store. */
export interface UsageStore {
  /** Stores a record; it may be written a moment later (within the event-loop turn), but every read sees it. */
  record(record: UsageRecord): void;
  summarize(query: UsageQuery): UsageRow[];
  /** The newest invocation records first (idle records excluded), at most `limit` (the console's list and charts). */
  recent(options: { tenant?: string; limit: number; sinceMs?: number }): UsageRecord[];
  close(): void;
}
