import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { SqliteStore } from './sqlite.js';
import { specBytes, type FunctionSpec, type NewInvocation } from './store.js';

const dir = mkdtempSync(join(tmpdir(), 'kindling-storage-test-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const invocation = (id: string, tenant: string, fn: string, version: number, bytes: number): NewInvocation => ({
  id,
  tenant,
  functionName: fn,
  version,
  payload: Buffer.alloc(bytes, 1),
  idempotencyKey: null,
  callbackUrl: null,
  createdAtMs: 1,
});

const outcome = { status: 'succeeded' as const, exitCode: 0, durationMs: 1, coldStart: false, timedOut: false, error: null, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), finishedAtMs: 5 };

describe('SqliteStore storage accounting', () => {
  it('counts versions and the stored bytes of each version per tenant (UTF-8 bytes, not characters)', () => {
    const store = new SqliteStore(':memory:');
    try {
      const a: FunctionSpec = { runtime: 'python', code: 'print("é")' };
      const b: FunctionSpec = { runtime: 'node', code: 'x'.repeat(1000), env: { K: 'v' } };
      store.putFunction('acme', 'f', a, 1);
      store.putFunction('acme', 'f', b, 2);
      store.putFunction('acme', 'g', a, 3);
      store.putFunction('globex', 'f', b, 4);
      assert.equal(specBytes(a), Buffer.byteLength(JSON.stringify(a)));
      assert.ok(specBytes(a) > JSON.stringify(a).length, 'é is two bytes');
      assert.deepEqual(store.storageUsage('acme'), { functionVersions: 3, codeBytes: 2 * specBytes(a) + specBytes(b), queuedPayloadBytes: 0 });
      assert.deepEqual(store.storageUsage('globex'), { functionVersions: 1, codeBytes: specBytes(b), queuedPayloadBytes: 0 });
      assert.deepEqual(store.storageUsage('nobody'), { functionVersions: 0, codeBytes: 0, queuedPayloadBytes: 0 });
      assert.equal(store.deleteFunction('acme', 'f'), true);
      assert.deepEqual(store.storageUsage('acme'), { functionVersions: 1, codeBytes: specBytes(a), queuedPayloadBytes: 0 });
      store.deleteTenantFunctions('acme');
      assert.deepEqual(store.storageUsage('acme'), { functionVersions: 0, codeBytes: 0, queuedPayloadBytes: 0 });
      assert.deepEqual(store.storageUsage('globex'), { functionVersions: 1, codeBytes: specBytes(b), queuedPayloadBytes: 0 });
    } finally {
      store.close();
    }
  });

  it('counts the payloads of queued and running async invocations until they finish', () => {
    const store = new SqliteStore(':memory:');
    try {
      store.putFunction('acme', 'f', { runtime: 'python', code: '' }, 1);
      store.insertInvocation(invocation('i1', 'acme', 'f', 1, 100));
      store.insertInvocation(invocation('i2', 'acme', 'f', 1, 30));
      store.insertInvocation(invocation('i3', 'globex', 'f', 1, 7));
      assert.equal(store.storageUsage('acme').queuedPayloadBytes, 130);
      assert.equal(store.storageUsage('globex').queuedPayloadBytes, 7);
      // An idempotent replay stores nothing more.
      store.insertInvocation({ ...invocation('i4', 'acme', 'f', 1, 50), idempotencyKey: 'k' });
      store.insertInvocation({ ...invocation('i5', 'acme', 'f', 1, 50), idempotencyKey: 'k' });
      assert.equal(store.storageUsage('acme').queuedPayloadBytes, 180);
      const claimed = store.claimNextInvocation(2)!;
      assert.equal(claimed.id, 'i1');
      assert.equal(store.storageUsage('acme').queuedPayloadBytes, 180, 'a running invocation still holds its payload');
      store.requeueInvocation('i1');
      assert.equal(store.storageUsage('acme').queuedPayloadBytes, 180);
      store.claimNextInvocation(3);
      store.finishInvocation('i1', outcome);
      assert.equal(store.storageUsage('acme').queuedPayloadBytes, 80, 'the payload is dropped when it finishes');
      store.claimNextInvocation(4);
      assert.equal(store.failRunningInvocations('stopped', 6), 1);
      assert.equal(store.storageUsage('acme').queuedPayloadBytes, 50);
      // Synchronous records keep no payload.
      store.insertFinishedInvocations([{ id: 's1', tenant: 'acme', functionName: 'f', version: 1, status: 'succeeded', payloadBytes: 999, exitCode: 0, durationMs: 1, coldStart: false, timedOut: false, error: null, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0), stdoutBytes: 0, createdAtMs: 1, startedAtMs: 1, finishedAtMs: 1 }]);
      assert.equal(store.storageUsage('acme').queuedPayloadBytes, 50);
      assert.equal(store.deleteInvocationsFinishedBefore(100), 3);
      assert.equal(store.storageUsage('acme').queuedPayloadBytes, 50, 'sweeping finished invocations leaves the queued ones counted');
      assert.equal(store.storageUsage('globex').queuedPayloadBytes, 7);
    } finally {
      store.close();
    }
  });

  it('keeps the newest versions on deploy and deletes older ones, never one a queued or running invocation needs', () => {
    const store = new SqliteStore(':memory:');
    try {
      const spec = (n: number): FunctionSpec => ({ runtime: 'python', code: `print(${n})` });
      for (let v = 1; v <= 3; v++) store.putFunction('acme', 'f', spec(v), v);
      store.insertInvocation(invocation('q1', 'acme', 'f', 1, 10));
      store.insertInvocation(invocation('r2', 'acme', 'f', 2, 10));
      store.claimNextInvocation(10); // q1 runs
      store.claimNextInvocation(10); // r2 runs
      store.requeueInvocation('r2'); // r2 queued again
      assert.deepEqual(store.prunableVersions('acme', 'f', 2, []).map((v) => v.version), [], 'v1 runs, v2 is queued, v3 is among the newest 2');
      const put = store.putFunction('acme', 'f', spec(4), 4, { keep: 2 });
      assert.deepEqual(put.pruned, []);
      assert.deepEqual(store.listVersions('acme', 'f').map((v) => v.version), [1, 2, 3, 4]);
      store.finishInvocation('q1', outcome);
      // v1 is free now; v3 is not among the newest 2 once v5 is there; `alsoKeep` (an enqueue not committed yet) keeps v3.
      assert.deepEqual(store.prunableVersions('acme', 'f', 2, []).map((v) => v.version), [1, 3]);
      assert.deepEqual(store.prunableVersions('acme', 'f', 2, []).map((v) => v.bytes), [specBytes(spec(1)), specBytes(spec(3))]);
      const before = store.storageUsage('acme');
      const kept = store.putFunction('acme', 'f', spec(5), 5, { keep: 2, alsoKeep: [3] });
      assert.deepEqual(kept.pruned, [1]);
      assert.deepEqual(store.listVersions('acme', 'f').map((v) => v.version), [2, 3, 4, 5]);
      assert.deepEqual(store.storageUsage('acme'), {
        functionVersions: before.functionVersions,
        codeBytes: before.codeBytes - specBytes(spec(1)) + specBytes(spec(5)),
        queuedPayloadBytes: 10,
      });
      store.claimNextInvocation(11);
      store.finishInvocation('r2', outcome);
      const last = store.putFunction('acme', 'f', spec(6), 6, { keep: 2 });
      assert.deepEqual(last.pruned, [2, 3, 4]);
      assert.deepEqual(store.listVersions('acme', 'f').map((v) => v.version), [5, 6]);
      assert.deepEqual(store.storageUsage('acme'), { functionVersions: 2, codeBytes: specBytes(spec(5)) + specBytes(spec(6)), queuedPayloadBytes: 0 });
      assert.equal(store.putFunction('acme', 'f', spec(7), 7, { keep: 2 }).version.version, 7, 'numbers are never reused');
    } finally {
      store.close();
    }
  });

  it('counts what a data dir of an older schema already holds when it is upgraded', () => {
    const file = join(dir, 'old.db');
    const spec: FunctionSpec = { runtime: 'python', code: 'print("ü")' };
    const store = new SqliteStore(file);
    store.putFunction('acme', 'f', spec, 1);
    store.putFunction('acme', 'f', spec, 2);
    store.insertInvocation(invocation('i1', 'acme', 'f', 2, 40));
    store.insertInvocation(invocation('i2', 'acme', 'f', 2, 2));
    store.claimNextInvocation(3);
    store.finishInvocation('i1', outcome);
    store.close();
    // Back to the schema before storage accounting (version 4): what a server of that release left.
    const db = new Database(file);
    db.exec(`DROP TABLE tenant_storage;
      DROP TRIGGER function_versions_storage_insert; DROP TRIGGER function_versions_storage_delete;
      DROP TRIGGER invocations_storage_insert; DROP TRIGGER invocations_storage_update; DROP TRIGGER invocations_storage_delete;
      ALTER TABLE function_versions DROP COLUMN spec_bytes;
      ALTER TABLE invocations DROP COLUMN traceparent;`);
    db.pragma('user_version = 4');
    db.close();
    const reopened = new SqliteStore(file);
    try {
      assert.deepEqual(reopened.storageUsage('acme'), { functionVersions: 2, codeBytes: 2 * specBytes(spec), queuedPayloadBytes: 2 });
      // The counts go on from there: v1 goes, v2 stays (i2 is queued for it).
      assert.deepEqual(reopened.putFunction('acme', 'f', spec, 3, { keep: 1 }).pruned, [1]);
      assert.deepEqual(reopened.storageUsage('acme'), { functionVersions: 2, codeBytes: 2 * specBytes(spec), queuedPayloadBytes: 2 });
    } finally {
      reopened.close();
    }
  });
});
