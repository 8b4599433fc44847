import { KindlingError } from '../core/errors.js';
import type { ResourceLimits } from '../core/types.js';

export interface LimitPolicy {
  defaults: ResourceLimits;
  /** Inclusive bounds per limit; a request outside gets LIMIT_OUT_OF_RANGE with the range in the message. */
  min: ResourceLimits;
  max: ResourceLimits;
}

export const DEFAULT_LIMIT_POLICY: LimitPolicy = {
  defaults: { timeoutMs: 30_000, memoryMb: 256, cpus: 1, pids: 256, outputBytes: 10 * 1024 * 1024, diskMb: 256, openFiles: 1024 },
  min: { timeoutMs: 1, memoryMb: 16, cpus: 0.05, pids: 8, outputBytes: 0, diskMb: 1, openFiles: 16 },
  max: { timeoutMs: 15 * 60_000, memoryMb: 16_384, cpus: 64, pids: 32_768, outputBytes: 100 * 1024 * 1024, diskMb: 16_384, openFiles: 65_536 },
};

const LIMIT_UNITS: Record<keyof ResourceLimits, string> = {
  timeoutMs: 'milliseconds',
  memoryMb: 'MiB',
  cpus: 'cores',
  pids: 'processes',
  outputBytes: 'bytes',
  diskMb: 'MiB',
  openFiles: 'file descriptors',
};

/** The tenant quota that caps each limit (for messages). */
const CAP_QUOTAS: Record<keyof ResourceLimits, string> = {
  timeoutMs: 'maxTimeoutMs',
  memoryMb: 'maxMemoryMb',
  cpus: 'maxCpus',
  pids: 'maxPids',
  outputBytes: 'maxOutputBytes',
  diskMb: 'maxDiskMb',
  openFiles: 'maxOpenFiles',
};

/**
 * Request values override runtime defaults, which override the server's defaults; every result is range-checked.
 * `caps` (a tenant's quotas) lower the defaults to the cap, and a request above a cap gets TENANT_LIMIT_EXCEEDED.
 */
export function resolveLimits(
  requested: Partial<ResourceLimits>,
  runtimeDefaults: Partial<ResourceLimits>,
  policy: LimitPolicy,
  caps: Partial<ResourceLimits> = {},
): ResourceLimits {
  const resolved = { ...policy.defaults };
  for (const key of Object.keys(policy.defaults) as (keyof ResourceLimits)[]) {
    const runtimeValue = runtimeDefaults[key];
    if (runtimeValue !== undefined) resolved[key] = Math.min(runtimeValue, policy.max[key]);
    const cap = caps[key];
    if (cap !== undefined) resolved[key] = Math.max(policy.min[key], Math.min(resolved[key], cap));
    const value = requested[key];
    if (value === undefined) continue;
    if (key !== 'cpus' && Number.isFinite(value) && !Number.isInteger(value)) {
      throw new KindlingError('LIMIT_OUT_OF_RANGE', `${key} must be a whole number of ${LIMIT_UNITS[key]}, got ${value}`, { details: { field: key } });
    }
    if (!Number.isFinite(value) || value < policy.min[key] || value > policy.max[key]) {
      throw new KindlingError(
        'LIMIT_OUT_OF_RANGE',
        `${key} must be between ${policy.min[key]} and ${policy.max[key]} ${LIMIT_UNITS[key]}, got ${value}`,
        { details: { field: key, min: policy.min[key], max: policy.max[key] } },
      );
    }
    if (cap !== undefined && value > cap) {
      throw new KindlingError(
        'TENANT_LIMIT_EXCEEDED',
        `${key} ${value} is above this tenant's cap of ${cap} ${LIMIT_UNITS[key]} (quota ${CAP_QUOTAS[key]}); ask less, or ask an admin to raise the quota`,
        { details: { field: key, cap, quota: CAP_QUOTAS[key] } },
      );
    }
    resolved[key] = value;
  }
  return resolved;
}
