/**
 * Defaults of the server that the CLI shows in `kindling serve --help`, apart from server.ts so that every other
 * command starts without loading the whole platform (server.ts pulls in fastify, the executors and the store: about
 * 1 s of module loading that `kindling sandbox exec` or `kindling chain submit` would pay for nothing).
 */
import type { FunctionPoolConfig } from './server.js';

export const DEFAULT_FUNCTION_POOLS: FunctionPoolConfig = {
  defaultMaxConcurrency: 10,
  defaultMaxQueued: 256,
  queueTimeoutMs: 30_000,
  idleTtlMs: 10 * 60_000,
  maxUses: 10_000,
  maxAgeMs: 30 * 60_000,
  genericPerShape: 1,
  startTimeoutMs: 30_000,
};

/** What the warm capacity's defaults are derived from: the machine's memory and the server's open-file limit. */
export interface MachineFacts {
  totalMemoryMb: number;
  /** RLIMIT_NOFILE of the server process (node raises the soft limit to the hard one at start). */
  openFilesLimit: number;
}

export interface WarmCapacityDefaults {
  maxWarmSandboxes: number;
  maxWarmMemoryMb: number;
  maxWarmSandboxesPerTenant: number;
  minAvailableMemoryMb: number;
}

/** File descriptors the server holds per warm sandbox (its agent's and launcher's sockets and pipes), rounded up. */
export const SERVER_FDS_PER_WARM_SANDBOX = 5;
/** File descriptors kept for everything else (clients, the store, executions, persistent sandboxes). */
const RESERVED_FDS = 4096;

/** The default per-tenant cap for a given total: three quarters of it (at least 1). */
export const tenantShareOf = (maxWarmSandboxes: number): number => Math.max(1, Math.floor((maxWarmSandboxes * 3) / 4));

/**
 * The warm capacity's defaults (docs/operations.md, "Warm capacity"), from the machine:
 * - memory budget: 75% of RAM, counted as what warm sandboxes use (measured), not their limits (the pressure floor
 *   below keeps the host's own reserve);
 * - count: one warm sandbox per 8 MiB of RAM (an idle python handler's cgroup uses about 7 MiB, node about 14), at
 *   most what the open-file limit leaves room for (SERVER_FDS_PER_WARM_SANDBOX each after RESERVED_FDS), at least 64;
 * - per tenant: three quarters of the count, so one tenant's functions never push out every other tenant's;
 * - pressure floor: idle warm sandboxes are evicted while less than 5% of RAM (at least 256 MiB) is available.
 * 24 GiB and 20,000 open files: 3,013 sandboxes, 18,078 MiB, 2,259 per tenant, evictions below 1,205 MiB available.
 */
export function warmCapacityDefaults(machine: MachineFacts): WarmCapacityDefaults {
  const byMemory = Math.floor(machine.totalMemoryMb / 8);
  const byFiles = Math.floor((machine.openFilesLimit - RESERVED_FDS) / SERVER_FDS_PER_WARM_SANDBOX);
  const maxWarmSandboxes = Math.max(64, Math.min(byMemory, byFiles));
  return {
    maxWarmSandboxes,
    maxWarmMemoryMb: Math.floor(machine.totalMemoryMb * 0.75),
    maxWarmSandboxesPerTenant: tenantShareOf(maxWarmSandboxes),
    minAvailableMemoryMb: Math.max(256, Math.floor(machine.totalMemoryMb / 20)),
  };
}
