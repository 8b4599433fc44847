import { KindlingError } from '../core/errors.js';

/**
 * Per-tenant caps on what a tenant keeps on the server's disk (issue 14, "shared disk"): without them one tenant's
 * deploys and queued payloads could fill the data dir, and a full disk refuses every tenant's writes (507). null: no cap.
 *
 * Snapshots (a later feature) add a `maxSnapshotBytes` quota here, a `snapshotBytes` count to TenantStorageUsage (a
 * column of tenant_storage kept by the store), and call checkStorageQuota before a snapshot is written.
 */
export interface StorageQuotas {
  /** Function versions kept, all functions of the tenant together (a deploy adds one; retention deletes old ones). */
  maxFunctionVersions: number | null;
  /** Bytes of the kept versions (code, command, env as stored). */
  maxCodeBytes: number | null;
  /** Bytes of the payloads of the tenant's async invocations queued or running. */
  maxQueuedPayloadBytes: number | null;
  /**
   * Bytes of the tenant's custom images (its own and those made for its functions' Debian packages): the size of each
   * built root file system. Checked before a build (no room left: refused) and after it (past the quota: its files
   * are removed and the image is failed), so a tenant keeps at most its quota plus nothing.
   */
  maxImageBytes: number | null;
}

export type StorageQuotaName = keyof StorageQuotas;

/**
 * Server defaults, far above what a normal tenant uses yet bounding each tenant's share of the disk to about 2 GiB:
 * 1000 versions is 100 functions at the default retention of 10 versions each; 1 GiB of code is 10 versions of 100
 * functions of 1 MiB (or 25 functions at the largest code, 4 MiB); 1 GiB of queued payloads is 16 payloads of the
 * largest async body (64 MiB), or a million of 1 KiB. 8 GiB of images is some 30 images of a runtime with a few
 * packages (python + numpy: ~250 MB), the most a tenant may keep (10 of its own, 20 for its functions' packages).
 */
export const DEFAULT_STORAGE_QUOTAS: StorageQuotas = {
  maxFunctionVersions: 1000,
  maxCodeBytes: 1024 ** 3,
  maxQueuedPayloadBytes: 1024 ** 3,
  maxImageBytes: 8 * 1024 ** 3,
};

/** Versions of each function kept (the newest; older ones go on deploy unless an invocation still needs them). */
export const DEFAULT_VERSIONS_KEPT = 10;

/** What each quota counts, and how a tenant frees space. */
const QUOTAS: Record<StorageQuotaName, { what: string; free: string }> = {
  maxFunctionVersions: {
    what: 'function versions',
    free: 'delete functions it no longer needs (DELETE /v1/functions/NAME, kindling functions delete NAME; old versions beyond the server\'s retention go on the next deploy of their function)',
  },
  maxCodeBytes: {
    what: 'bytes of function code (all kept versions)',
    free: 'delete functions it no longer needs (DELETE /v1/functions/NAME, kindling functions delete NAME) or deploy smaller code',
  },
  maxImageBytes: {
    what: 'bytes of custom images',
    free: "delete custom images it no longer needs (DELETE /v1/images/NAME, kindling images delete NAME; an image made for functions' \"apt\" packages goes once no function uses its package list)",
  },
  maxQueuedPayloadBytes: {
    what: 'bytes of queued async payloads',
    free: 'retry once queued invocations have run (a payload is dropped when its invocation finishes), or invoke synchronously (without x-kindling-async)',
  },
};

/**
 * Throws 409 TENANT_STORAGE_LIMIT when `used` leaves no room under `limit`: for what is refused before its size is
 * known (an image build), and checked again against its size once it is.
 */
export function checkStorageRoom(tenant: string, quota: StorageQuotaName, limit: number | null, used: number): void {
  if (limit === null || used < limit) return;
  const info = QUOTAS[quota];
  throw new KindlingError(
    'TENANT_STORAGE_LIMIT',
    `tenant "${tenant}" keeps ${used} ${info.what}, all its quota ${quota} (${limit}) allows. To free space, ${info.free}; or ask the server's admin to raise the quota (PATCH /v1/tenants/${tenant}, kindling tenants update)`,
    { details: { quota, limit, used, requested: 0 } },
  );
}

/**
 * Throws 409 TENANT_STORAGE_LIMIT when adding `adding` to `used` would take the tenant past `limit`. Called before
 * anything is written, so a refused request stores nothing.
 */
export function checkStorageQuota(tenant: string, quota: StorageQuotaName, limit: number | null, used: number, adding: number): void {
  if (limit === null || used + adding <= limit) return;
  const info = QUOTAS[quota];
  throw new KindlingError(
    'TENANT_STORAGE_LIMIT',
    `tenant "${tenant}" keeps ${used} ${info.what}; ${adding} more would pass its quota ${quota} (${limit}). To free space, ${info.free}; or ask the server's admin to raise the quota (PATCH /v1/tenants/${tenant}, kindling tenants update)`,
    { details: { quota, limit, used, requested: adding } },
  );
}
