import Database from 'better-sqlite3';
import type { FunctionRecord, FunctionSpec, FunctionVersion, Store } from './store.js';

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
];

interface FunctionRow {
  name: string;
  latest_version: number;
  created_at_ms: number;
  updated_at_ms: number;
}
interface VersionRow {
  name: string;
  version: number;
  spec: string;
  created_at_ms: number;
}

const toFunction = (row: FunctionRow): FunctionRecord => ({
  name: row.name,
  latestVersion: row.latest_version,
  createdAtMs: row.created_at_ms,
  updatedAtMs: row.updated_at_ms,
});
const toVersion = (row: VersionRow): FunctionVersion => ({
  name: row.name,
  version: row.version,
  spec: JSON.parse(row.spec) as FunctionSpec,
  createdAtMs: row.created_at_ms,
});

/** The default store: one SQLite file in WAL mode (readers never block the writer), foreign keys on. */
export class SqliteStore implements Store {
  private readonly db: Database.Database;
  private readonly statements;

  /** `file` is a path (e.g. `<data-dir>/kindling.db`) or `:memory:`. */
  constructor(file: string) {
    this.db = new Database(file);
    try {
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = NORMAL');
      this.db.pragma('foreign_keys = ON');
      this.db.pragma('busy_timeout = 5000');
      this.migrate();
    } catch (error) {
      this.db.close();
      throw error;
    }
    this.statements = {
      getFunction: this.db.prepare<[string], FunctionRow>('SELECT * FROM functions WHERE name = ?'),
      listFunctions: this.db.prepare<[], FunctionRow>('SELECT * FROM functions ORDER BY name'),
      insertFunction: this.db.prepare('INSERT INTO functions (name, latest_version, created_at_ms, updated_at_ms) VALUES (?, ?, ?, ?)'),
      bumpFunction: this.db.prepare('UPDATE functions SET latest_version = ?, updated_at_ms = ? WHERE name = ?'),
      maxVersion: this.db.prepare<[string], { v: number | null }>('SELECT MAX(version) AS v FROM function_versions WHERE name = ?'),
      insertVersion: this.db.prepare('INSERT INTO function_versions (name, version, spec, created_at_ms) VALUES (?, ?, ?, ?)'),
      getVersion: this.db.prepare<[string, number], VersionRow>('SELECT * FROM function_versions WHERE name = ? AND version = ?'),
      listVersions: this.db.prepare<[string], VersionRow>('SELECT * FROM function_versions WHERE name = ? ORDER BY version'),
      deleteFunction: this.db.prepare('DELETE FROM functions WHERE name = ?'),
    };
  }

  private migrate(): void {
    const current = this.db.pragma('user_version', { simple: true }) as number;
    for (let i = current; i < MIGRATIONS.length; i++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[i]!);
        this.db.pragma(`user_version = ${i + 1}`);
      })();
    }
  }

  putFunction(name: string, spec: FunctionSpec, nowMs: number): { fn: FunctionRecord; version: FunctionVersion; created: boolean } {
    return this.db.transaction(() => {
      const existing = this.statements.getFunction.get(name);
      const version = (this.statements.maxVersion.get(name)?.v ?? 0) + 1;
      if (existing === undefined) this.statements.insertFunction.run(name, version, nowMs, nowMs);
      else this.statements.bumpFunction.run(version, nowMs, name);
      this.statements.insertVersion.run(name, version, JSON.stringify(spec), nowMs);
      return {
        fn: toFunction(this.statements.getFunction.get(name)!),
        version: { name, version, spec, createdAtMs: nowMs },
        created: existing === undefined,
      };
    }).immediate();
  }

  getFunction(name: string): FunctionRecord | null {
    const row = this.statements.getFunction.get(name);
    return row === undefined ? null : toFunction(row);
  }

  getVersion(name: string, version?: number): FunctionVersion | null {
    const wanted = version ?? this.getFunction(name)?.latestVersion;
    if (wanted === undefined) return null;
    const row = this.statements.getVersion.get(name, wanted);
    return row === undefined ? null : toVersion(row);
  }

  listFunctions(): FunctionRecord[] {
    return this.statements.listFunctions.all().map(toFunction);
  }

  listVersions(name: string): FunctionVersion[] {
    return this.statements.listVersions.all(name).map(toVersion);
  }

  deleteFunction(name: string): boolean {
    return this.statements.deleteFunction.run(name).changes > 0;
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
