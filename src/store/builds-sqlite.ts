import type Database from 'better-sqlite3';
import { openSqlite } from './open-sqlite.js';

/**
 * Dependency builds of function deploys (npm ci, pip install), in the server's SQLite file on a connection of their
 * own (like usage records): the status and error a deploy's build ended with, and the end of its log, so that a
 * failed deploy can be looked into after its 422. The table is created if missing (no migration number of its own).
 */
const SCHEMA = `
CREATE TABLE IF NOT EXISTS function_builds (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  function TEXT NOT NULL,
  kind TEXT NOT NULL,
  status TEXT NOT NULL,
  error TEXT,
  layer_sha256 TEXT,
  log TEXT NOT NULL DEFAULT '',
  started_at_ms INTEGER NOT NULL,
  finished_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS function_builds_fn ON function_builds (tenant, function, started_at_ms);
`;

/** Columns added after the table first shipped: added to an older file when it is opened. */
const ADDED_COLUMNS: Record<string, string> = { version: 'INTEGER' };

export type BuildStatus = 'building' | 'ready' | 'failed';
/** What a build installs: a node bundle's npm lockfile, or a python bundle's requirements.txt. */
export type BuildKind = 'npm' | 'pip' | 'compile' | 'apt';

export interface BuildRecord {
  id: string;
  tenant: string;
  function: string;
  kind: BuildKind;
  status: BuildStatus;
  /** Why a failed build failed (the message of its BUILD_FAILED). */
  error?: string;
  /** The layer a ready build made or reused. */
  layerSha256?: string;
  /** The function version a ready build's deploy stored (the version that runs its layer). */
  version?: number;
  startedAtMs: number;
  finishedAtMs?: number;
}

interface Row {
  id: string;
  tenant: string;
  function: string;
  kind: string;
  status: string;
  error: string | null;
  layer_sha256: string | null;
  version: number | null;
  started_at_ms: number;
  finished_at_ms: number | null;
}

const toRecord = (row: Row): BuildRecord => ({
  id: row.id,
  tenant: row.tenant,
  function: row.function,
  kind: row.kind as BuildKind,
  status: row.status as BuildStatus,
  ...(row.error === null ? {} : { error: row.error }),
  ...(row.layer_sha256 === null ? {} : { layerSha256: row.layer_sha256 }),
  ...(row.version === null || row.version === undefined ? {} : { version: row.version }),
  startedAtMs: row.started_at_ms,
  ...(row.finished_at_ms === null ? {} : { finishedAtMs: row.finished_at_ms }),
});

/** How a build ended: ready with the layer and the version its deploy stored, or failed with why. */
export interface BuildOutcome {
  status: 'ready' | 'failed';
  error?: string;
  layerSha256?: string;
  version?: number;
  log: string;
  finishedAtMs: number;
}

export interface BuildStore {
  start(record: Pick<BuildRecord, 'id' | 'tenant' | 'function' | 'kind' | 'startedAtMs'>): void;
  finish(id: string, outcome: BuildOutcome): void;
  /** The tenant's build of the function, or null (another tenant's build is null too). */
  get(tenant: string, fn: string, id: string): BuildRecord | null;
  /** The stored log of a finished build ('' while it runs). */
  log(tenant: string, fn: string, id: string): string | null;
  /** The function's builds, newest first. */
  list(tenant: string, fn: string): BuildRecord[];
  /** Builds of the function go (it was deleted). */
  deleteFunction(tenant: string, fn: string): void;
  deleteTenant(tenant: string): void;
  /** Builds left `building` by a server that stopped become `failed` (start-up). */
  failInterrupted(nowMs: number): number;
  close(): void;
}

/** Builds kept per function (the newest); older ones go when a new one starts. */
export const BUILDS_KEPT_PER_FUNCTION = 20;

export class SqliteBuildStore implements BuildStore {
  private readonly db: Database.Database;

  constructor(file: string) {
    this.db = openSqlite(file, (db) => {
      db.exec(SCHEMA);
      const have = new Set((db.prepare('PRAGMA table_info(function_builds)').all() as { name: string }[]).map((c) => c.name));
      for (const [column, type] of Object.entries(ADDED_COLUMNS)) if (!have.has(column)) db.exec(`ALTER TABLE function_builds ADD COLUMN ${column} ${type}`);
    });
  }

  start(record: Pick<BuildRecord, 'id' | 'tenant' | 'function' | 'kind' | 'startedAtMs'>): void {
    this.db.transaction(() => {
      this.db
        .prepare("INSERT INTO function_builds (id, tenant, function, kind, status, started_at_ms) VALUES (?, ?, ?, ?, 'building', ?)")
        .run(record.id, record.tenant, record.function, record.kind, record.startedAtMs);
      this.db
        .prepare('DELETE FROM function_builds WHERE tenant = ? AND function = ? AND id NOT IN (SELECT id FROM function_builds WHERE tenant = ? AND function = ? ORDER BY started_at_ms DESC, rowid DESC LIMIT ?)')
        .run(record.tenant, record.function, record.tenant, record.function, BUILDS_KEPT_PER_FUNCTION);
    })();
  }

  finish(id: string, outcome: BuildOutcome): void {
    this.db
      .prepare('UPDATE function_builds SET status = ?, error = ?, layer_sha256 = ?, version = ?, log = ?, finished_at_ms = ? WHERE id = ?')
      .run(outcome.status, outcome.error ?? null, outcome.layerSha256 ?? null, outcome.version ?? null, outcome.log, outcome.finishedAtMs, id);
  }

  get(tenant: string, fn: string, id: string): BuildRecord | null {
    const row = this.db.prepare('SELECT * FROM function_builds WHERE id = ? AND tenant = ? AND function = ?').get(id, tenant, fn) as Row | undefined;
    return row === undefined ? null : toRecord(row);
  }

  log(tenant: string, fn: string, id: string): string | null {
    const row = this.db.prepare('SELECT log FROM function_builds WHERE id = ? AND tenant = ? AND function = ?').get(id, tenant, fn) as { log: string } | undefined;
    return row === undefined ? null : row.log;
  }

  list(tenant: string, fn: string): BuildRecord[] {
    const rows = this.db.prepare('SELECT * FROM function_builds WHERE tenant = ? AND function = ? ORDER BY started_at_ms DESC, rowid DESC').all(tenant, fn) as Row[];
    return rows.map(toRecord);
  }

  deleteFunction(tenant: string, fn: string): void {
    this.db.prepare('DELETE FROM function_builds WHERE tenant = ? AND function = ?').run(tenant, fn);
  }

  deleteTenant(tenant: string): void {
    this.db.prepare('DELETE FROM function_builds WHERE tenant = ?').run(tenant);
  }

  failInterrupted(nowMs: number): number {
    return this.db
      .prepare("UPDATE function_builds SET status = 'failed', error = 'the server stopped during the build; deploy again', finished_at_ms = ? WHERE status = 'building'")
      .run(nowMs).changes;
  }

  close(): void {
    this.db.close();
  }
}
