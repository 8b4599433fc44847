import Database from 'better-sqlite3';

/**
 * Opens one of Kindling's SQLite files the way every store needs it: WAL (readers never block the writer), commits
 * that survive a crash of the process (synchronous NORMAL: a power loss may cost the last ones), a busy timeout for
 * the other stores on the same file, then `setup` (schema, migrations). The handle is closed if setup fails.
 */
export function openSqlite(file: string, setup: (db: Database.Database) => void, options: { foreignKeys?: boolean } = {}): Database.Database {
  const db = new Database(file);
  try {
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    if (options.foreignKeys) db.pragma('foreign_keys = ON');
    db.pragma('busy_timeout = 5000');
    setup(db);
  } catch (error) {
    db.close();
    throw error;
  }
  return db;
}
