/**
 * The conformance suite of the control state's writes (writes.ts): every implementation (a single server's SQLite,
 * a cluster's shared state on JetStream) must pass it. Call it inside a `describe`; each case opens its own fixture.
 */
import assert from 'node:assert/strict';
import { it } from 'node:test';
import type { SqliteStore } from './sqlite.js';
import type { FunctionSpec } from './store.js';
import type { SqliteTenantStore } from './tenants-sqlite.js';
import type { FunctionWrites, TenantWrites } from './writes.js';

export interface WritesFixture {
  writes: TenantWrites & FunctionWrites;
  /** The stores the writes are read back from (written by the writes themselves, or applied from the shared state). */
  tenants: SqliteTenantStore;
  functions: SqliteStore;
  close(): Promise<void>;
}

const spec = (n: number): FunctionSpec => ({ runtime: 'node20', handler: 'handler', code: `exports.handler = async () => ${n}` });

async function withFixture(open: () => Promise<WritesFixture>, body: (fixture: WritesFixture) => Promise<void>): Promise<void> {
  const fixture = await open();
  try {
    await body(fixture);
  } finally {
    await fixture.close();
  }
}

export function writesConformance(open: () => Promise<WritesFixture>, options: { timeout?: number } = {}): void {
  const timeout = options.timeout ?? 30_000;

  it('tenants: a name is taken once (deleted ones too); quotas change a live tenant only; a delete revokes its keys', { timeout }, () =>
    withFixture(open, async ({ writes, tenants }) => {
      assert.equal(await writes.insertTenant('acme', { maxConcurrency: 2 }, 1_000), true);
      assert.equal(await writes.insertTenant('acme', {}, 2_000), false, 'the name is taken');
      assert.deepEqual(tenants.getTenant('acme'), { name: 'acme', quotas: { maxConcurrency: 2 }, createdAtMs: 1_000, deletedAtMs: null });
      assert.deepEqual(await writes.updateQuotas('acme', (current) => ({ ...current, maxConcurrency: 5, maxMemoryMb: 128 })), { maxConcurrency: 5, maxMemoryMb: 128 });
      assert.deepEqual(tenants.getTenant('acme')?.quotas, { maxConcurrency: 5, maxMemoryMb: 128 });
      assert.equal(await writes.updateQuotas('nobody', () => ({ maxConcurrency: 1 })), null);
      await writes.insertKey({ id: 'key_a', tenant: 'acme', hash: 'h-a', prefix: 'kdl_a', isAdmin: false, createdAtMs: 1_500 });
      assert.deepEqual(tenants.activeKeys().map((key) => key.id), ['key_a']);
      assert.equal(await writes.deleteTenant('acme', 3_000), true);
      assert.equal(await writes.deleteTenant('acme', 4_000), false, 'deleted once');
      assert.equal(tenants.getTenant('acme')?.deletedAtMs, 3_000);
      assert.deepEqual(tenants.activeKeys(), [], "the deleted tenant's key is revoked");
      assert.equal(await writes.updateQuotas('acme', () => ({})), null, 'a deleted tenant takes no quotas');
      assert.equal(await writes.insertTenant('acme', {}, 5_000), false, "a deleted tenant's name is not reused");
    }));

  it('keys: inserted keys are active until revoked, once; an unknown key is not revoked', { timeout }, () =>
    withFixture(open, async ({ writes, tenants }) => {
      await writes.insertTenant('acme', {}, 1_000);
      await writes.insertKey({ id: 'key_1', tenant: 'acme', hash: 'h1', prefix: 'kdl_1', isAdmin: true, createdAtMs: 1_000 });
      await writes.insertKey({ id: 'key_2', tenant: 'acme', hash: 'h2', prefix: 'kdl_2', isAdmin: false, createdAtMs: 1_001 });
      assert.equal(tenants.keyCount(), 2);
      assert.equal(await writes.revokeKey('acme', 'key_1', 2_000), true);
      assert.equal(await writes.revokeKey('acme', 'key_1', 3_000), false, 'revoked once');
      assert.equal(await writes.revokeKey('acme', 'key_none', 3_000), false);
      assert.equal(await writes.revokeKey('other', 'key_2', 3_000), false, "another tenant's key");
      assert.deepEqual(tenants.activeKeys().map((key) => key.id), ['key_2']);
      assert.deepEqual(
        tenants.listKeys('acme').map((key) => [key.id, key.isAdmin, key.revokedAtMs]),
        [
          ['key_1', true, 2_000],
          ['key_2', false, null],
        ],
      );
    }));

  it('functions: versions count from 1, the newest is the latest, retention prunes the oldest but the ones kept', { timeout }, () =>
    withFixture(open, async ({ writes, functions }) => {
      const first = await writes.putFunction('acme', 'echo', spec(1), 1_000);
      assert.equal(first.created, true);
      assert.equal(first.version.version, 1);
      assert.equal(first.fn.latestVersion, 1);
      assert.deepEqual(first.pruned, []);
      const second = await writes.putFunction('acme', 'echo', spec(2), 2_000, { keep: 5 });
      assert.equal(second.created, false);
      assert.equal(second.version.version, 2);
      assert.equal(functions.getFunction('acme', 'echo')?.latestVersion, 2);
      assert.deepEqual(functions.getVersion('acme', 'echo')?.spec, spec(2), 'the latest version is read back');
      assert.deepEqual(functions.getVersion('acme', 'echo', 1)?.spec, spec(1));
      // keep 2 with version 2 also kept: 3 deploys later versions 2, 4 and 5 stay.
      await writes.putFunction('acme', 'echo', spec(3), 3_000, { keep: 5 });
      await writes.putFunction('acme', 'echo', spec(4), 4_000, { keep: 5 });
      const fifth = await writes.putFunction('acme', 'echo', spec(5), 5_000, { keep: 2, alsoKeep: [2] });
      assert.deepEqual(fifth.pruned, [1, 3]);
      assert.deepEqual(functions.listVersions('acme', 'echo').map((version) => version.version), [2, 4, 5]);
      assert.equal(functions.storageUsage('acme').functionVersions, 3, 'the storage counts follow');
      const sixth = await writes.putFunction('acme', 'echo', spec(6), 6_000, { keep: 1 });
      assert.equal(sixth.version.version, 6, 'numbers are never reused');
      assert.deepEqual(functions.listVersions('acme', 'echo').map((version) => version.version), [6]);
      assert.deepEqual(functions.listFunctions('other'), [], 'other tenants see nothing');
    }));

  it("functions: a delete removes every version; a new deploy counts from 1 again; a tenant's functions go together", { timeout }, () =>
    withFixture(open, async ({ writes, functions }) => {
      await writes.putFunction('acme', 'a', spec(1), 1_000);
      await writes.putFunction('acme', 'a', spec(2), 2_000);
      await writes.putFunction('acme', 'b', spec(1), 1_000);
      await writes.putFunction('other', 'a', spec(1), 1_000);
      assert.equal(await writes.deleteFunction('acme', 'a'), true);
      assert.equal(await writes.deleteFunction('acme', 'a'), false, 'deleted once');
      assert.equal(functions.getFunction('acme', 'a'), null);
      assert.deepEqual(functions.listVersions('acme', 'a'), []);
      const again = await writes.putFunction('acme', 'a', spec(9), 9_000);
      assert.equal(again.created, true);
      assert.equal(again.version.version, 1);
      assert.deepEqual((await writes.deleteTenantFunctions('acme')).sort(), ['a', 'b']);
      assert.deepEqual(functions.listFunctions('acme'), []);
      assert.equal(functions.storageUsage('acme').functionVersions, 0);
      assert.deepEqual(functions.listFunctions('other').map((fn) => fn.name), ['a'], "another tenant's function stays");
    }));
}
