import type Database from 'better-sqlite3';
import { openSqlite } from './open-sqlite.js';

export type SandboxState = 'running' | 'paused' | 'hibernated' | 'stopped';

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
  /**
   * Files kept on a disk of their own (the sandbox executor): they outlive the processes and the server until the
   * sandbox is deleted; `fromSnapshot` is the read-only layer under them. Null (and in older records absent): the
   * files are tmpfs and end with the processes.
   */
  storage?: { fromSnapshot: string | null } | null;
  /** The env the sandbox was created with: a restart (a new process tree on the kept files) gets it again. */
  env?: Record<string, string>;
  /** When the current process tree started (create or restart); the max lifetime counts from it. */
  startedAtMs?: number;
  /**
   * Set while `state` is hibernated: whether the executor saved the processes and memory (they come back on resume) or
   * only the files are kept (a resume starts a new process tree), the saved image's size, and when.
   */
  hibernation?: { processesKept: boolean; bytes: number | null; atMs: number } | null;
}

/** A snapshot of a sandbox's files (see src/orchestrator/sandboxes.ts). */
export interface SnapshotRecord {
  id: string;
  tenant: string;
  sandboxId: string;
  executor: string;
  image: string;
  runtime: string | null;
  limits: SandboxRecord['limits'];
  createdAtMs: number;
  bytes: number;
  /** Memory and processes kept too (an executor with the memorySnapshot capability); absent in older records: false. */
  memory?: boolean;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS sandboxes (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  state TEXT NOT NULL,
  record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sandboxes_tenant ON sandboxes (tenant, state);
CREATE TABLE IF NOT EXISTS sandbox_snapshots (
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  sandbox TEXT NOT NULL,
  record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sandbox_snapshots_tenant ON sandbox_snapshots (tenant);
`;

/**
 * Records made while `node` and `python` meant bookworm's Node 18 and Python 3.11 name those runtimes; they are renamed
 * to node18 and python3.11 so a restart, fork or snapshot keeps its image. Records made since store the concrete
 * runtime (never `node` or `python`), so running this at every start changes nothing twice.
 */
const PIN_LEGACY_RUNTIMES = ['sandboxes', 'sandbox_snapshots']
  .flatMap((table) => [
    `UPDATE ${table} SET record = json_set(record, '$.runtime', 'node18') WHERE json_extract(record, '$.runtime') = 'node';`,
    `UPDATE ${table} SET record = json_set(record, '$.runtime', 'python3.11') WHERE json_extract(record, '$.runtime') = 'python';`,
  ])
  .join('\n');

/** Records of persistent sandboxes, in the store's database file (the processes themselves never outlive the server). */
export class SqliteSandboxStore {
  private readonly db: Database.Database;
  private readonly putStmt: Database.Statement;
  private readonly getStmt: Database.Statement;
  private readonly listStmt: Database.Statement;
  private readonly deleteStmt: Database.Statement;
  private readonly countStmt: Database.Statement;

  constructor(file: string) {
    this.db = openSqlite(file, (db) => db.exec(SCHEMA + PIN_LEGACY_RUNTIMES));
    this.putStmt = this.db.prepare('INSERT OR REPLACE INTO sandboxes (id, tenant, state, record) VALUES (?, ?, ?, ?)');
    this.getStmt = this.db.prepare('SELECT record FROM sandboxes WHERE id = ?');
    this.listStmt = this.db.prepare('SELECT record FROM sandboxes WHERE tenant = ? ORDER BY id');
    this.deleteStmt = this.db.prepare('DELETE FROM sandboxes WHERE id = ?');
    this.countStmt = this.db.prepare('SELECT tenant, COUNT(*) AS n FROM sandboxes WHERE state = ? GROUP BY tenant');
  }

  /** Sandboxes in `state` per tenant (for metrics of states no live sandbox has, e.g. hibernated and stopped). */
  countByTenant(state: SandboxRecord['state']): Map<string, number> {
    return new Map((this.countStmt.all(state) as { tenant: string; n: number }[]).map((row) => [row.tenant, row.n]));
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
   * At start-up: every sandbox a previous run of the server left running or paused has no processes any more (they
   * ended with that server, and the executors reaped what was left), so its record says stopped. Returns how many.
   * A hibernated sandbox holds no process to lose (its image or files are on disk): it stays hibernated.
   */
  markAllStopped(reason: string, atMs: number): number {
    const rows = this.db.prepare("SELECT record FROM sandboxes WHERE state NOT IN ('stopped', 'hibernated')").all() as { record: string }[];
    const mark = this.db.transaction(() => {
      for (const row of rows) this.put({ ...(JSON.parse(row.record) as SandboxRecord), state: 'stopped', stoppedAtMs: atMs, stopReason: reason });
    });
    mark();
    return rows.length;
  }

  /** Removes stopped records older than `beforeMs` whose files ended with them (records with a disk stay until deleted). */
  pruneStopped(beforeMs: number): void {
    const rows = this.db.prepare("SELECT id, record FROM sandboxes WHERE state = 'stopped'").all() as { id: string; record: string }[];
    for (const row of rows) {
      const record = JSON.parse(row.record) as SandboxRecord;
      if ((record.storage ?? null) === null && (record.stoppedAtMs ?? 0) < beforeMs) this.delete(row.id);
    }
  }

  /** Ids of every sandbox record (any tenant): their disks are kept at start-up. */
  allIds(): string[] {
    return (this.db.prepare('SELECT id FROM sandboxes').all() as { id: string }[]).map((row) => row.id);
  }

  /* -- snapshots ----------------------------------------------------------------------------------------------------- */

  putSnapshot(record: SnapshotRecord): void {
    this.db.prepare('INSERT OR REPLACE INTO sandbox_snapshots (id, tenant, sandbox, record) VALUES (?, ?, ?, ?)').run(record.id, record.tenant, record.sandboxId, JSON.stringify(record));
  }

  getSnapshot(id: string): SnapshotRecord | null {
    const row = this.db.prepare('SELECT record FROM sandbox_snapshots WHERE id = ?').get(id) as { record: string } | undefined;
    return row === undefined ? null : (JSON.parse(row.record) as SnapshotRecord);
  }

  /** A tenant's snapshots (of one sandbox when given), oldest first; null tenant: every tenant's. */
  listSnapshots(tenant: string | null, sandboxId?: string): SnapshotRecord[] {
    const rows = (tenant === null ? this.db.prepare('SELECT record FROM sandbox_snapshots ORDER BY id').all() : this.db.prepare('SELECT record FROM sandbox_snapshots WHERE tenant = ? ORDER BY id').all(tenant)) as { record: string }[];
    return rows.map((row) => JSON.parse(row.record) as SnapshotRecord).filter((record) => sandboxId === undefined || record.sandboxId === sandboxId);
  }

  deleteSnapshot(id: string): void {
    this.db.prepare('DELETE FROM sandbox_snapshots WHERE id = ?').run(id);
  }

  /** Sandboxes (any state) whose files lie on `snapshotId`'s layer. */
  sandboxesOn(snapshotId: string): string[] {
    const rows = this.db.prepare('SELECT record FROM sandboxes').all() as { record: string }[];
    return rows.map((row) => JSON.parse(row.record) as SandboxRecord).filter((record) => record.storage?.fromSnapshot === snapshotId).map((record) => record.id);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
