import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { SqliteStore } from './sqlite.js';

const dir = mkdtempSync(join(tmpdir(), 'kindling-store-test-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('SqliteStore', () => {
  it('keeps every PUT as a new immutable version and points the function at the latest', () => {
    const store = new SqliteStore(join(dir, 'a.db'));
    try {
      const first = store.putFunction('hello', { runtime: 'python', code: 'print(1)' }, 1000);
      assert.equal(first.created, true);
      assert.equal(first.version.version, 1);
      const second = store.putFunction('hello', { runtime: 'python', code: 'print(2)' }, 2000);
      assert.equal(second.created, false);
      assert.equal(second.version.version, 2);
      assert.deepEqual(store.getFunction('hello'), { name: 'hello', latestVersion: 2, createdAtMs: 1000, updatedAtMs: 2000 });
      assert.equal(store.getVersion('hello')?.spec.code, 'print(2)');
      assert.equal(store.getVersion('hello', 1)?.spec.code, 'print(1)');
      assert.equal(store.getVersion('hello', 3), null);
      assert.deepEqual(store.listVersions('hello').map((v) => v.version), [1, 2]);
    } finally {
      store.close();
    }
  });

  it('lists, deletes with versions, and survives a reopen (WAL)', () => {
    const file = join(dir, 'b.db');
    const store = new SqliteStore(file);
    store.putFunction('b', { image: 'kindling/base', command: ['cat'] }, 1);
    store.putFunction('a', { runtime: 'node', code: 'export const f = (b) => b', handler: 'f' }, 2);
    assert.deepEqual(store.listFunctions().map((f) => f.name), ['a', 'b']);
    assert.equal(store.deleteFunction('b'), true);
    assert.equal(store.deleteFunction('b'), false);
    assert.deepEqual(store.listVersions('b'), []);
    store.close();
    store.close(); // idempotent

    const reopened = new SqliteStore(file);
    try {
      assert.deepEqual(reopened.listFunctions().map((f) => f.name), ['a']);
      assert.equal(reopened.getVersion('a')?.spec.handler, 'f');
      // A redeploy after delete starts again at version 1.
      reopened.deleteFunction('a');
      assert.equal(reopened.putFunction('a', { runtime: 'node', code: '' }, 3).version.version, 1);
    } finally {
      reopened.close();
    }
  });

  it('works in memory', () => {
    const store = new SqliteStore(':memory:');
    assert.equal(store.getFunction('x'), null);
    assert.equal(store.getVersion('x'), null);
    store.close();
  });
});
