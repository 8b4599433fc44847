import type Database from 'better-sqlite3';
import { openSqlite } from './open-sqlite.js';

/** Per-tenant quotas as an admin set them; absent fields take the server's defaults. */
export interface TenantQuotas {
  /** Executions (one-off, invocations, WebSocket runs) running at once. */
  maxConcurrency?: number;
  /** Dependency builds (npm ci, pip install of a deploy) running at once; beyond: 429 TENANT_BUILD_LIMIT. */
  maxConcurrentBuilds?: number;
  /** Token bucket: /v1 requests a second (refill rate) and the burst (bucket size). */
  requestsPerSecond?: number;
  burst?: number;
  /** Caps on per-request limits: a request above one gets 400 TENANT_LIMIT_EXCEEDED; defaults are lowered to them. */
  maxMemoryMb?: number;
  maxTimeoutMs?: number;
  maxCpus?: number;
  maxPids?: number;
  maxOpenFiles?: number;
  maxOutputBytes?: number;
  maxDiskMb?: number;
  /** Largest request body (JSON execute, invoke payload), in bytes. */
  maxPayloadBytes?: number;
  /** Storage: function versions kept, bytes of their code, bytes of queued async payloads (see storage-quotas.ts). */
  maxFunctionVersions?: number;
  maxCodeBytes?: number;
  maxQueuedPayloadBytes?: number;
  maxImageBytes?: number;
  /** Persistent sandboxes: running, paused, memory of live ones, kept disks, snapshot bytes (see sandbox-quotas.ts). */
  maxSandboxes?: number;
  maxPausedSandboxes?: number;
  maxSandboxMemoryMb?: number;
  maxSandboxDiskMb?: number;
  maxSnapshotBytes?: number;
}

export interface TenantRecord {
  name: string;
  quotas: TenantQuotas;
  createdAtMs: number;
  /** Set once deleted; the name is never reused (its old invocations must stay unreachable). */
  deletedAtMs: number | null;
}

export interface ApiKeyRecord {
  id: string;
  tenant: string;
  /** sha256 of the key, hex. The key itself is never stored. */
  hash: string;
  /** The first characters of the key, to tell keys apart in listings. */
  prefix: string;
  isAdmin: boolean;
  createdAtMs: number;
  revokedAtMs: number | null;
}

/** Tables of tenants and API keys, in the store's database file; created when missing (old data dirs get them too). */
const SCHEMA = `
CREATE TABLE IF NOT EXISTS tenants (
  name TEXT PRIMARY KEY,
  quotas TEXT NOT NULL DEFAULT '{}',
  created_at_ms INTEGER NOT NULL,
  deleted_at_ms INTEGER
);
CREATE TABLE IF NOT EXISTS api_keys (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  hash TEXT NOT NULL UNIQUE,
  prefix TEXT NOT NULL,
  is_admin INTEGER NOT NULL DEFAULT 0,
  created_at_ms INTEGER NOT NULL,
  revoked_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys (tenant);
`;

interface TenantRow {
  name: string;
  quotas: string;
  created_at_ms: number;
  deleted_at_ms: number | null;
}
interface KeyRow {
  id: string;
  tenant: string;
  hash: string;
  prefix: string;
  is_admin: number;
  created_at_ms: number;
  revoked_at_ms: number | null;
}

const toTenant = (row: TenantRow): TenantRecord => ({ name: row.name, quotas: JSON.parse(row.quotas) as TenantQuotas, createdAtMs: row.created_at_ms, deletedAtMs: row.deleted_at_ms });
const toKey = (row: KeyRow): ApiKeyRecord => ({
  id: row.id,
  tenant: row.tenant,
  hash: row.hash,
  prefix: row.prefix,
  isAdmin: row.is_admin !== 0,
  createdAtMs: row.created_at_ms,
  revokedAtMs: row.revoked_at_ms,
});

/** Tenants and hashed API keys in SQLite (WAL). Synchronous, like the other stores. */
export class SqliteTenantStore {
  private readonly db: Database.Database;
  private readonly statements;

  constructor(file: string) {
    this.db = openSqlite(file, (db) => db.exec(SCHEMA));
    this.statements = {
      getTenant: this.db.prepare<[string], TenantRow>('SELECT * FROM tenants WHERE name = ?'),
      listTenants: this.db.prepare<[], TenantRow>('SELECT * FROM tenants ORDER BY name'),
      insertTenant: this.db.prepare('INSERT INTO tenants (name, quotas, created_at_ms) VALUES (?, ?, ?) ON CONFLICT DO NOTHING'),
      setQuotas: this.db.prepare('UPDATE tenants SET quotas = ? WHERE name = ? AND deleted_at_ms IS NULL'),
      deleteTenant: this.db.prepare('UPDATE tenants SET deleted_at_ms = ? WHERE name = ? AND deleted_at_ms IS NULL'),
      insertKey: this.db.prepare('INSERT INTO api_keys (id, tenant, hash, prefix, is_admin, created_at_ms) VALUES (?, ?, ?, ?, ?, ?)'),
      listKeys: this.db.prepare<[string], KeyRow>('SELECT * FROM api_keys WHERE tenant = ? ORDER BY created_at_ms, id'),
      activeKeys: this.db.prepare<[], KeyRow>('SELECT * FROM api_keys WHERE revoked_at_ms IS NULL'),
      countKeys: this.db.prepare<[], { n: number }>('SELECT COUNT(*) AS n FROM api_keys'),
      revokeKey: this.db.prepare('UPDATE api_keys SET revoked_at_ms = ? WHERE id = ? AND tenant = ? AND revoked_at_ms IS NULL'),
      revokeTenantKeys: this.db.prepare('UPDATE api_keys SET revoked_at_ms = ? WHERE tenant = ? AND revoked_at_ms IS NULL'),
      upsertTenant: this.db.prepare(
        'INSERT INTO tenants (name, quotas, created_at_ms, deleted_at_ms) VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET quotas = excluded.quotas, created_at_ms = excluded.created_at_ms, deleted_at_ms = excluded.deleted_at_ms',
      ),
      upsertKey: this.db.prepare(
        `INSERT INTO api_keys (id, tenant, hash, prefix, is_admin, created_at_ms, revoked_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET revoked_at_ms = excluded.revoked_at_ms`,
      ),
      deleteAllTenants: this.db.prepare('DELETE FROM tenants'),
      deleteAllKeys: this.db.prepare('DELETE FROM api_keys'),
    };
  }

  getTenant(name: string): TenantRecord | null {
    const row = this.statements.getTenant.get(name);
    return row === undefined ? null : toTenant(row);
  }

  listTenants(): TenantRecord[] {
    return this.statements.listTenants.all().map(toTenant);
  }

  /** False when the name is taken (now or before). */
  insertTenant(name: string, quotas: TenantQuotas, nowMs: number): boolean {
    return this.statements.insertTenant.run(name, JSON.stringify(quotas), nowMs).changes > 0;
  }

  setQuotas(name: string, quotas: TenantQuotas): boolean {
    return this.statements.setQuotas.run(JSON.stringify(quotas), name).changes > 0;
  }

  /** Marks the tenant deleted and revokes its keys, in one transaction. */
  deleteTenant(name: string, nowMs: number): boolean {
    return this.db.transaction(() => {
      const deleted = this.statements.deleteTenant.run(nowMs, name).changes > 0;
      if (deleted) this.statements.revokeTenantKeys.run(nowMs, name);
      return deleted;
    }).immediate();
  }

  insertKey(key: Omit<ApiKeyRecord, 'revokedAtMs'>): void {
    this.statements.insertKey.run(key.id, key.tenant, key.hash, key.prefix, key.isAdmin ? 1 : 0, key.createdAtMs);
  }

  listKeys(tenant: string): ApiKeyRecord[] {
    return this.statements.listKeys.all(tenant).map(toKey);
  }

  activeKeys(): ApiKeyRecord[] {
    return this.statements.activeKeys.all().map(toKey);
  }

  /** Keys ever created, revoked ones included: once a server had keys, auth stays on. */
  keyCount(): number {
    return this.statements.countKeys.get()!.n;
  }

  revokeKey(tenant: string, id: string, nowMs: number): boolean {
    return this.statements.revokeKey.run(nowMs, id, tenant).changes > 0;
  }

  /* A cluster gateway's copy of the shared state (src/cluster/shared-state.ts) is written only through these. */

  /** Makes the tables hold exactly these records (a gateway joining the cluster), in one transaction. */
  replaceAll(tenants: readonly TenantRecord[], keys: readonly ApiKeyRecord[]): void {
    this.db.transaction(() => {
      this.statements.deleteAllKeys.run();
      this.statements.deleteAllTenants.run();
      for (const tenant of tenants) this.applyTenantRow(tenant);
      for (const key of keys) this.applyKeyRow(key);
    }).immediate();
  }

  /** Writes the tenant as it is now; a deleted one's keys are revoked with it. */
  applyTenant(record: TenantRecord): void {
    this.db.transaction(() => this.applyTenantRow(record)).immediate();
  }

  /** Writes the key as it is now (revoked, too, when its tenant is deleted). */
  applyKey(record: ApiKeyRecord): void {
    this.applyKeyRow(record);
  }

  private applyTenantRow(record: TenantRecord): void {
    this.statements.upsertTenant.run(record.name, JSON.stringify(record.quotas), record.createdAtMs, record.deletedAtMs);
    if (record.deletedAtMs !== null) this.statements.revokeTenantKeys.run(record.deletedAtMs, record.name);
  }

  private applyKeyRow(record: ApiKeyRecord): void {
    const deletedAtMs = this.getTenant(record.tenant)?.deletedAtMs ?? null;
    const revokedAtMs = record.revokedAtMs ?? deletedAtMs;
    this.statements.upsertKey.run(record.id, record.tenant, record.hash, record.prefix, record.isAdmin ? 1 : 0, record.createdAtMs, revokedAtMs);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
