/**
 * The writes of the control state (tenants, API keys, functions and their versions), apart from its reads.
 *
 * Reads stay synchronous and local (auth and function lookups are answered from this server's SQLite and memory).
 * Writes are asynchronous because in a cluster of several gateways they go to the shared state first (a JetStream KV
 * bucket, src/cluster/shared-state.ts) and resolve once this server applied them; on a single server they are the
 * SQLite writes themselves. Both implementations pass the same conformance suite (src/store/writes-conformance.ts).
 */
import type { FunctionRecord, FunctionSpec, FunctionVersion, Store, VersionRetention } from './store.js';
import type { ApiKeyRecord, SqliteTenantStore, TenantQuotas } from './tenants-sqlite.js';

export interface TenantWrites {
  /** False when the name is taken (now or before: a deleted tenant's name stays taken). */
  insertTenant(name: string, quotas: TenantQuotas, nowMs: number): Promise<boolean>;
  /**
   * Replaces the tenant's quotas with `change(current)`, the read and the write as one step (with several gateways a
   * compare-and-set that calls `change` again on a conflict: two updates of different fields both hold). The quotas
   * written, or null when there is no live tenant of that name.
   */
  updateQuotas(name: string, change: (current: TenantQuotas) => TenantQuotas): Promise<TenantQuotas | null>;
  /** Marks the tenant deleted and revokes its keys; false when there was no live tenant. */
  deleteTenant(name: string, nowMs: number): Promise<boolean>;
  insertKey(key: Omit<ApiKeyRecord, 'revokedAtMs'>): Promise<void>;
  /** False when the tenant has no active key of that id. */
  revokeKey(tenant: string, id: string, nowMs: number): Promise<boolean>;
}

export interface FunctionWrites {
  /** See Store.putFunction: a new version, made the latest (unless a deploy racing it elsewhere made a newer one). */
  putFunction(tenant: string, name: string, spec: FunctionSpec, nowMs: number, retention?: VersionRetention): Promise<{ fn: FunctionRecord; version: FunctionVersion; created: boolean; pruned: number[] }>;
  /** False when there was no such function. */
  deleteFunction(tenant: string, name: string): Promise<boolean>;
  /** The names of the tenant's functions, all deleted. */
  deleteTenantFunctions(tenant: string): Promise<string[]>;
}

/** A single server's writes: its SQLite stores, nothing else. */
export function localTenantWrites(store: SqliteTenantStore): TenantWrites {
  return {
    insertTenant: async (name, quotas, nowMs) => store.insertTenant(name, quotas, nowMs),
    updateQuotas: async (name, change) => {
      // Nothing awaits between the read and the write: no other update comes between them.
      const record = store.getTenant(name);
      if (record === null || record.deletedAtMs !== null) return null;
      const next = change(record.quotas);
      return store.setQuotas(name, next) ? next : null;
    },
    deleteTenant: async (name, nowMs) => store.deleteTenant(name, nowMs),
    insertKey: async (key) => store.insertKey(key),
    revokeKey: async (tenant, id, nowMs) => store.revokeKey(tenant, id, nowMs),
  };
}

export function localFunctionWrites(store: Store): FunctionWrites {
  return {
    putFunction: async (tenant, name, spec, nowMs, retention) => store.putFunction(tenant, name, spec, nowMs, retention),
    deleteFunction: async (tenant, name) => store.deleteFunction(tenant, name),
    deleteTenantFunctions: async (tenant) => store.deleteTenantFunctions(tenant),
  };
}
