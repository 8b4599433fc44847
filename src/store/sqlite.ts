import type Database from 'better-sqlite3';
import { openSqlite } from './open-sqlite.js';
import { specBytes } from './store.js';
import type {
  CallbackState,
  FunctionRecord,
  FunctionSpec,
  FunctionVersion,
  FinishedInvocation,
  InvocationFilter,
  InvocationMode,
  InvocationOutcome,
  InvocationRecord,
  InvocationStatus,
  NewInvocation,
  Store,
  TenantStorageUsage,
  VersionRetention,
} from './store.js';

/** Schema migrations, applied in order; `PRAGMA user_version` records how many ran. Append only. */
const MIGRATIONS: string[] = [
  `CREATE TABLE functions (
     name TEXT PRIMARY KEY,
     latest_version INTEGER NOT NULL,
     created_at_ms INTEGER NOT NULL,
     updated_at_ms INTEGER NOT NULL
   );
   CREATE TABLE function_versions (
     name TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE,
     version INTEGER NOT NULL,
     spec TEXT NOT NULL,
     created_at_ms INTEGER NOT NULL,
     PRIMARY KEY (name, version)
   );`,
  // Invocations (async ones, issue 5). `seq` orders the queue (FIFO); the payload is dropped once it finished.
  // `tenant` is there for issue 6 (tenants) so that tenancy needs no rewrite of this table.
  `CREATE TABLE invocations (
     seq INTEGER PRIMARY KEY AUTOINCREMENT,
     id TEXT NOT NULL UNIQUE,
     tenant TEXT NOT NULL DEFAULT 'default',
     function TEXT NOT NULL,
     version INTEGER NOT NULL,
     status TEXT NOT NULL,
     payload BLOB,
     payload_bytes INTEGER NOT NULL,
     idempotency_key TEXT,
     callback_url TEXT,
     callback_state TEXT,
     callback_attempts INTEGER NOT NULL DEFAULT 0,
     attempts INTEGER NOT NULL DEFAULT 0,
     exit_code INTEGER,
     duration_ms REAL,
     cold_start INTEGER,
     timed_out INTEGER,
     error TEXT,
     stdout BLOB,
     stderr BLOB,
     stdout_bytes INTEGER,
     created_at_ms INTEGER NOT NULL,
     started_at_ms INTEGER,
     finished_at_ms INTEGER
   );
   CREATE UNIQUE INDEX invocations_idempotency ON invocations (tenant, function, idempotency_key) WHERE idempotency_key IS NOT NULL;
   CREATE INDEX invocations_queue ON invocations (status, seq);
   CREATE INDEX invocations_function ON invocations (tenant, function, created_at_ms);
   CREATE INDEX invocations_created ON invocations (tenant, created_at_ms);
   CREATE INDEX invocations_finished ON invocations (finished_at_ms) WHERE finished_at_ms IS NOT NULL;`,
  // Tenants (issue 6): functions are keyed by (tenant, name), so two tenants may both own `hello`. Existing functions
  // become the tenant `default`'s. SQLite cannot change a primary key in place: new tables, copy, swap. The versions
  // table refers to functions_new, which the rename turns into a reference to functions.
  `CREATE TABLE functions_new (
     tenant TEXT NOT NULL DEFAULT 'default',
     name TEXT NOT NULL,
     latest_version INTEGER NOT NULL,
     created_at_ms INTEGER NOT NULL,
     updated_at_ms INTEGER NOT NULL,
     PRIMARY KEY (tenant, name)
   );
   CREATE TABLE function_versions_new (
     tenant TEXT NOT NULL DEFAULT 'default',
     name TEXT NOT NULL,
     version INTEGER NOT NULL,
     spec TEXT NOT NULL,
     created_at_ms INTEGER NOT NULL,
     PRIMARY KEY (tenant, name, version),
     FOREIGN KEY (tenant, name) REFERENCES functions_new(tenant, name) ON DELETE CASCADE
   );
   INSERT INTO functions_new (tenant, name, latest_version, created_at_ms, updated_at_ms)
     SELECT 'default', name, latest_version, created_at_ms, updated_at_ms FROM functions;
   INSERT INTO function_versions_new (tenant, name, version, spec, created_at_ms)
     SELECT 'default', name, version, spec, created_at_ms FROM function_versions;
   DROP TABLE function_versions;
   DROP TABLE functions;
   ALTER TABLE functions_new RENAME TO functions;
   ALTER TABLE function_versions_new RENAME TO function_versions;`,
  // Synchronous invocations are recorded too (finished, with capped logs); `mode` tells them from queued ones.
  `ALTER TABLE invocations ADD COLUMN mode TEXT NOT NULL DEFAULT 'async';`,
  // Storage quotas (issue 14): what each tenant keeps on disk, counted by triggers in the transaction of each write
  // (a rollback or a crash cannot leave the counts off, and a quota check reads one row instead of summing). A version's
  // size is kept beside it, so that counting a delete never reads the spec. A payload is held while its invocation is
  // queued or running (finishing drops it). The trigger costs an enqueue ~5 µs of CPU (an index of pending versions
  // for retention cost as much again and was left out: a deploy reads them through the existing indexes).
  `ALTER TABLE function_versions ADD COLUMN spec_bytes INTEGER NOT NULL DEFAULT 0;
   UPDATE function_versions SET spec_bytes = LENGTH(CAST(spec AS BLOB));
   CREATE TABLE tenant_storage (
     tenant TEXT PRIMARY KEY,
     function_versions INTEGER NOT NULL DEFAULT 0,
     code_bytes INTEGER NOT NULL DEFAULT 0,
     queued_payload_bytes INTEGER NOT NULL DEFAULT 0
   );
   INSERT INTO tenant_storage (tenant, function_versions, code_bytes)
     SELECT tenant, COUNT(*), SUM(spec_bytes) FROM function_versions GROUP BY tenant;
   INSERT INTO tenant_storage (tenant, queued_payload_bytes)
     SELECT tenant, SUM(payload_bytes) FROM invocations WHERE status IN ('queued', 'running') GROUP BY tenant
     ON CONFLICT (tenant) DO UPDATE SET queued_payload_bytes = excluded.queued_payload_bytes;
   CREATE TRIGGER function_versions_storage_insert AFTER INSERT ON function_versions BEGIN
     INSERT INTO tenant_storage (tenant, function_versions, code_bytes) VALUES (NEW.tenant, 1, NEW.spec_bytes)
       ON CONFLICT (tenant) DO UPDATE SET function_versions = function_versions + 1, code_bytes = code_bytes + excluded.code_bytes;
   END;
   CREATE TRIGGER function_versions_storage_delete AFTER DELETE ON function_versions BEGIN
     UPDATE tenant_storage SET function_versions = function_versions - 1, code_bytes = code_bytes - OLD.spec_bytes WHERE tenant = OLD.tenant;
   END;
   CREATE TRIGGER invocations_storage_insert AFTER INSERT ON invocations WHEN NEW.status IN ('queued', 'running') BEGIN
     INSERT INTO tenant_storage (tenant, queued_payload_bytes) VALUES (NEW.tenant, NEW.payload_bytes)
       ON CONFLICT (tenant) DO UPDATE SET queued_payload_bytes = queued_payload_bytes + excluded.queued_payload_bytes;
   END;
   CREATE TRIGGER invocations_storage_update AFTER UPDATE OF status ON invocations
     WHEN OLD.status IN ('queued', 'running') AND NEW.status NOT IN ('queued', 'running') BEGIN
     UPDATE tenant_storage SET queued_payload_bytes = queued_payload_bytes - OLD.payload_bytes WHERE tenant = OLD.tenant;
   END;
   CREATE TRIGGER invocations_storage_delete AFTER DELETE ON invocations WHEN OLD.status IN ('queued', 'running') BEGIN
     UPDATE tenant_storage SET queued_payload_bytes = queued_payload_bytes - OLD.payload_bytes WHERE tenant = OLD.tenant;
   END;`,
  // Tracing (issue 18): an async invocation's run continues the trace of the request that accepted it, also when a
  // restart lies between them. Older rows have none (their runs start a new trace).
  `ALTER TABLE invocations ADD COLUMN traceparent TEXT;`,
  // Issue 21: `node` and `python` now mean Node 20 and Python 3.13, and a version stores the concrete runtime. The
  // versions stored before keep what they ran: bookworm's Node 18 and Python 3.11, named explicitly. (spec_bytes is
  // left as it was: the storage triggers subtract what was added.)
  `UPDATE function_versions SET spec = json_set(spec, '$.runtime', 'node18') WHERE json_extract(spec, '$.runtime') = 'node';
   UPDATE function_versions SET spec = json_set(spec, '$.runtime', 'python3.11') WHERE json_extract(spec, '$.runtime') = 'python';`,
];

/** Brings a database to the newest schema, one migration per transaction (`user_version` counts the ones applied). */
function migrate(db: Database.Database): void {
  const current = db.pragma('user_version', { simple: true }) as number;
  for (let i = current; i < MIGRATIONS.length; i++) {
    db.transaction(() => {
      db.exec(MIGRATIONS[i]!);
      db.pragma(`user_version = ${i + 1}`);
    })();
  }
}

/** The columns of an invocation's record (everything but the payload and the output blobs). */
const INVOCATION_COLUMNS =
  'id, tenant, function, version, mode, status, payload_bytes, idempotency_key, callback_url, callback_state, callback_attempts, attempts, exit_code, duration_ms, cold_start, timed_out, error, stdout_bytes, created_at_ms, started_at_ms, finished_at_ms, traceparent';

interface InvocationRow {
  id: string;
  tenant: string;
  function: string;
  version: number;
  mode: InvocationMode;
  status: InvocationStatus;
  payload_bytes: number;
  idempotency_key: string | null;
  callback_url: string | null;
  callback_state: CallbackState | null;
  callback_attempts: number;
  attempts: number;
  exit_code: number | null;
  duration_ms: number | null;
  cold_start: number | null;
  timed_out: number | null;
  error: string | null;
  stdout_bytes: number | null;
  created_at_ms: number;
  started_at_ms: number | null;
  finished_at_ms: number | null;
  traceparent: string | null;
}

const bool = (value: number | null): boolean | null => (value === null ? null : value !== 0);

const toInvocation = (row: InvocationRow): InvocationRecord => ({
  id: row.id,
  tenant: row.tenant,
  functionName: row.function,
  version: row.version,
  mode: row.mode,
  status: row.status,
  idempotencyKey: row.idempotency_key,
  callbackUrl: row.callback_url,
  callbackState: row.callback_state,
  callbackAttempts: row.callback_attempts,
  attempts: row.attempts,
  exitCode: row.exit_code,
  durationMs: row.duration_ms,
  coldStart: bool(row.cold_start),
  timedOut: bool(row.timed_out),
  error: row.error,
  payloadBytes: row.payload_bytes,
  stdoutBytes: row.stdout_bytes,
  createdAtMs: row.created_at_ms,
  startedAtMs: row.started_at_ms,
  finishedAtMs: row.finished_at_ms,
  traceparent: row.traceparent,
});

/** The record of an invocation just inserted (what the insert statement stores, with the columns' defaults). */
const queuedRecord = (input: NewInvocation): InvocationRecord => ({
  id: input.id,
  tenant: input.tenant,
  functionName: input.functionName,
  version: input.version,
  mode: 'async',
  status: 'queued',
  idempotencyKey: input.idempotencyKey,
  callbackUrl: input.callbackUrl,
  callbackState: input.callbackUrl === null ? null : 'pending',
  callbackAttempts: 0,
  attempts: 0,
  exitCode: null,
  durationMs: null,
  coldStart: null,
  timedOut: null,
  error: null,
  payloadBytes: input.payload.length,
  stdoutBytes: null,
  createdAtMs: input.createdAtMs,
  startedAtMs: null,
  finishedAtMs: null,
  traceparent: input.traceparent ?? null,
});

interface FunctionRow {
  tenant: string;
  name: string;
  latest_version: number;
  created_at_ms: number;
  updated_at_ms: number;
}
interface VersionRow {
  tenant: string;
  name: string;
  version: number;
  spec: string;
  created_at_ms: number;
}

const toFunction = (row: FunctionRow): FunctionRecord => ({
  tenant: row.tenant,
  name: row.name,
  latestVersion: row.latest_version,
  createdAtMs: row.created_at_ms,
  updatedAtMs: row.updated_at_ms,
});
const toVersion = (row: VersionRow): FunctionVersion => ({
  tenant: row.tenant,
  name: row.name,
  version: row.version,
  spec: JSON.parse(row.spec) as FunctionSpec,
  createdAtMs: row.created_at_ms,
});

/**
 * The versions of a function retention may delete: not among the newest @keep, not needed by a queued or running
 * invocation (they run the version they were queued for), not in @alsoKeep (a JSON array).
 */
const PRUNABLE = `tenant = @tenant AND name = @name
  AND version NOT IN (SELECT version FROM function_versions WHERE tenant = @tenant AND name = @name ORDER BY version DESC LIMIT @keep)
  AND version NOT IN (SELECT version FROM invocations WHERE tenant = @tenant AND function = @name AND status IN ('queued', 'running'))
  AND version NOT IN (SELECT value FROM json_each(@alsoKeep))`;

const cacheKey = (tenant: string, name: string): string => `${tenant}\0${name}`;

/** Freezes an object and everything it holds (a cached value handed to many callers must not change under them). */
function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const inner of Object.values(value)) deepFreeze(inner);
  }
  return value;
}

/** The default store: one SQLite file in WAL mode (readers never block the writer), foreign keys on. */
export class SqliteStore implements Store {
  private readonly db: Database.Database;
  private readonly statements;
  /**
   * Each function's record and latest version (frozen: versions are immutable), read on every invocation. This store is
   * the only writer of the functions tables (one server per data dir): its writes drop the entry, the next read fills it.
   */
  private readonly latest = new Map<string, { fn: FunctionRecord; version: FunctionVersion }>();
  /** See transaction(): made once (better-sqlite3 builds several wrappers for each transaction function). */
  private readonly inTransaction: Database.Transaction<(fn: () => unknown) => unknown>;

  /** `file` is a path (e.g. `<data-dir>/kindling.db`) or `:memory:`. */
  constructor(file: string) {
    this.db = openSqlite(file, migrate, { foreignKeys: true });
    this.statements = {
      getFunction: this.db.prepare<[string, string], FunctionRow>('SELECT * FROM functions WHERE tenant = ? AND name = ?'),
      listFunctions: this.db.prepare<[string], FunctionRow>('SELECT * FROM functions WHERE tenant = ? ORDER BY name'),
      insertFunction: this.db.prepare('INSERT INTO functions (tenant, name, latest_version, created_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?)'),
      bumpFunction: this.db.prepare('UPDATE functions SET latest_version = ?, updated_at_ms = ? WHERE tenant = ? AND name = ?'),
      maxVersion: this.db.prepare<[string, string], { v: number | null }>('SELECT MAX(version) AS v FROM function_versions WHERE tenant = ? AND name = ?'),
      insertVersion: this.db.prepare('INSERT INTO function_versions (tenant, name, version, spec, created_at_ms, spec_bytes) VALUES (?, ?, ?, ?, ?, ?)'),
      prunable: this.db.prepare<{ tenant: string; name: string; keep: number; alsoKeep: string }, { version: number; bytes: number }>(
        `SELECT version, spec_bytes AS bytes FROM function_versions WHERE ${PRUNABLE} ORDER BY version`,
      ),
      prune: this.db.prepare<{ tenant: string; name: string; keep: number; alsoKeep: string }, { version: number }>(`DELETE FROM function_versions WHERE ${PRUNABLE} RETURNING version`),
      storageUsage: this.db.prepare<[string], { function_versions: number; code_bytes: number; queued_payload_bytes: number }>(
        'SELECT function_versions, code_bytes, queued_payload_bytes FROM tenant_storage WHERE tenant = ?',
      ),
      getVersion: this.db.prepare<[string, string, number], VersionRow>('SELECT * FROM function_versions WHERE tenant = ? AND name = ? AND version = ?'),
      listVersions: this.db.prepare<[string, string], VersionRow>('SELECT * FROM function_versions WHERE tenant = ? AND name = ? ORDER BY version'),
      deleteFunction: this.db.prepare('DELETE FROM functions WHERE tenant = ? AND name = ?'),
      deleteTenantFunctions: this.db.prepare<[string], { name: string }>('DELETE FROM functions WHERE tenant = ? RETURNING name'),
      upsertFunction: this.db.prepare(
        `INSERT INTO functions (tenant, name, latest_version, created_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (tenant, name) DO UPDATE SET latest_version = excluded.latest_version, created_at_ms = excluded.created_at_ms, updated_at_ms = excluded.updated_at_ms`,
      ),
      insertFunctionIfAbsent: this.db.prepare('INSERT INTO functions (tenant, name, latest_version, created_at_ms, updated_at_ms) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING'),
      insertVersionIfAbsent: this.db.prepare('INSERT INTO function_versions (tenant, name, version, spec, created_at_ms, spec_bytes) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING'),
      deleteVersion: this.db.prepare('DELETE FROM function_versions WHERE tenant = ? AND name = ? AND version = ?'),
      versionInUse: this.db.prepare<[string, string, number], { one: number }>(
        // The unary + keeps the (tenant, function) index out: a function's sync records are many, its queued ones few.
        "SELECT 1 AS one FROM invocations WHERE status IN ('queued', 'running') AND +tenant = ? AND +function = ? AND version = ? LIMIT 1",
      ),
      deleteAllFunctions: this.db.prepare('DELETE FROM functions'),
      allFunctions: this.db.prepare<[], FunctionRow>('SELECT * FROM functions'),
      insertInvocation: this.db.prepare(
        `INSERT INTO invocations (id, tenant, function, version, status, payload, payload_bytes, idempotency_key, callback_url, callback_state, created_at_ms, traceparent)
         VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
      ),
      byIdempotencyKey: this.db.prepare<[string, string, string], InvocationRow>(`SELECT ${INVOCATION_COLUMNS} FROM invocations WHERE tenant = ? AND function = ? AND idempotency_key = ?`),
      getInvocation: this.db.prepare<[string], InvocationRow>(`SELECT ${INVOCATION_COLUMNS} FROM invocations WHERE id = ?`),
      getPayload: this.db.prepare<[string], { payload: Buffer | null }>('SELECT payload FROM invocations WHERE id = ?'),
      getOutput: this.db.prepare<[string], { stdout: Buffer | null; stderr: Buffer | null }>('SELECT stdout, stderr FROM invocations WHERE id = ?'),
      claim: this.db.prepare<[number], InvocationRow>(
        `UPDATE invocations SET status = 'running', started_at_ms = ?, attempts = attempts + 1
         WHERE seq = (SELECT seq FROM invocations WHERE status = 'queued' ORDER BY seq LIMIT 1)
         RETURNING ${INVOCATION_COLUMNS}`,
      ),
      claimSkipping: this.db.prepare<[number, string], InvocationRow>(
        `UPDATE invocations SET status = 'running', started_at_ms = ?, attempts = attempts + 1
         WHERE seq = (SELECT seq FROM invocations WHERE status = 'queued' AND tenant NOT IN (SELECT value FROM json_each(?)) ORDER BY seq LIMIT 1)
         RETURNING ${INVOCATION_COLUMNS}`,
      ),
      requeue: this.db.prepare("UPDATE invocations SET status = 'queued', started_at_ms = NULL, attempts = attempts - 1 WHERE id = ? AND status = 'running'"),
      redeliver: this.db.prepare("UPDATE invocations SET status = 'queued', started_at_ms = NULL WHERE id = ? AND status = 'running'"),
      finish: this.db.prepare(
        `UPDATE invocations SET status = ?, exit_code = ?, duration_ms = ?, cold_start = ?, timed_out = ?, error = ?, stdout = ?, stderr = ?,
           stdout_bytes = ?, finished_at_ms = ?, payload = NULL WHERE id = ?`,
      ),
      insertFinished: this.db.prepare(
        `INSERT INTO invocations (id, tenant, function, version, mode, status, payload_bytes, attempts, exit_code, duration_ms, cold_start, timed_out, error,
           stdout, stderr, stdout_bytes, created_at_ms, started_at_ms, finished_at_ms)
         VALUES (?, ?, ?, ?, 'sync', ?, ?, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
      ),
      failRunning: this.db.prepare("UPDATE invocations SET status = 'failed', error = ?, finished_at_ms = ?, payload = NULL WHERE status = 'running'"),
      requeueRunning: this.db.prepare("UPDATE invocations SET status = 'queued', started_at_ms = NULL WHERE status = 'running' AND attempts < ?"),
      setCallback: this.db.prepare('UPDATE invocations SET callback_state = ?, callback_attempts = ? WHERE id = ?'),
      pendingCallbacks: this.db.prepare<[], InvocationRow>(`SELECT ${INVOCATION_COLUMNS} FROM invocations WHERE callback_state = 'pending' AND finished_at_ms IS NOT NULL ORDER BY seq`),
      deleteFinishedBefore: this.db.prepare('DELETE FROM invocations WHERE finished_at_ms IS NOT NULL AND finished_at_ms < ?'),
    };
    this.inTransaction = this.db.transaction((fn: () => unknown) => fn());
  }

  putFunction(
    tenant: string,
    name: string,
    spec: FunctionSpec,
    nowMs: number,
    retention?: VersionRetention,
  ): { fn: FunctionRecord; version: FunctionVersion; created: boolean; pruned: number[] } {
    const put = this.db.transaction(() => {
      const existing = this.statements.getFunction.get(tenant, name);
      const version = (this.statements.maxVersion.get(tenant, name)?.v ?? 0) + 1;
      if (existing === undefined) this.statements.insertFunction.run(tenant, name, version, nowMs, nowMs);
      else this.statements.bumpFunction.run(version, nowMs, tenant, name);
      const json = JSON.stringify(spec);
      this.statements.insertVersion.run(tenant, name, version, json, nowMs, specBytes(spec));
      // The new version is the newest, so it is always kept (keep >= 1): version numbers are never reused.
      const pruned =
        retention === undefined
          ? []
          : this.statements.prune
              .all({ tenant, name, keep: Math.max(1, retention.keep), alsoKeep: JSON.stringify(retention.alsoKeep ?? []) })
              .map((row) => row.version)
              .sort((a, b) => a - b);
      return {
        fn: toFunction(this.statements.getFunction.get(tenant, name)!),
        version: { tenant, name, version, spec, createdAtMs: nowMs },
        created: existing === undefined,
        pruned,
      };
    });
    try {
      return put.immediate();
    } finally {
      this.latest.delete(cacheKey(tenant, name));
    }
  }

  prunableVersions(tenant: string, name: string, keep: number, alsoKeep: readonly number[]): { version: number; bytes: number }[] {
    // Before the deploy: its new version will be one of the newest `keep`, so the newest keep - 1 of today's stay.
    return this.statements.prunable.all({ tenant, name, keep: Math.max(1, keep) - 1, alsoKeep: JSON.stringify(alsoKeep) });
  }

  storageUsage(tenant: string): TenantStorageUsage {
    const row = this.statements.storageUsage.get(tenant);
    return { functionVersions: row?.function_versions ?? 0, codeBytes: row?.code_bytes ?? 0, queuedPayloadBytes: row?.queued_payload_bytes ?? 0 };
  }

  getFunction(tenant: string, name: string): FunctionRecord | null {
    return this.latestOf(tenant, name)?.fn ?? null;
  }

  getVersion(tenant: string, name: string, version?: number): FunctionVersion | null {
    const latest = this.latestOf(tenant, name);
    if (latest === null) return null;
    if (version === undefined || version === latest.fn.latestVersion) return latest.version;
    const row = this.statements.getVersion.get(tenant, name, version);
    return row === undefined ? null : toVersion(row);
  }

  /** The function and its latest version, from the cache or the database (which then fills the cache). */
  private latestOf(tenant: string, name: string): { fn: FunctionRecord; version: FunctionVersion } | null {
    const key = cacheKey(tenant, name);
    const cached = this.latest.get(key);
    if (cached !== undefined) return cached;
    const fnRow = this.statements.getFunction.get(tenant, name);
    if (fnRow === undefined) return null;
    const versionRow = this.statements.getVersion.get(tenant, name, fnRow.latest_version);
    if (versionRow === undefined) return null;
    const entry = { fn: deepFreeze(toFunction(fnRow)), version: deepFreeze(toVersion(versionRow)) };
    this.latest.set(key, entry);
    return entry;
  }

  listFunctions(tenant: string): FunctionRecord[] {
    return this.statements.listFunctions.all(tenant).map(toFunction);
  }

  listVersions(tenant: string, name: string): FunctionVersion[] {
    return this.statements.listVersions.all(tenant, name).map(toVersion);
  }

  deleteFunction(tenant: string, name: string): boolean {
    this.latest.delete(cacheKey(tenant, name));
    return this.statements.deleteFunction.run(tenant, name).changes > 0;
  }

  deleteTenantFunctions(tenant: string): string[] {
    const names = this.statements.deleteTenantFunctions.all(tenant).map((row) => row.name);
    for (const name of names) this.latest.delete(cacheKey(tenant, name));
    return names;
  }

  bundleHashes(field: 'bundle' | 'layer' = 'bundle'): Set<string> {
    // Rare (after deploys and deletes of bundle functions): a scan is fine, no index on the JSON.
    const path = field === 'layer' ? '$.layer.sha256' : '$.bundle.sha256';
    const rows = this.db.prepare('SELECT DISTINCT json_extract(spec, ?) AS sha FROM function_versions WHERE json_extract(spec, ?) IS NOT NULL').all(path, path) as { sha: string }[];
    return new Set(rows.map((row) => row.sha));
  }

  refersTo(field: 'bundle' | 'layer', sha256: string): boolean {
    const path = field === 'layer' ? '$.layer.sha256' : '$.bundle.sha256';
    return this.db.prepare('SELECT 1 FROM function_versions WHERE json_extract(spec, ?) = ? LIMIT 1').get(path, sha256) !== undefined;
  }

  imageReferences(): { tenant: string; function: string; image: string }[] {
    // Rare (custom image deletes, and after deploys and deletes of functions with packages): a scan is fine.
    return this.db
      .prepare(
        `SELECT DISTINCT tenant, name AS function, image FROM (
           SELECT tenant, name, json_extract(spec, '$.image') AS image FROM function_versions
           UNION ALL SELECT tenant, name, json_extract(spec, '$.aptImage') AS image FROM function_versions
         ) WHERE image IS NOT NULL`,
      )
      .all() as { tenant: string; function: string; image: string }[];
  }

  insertInvocation(input: NewInvocation): { invocation: InvocationRecord; created: boolean } {
    // One statement, atomic on its own; the record is made from what was inserted instead of read back. Only a
    // conflict reads (the synchronous API keeps the insert and that read together within this process).
    const inserted = this.statements.insertInvocation.run(
      input.id,
      input.tenant,
      input.functionName,
      input.version,
      input.payload,
      input.payload.length,
      input.idempotencyKey,
      input.callbackUrl,
      input.callbackUrl === null ? null : 'pending',
      input.createdAtMs,
      input.traceparent ?? null,
    );
    if (inserted.changes > 0) return { invocation: queuedRecord(input), created: true };
    // The only constraint that can conflict besides the (random) id is the idempotency key.
    const existing = input.idempotencyKey === null ? undefined : this.statements.byIdempotencyKey.get(input.tenant, input.functionName, input.idempotencyKey);
    if (existing === undefined) throw new Error(`invocation id ${input.id} collided`);
    return { invocation: toInvocation(existing), created: false };
  }

  getInvocation(id: string, tenant?: string): InvocationRecord | null {
    const row = this.statements.getInvocation.get(id);
    if (row === undefined || (tenant !== undefined && row.tenant !== tenant)) return null;
    return toInvocation(row);
  }

  getInvocationPayload(id: string): Buffer | null {
    return this.statements.getPayload.get(id)?.payload ?? null;
  }

  getInvocationOutput(id: string): { stdout: Buffer; stderr: Buffer } | null {
    const row = this.statements.getOutput.get(id);
    if (row === undefined) return null;
    return { stdout: row.stdout ?? Buffer.alloc(0), stderr: row.stderr ?? Buffer.alloc(0) };
  }

  listInvocations(filter: InvocationFilter): InvocationRecord[] {
    const where: string[] = [];
    const params: (string | number)[] = [];
    const add = (clause: string, value: string | number | undefined): void => {
      if (value === undefined) return;
      where.push(clause);
      params.push(value);
    };
    add('tenant = ?', filter.tenant);
    add('function = ?', filter.functionName);
    add('status = ?', filter.status);
    add('created_at_ms >= ?', filter.sinceMs);
    add('created_at_ms < ?', filter.untilMs);
    const sql = `SELECT ${INVOCATION_COLUMNS} FROM invocations ${where.length > 0 ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY seq DESC LIMIT ?`;
    return this.db.prepare<(string | number)[], InvocationRow>(sql).all(...params, filter.limit).map(toInvocation);
  }

  claimNextInvocation(nowMs: number, skipTenants: readonly string[] = []): InvocationRecord | null {
    const row = skipTenants.length === 0 ? this.statements.claim.get(nowMs) : this.statements.claimSkipping.get(nowMs, JSON.stringify(skipTenants));
    return row === undefined ? null : toInvocation(row);
  }

  requeueInvocation(id: string, options: { countAttempt?: boolean } = {}): void {
    (options.countAttempt === true ? this.statements.redeliver : this.statements.requeue).run(id);
  }

  finishInvocation(id: string, outcome: InvocationOutcome): void {
    const flag = (value: boolean | null): number | null => (value === null ? null : value ? 1 : 0);
    this.statements.finish.run(
      outcome.status,
      outcome.exitCode,
      outcome.durationMs,
      flag(outcome.coldStart),
      flag(outcome.timedOut),
      outcome.error,
      outcome.stdout,
      outcome.stderr,
      outcome.stdout.length,
      outcome.finishedAtMs,
      id,
    );
  }

  insertFinishedInvocations(records: FinishedInvocation[]): void {
    if (records.length === 0) return;
    const flag = (value: boolean | null): number | null => (value === null ? null : value ? 1 : 0);
    // One transaction for the batch: one commit instead of one per invocation.
    this.db.transaction(() => {
      for (const r of records) {
        this.statements.insertFinished.run(
          r.id,
          r.tenant,
          r.functionName,
          r.version,
          r.status,
          r.payloadBytes,
          r.exitCode,
          r.durationMs,
          flag(r.coldStart),
          flag(r.timedOut),
          r.error,
          r.stdout,
          r.stderr,
          r.stdoutBytes,
          r.createdAtMs,
          r.startedAtMs,
          r.finishedAtMs,
        );
      }
    }).immediate();
  }

  failRunningInvocations(reason: string, nowMs: number): number {
    return this.statements.failRunning.run(reason, nowMs).changes;
  }

  requeueRunningInvocations(maxAttempts: number): number {
    return this.statements.requeueRunning.run(maxAttempts).changes;
  }

  setCallbackState(id: string, state: CallbackState, attempts: number): void {
    this.statements.setCallback.run(state, attempts, id);
  }

  pendingCallbacks(): InvocationRecord[] {
    return this.statements.pendingCallbacks.all().map(toInvocation);
  }

  deleteInvocationsFinishedBefore(beforeMs: number): number {
    return this.statements.deleteFinishedBefore.run(beforeMs).changes;
  }

  /* A cluster gateway's copy of the shared state (src/cluster/shared-state.ts) is written only through these. */

  /** The highest version number of the function here (0 when it has none). */
  maxVersion(tenant: string, name: string): number {
    return this.statements.maxVersion.get(tenant, name)?.v ?? 0;
  }

  /** Every function of every tenant. */
  allFunctions(): FunctionRecord[] {
    return this.statements.allFunctions.all().map(toFunction);
  }

  /**
   * Makes the functions tables hold exactly these records (a gateway joining the cluster), in one transaction, but for
   * versions of these functions that invocations queued or running here still need, which stay (another gateway's
   * deploy pruned them). Returns those kept.
   */
  replaceFunctions(functions: readonly FunctionRecord[], versions: readonly FunctionVersion[]): FunctionVersion[] {
    const kept: FunctionVersion[] = [];
    this.inTransaction.immediate(() => {
      const needed = this.db
        .prepare<[], VersionRow>(
          `SELECT DISTINCT v.* FROM function_versions v JOIN invocations i ON i.tenant = v.tenant AND i.function = v.name AND i.version = v.version
           WHERE i.status IN ('queued', 'running')`,
        )
        .all()
        .map(toVersion);
      this.statements.deleteAllFunctions.run();
      for (const version of versions) this.applyVersionRow(version);
      const live = new Map(functions.map((fn) => [`${fn.tenant}\0${fn.name}`, fn]));
      const stored = new Set(versions.map((version) => `${version.tenant}\0${version.name}\0${version.version}`));
      for (const version of needed) {
        // Only for the function that still exists, not one of the same name made again after a delete (numbered from 1
        // again: its own version of that number would be shadowed): a deleted function's invocations fail, as on a
        // single server.
        const fn = live.get(`${version.tenant}\0${version.name}`);
        if (fn === undefined || version.createdAtMs < fn.createdAtMs || stored.has(`${version.tenant}\0${version.name}\0${version.version}`)) continue;
        this.applyVersionRow(version);
        kept.push(version);
      }
      for (const fn of functions) this.applyFunctionRow(fn);
    });
    this.latest.clear();
    return kept;
  }

  /** Writes the function's record as it is now (its versions arrive apart). */
  applyFunction(record: FunctionRecord): void {
    this.applyFunctionRow(record);
    this.latest.delete(cacheKey(record.tenant, record.name));
  }

  /**
   * Adds a version (immutable: one already here stays). A version whose function is not here yet creates it with this
   * version as its latest: the version is written before its function's record, so a deploy's function is never seen
   * without the code it points to.
   */
  applyVersion(version: FunctionVersion): void {
    this.inTransaction.immediate(() => this.applyVersionRow(version));
    this.latest.delete(cacheKey(version.tenant, version.name));
  }

  /** Whether an invocation queued or running here refers to that version (a cluster copy keeps it while one does). */
  versionInUse(tenant: string, name: string, version: number): boolean {
    return this.statements.versionInUse.get(tenant, name, version) !== undefined;
  }

  removeVersion(tenant: string, name: string, version: number): void {
    this.statements.deleteVersion.run(tenant, name, version);
    this.latest.delete(cacheKey(tenant, name));
  }

  private applyFunctionRow(record: FunctionRecord): void {
    this.statements.upsertFunction.run(record.tenant, record.name, record.latestVersion, record.createdAtMs, record.updatedAtMs);
  }

  private applyVersionRow(version: FunctionVersion): void {
    this.statements.insertFunctionIfAbsent.run(version.tenant, version.name, version.version, version.createdAtMs, version.createdAtMs);
    this.statements.insertVersionIfAbsent.run(version.tenant, version.name, version.version, JSON.stringify(version.spec), version.createdAtMs, specBytes(version.spec));
  }

  transaction<T>(fn: () => T): T {
    // BEGIN IMMEDIATE: the write lock is taken at the start, so a busy database fails (or waits) before any work.
    // Commits of many small writes: ~50 µs alone, ~10 µs a row in a batch of 16 (WAL, synchronous=NORMAL).
    return this.inTransaction.immediate(fn) as T;
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
