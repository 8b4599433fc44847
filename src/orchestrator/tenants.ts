import { createHash, randomBytes } from 'node:crypto';
import { systemClock, type Clock } from '../core/clock.js';
import { KindlingError } from '../core/errors.js';
import type { ResourceLimits } from '../core/types.js';
import type { TenantScope } from './execution-service.js';
import { FUNCTION_NAME_PATTERN, type TenantStorageUsage } from '../store/store.js';
import type { ApiKeyRecord, SqliteTenantStore, TenantQuotas, TenantRecord } from '../store/tenants-sqlite.js';
import { localTenantWrites, type TenantWrites } from '../store/writes.js';
import { DEFAULT_STORAGE_QUOTAS, type StorageQuotas } from './storage-quotas.js';
import { NO_SANDBOX_QUOTAS, type SandboxQuotas } from './sandbox-quotas.js';
import { TokenBucket } from './token-bucket.js';

export const DEFAULT_TENANT = 'default';
/** Keys look like `kdl_` + 43 base64url characters (32 random bytes). */
export const API_KEY_PREFIX = 'kdl_';
const DISPLAY_PREFIX_CHARS = 12;

/** Who a request acts for: resolved by the auth hook from the key (and, for admins, `x-kindling-tenant`). */
export interface Principal {
  tenant: string;
  isAdmin: boolean;
  /** The key's id; `env` for KINDLING_ADMIN_KEY, null in open local mode (no keys at all). */
  keyId: string | null;
}

/** Quotas with the server's defaults filled in; null: no cap beyond the server's own ranges. */
export interface ResolvedQuotas extends StorageQuotas, SandboxQuotas {
  maxConcurrency: number | null;
  maxConcurrentBuilds: number | null;
  requestsPerSecond: number | null;
  burst: number | null;
  maxMemoryMb: number | null;
  maxTimeoutMs: number | null;
  maxCpus: number | null;
  maxPids: number | null;
  maxOpenFiles: number | null;
  maxOutputBytes: number | null;
  maxDiskMb: number | null;
  maxPayloadBytes: number | null;
}

/** Dependency builds a tenant runs at once unless its quota says otherwise: each may take --build-cpus for minutes. */
export const DEFAULT_TENANT_MAX_CONCURRENT_BUILDS = 2;

export const UNLIMITED_QUOTAS: ResolvedQuotas = {
  maxConcurrency: null,
  // Not unlimited: without a per-tenant cap one tenant with many functions fills every build slot of the server.
  maxConcurrentBuilds: DEFAULT_TENANT_MAX_CONCURRENT_BUILDS,
  requestsPerSecond: null,
  burst: null,
  maxMemoryMb: null,
  maxTimeoutMs: null,
  maxCpus: null,
  maxPids: null,
  maxOpenFiles: null,
  maxOutputBytes: null,
  maxDiskMb: null,
  maxPayloadBytes: null,
  maxFunctionVersions: null,
  maxCodeBytes: null,
  maxQueuedPayloadBytes: null,
  maxImageBytes: null,
  ...NO_SANDBOX_QUOTAS,
};

/** Each quota field: its valid range and, for caps, the resource limit it caps. */
const QUOTA_FIELDS: Record<keyof TenantQuotas, { min: number; max: number; integer: boolean; limit?: keyof ResourceLimits }> = {
  maxConcurrency: { min: 1, max: 100_000, integer: true },
  maxConcurrentBuilds: { min: 1, max: 10_000, integer: true },
  requestsPerSecond: { min: 0.001, max: 1_000_000, integer: false },
  burst: { min: 1, max: 10_000_000, integer: true },
  maxMemoryMb: { min: 16, max: 1_048_576, integer: true, limit: 'memoryMb' },
  maxTimeoutMs: { min: 1, max: 86_400_000, integer: true, limit: 'timeoutMs' },
  maxCpus: { min: 0.05, max: 1024, integer: false, limit: 'cpus' },
  maxPids: { min: 8, max: 4_194_304, integer: true, limit: 'pids' },
  maxOpenFiles: { min: 16, max: 1_048_576, integer: true, limit: 'openFiles' },
  maxOutputBytes: { min: 0, max: 1_099_511_627_776, integer: true, limit: 'outputBytes' },
  maxDiskMb: { min: 1, max: 1_048_576, integer: true, limit: 'diskMb' },
  maxPayloadBytes: { min: 0, max: 1_099_511_627_776, integer: true },
  maxFunctionVersions: { min: 0, max: 10_000_000, integer: true },
  maxCodeBytes: { min: 0, max: 1_099_511_627_776, integer: true },
  maxQueuedPayloadBytes: { min: 0, max: 1_099_511_627_776, integer: true },
  maxImageBytes: { min: 0, max: 1_125_899_906_842_624, integer: true },
  // Persistent sandboxes (sandbox-quotas.ts).
  maxSandboxes: { min: 0, max: 100_000, integer: true },
  maxPausedSandboxes: { min: 0, max: 100_000, integer: true },
  maxSandboxMemoryMb: { min: 0, max: 1_073_741_824, integer: true },
  maxSandboxDiskMb: { min: 0, max: 1_073_741_824, integer: true },
  maxSnapshotBytes: { min: 0, max: 1_125_899_906_842_624, integer: true },
};
export const QUOTA_NAMES = Object.keys(QUOTA_FIELDS) as (keyof TenantQuotas)[];

/** Checks a quotas object from a client (shape is schema-checked; ranges here). `null` removes a field (PATCH). */
export function checkQuotas(input: Record<string, unknown>): Record<string, number | null> {
  const out: Record<string, number | null> = {};
  for (const [key, value] of Object.entries(input)) {
    const field = QUOTA_FIELDS[key as keyof TenantQuotas];
    if (field === undefined) {
      throw new KindlingError('VALIDATION_FAILED', `unknown quota "${key.slice(0, 40)}"; quotas are ${QUOTA_NAMES.join(', ')}`, { details: { field: `quotas.${key.slice(0, 40)}` } });
    }
    if (value === null) {
      out[key] = null;
      continue;
    }
    if (typeof value !== 'number' || !Number.isFinite(value) || value < field.min || value > field.max || (field.integer && !Number.isInteger(value))) {
      throw new KindlingError('LIMIT_OUT_OF_RANGE', `quotas.${key} must be ${field.integer ? 'a whole number' : 'a number'} from ${field.min} to ${field.max}, got ${JSON.stringify(value)}`, { details: { field: `quotas.${key}`, min: field.min, max: field.max } });
    }
    out[key] = value;
  }
  return out;
}

export const hashKey = (key: string): string => createHash('sha256').update(key).digest('hex');

export function newApiKey(): { key: string; hash: string; prefix: string; id: string } {
  const key = API_KEY_PREFIX + randomBytes(32).toString('base64url');
  return { key, hash: hashKey(key), prefix: key.slice(0, DISPLAY_PREFIX_CHARS), id: `key_${randomBytes(9).toString('base64url')}` };
}

export interface TenantView {
  name: string;
  quotas: TenantQuotas;
  /** The quotas in effect: the tenant's, else the server's defaults (null: no cap but the server's ranges). */
  effectiveQuotas: ResolvedQuotas;
  /** What the tenant keeps on disk now, next to its storage quotas (absent when the service was given no source). */
  usage?: TenantStorageUsage;
  createdAt: string;
}

export interface KeyView {
  id: string;
  tenant: string;
  prefix: string;
  admin: boolean;
  createdAt: string;
  revokedAt: string | null;
}

const keyView = (key: ApiKeyRecord): KeyView => ({
  id: key.id,
  tenant: key.tenant,
  prefix: key.prefix,
  admin: key.isAdmin,
  createdAt: new Date(key.createdAtMs).toISOString(),
  revokedAt: key.revokedAtMs === null ? null : new Date(key.revokedAtMs).toISOString(),
});

export interface TenantServiceOptions {
  /** Where tenants and keys are read from (and written to, unless `writes` is given). */
  store: SqliteTenantStore;
  /** Where changes go: a cluster gateway's shared state (which applies them to `store`); default `store` itself. */
  writes?: TenantWrites;
  /** Quotas of tenants that set none (server flags). */
  defaults?: Partial<ResolvedQuotas>;
  /** KINDLING_ADMIN_KEY: an admin key that is never stored (only its hash is kept, in memory). */
  envAdminKey?: string;
  clock?: Clock;
  /** What a tenant keeps on disk (the function store's counts), shown in the tenant's view. */
  storageUsage?: (tenant: string) => TenantStorageUsage;
  /**
   * Cluster mode with several gateways: where the slots of tenants' concurrency quotas are shared, so the quota holds
   * across gateways. Absent: counted here (a single server, or one gateway).
   */
  sharedSlots?: { acquire(tenant: string, max: number): Promise<() => void> };
  /** Called after a tenant is deleted (its functions and warm sandboxes go). */
  onTenantDeleted?: (name: string) => Promise<void> | void;
}

interface ActiveKey {
  principal: Principal;
}

interface TenantState {
  record: TenantRecord;
  quotas: ResolvedQuotas;
  bucket: TokenBucket | null;
  running: number;
  /** What executions of this tenant carry (caps and the concurrency slot); rebuilt when the quotas change. */
  scope: TenantScope;
}

/**
 * Tenants, API keys and quotas. Auth and quota checks are answered from memory (a map keyed by the key's sha256, the
 * tenants with their token buckets and running counts); SQLite is touched only when keys or tenants change.
 */
export class TenantService {
  private readonly store: SqliteTenantStore;
  private readonly writes: TenantWrites;
  private readonly clock: Clock;
  private readonly defaults: ResolvedQuotas;
  private readonly keys = new Map<string, ActiveKey>();
  private readonly tenants = new Map<string, TenantState>();
  private readonly envAdminHash: string | null;
  private hasStoredKeys: boolean;

  constructor(private readonly options: TenantServiceOptions) {
    this.store = options.store;
    this.writes = options.writes ?? localTenantWrites(options.store);
    this.clock = options.clock ?? systemClock;
    // Storage quotas have non-zero defaults (a tenant must never fill the shared disk); the others are off by default.
    this.defaults = { ...UNLIMITED_QUOTAS, ...DEFAULT_STORAGE_QUOTAS, ...options.defaults };
    this.envAdminHash = options.envAdminKey ? hashKey(options.envAdminKey) : null;
    // A cluster's shared state has the default tenant from its first gateway on (src/cluster/shared-state.ts).
    if (!this.store.getTenant(DEFAULT_TENANT)) this.store.insertTenant(DEFAULT_TENANT, {}, this.clock.nowMs());
    this.hasStoredKeys = false;
    this.reload();
  }

  /**
   * Reads tenants and keys from the store again: what another gateway of the cluster changed is in force from here on
   * (a revoked key is refused from the next request). Running counts and rate buckets of live tenants are kept.
   */
  reload(): void {
    const live = new Set<string>([DEFAULT_TENANT]);
    for (const record of this.store.listTenants()) {
      if (record.deletedAtMs !== null) continue;
      live.add(record.name);
      this.cacheTenant(record);
    }
    for (const name of this.tenants.keys()) if (!live.has(name)) this.tenants.delete(name);
    this.keys.clear();
    for (const key of this.store.activeKeys()) this.keys.set(key.hash, { principal: { tenant: key.tenant, isAdmin: key.isAdmin, keyId: key.id } });
    this.hasStoredKeys = this.hasStoredKeys || this.store.keyCount() > 0;
  }

  /** Auth is on once the server has keys: the env admin key, or any key it ever created (revoked ones count). */
  get authEnabled(): boolean {
    return this.envAdminHash !== null || this.hasStoredKeys;
  }

  /** Generates and stores the admin key when auth is off; returns it (to be shown once) or null when auth is on. */
  async bootstrapAdminKey(): Promise<string | null> {
    if (this.authEnabled) return null;
    return this.insertKey(DEFAULT_TENANT, true);
  }

  /** The principal of a presented key, or null when it is unknown or revoked. From memory only. */
  authenticate(key: string): Principal | null {
    const hash = hashKey(key);
    if (hash === this.envAdminHash) return { tenant: DEFAULT_TENANT, isAdmin: true, keyId: 'env' };
    return this.keys.get(hash)?.principal ?? null;
  }

  /** Whether a tenant exists (and is not deleted). */
  exists(name: string): boolean {
    return this.tenants.has(name);
  }

  quotasOf(tenant: string): ResolvedQuotas {
    return this.tenants.get(tenant)?.quotas ?? this.defaults;
  }

  /** The scope executions of this tenant run in (caps, concurrency slot); undefined for an unknown tenant. */
  scopeOf(tenant: string): TenantScope | undefined {
    return this.tenants.get(tenant)?.scope;
  }

  /** Caps on resource limits for executions of this tenant (see resolveLimits). */
  capsOf(tenant: string): Partial<ResourceLimits> {
    return capsFrom(this.quotasOf(tenant));
  }

  /** The largest request body this tenant may send (quota maxPayloadBytes), or null for the server's limit. */
  maxPayloadBytes(tenant: string): number | null {
    return this.quotasOf(tenant).maxPayloadBytes;
  }

  /** One token of the tenant's bucket, or 429 TENANT_RATE_LIMITED with Retry-After (whole seconds, at least 1). */
  checkRate(tenant: string): void {
    const bucket = this.tenants.get(tenant)?.bucket;
    if (!bucket) return;
    const waitMs = bucket.take();
    if (waitMs === 0) return;
    const quotas = this.quotasOf(tenant);
    throw new KindlingError('TENANT_RATE_LIMITED', `tenant "${tenant}" is over its request rate (${quotas.requestsPerSecond}/s, burst ${quotas.burst}); retry after the Retry-After seconds`, {
      retryAfterSeconds: Number.isFinite(waitMs) ? Math.max(1, Math.ceil(waitMs / 1000)) : 3600,
      details: { requestsPerSecond: quotas.requestsPerSecond, burst: quotas.burst, retryAfterMs: Number.isFinite(waitMs) ? waitMs : null },
    });
  }

  /**
   * A slot of the tenant's concurrency quota (release it exactly once), or 429 TENANT_CONCURRENCY_LIMIT at once.
   * With shared slots (a cluster's gateways) a tenant with a quota also takes one of the cluster's: then a promise.
   */
  acquireSlot(tenant: string): (() => void) | Promise<() => void> {
    const state = this.stateWithFreeSlot(tenant);
    const max = state.quotas.maxConcurrency;
    state.running++;
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      state.running--;
    };
    const shared = this.options.sharedSlots;
    if (shared === undefined || max === null) return release;
    return shared.acquire(tenant, max).then(
      (releaseShared) => () => {
        releaseShared();
        release();
      },
      (error: unknown) => {
        release();
        throw error;
      },
    );
  }

  /** Throws what acquireSlot would throw now (this server's count; in a cluster the shared count is acquireSlot's). */
  checkSlot(tenant: string): void {
    this.stateWithFreeSlot(tenant);
  }

  private stateWithFreeSlot(tenant: string): TenantState {
    const state = this.tenants.get(tenant);
    if (!state) throw new KindlingError('TENANT_NOT_FOUND', `tenant "${tenant.slice(0, 80)}" does not exist (it was deleted)`);
    const max = state.quotas.maxConcurrency;
    if (max !== null && state.running >= max) {
      throw new KindlingError('TENANT_CONCURRENCY_LIMIT', `tenant "${tenant}" already runs ${max} executions at once (quota maxConcurrency); retry when one finished`, {
        retryAfterSeconds: 1,
        details: { maxConcurrency: max },
      });
    }
    return state;
  }

  running(tenant: string): number {
    return this.tenants.get(tenant)?.running ?? 0;
  }

  /* --------------------------------------------------- admin -------------------------------------------------- */

  /** Creates a tenant with its first key. In open mode (no keys yet) the admin key is made too and returned once. */
  async create(name: string, quotas: Record<string, unknown> = {}): Promise<{ tenant: TenantView; apiKey: string; keyId: string; adminKey?: string }> {
    checkTenantName(name);
    const checked = dropNulls(checkQuotas(quotas));
    // Every check before the admin key is made: a refused creation must not turn auth on with a key nobody saw.
    const existing = this.store.getTenant(name);
    if (existing !== null) {
      throw new KindlingError('TENANT_EXISTS', existing.deletedAtMs === null ? `tenant "${name}" exists already` : `tenant "${name}" was deleted; names are not reused (its old invocations stay unreachable): pick another name`, { details: { name } });
    }
    if (!(await this.writes.insertTenant(name, checked, this.clock.nowMs()))) throw new KindlingError('TENANT_EXISTS', `tenant "${name}" exists already`, { details: { name } });
    this.cacheTenant(this.store.getTenant(name)!);
    const adminKey = await this.bootstrapAdminKey();
    const apiKey = await this.insertKey(name, false);
    const keyId = this.keyIdOf(apiKey);
    return { tenant: this.view(name), apiKey, keyId, ...(adminKey === null ? {} : { adminKey }) };
  }

  /**
   * The tenant `name`, created with `quotas` when it does not exist yet, without any key (callers that are not HTTP
   * clients, such as the chain operator's callers, act through the server itself). A deleted tenant stays deleted:
   * TENANT_NOT_FOUND, so an operator can shut a caller out by deleting its tenant.
   */
  async ensure(name: string, quotas: Record<string, unknown> = {}): Promise<TenantScope> {
    const live = this.tenants.get(name);
    if (live) return live.scope;
    checkTenantName(name);
    const existing = this.store.getTenant(name);
    if (existing !== null && existing.deletedAtMs !== null) {
      throw new KindlingError('TENANT_NOT_FOUND', `tenant "${name}" was deleted by the operator of this server; its caller can no longer run work here`, { details: { name } });
    }
    // Two callers racing here (or two gateways): one inserts, the other finds it inserted; either way it exists now.
    if (existing === null) await this.writes.insertTenant(name, dropNulls(checkQuotas(quotas)), this.clock.nowMs());
    const record = this.store.getTenant(name)!;
    if (record.deletedAtMs !== null) throw new KindlingError('TENANT_NOT_FOUND', `tenant "${name}" was deleted by the operator of this server; its caller can no longer run work here`, { details: { name } });
    this.cacheTenant(record);
    return this.tenants.get(name)!.scope;
  }

  list(): TenantView[] {
    return [...this.tenants.keys()].sort().map((name) => this.view(name));
  }

  get(name: string): TenantView {
    this.require(name);
    return this.view(name);
  }

  /** Merges quota fields (null removes one: back to the server default). */
  async update(name: string, quotas: Record<string, unknown>): Promise<TenantView> {
    const state = this.require(name);
    const patch = checkQuotas(quotas);
    // Merged with the quotas as stored when written (not as read here): an update made meanwhile elsewhere is kept.
    const next = await this.writes.updateQuotas(name, (current) => dropNulls({ ...current, ...patch }));
    if (next === null) throw new KindlingError('TENANT_NOT_FOUND', `no tenant named "${name.slice(0, 80)}"; see GET /v1/tenants`, { details: { name: name.slice(0, 80) } });
    this.cacheTenant(this.store.getTenant(name) ?? { ...state.record, quotas: next });
    return this.view(name);
  }

  async delete(name: string): Promise<void> {
    if (name === DEFAULT_TENANT) throw new KindlingError('VALIDATION_FAILED', 'the tenant "default" cannot be deleted (the admin key acts as it)', { details: { field: 'name' } });
    this.require(name);
    await this.writes.deleteTenant(name, this.clock.nowMs());
    this.tenants.delete(name);
    for (const [hash, key] of this.keys) if (key.principal.tenant === name) this.keys.delete(hash);
    await this.options.onTenantDeleted?.(name);
  }

  async createKey(tenant: string): Promise<{ key: KeyView; apiKey: string }> {
    this.require(tenant);
    const apiKey = await this.insertKey(tenant, false);
    const id = this.keyIdOf(apiKey);
    return { key: keyView(this.store.listKeys(tenant).find((key) => key.id === id)!), apiKey };
  }

  listKeys(tenant: string): KeyView[] {
    this.require(tenant);
    return this.store.listKeys(tenant).map(keyView);
  }

  /** Revokes a key; effective for the next request (the in-memory entry goes in the same call). */
  async revokeKey(tenant: string, id: string): Promise<void> {
    this.require(tenant);
    const key = this.store.listKeys(tenant).find((candidate) => candidate.id === id && candidate.revokedAtMs === null);
    if (key?.isAdmin && this.envAdminHash === null && !this.store.listKeys(tenant).some((other) => other.isAdmin && other.revokedAtMs === null && other.id !== id)) {
      // Without another admin key nobody could manage tenants again (none can be made through the API).
      throw new KindlingError('LAST_ADMIN_KEY', 'this is the last admin key: revoking it would lock administration out for good; to replace it, restart the server with KINDLING_ADMIN_KEY set (that key is always an admin key), then revoke this one', { details: { keyId: id } });
    }
    if (!key || !(await this.writes.revokeKey(tenant, id, this.clock.nowMs()))) {
      throw new KindlingError('NOT_FOUND', `tenant "${tenant}" has no active key "${id.slice(0, 80)}"; see GET /v1/tenants/${tenant}/keys`);
    }
    this.keys.delete(key.hash);
  }

  /* ------------------------------------------------------------------------------------------------------------ */

  private async insertKey(tenant: string, isAdmin: boolean): Promise<string> {
    const made = newApiKey();
    await this.writes.insertKey({ id: made.id, tenant, hash: made.hash, prefix: made.prefix, isAdmin, createdAtMs: this.clock.nowMs() });
    this.keys.set(made.hash, { principal: { tenant, isAdmin, keyId: made.id } });
    this.hasStoredKeys = true;
    return made.key;
  }

  private keyIdOf(apiKey: string): string {
    return this.keys.get(hashKey(apiKey))!.principal.keyId!;
  }

  private require(name: string): TenantState {
    const state = FUNCTION_NAME_PATTERN.test(name) ? this.tenants.get(name) : undefined;
    if (!state) throw new KindlingError('TENANT_NOT_FOUND', `no tenant named "${name.slice(0, 80)}"; see GET /v1/tenants`, { details: { name: name.slice(0, 80) } });
    return state;
  }

  private cacheTenant(record: TenantRecord): void {
    const quotas: ResolvedQuotas = { ...this.defaults };
    for (const name of QUOTA_NAMES) {
      const value = record.quotas[name];
      if (value !== undefined) quotas[name] = value;
    }
    if (quotas.requestsPerSecond !== null && quotas.burst === null) quotas.burst = Math.max(1, Math.ceil(quotas.requestsPerSecond));
    const previous = this.tenants.get(record.name);
    let bucket: TokenBucket | null = null;
    if (quotas.requestsPerSecond !== null) {
      bucket = previous?.bucket ?? new TokenBucket(quotas.requestsPerSecond, quotas.burst!, this.clock);
      bucket.reconfigure(quotas.requestsPerSecond, quotas.burst!);
    }
    const name = record.name;
    const scope: TenantScope = {
      name,
      caps: capsFrom(quotas),
      acquire: () => this.acquireSlot(name),
      checkSlot: () => this.checkSlot(name),
      ...(quotas.maxPayloadBytes === null ? {} : { maxPayloadBytes: quotas.maxPayloadBytes }),
      ...(quotas.maxConcurrency === null ? {} : { maxConcurrency: quotas.maxConcurrency }),
      ...(quotas.maxConcurrentBuilds === null ? {} : { maxConcurrentBuilds: quotas.maxConcurrentBuilds }),
    };
    if (previous) {
      // Mutated in place: release functions of running executions hold this object.
      Object.assign(previous, { record, quotas, bucket, scope });
      return;
    }
    this.tenants.set(name, { record, quotas, bucket, running: 0, scope });
  }

  private view(name: string): TenantView {
    const state = this.tenants.get(name)!;
    const usage = this.options.storageUsage?.(name);
    return { name, quotas: state.record.quotas, effectiveQuotas: state.quotas, ...(usage ? { usage } : {}), createdAt: new Date(state.record.createdAtMs).toISOString() };
  }
}

function capsFrom(quotas: ResolvedQuotas): Partial<ResourceLimits> {
  const caps: Partial<ResourceLimits> = {};
  for (const name of QUOTA_NAMES) {
    const limit = QUOTA_FIELDS[name].limit;
    const value = quotas[name];
    if (limit !== undefined && value !== null) caps[limit] = value;
  }
  return caps;
}

function dropNulls(quotas: Record<string, number | null>): TenantQuotas {
  return Object.fromEntries(Object.entries(quotas).filter(([, value]) => value !== null)) as TenantQuotas;
}

export function checkTenantName(name: string): void {
  if (!FUNCTION_NAME_PATTERN.test(name)) {
    throw new KindlingError('VALIDATION_FAILED', `tenant name "${name.slice(0, 80)}" must match ${FUNCTION_NAME_PATTERN.source} (lower-case letters, digits, dashes; at most 63)`, { details: { field: 'name' } });
  }
}
