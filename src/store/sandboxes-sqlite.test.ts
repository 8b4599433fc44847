import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import Database from 'better-sqlite3';
import { SqliteSandboxStore } from './sandboxes-sqlite.js';

const dir = mkdtempSync(join(tmpdir(), 'kindling-sandbox-store-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('sandboxes and snapshots recorded while node and python meant Node 18 and Python 3.11 keep those runtimes', () => {
  const file = join(dir, 'sandboxes.db');
  new SqliteSandboxStore(file).close();
  // Rows as the previous release wrote them, and one written since (a concrete runtime).
  const db = new Database(file);
  const insert = db.prepare('INSERT INTO sandboxes (id, tenant, state, record) VALUES (?, ?, ?, ?)');
  insert.run('sbx_node', 'default', 'stopped', JSON.stringify({ id: 'sbx_node', tenant: 'default', state: 'stopped', image: 'kindling/node', runtime: 'node' }));
  insert.run('sbx_py', 'default', 'stopped', JSON.stringify({ id: 'sbx_py', tenant: 'default', state: 'stopped', image: 'kindling/python', runtime: 'python' }));
  insert.run('sbx_new', 'default', 'stopped', JSON.stringify({ id: 'sbx_new', tenant: 'default', state: 'stopped', image: 'kindling/python3.13', runtime: 'python3.13' }));
  insert.run('sbx_img', 'default', 'stopped', JSON.stringify({ id: 'sbx_img', tenant: 'default', state: 'stopped', image: 'kindling/base', runtime: null }));
  db.prepare('INSERT INTO sandbox_snapshots (id, tenant, sandbox, record) VALUES (?, ?, ?, ?)').run('snap_1', 'default', 'sbx_py', JSON.stringify({ id: 'snap_1', tenant: 'default', sandboxId: 'sbx_py', image: 'kindling/python', runtime: 'python' }));
  db.close();
  for (let open = 0; open < 2; open++) {
    // Twice: the second start changes nothing more.
    const store = new SqliteSandboxStore(file);
    try {
      assert.equal(store.get('sbx_node')?.runtime, 'node18');
      assert.equal(store.get('sbx_py')?.runtime, 'python3.11');
      assert.equal(store.get('sbx_new')?.runtime, 'python3.13');
      assert.equal(store.get('sbx_img')?.runtime, null);
      assert.equal(store.getSnapshot('snap_1')?.runtime, 'python3.11');
    } finally {
      store.close();
    }
  }
});
