/**
 * The quota and metering side of persistent sandboxes, kept apart from SandboxService's lifecycle: counts what each
 * tenant holds (running, paused, memory of live sandboxes, kept disks, snapshot bytes, plus what is being made), checks
 * it against the tenant's quotas (sandbox-quotas.ts) and forwards lifecycle events to the usage meter.
 */
import type { PersistentSandbox } from '../executors/executor.js';
import type { SandboxRecord, SqliteSandboxStore } from '../store/sandboxes-sqlite.js';
import { checkSandboxQuotas, EMPTY_FOOTPRINT, type SandboxFootprint, type SandboxQuotas } from './sandbox-quotas.js';

/** A live sandbox as the meter sees it. */
export interface MeteredSandbox {
  id: string;
  tenant: string;
  executor: string;
  memoryMb: number;
  /** The cgroup's CPU count so far (read by the host), or null when the executor cannot tell. */
  cpuMs: () => number | null;
}

/** What the usage meter is told (metrics/sandbox-meter.ts). */
export interface SandboxMeterHooks {
  started(sandbox: MeteredSandbox): void;
  paused(id: string): void;
  resumed(id: string): void;
  stopped(id: string): void;
}

export interface SandboxAccountingOptions {
  store: Pick<SqliteSandboxStore, 'list' | 'listSnapshots'>;
  live: () => { record: SandboxRecord; sandbox: Pick<PersistentSandbox, 'usage'> }[];
  quotasOf: (tenant: string) => SandboxQuotas;
  meter?: SandboxMeterHooks;
}

const FIELDS: (keyof SandboxFootprint)[] = ['running', 'paused', 'memoryMb', 'diskMb', 'snapshotBytes'];

export class SandboxAccounting {
  /** What is being made, per tenant (counted like what exists). */
  private readonly reserved = new Map<string, SandboxFootprint>();

  constructor(private readonly options: SandboxAccountingOptions) {}

  quotasOf(tenant: string): SandboxQuotas {
    return this.options.quotasOf(tenant);
  }

  /** What the tenant holds now, what is being made included. */
  footprint(tenant: string): SandboxFootprint {
    const total = { ...(this.reserved.get(tenant) ?? EMPTY_FOOTPRINT) };
    for (const { record } of this.options.live()) {
      if (record.tenant !== tenant) continue;
      if (record.state === 'running') total.running++;
      else if (record.state === 'paused') total.paused++;
      total.memoryMb += record.limits.memoryMb;
    }
    for (const record of this.options.store.list(tenant)) if ((record.storage ?? null) !== null) total.diskMb += record.limits.diskMb;
    for (const snapshot of this.options.store.listSnapshots(tenant)) total.snapshotBytes += snapshot.bytes;
    return total;
  }

  /** Every tenant's live footprint (running, paused, memory), for metrics. Disks and snapshots are not read here. */
  footprints(): Map<string, Pick<SandboxFootprint, 'running' | 'paused' | 'memoryMb'>> {
    const out = new Map<string, Pick<SandboxFootprint, 'running' | 'paused' | 'memoryMb'>>();
    for (const { record } of this.options.live()) {
      let row = out.get(record.tenant);
      if (row === undefined) out.set(record.tenant, (row = { running: 0, paused: 0, memoryMb: 0 }));
      if (record.state === 'running') row.running++;
      else if (record.state === 'paused') row.paused++;
      row.memoryMb += record.limits.memoryMb;
    }
    return out;
  }

  /** Throws (429 TENANT_SANDBOX_LIMIT, 409 TENANT_STORAGE_LIMIT) when `adding` would pass a quota. */
  check(tenant: string, adding: Partial<SandboxFootprint>): void {
    checkSandboxQuotas(tenant, this.options.quotasOf(tenant), this.footprint(tenant), adding);
  }

  /** check(), then counts `adding` as held until the returned release is called (once the sandbox is live, or failed). */
  reserve(tenant: string, adding: Partial<SandboxFootprint>): () => void {
    this.check(tenant, adding);
    this.add(tenant, adding, 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.add(tenant, adding, -1);
    };
  }

  /** Before a snapshot (bytes 1: is any byte left?) and after it (its real size; the caller removes it when refused). */
  checkSnapshot(tenant: string, bytes: number): void {
    this.check(tenant, { snapshotBytes: bytes });
  }

  meterStart(record: SandboxRecord, sandbox: Pick<PersistentSandbox, 'usage'>): void {
    this.options.meter?.started({ id: record.id, tenant: record.tenant, executor: record.executor, memoryMb: record.limits.memoryMb, cpuMs: () => sandbox.usage()?.cpuMs ?? null });
  }

  meterPause(id: string): void {
    this.options.meter?.paused(id);
  }

  meterResume(id: string): void {
    this.options.meter?.resumed(id);
  }

  meterStop(id: string): void {
    this.options.meter?.stopped(id);
  }

  private add(tenant: string, adding: Partial<SandboxFootprint>, sign: 1 | -1): void {
    const row = { ...(this.reserved.get(tenant) ?? EMPTY_FOOTPRINT) };
    for (const field of FIELDS) row[field] += sign * (adding[field] ?? 0);
    if (FIELDS.every((field) => row[field] === 0)) this.reserved.delete(tenant);
    else this.reserved.set(tenant, row);
  }
}
