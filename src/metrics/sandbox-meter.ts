import { newId } from '../core/ids.js';
import type { ExecutorName } from '../core/types.js';
import type { MeteredSandbox, SandboxMeterHooks } from '../orchestrator/sandbox-accounting.js';
import type { UsageRecord, UsageStore } from '../store/usage.js';

/** Something a tenant keeps on disk for sandboxes: a sandbox's disk (key: the sandbox id) or a snapshot (its id). */
export interface StoredSandboxItem {
  tenant: string;
  key: string;
  executor: string;
  /** Size to bill: a disk's diskMb (what it may fill), a snapshot's bytes / 2^20. */
  mb: number;
}

export interface SandboxMeterOptions {
  now?: () => number;
  /** How often running sandboxes' cgroups are read and stored GB-hours written; default 60 s. */
  intervalMs?: number;
  /** Disks and snapshots kept now (read on each tick). */
  storage?: () => StoredSandboxItem[];
  onError?: (error: unknown) => void;
}

interface Tracked {
  sandbox: MeteredSandbox;
  running: boolean;
  /** Since when the time not yet written runs. */
  sinceMs: number;
  /** The cgroup's CPU count when last written. */
  cpuMs: number;
}

/**
 * Usage records of persistent sandboxes, beside those of executions and warm sandboxes (usage-meter.ts):
 * - `status: 'sandbox'`: a running sandbox's wall time (GB-seconds = its memoryMb / 1024 × seconds running; paused time
 *   is not billed) and the CPU its cgroup counted, read by the host every `intervalMs` and at each pause and stop;
 * - `status: 'storage'`: GB-hours of its kept disk (diskMb) and of each snapshot, written every `intervalMs` for the
 *   interval that passed (what exists at the tick is billed for the whole interval).
 * Both carry the sandbox's (or snapshot's) id in `function`, so GET /v1/usage groups them per sandbox key; they never
 * count as invocations. Nothing here comes from inside a sandbox.
 */
export class SandboxMeter implements SandboxMeterHooks {
  private readonly tracked = new Map<string, Tracked>();
  private storageSinceMs: number;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly store: UsageStore,
    private readonly options: SandboxMeterOptions = {},
  ) {
    this.storageSinceMs = this.now();
  }

  /** Starts the periodic reads (unref'd timer). */
  start(): this {
    this.timer ??= setInterval(() => this.tick(), this.options.intervalMs ?? 60_000);
    this.timer.unref();
    return this;
  }

  started(sandbox: MeteredSandbox): void {
    // A new cgroup: its counter starts at 0, so the start-up CPU is billed too.
    this.tracked.set(sandbox.id, { sandbox, running: true, sinceMs: this.now(), cpuMs: 0 });
  }

  paused(id: string): void {
    const tracked = this.tracked.get(id);
    if (tracked === undefined) return;
    this.settle(tracked);
    tracked.running = false;
  }

  resumed(id: string): void {
    const tracked = this.tracked.get(id);
    if (tracked === undefined) return;
    this.settle(tracked);
    tracked.running = true;
  }

  stopped(id: string): void {
    const tracked = this.tracked.get(id);
    if (tracked === undefined) return;
    this.settle(tracked);
    this.tracked.delete(id);
  }

  /** Writes what running sandboxes used since the last write, and the stored GB-hours since the last tick. */
  tick(): void {
    for (const tracked of this.tracked.values()) this.settle(tracked);
    const now = this.now();
    const hours = (now - this.storageSinceMs) / 3_600_000;
    this.storageSinceMs = now;
    if (hours <= 0 || this.options.storage === undefined) return;
    let items: StoredSandboxItem[];
    try {
      items = this.options.storage();
    } catch (error) {
      this.options.onError?.(error);
      return;
    }
    for (const item of items) {
      if (item.mb <= 0) continue;
      this.write({ ...base(item.tenant, item.key, item.executor, now), status: 'storage', storageGbHours: (item.mb / 1024) * hours });
    }
  }

  /** Stops the timer; what is tracked is written once more. */
  close(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    for (const tracked of this.tracked.values()) this.settle(tracked);
  }

  private settle(tracked: Tracked): void {
    const now = this.now();
    let cpu: number | null = null;
    try {
      cpu = tracked.sandbox.cpuMs();
    } catch (error) {
      this.options.onError?.(error);
    }
    const cpuDelta = cpu === null ? null : Math.max(0, cpu - tracked.cpuMs);
    const durationMs = tracked.running ? Math.max(0, now - tracked.sinceMs) : 0;
    tracked.sinceMs = now;
    if (cpu !== null) tracked.cpuMs = Math.max(tracked.cpuMs, cpu);
    if (durationMs === 0 && !(cpuDelta !== null && cpuDelta > 0)) return;
    const { sandbox } = tracked;
    this.write({ ...base(sandbox.tenant, sandbox.id, sandbox.executor, now), status: 'sandbox', durationMs, cpuMs: cpuDelta, memoryMb: sandbox.memoryMb });
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

function base(tenant: string, key: string, executor: string, atMs: number): UsageRecord {
  return {
    id: newId('use'),
    tenant,
    function: key,
    executor: executor as ExecutorName,
    atMs,
    status: 'sandbox',
    coldStart: false,
    durationMs: 0,
    cpuMs: null,
    memoryPeakBytes: null,
    memoryMb: 0,
    bytesIn: 0,
    bytesOut: 0,
    traceId: null,
  };
}
