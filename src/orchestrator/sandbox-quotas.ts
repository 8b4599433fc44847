/**
 * Tenant quotas on persistent sandboxes (issue 16, "tenants and metering"): how many run and how many are paused at
 * once, the memory of the live ones, the disks kept (stopped sandboxes' included) and the bytes of snapshots. The
 * arithmetic is here, pure; SandboxService counts the tenant's footprint and calls `checkSandboxQuotas` before it
 * makes, resumes, restarts or snapshots anything, so a refused request leaves nothing behind. null: no cap.
 */
import { KindlingError } from '../core/errors.js';

export interface SandboxQuotas {
  /** Sandboxes running at once (paused ones not counted); default --max-sandboxes-per-tenant. */
  maxSandboxes: number | null;
  /** Sandboxes paused at once (an explicit pause beyond is refused; idle auto-pause is never refused). */
  maxPausedSandboxes: number | null;
  /** Sum of memoryMb of the live (running or paused) sandboxes. */
  maxSandboxMemoryMb: number | null;
  /** Sum of diskMb of the sandboxes that keep a disk, stopped ones included (until deleted). */
  maxSandboxDiskMb: number | null;
  /** Bytes of the tenant's snapshots. */
  maxSnapshotBytes: number | null;
}

export type SandboxQuotaName = keyof SandboxQuotas;

export const SANDBOX_QUOTA_NAMES: readonly SandboxQuotaName[] = ['maxSandboxes', 'maxPausedSandboxes', 'maxSandboxMemoryMb', 'maxSandboxDiskMb', 'maxSnapshotBytes'];

export const NO_SANDBOX_QUOTAS: SandboxQuotas = { maxSandboxes: null, maxPausedSandboxes: null, maxSandboxMemoryMb: null, maxSandboxDiskMb: null, maxSnapshotBytes: null };

/** What a tenant holds now (sandboxes being made count as running). */
export interface SandboxFootprint {
  running: number;
  paused: number;
  /** memoryMb of running and paused sandboxes. */
  memoryMb: number;
  /** diskMb of sandboxes keeping a disk (running, paused or stopped). */
  diskMb: number;
  snapshotBytes: number;
}

export const EMPTY_FOOTPRINT: SandboxFootprint = { running: 0, paused: 0, memoryMb: 0, diskMb: 0, snapshotBytes: 0 };

/** What the quota counts (in the footprint), the unit, its error and how to make room. */
const INFO: Record<SandboxQuotaName, { key: keyof SandboxFootprint; what: string; code: 'TENANT_SANDBOX_LIMIT' | 'TENANT_STORAGE_LIMIT'; free: string }> = {
  maxSandboxes: { key: 'running', what: 'running sandboxes', code: 'TENANT_SANDBOX_LIMIT', free: 'pause (POST /v1/sandboxes/ID/pause), stop or delete (DELETE /v1/sandboxes/ID) one first' },
  maxPausedSandboxes: { key: 'paused', what: 'paused sandboxes', code: 'TENANT_SANDBOX_LIMIT', free: 'resume or delete (DELETE /v1/sandboxes/ID) a paused one first' },
  maxSandboxMemoryMb: { key: 'memoryMb', what: 'MB of memory in live (running or paused) sandboxes', code: 'TENANT_SANDBOX_LIMIT', free: 'delete a live sandbox (DELETE /v1/sandboxes/ID) or ask for less memoryMb' },
  maxSandboxDiskMb: { key: 'diskMb', what: 'MB of sandbox disks (stopped sandboxes keep theirs until deleted)', code: 'TENANT_STORAGE_LIMIT', free: 'delete sandboxes you no longer need (DELETE /v1/sandboxes/ID; a stopped one keeps its disk until then) or ask for less diskMb' },
  maxSnapshotBytes: { key: 'snapshotBytes', what: 'bytes of snapshots', code: 'TENANT_STORAGE_LIMIT', free: 'delete snapshots you no longer need (DELETE /v1/snapshots/ID)' },
};

/**
 * Throws when adding `adding` to the tenant's `footprint` would take it past one of its quotas: 429
 * TENANT_SANDBOX_LIMIT for running/paused counts and memory (room comes back when sandboxes stop), 409
 * TENANT_STORAGE_LIMIT for kept disks and snapshot bytes (room comes back only when something is deleted).
 */
export function checkSandboxQuotas(tenant: string, quotas: SandboxQuotas, footprint: SandboxFootprint, adding: Partial<SandboxFootprint>): void {
  for (const quota of SANDBOX_QUOTA_NAMES) {
    const info = INFO[quota];
    const more = adding[info.key] ?? 0;
    const limit = quotas[quota];
    if (more <= 0 || limit === null) continue;
    const used = footprint[info.key];
    if (used + more <= limit) continue;
    throw new KindlingError(
      info.code,
      `tenant "${tenant}" has ${used} ${info.what}; ${more} more would pass its quota ${quota} (${limit}). To make room, ${info.free}; or ask the server's admin to raise the quota (PATCH /v1/tenants/${tenant}, kindling tenants update ${tenant} --${kebab(quota)} N)`,
      { details: { quota, limit, used, requested: more }, ...(info.code === 'TENANT_SANDBOX_LIMIT' ? { retryAfterSeconds: 5 } : {}) },
    );
  }
}

const kebab = (name: string): string => name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
