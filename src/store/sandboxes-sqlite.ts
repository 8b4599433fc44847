import type Database from 'better-sqlite3';
import { openSqlite } from './open-sqlite.js';

export type SandboxState = 'running' | 'paused' | 'stopped';

/** A persistent sandbox as the store keeps it (see src/orchestrator/sandboxes.ts for the fields' meaning). */
export interface SandboxRecord {
  id: string;
  tenant: string;
  state: SandboxState;
  executor: string;
  image: string;
  runtime: string | null;
  limits: { memoryMb: number; cpus: number; pids: number; diskMb: number };
  envNames: string[];
  workdir: string;
  idleTimeoutMs: number;
  maxLifetimeMs: number;
  metadata: Record<string, string>;
  createdAtMs: number;
  lastActiveAtMs: number;
  stoppedAtMs: number | null;
  stopReason: string | null;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS sandboxes (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  state TEXT NOT NULL,
  record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sandboxes_tenant ON sandboxes (tenant, state);
`;

/** Records of persistent sandboxes, in the store's database file (the processes themselves never outlive the server). */
export class SqliteSandboxStore {
  private readonly db: Database.Database;
  private readonly putStmt: Database.Statement;
  private readonly getStmt: Database.Statement;
  private readonly listStmt: Database.Statement;
  private readonly deleteStmt: Database.Statement;

  constructor(file: string) {
    this.db = openSqlite(file, (db) => db.exec(SCHEMA));
    this.putStmt = this.db.prepare('INSERT OR REPLACE INTO sandboxes (id, tenant, state, record) VALUES (?, ?, ?, ?)');
    this.getStmt = this.db.prepare('SELECT record FROM sandboxes WHERE id = ?');
    this.listStmt = this.db.prepare('SELECT record FROM sandboxes WHERE tenant = ? ORDER BY id');
    this.deleteStmt = this.db.prepare('DELETE FROM sandboxes WHERE id = ?');
  }

  put(record: SandboxRecord): void {
    this.putStmt.run(record.id, record.tenant, record.state, JSON.stringify(record));
  }

  get(id: string): SandboxRecord | null {
    const row = this.getStmt.get(id) as { record: string } | undefined;
    return row === undefined ? null : (JSON.parse(row.record) as SandboxRecord);
  }

  list(tenant: string): SandboxRecord[] {
    return (this.listStmt.all(tenant) as { record: string }[]).map((row) => JSON.parse(row.record) as SandboxRecord);
  }

  delete(id: string): void {
    this.deleteStmt.run(id);
  }

  /**
   * At start-up: every sandbox a previous run of the server left running or paused is gone (its processes and tmpfs
   * ended with that server, and the executors reaped what was left), so its record says stopped. Returns how many.
   */
  markAllStopped(reason: string, atMs: number): number {
    const rows = this.db.prepare("SELECT record FROM sandboxes WHERE state != 'stopped'").all() as { record: string }[];
    const mark = this.db.transaction(() => {
      for (const row of rows) this.put({ ...(JSON.parse(row.record) as SandboxRecord), state: 'stopped', stoppedAtMs: atMs, stopReason: reason });
    });
    mark();
    return rows.length;
  }

  /** Removes stopped records older than `beforeMs`. */
  pruneStopped(beforeMs: number): void {
    const rows = this.db.prepare("SELECT id, record FROM sandboxes WHERE state = 'stopped'").all() as { id: string; record: string }[];
    for (const row of rows) if (((JSON.parse(row.record) as SandboxRecord).stoppedAtMs ?? 0) < beforeMs) this.delete(row.id);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
