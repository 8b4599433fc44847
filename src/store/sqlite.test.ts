import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { SqliteStore } from './sqlite.js';

const T = 'default';
const dir = mkdtempSync(join(tmpdir(), 'kindling-store-test-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('SqliteStore', () => {
  it('keeps every PUT as a new immutable version and points the function at the latest', () => {
    const store = new SqliteStore(join(dir, 'a.db'));
    try {
      const first = store.putFunction(T, 'hello', { runtime: 'python', code: 'print(1)' }, 1000);
      assert.equal(first.created, true);
      assert.equal(first.version.version, 1);
      const second = store.putFunction(T, 'hello', { runtime: 'python', code: 'print(2)' }, 2000);
      assert.equal(second.created, false);
      assert.equal(second.version.version, 2);
      assert.deepEqual(store.getFunction(T, 'hello'), { tenant: T, name: 'hello', latestVersion: 2, createdAtMs: 1000, updatedAtMs: 2000 });
      assert.equal(store.getVersion(T, 'hello')?.spec.code, 'print(2)');
      assert.equal(store.getVersion(T, 'hello', 1)?.spec.code, 'print(1)');
      assert.equal(store.getVersion(T, 'hello', 3), null);
      assert.deepEqual(store.listVersions(T, 'hello').map((v) => v.version), [1, 2]);
    } finally {
      store.close();
    }
  });

  it("replaceFunctions keeps a version a queued invocation needs, of the same function only (not one made again after a delete)", () => {
    const store = new SqliteStore(':memory:');
    try {
      store.putFunction(T, 'f', { runtime: 'python', code: 'old' }, 1000);
      store.insertInvocation({ id: 'inv_q', tenant: T, functionName: 'f', version: 1, payload: Buffer.alloc(0), idempotencyKey: null, callbackUrl: null, createdAtMs: 1100 });
      const v2 = { tenant: T, name: 'f', version: 2, spec: { runtime: 'python' as const, code: 'new' }, createdAtMs: 2000 };
      // The cluster's state: the same function (made at 1000), its version 1 pruned. Version 1 stays for the invocation.
      const kept = store.replaceFunctions([{ tenant: T, name: 'f', latestVersion: 2, createdAtMs: 1000, updatedAtMs: 2000 }], [v2]);
      assert.deepEqual(kept.map((version) => version.version), [1]);
      assert.equal(store.getVersion(T, 'f', 1)?.spec.code, 'old');
      assert.equal(store.getFunction(T, 'f')?.latestVersion, 2);
      // The function deleted and made again (at 3000, numbered from 1): the old version 1 is not put under it.
      const fresh = { tenant: T, name: 'f', version: 1, spec: { runtime: 'python' as const, code: 'fresh' }, createdAtMs: 3000 };
      assert.deepEqual(store.replaceFunctions([{ tenant: T, name: 'f', latestVersion: 1, createdAtMs: 3000, updatedAtMs: 3000 }], [fresh]), []);
      assert.equal(store.getVersion(T, 'f', 1)?.spec.code, 'fresh');
    } finally {
      store.close();
    }
  });

  it('lists, deletes with versions, and survives a reopen (WAL)', () => {
    const file = join(dir, 'b.db');
    const store = new SqliteStore(file);
    store.putFunction(T, 'b', { image: 'kindling/base', command: ['cat'] }, 1);
    store.putFunction(T, 'a', { runtime: 'node', code: 'export const f = (b) => b', handler: 'f' }, 2);
    assert.deepEqual(store.listFunctions(T).map((f) => f.name), ['a', 'b']);
    assert.equal(store.deleteFunction(T, 'b'), true);
    assert.equal(store.deleteFunction(T, 'b'), false);
    assert.deepEqual(store.listVersions(T, 'b'), []);
    store.close();
    store.close(); // idempotent

    const reopened = new SqliteStore(file);
    try {
      assert.deepEqual(reopened.listFunctions(T).map((f) => f.name), ['a']);
      assert.equal(reopened.getVersion(T, 'a')?.spec.handler, 'f');
      // A redeploy after delete starts again at version 1.
      reopened.deleteFunction(T, 'a');
      assert.equal(reopened.putFunction(T, 'a', { runtime: 'node', code: '' }, 3).version.version, 1);
    } finally {
      reopened.close();
    }
  });

  it('names the bundle and layer hashes kept versions refer to, as a set and one by one', () => {
    const store = new SqliteStore(':memory:');
    try {
      const a = 'a'.repeat(64);
      const b = 'b'.repeat(64);
      store.putFunction(T, 'bundled', { runtime: 'python', handler: 'h.py:main', bundle: { sha256: a, bytes: 1, entries: 1 }, layer: { kind: 'pip', sha256: b, bytes: 1, reused: false, buildMs: 0 } as never }, 1000);
      assert.deepEqual([...store.bundleHashes()], [a]);
      assert.deepEqual([...store.bundleHashes('layer')], [b]);
      assert.deepEqual([store.refersTo('bundle', a), store.refersTo('layer', b), store.refersTo('bundle', b), store.refersTo('layer', a)], [true, true, false, false]);
      store.deleteFunction(T, 'bundled');
      assert.equal(store.refersTo('bundle', a), false);
    } finally {
      store.close();
    }
  });

  it('works in memory', () => {
    const store = new SqliteStore(':memory:');
    assert.equal(store.getFunction(T, 'x'), null);
    assert.equal(store.getVersion(T, 'x'), null);
    store.close();
  });

  it('keys functions by tenant: two tenants own the same name independently', () => {
    const store = new SqliteStore(':memory:');
    try {
      store.putFunction('acme', 'hello', { runtime: 'python', code: 'print(1)' }, 1);
      store.putFunction('globex', 'hello', { runtime: 'python', code: 'print(2)' }, 2);
      store.putFunction('globex', 'hello', { runtime: 'python', code: 'print(3)' }, 3);
      assert.equal(store.getVersion('acme', 'hello')?.spec.code, 'print(1)');
      assert.equal(store.getVersion('acme', 'hello')?.version, 1);
      assert.equal(store.getVersion('globex', 'hello')?.version, 2);
      assert.equal(store.getFunction('other', 'hello'), null);
      assert.deepEqual(store.listFunctions('acme').map((f) => f.tenant), ['acme']);
      assert.equal(store.deleteFunction('acme', 'hello'), true);
      assert.equal(store.getVersion('globex', 'hello')?.spec.code, 'print(3)', 'the other tenant keeps its function');
      assert.deepEqual(store.deleteTenantFunctions('globex'), ['hello']);
      assert.deepEqual(store.listVersions('globex', 'hello'), [], 'versions go with the function');
    } finally {
      store.close();
    }
  });

  it('migrates a data dir from before tenants: its functions and versions become the tenant default', () => {
    const file = join(dir, 'old.db');
    // The schema of migrations 1 and 2 exactly as an older server left it (user_version 2).
    const old = new Database(file);
    old.exec(`CREATE TABLE functions (name TEXT PRIMARY KEY, latest_version INTEGER NOT NULL, created_at_ms INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL);
      CREATE TABLE function_versions (name TEXT NOT NULL REFERENCES functions(name) ON DELETE CASCADE, version INTEGER NOT NULL, spec TEXT NOT NULL, created_at_ms INTEGER NOT NULL, PRIMARY KEY (name, version));
      CREATE TABLE invocations (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL DEFAULT 'default', function TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL, payload BLOB, payload_bytes INTEGER NOT NULL, idempotency_key TEXT, callback_url TEXT, callback_state TEXT, callback_attempts INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, exit_code INTEGER, duration_ms REAL, cold_start INTEGER, timed_out INTEGER, error TEXT, stdout BLOB, stderr BLOB, stdout_bytes INTEGER, created_at_ms INTEGER NOT NULL, started_at_ms INTEGER, finished_at_ms INTEGER);
      INSERT INTO functions VALUES ('legacy', 2, 10, 20);
      INSERT INTO function_versions VALUES ('legacy', 1, '{"runtime":"python","code":"print(1)"}', 10), ('legacy', 2, '{"runtime":"python","code":"print(2)"}', 20);
      PRAGMA user_version = 2;`);
    old.close();
    const store = new SqliteStore(file);
    try {
      assert.deepEqual(store.getFunction('default', 'legacy'), { tenant: 'default', name: 'legacy', latestVersion: 2, createdAtMs: 10, updatedAtMs: 20 });
      assert.deepEqual(store.listVersions('default', 'legacy').map((v) => [v.tenant, v.version, v.spec.code]), [['default', 1, 'print(1)'], ['default', 2, 'print(2)']]);
      // The migrated tables keep their constraints: versions still go with their function.
      store.putFunction('acme', 'legacy', { runtime: 'python', code: 'print(9)' }, 30);
      assert.equal(store.deleteFunction('default', 'legacy'), true);
      assert.deepEqual(store.listVersions('default', 'legacy'), []);
      assert.equal(store.getVersion('acme', 'legacy')?.spec.code, 'print(9)');
    } finally {
      store.close();
    }
  });

  it('claims past the invocations of tenants to skip, keeping their place in the queue', () => {
    const store = new SqliteStore(':memory:');
    try {
      const base = { functionName: 'f', version: 1, callbackUrl: null, idempotencyKey: null, payload: Buffer.alloc(0) };
      store.insertInvocation({ ...base, tenant: 'busy', id: 'inv_1', createdAtMs: 1 });
      store.insertInvocation({ ...base, tenant: 'busy', id: 'inv_2', createdAtMs: 2 });
      store.insertInvocation({ ...base, tenant: 'idle', id: 'inv_3', createdAtMs: 3 });
      assert.equal(store.claimNextInvocation(10, ['busy'])?.id, 'inv_3');
      assert.equal(store.claimNextInvocation(11, ['busy']), null);
      assert.equal(store.claimNextInvocation(12)?.id, 'inv_1', 'without skipping, the oldest');
    } finally {
      store.close();
    }
  });

  it('pins the versions stored while node and python meant Node 18 and Python 3.11 to node18 and python3.11', () => {
    const file = join(dir, 'runtimes.db');
    const store = new SqliteStore(file);
    store.putFunction(T, 'old-node', { runtime: 'node', code: 'x', handler: 'h' }, 1);
    store.putFunction(T, 'old-py', { runtime: 'python', code: 'x' }, 1);
    store.putFunction(T, 'pinned', { runtime: 'node20', code: 'x' }, 1);
    store.putFunction(T, 'cmd', { image: 'kindling/base', command: ['true'] }, 1);
    store.close();
    // Back to the version before the migration, as that release left the rows.
    const old = new Database(file);
    const current = old.pragma('user_version', { simple: true }) as number;
    old.pragma(`user_version = ${current - 1}`);
    old.close();
    const reopened = new SqliteStore(file);
    try {
      assert.equal(reopened.getVersion(T, 'old-node')?.spec.runtime, 'node18');
      assert.equal(reopened.getVersion(T, 'old-py')?.spec.runtime, 'python3.11');
      assert.equal(reopened.getVersion(T, 'pinned')?.spec.runtime, 'node20');
      assert.equal(reopened.getVersion(T, 'cmd')?.spec.runtime, undefined);
      assert.equal(reopened.getVersion(T, 'old-node')?.spec.handler, 'h', 'the rest of the spec is kept');
    } finally {
      reopened.close();
    }
  });

  it("keeps an async invocation's traceparent across a reopen; rows of an older schema have none", () => {
    const file = join(dir, 'trace.db');
    const traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
    const base = { tenant: T, functionName: 'f', version: 1, callbackUrl: null, idempotencyKey: null, payload: Buffer.from('x') };
    const store = new SqliteStore(file);
    assert.equal(store.insertInvocation({ ...base, id: 'inv_t1', createdAtMs: 1, traceparent }).invocation.traceparent, traceparent);
    store.insertInvocation({ ...base, id: 'inv_t2', createdAtMs: 2 });
    store.close();
    const again = new SqliteStore(file);
    assert.equal(again.getInvocation('inv_t1')?.traceparent, traceparent, 'kept across a reopen (a restart of the server)');
    assert.equal(again.getInvocation('inv_t2')?.traceparent, null);
    again.close();
    // Back to the schema before the column (version 5), with a row as that release wrote it.
    const old = new Database(file);
    old.exec(`DELETE FROM invocations WHERE id = 'inv_t2'; ALTER TABLE invocations DROP COLUMN traceparent;
      INSERT INTO invocations (id, tenant, function, version, status, payload, payload_bytes, created_at_ms) VALUES ('inv_t0', 'default', 'f', 1, 'queued', X'00', 1, 0);`);
    old.pragma('user_version = 5');
    old.close();
    const reopened = new SqliteStore(file);
    try {
      // inv_t1 lost its column with the downgrade; written again the way the server writes it.
      reopened.insertInvocation({ ...base, id: 'inv_t3', createdAtMs: 3, traceparent });
      assert.deepEqual(
        [reopened.claimNextInvocation(10), reopened.claimNextInvocation(11), reopened.claimNextInvocation(12)].map((r) => [r?.id, r?.traceparent]),
        [
          ['inv_t1', null],
          ['inv_t0', null],
          ['inv_t3', traceparent],
        ],
      );
      assert.equal(reopened.getInvocation('inv_t3')?.traceparent, traceparent);
    } finally {
      reopened.close();
    }
  });

  it('queues invocations FIFO, claims each once, dedupes idempotency keys, recovers and expires', () => {
    const store = new SqliteStore(':memory:');
    try {
      const base = { tenant: 'default', functionName: 'f', version: 1, callbackUrl: null };
      const a = store.insertInvocation({ ...base, id: 'inv_a', payload: Buffer.from('A'), idempotencyKey: 'k1', createdAtMs: 1 });
      const again = store.insertInvocation({ ...base, id: 'inv_x', payload: Buffer.from('X'), idempotencyKey: 'k1', createdAtMs: 2 });
      assert.equal(a.created, true);
      assert.equal(again.created, false);
      assert.equal(again.invocation.id, 'inv_a');
      // The same key for another function is another invocation.
      assert.equal(store.insertInvocation({ ...base, functionName: 'g', id: 'inv_g', payload: Buffer.alloc(0), idempotencyKey: 'k1', createdAtMs: 3 }).created, true);
      store.insertInvocation({ ...base, id: 'inv_b', payload: Buffer.from('B'), idempotencyKey: null, createdAtMs: 4 });
      const first = store.claimNextInvocation(10)!;
      assert.equal(first.id, 'inv_a');
      assert.equal(first.status, 'running');
      assert.equal(first.attempts, 1);
      assert.deepEqual(store.getInvocationPayload('inv_a'), Buffer.from('A'));
      assert.equal(store.claimNextInvocation(11)!.id, 'inv_g');
      store.requeueInvocation('inv_g');
      assert.equal(store.claimNextInvocation(12)!.id, 'inv_g', 'a requeued invocation keeps its place');
      store.finishInvocation('inv_a', { status: 'succeeded', exitCode: 0, durationMs: 5, coldStart: true, timedOut: false, error: null, stdout: Buffer.from('out'), stderr: Buffer.from('err'), finishedAtMs: 20 });
      assert.equal(store.getInvocationPayload('inv_a'), null, 'the payload is dropped once finished');
      assert.deepEqual(store.getInvocationOutput('inv_a'), { stdout: Buffer.from('out'), stderr: Buffer.from('err') });
      assert.equal(store.failRunningInvocations('server stopped during the run', 30), 1);
      assert.equal(store.getInvocation('inv_g')?.error, 'server stopped during the run');
      assert.equal(store.getInvocation('inv_b')?.status, 'queued');
      assert.deepEqual(store.listInvocations({ functionName: 'f', limit: 10 }).map((i) => i.id), ['inv_b', 'inv_a']);
      assert.deepEqual(store.listInvocations({ status: 'failed', limit: 10 }).map((i) => i.id), ['inv_g']);
      assert.deepEqual(store.listInvocations({ sinceMs: 3, untilMs: 4, limit: 10 }).map((i) => i.id), ['inv_g']);
      assert.equal(store.getInvocation('inv_a', 'other-tenant'), null);
      assert.equal(store.deleteInvocationsFinishedBefore(25), 1);
      assert.equal(store.getInvocation('inv_a'), null);
      // Once expired, the key can be used again.
      assert.equal(store.insertInvocation({ ...base, id: 'inv_c', payload: Buffer.alloc(0), idempotencyKey: 'k1', createdAtMs: 40 }).created, true);
    } finally {
      store.close();
    }
  });

  it('records finished synchronous invocations in one batch, lists them with mode, and expires them', () => {
    const store = new SqliteStore(':memory:');
    try {
      const finished = (id: string, status: 'succeeded' | 'failed', at: number) => ({
        id,
        tenant: 'default',
        functionName: 'f',
        version: 2,
        status,
        payloadBytes: 3,
        exitCode: status === 'succeeded' ? 0 : 7,
        durationMs: 1.5,
        coldStart: false,
        timedOut: false,
        error: status === 'succeeded' ? null : 'exited with code 7',
        stdout: Buffer.from('out'),
        stderr: Buffer.from('err'),
        stdoutBytes: 1000,
        createdAtMs: at,
        startedAtMs: at,
        finishedAtMs: at + 1,
      });
      store.insertFinishedInvocations([finished('ex_1', 'succeeded', 10), finished('ex_2', 'failed', 20)]);
      // An id already stored is skipped, not an error.
      store.insertFinishedInvocations([finished('ex_1', 'failed', 30)]);
      const listed = store.listInvocations({ functionName: 'f', limit: 10 });
      assert.deepEqual(listed.map((i) => [i.id, i.mode, i.status, i.exitCode, i.stdoutBytes, i.attempts]), [
        ['ex_2', 'sync', 'failed', 7, 1000, 1],
        ['ex_1', 'sync', 'succeeded', 0, 1000, 1],
      ]);
      assert.deepEqual(store.getInvocationOutput('ex_1'), { stdout: Buffer.from('out'), stderr: Buffer.from('err') });
      assert.equal(store.getInvocationPayload('ex_1'), null);
      assert.equal(store.insertInvocation({ id: 'inv_q', tenant: 'default', functionName: 'f', version: 2, payload: Buffer.alloc(0), idempotencyKey: null, callbackUrl: null, createdAtMs: 40 }).invocation.mode, 'async');
      assert.equal(store.deleteInvocationsFinishedBefore(15), 1);
      assert.equal(store.getInvocation('ex_1'), null);
    } finally {
      store.close();
    }
  });

  it('answers reads of the latest version from memory, and forgets it on every write that changes it', () => {
    const store = new SqliteStore(':memory:');
    try {
      store.putFunction(T, 'f', { runtime: 'node', code: '1', handler: 'h', env: { A: '1' } }, 1);
      const first = store.getVersion(T, 'f')!;
      assert.equal(store.getVersion(T, 'f'), first, 'the same (cached) object');
      assert.equal(store.getFunction(T, 'f')?.latestVersion, 1);
      assert.ok(Object.isFrozen(first) && Object.isFrozen(first.spec) && Object.isFrozen(first.spec.env), 'shared, so frozen');
      assert.throws(() => {
        (first.spec.env as Record<string, string>).A = '2';
      }, TypeError);
      store.putFunction(T, 'f', { runtime: 'node', code: '2', handler: 'h' }, 2);
      assert.equal(store.getVersion(T, 'f')?.spec.code, '2', 'a redeploy is seen at once');
      assert.equal(store.getFunction(T, 'f')?.latestVersion, 2);
      assert.equal(store.getVersion(T, 'f', 1)?.spec.code, '1', 'older versions still come from the database');
      store.deleteFunction(T, 'f');
      assert.equal(store.getVersion(T, 'f'), null);
      assert.equal(store.getFunction(T, 'f'), null);
      store.putFunction(T, 'f', { runtime: 'node', code: 'again', handler: 'h' }, 3);
      assert.deepEqual([store.getVersion(T, 'f')?.version, store.getVersion(T, 'f')?.spec.code], [1, 'again'], 'recreated from scratch');
      store.putFunction('t2', 'g', { runtime: 'node', code: 'g', handler: 'h' }, 4);
      assert.equal(store.getVersion('t2', 'g')?.spec.code, 'g');
      assert.deepEqual(store.deleteTenantFunctions('t2'), ['g']);
      assert.equal(store.getVersion('t2', 'g'), null, 'a deleted tenant\'s functions are forgotten');
    } finally {
      store.close();
    }
  });

  it('runs several writes in one transaction: deduped within it, all or none', () => {
    const store = new SqliteStore(':memory:');
    try {
      const base = { tenant: T, functionName: 'f', version: 1, callbackUrl: null, payload: Buffer.from('p') };
      const results = store.transaction(() => [
        store.insertInvocation({ ...base, id: 'inv_1', idempotencyKey: null, createdAtMs: 1 }),
        store.insertInvocation({ ...base, id: 'inv_2', idempotencyKey: 'k', createdAtMs: 2 }),
        store.insertInvocation({ ...base, id: 'inv_3', idempotencyKey: 'k', createdAtMs: 3 }),
        store.insertInvocation({ ...base, id: 'inv_4', idempotencyKey: null, callbackUrl: 'http://127.0.0.1:1/', createdAtMs: 4 }),
      ]);
      assert.deepEqual(results.map((r) => [r.invocation.id, r.created]), [['inv_1', true], ['inv_2', true], ['inv_2', false], ['inv_4', true]]);
      // The records built from the input are what the database holds.
      for (const { invocation } of results) assert.deepEqual(invocation, store.getInvocation(invocation.id));
      // A write that fails (here: an id that exists) fails the transaction, and nothing of it is stored.
      assert.throws(
        () =>
          store.transaction(() => {
            store.claimNextInvocation(10);
            store.insertInvocation({ ...base, id: 'inv_5', idempotencyKey: null, createdAtMs: 5 });
            store.insertInvocation({ ...base, id: 'inv_1', idempotencyKey: null, createdAtMs: 6 });
          }),
        /collided/,
      );
      assert.equal(store.getInvocation('inv_5'), null);
      assert.equal(store.getInvocation('inv_1')?.status, 'queued', 'the claim was rolled back too');
      assert.deepEqual(store.listInvocations({ limit: 10 }).map((i) => i.id), ['inv_4', 'inv_2', 'inv_1']);
    } finally {
      store.close();
    }
  });
});
