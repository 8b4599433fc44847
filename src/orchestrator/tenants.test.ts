import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { Clock } from '../core/clock.js';
import { KindlingError } from '../core/errors.js';
import { SqliteTenantStore } from '../store/tenants-sqlite.js';
import { checkQuotas, hashKey, TenantService } from './tenants.js';

function fakeClock(): Clock & { advance(ms: number): void } {
  let now = 1_700_000_000_000;
  return { nowMs: () => now, monotonicMs: () => now, advance: (ms) => (now += ms) };
}

const stores: SqliteTenantStore[] = [];
after(() => stores.forEach((store) => store.close()));
function service(options: Partial<ConstructorParameters<typeof TenantService>[0]> = {}): { tenants: TenantService; clock: ReturnType<typeof fakeClock>; store: SqliteTenantStore } {
  const store = options.store ?? new SqliteTenantStore(':memory:');
  stores.push(store);
  const clock = fakeClock();
  return { tenants: new TenantService({ store, clock, ...options }), clock, store };
}

const code = async (fn: () => unknown): Promise<string> => {
  try {
    await fn();
  } catch (error) {
    if (error instanceof KindlingError) return error.code;
    throw error;
  }
  return 'none';
};

test('open mode until a key exists; the first tenant brings the admin key; the store keeps only hashes', async () => {
  const { tenants, store } = service();
  assert.equal(tenants.authEnabled, false);
  const made = await tenants.create('acme');
  assert.ok(made.adminKey);
  assert.equal(tenants.authEnabled, true);
  assert.deepEqual(tenants.authenticate(made.adminKey), { tenant: 'default', isAdmin: true, keyId: tenants.authenticate(made.adminKey)!.keyId });
  assert.equal(tenants.authenticate(made.apiKey)?.tenant, 'acme');
  assert.equal(tenants.authenticate('kdl_wrong'), null);
  const stored = store.activeKeys();
  assert.ok(stored.every((key) => key.hash.length === 64 && key.hash !== made.apiKey));
  assert.ok(stored.some((key) => key.hash === hashKey(made.apiKey)));
  // A service over the same store (a restart) keeps auth on and knows the keys.
  const again = new TenantService({ store });
  assert.equal(again.authEnabled, true);
  assert.equal(again.authenticate(made.apiKey)?.tenant, 'acme');
  assert.equal(await again.bootstrapAdminKey(), null, 'no second admin key');
});

test('open mode: a refused creation (bad name, taken name, bad quota) does not make the admin key', async () => {
  const { tenants } = service();
  assert.equal(await code(() => tenants.create('default')), 'TENANT_EXISTS');
  assert.equal(await code(() => tenants.create('Bad Name')), 'VALIDATION_FAILED');
  assert.equal(await code(() => tenants.create('ok', { maxConcurrency: -1 })), 'LIMIT_OUT_OF_RANGE');
  assert.equal(tenants.authEnabled, false, 'still open: nobody was shown a key');
  assert.ok((await tenants.create('ok')).adminKey);
});

test('revoking a key takes effect at once; revoking every key does not open the server', async () => {
  const { tenants } = service({ envAdminKey: 'env-key' });
  assert.equal(tenants.authenticate('env-key')?.isAdmin, true);
  const made = await tenants.create('acme');
  assert.equal(made.adminKey, undefined);
  await tenants.revokeKey('acme', made.keyId);
  assert.equal(tenants.authenticate(made.apiKey), null);
  assert.equal(await code(() => tenants.revokeKey('acme', made.keyId)), 'NOT_FOUND');
  const { tenants: other } = service();
  const first = await other.create('x');
  await other.revokeKey('x', first.keyId);
  assert.equal(other.authEnabled, true);
});

test('quotas: defaults from the server, per-tenant overrides, null removes one; ranges are checked', async () => {
  const { tenants } = service({ defaults: { maxConcurrency: 8, maxMemoryMb: 512 } });
  await tenants.create('acme', { maxMemoryMb: 128, requestsPerSecond: 2.5 });
  assert.equal(tenants.quotasOf('acme').maxConcurrency, 8);
  assert.equal(tenants.quotasOf('acme').maxMemoryMb, 128);
  assert.equal(tenants.quotasOf('acme').burst, 3, 'burst defaults to the rate rounded up');
  assert.deepEqual(tenants.capsOf('acme'), { memoryMb: 128 });
  await tenants.update('acme', { maxMemoryMb: null });
  assert.equal(tenants.quotasOf('acme').maxMemoryMb, 512);
  assert.equal(await code(() => checkQuotas({ maxConcurrency: 0 })), 'LIMIT_OUT_OF_RANGE');
  assert.equal(await code(() => checkQuotas({ maxConcurrency: 1.5 })), 'LIMIT_OUT_OF_RANGE');
  assert.equal(await code(() => checkQuotas({ nope: 1 })), 'VALIDATION_FAILED');
});

test('the concurrency slot: at most maxConcurrency, released once, quota changes keep the running count', async () => {
  const { tenants } = service();
  await tenants.create('acme', { maxConcurrency: 2 });
  const a = await tenants.acquireSlot('acme');
  const b = await tenants.acquireSlot('acme');
  assert.equal(await code(() => tenants.acquireSlot('acme')), 'TENANT_CONCURRENCY_LIMIT');
  await tenants.update('acme', { maxConcurrency: 3 });
  assert.equal(tenants.running('acme'), 2);
  const c = await tenants.acquireSlot('acme');
  a();
  a();
  assert.equal(tenants.running('acme'), 2, 'a second release is ignored');
  b();
  c();
  assert.equal(tenants.running('acme'), 0);
});

test('the rate: a token bucket per tenant; 429 carries a Retry-After in whole seconds', async () => {
  const { tenants, clock } = service();
  await tenants.create('acme', { requestsPerSecond: 0.5, burst: 1 });
  tenants.checkRate('acme');
  let error: unknown = null;
  try {
    tenants.checkRate('acme');
  } catch (caught) {
    error = caught;
  }
  assert.ok(error instanceof KindlingError && error.code === 'TENANT_RATE_LIMITED');
  assert.equal(error.retryAfterSeconds, 2, '0.5/s: a token every 2 s');
  tenants.checkRate('default');
  clock.advance(2000);
  tenants.checkRate('acme');
});

test('deleting a tenant revokes its keys, calls back, and keeps the name taken; default cannot go', async () => {
  const deleted: string[] = [];
  const { tenants } = service({ onTenantDeleted: (name) => void deleted.push(name) });
  const made = await tenants.create('acme');
  await tenants.delete('acme');
  assert.deepEqual(deleted, ['acme']);
  assert.equal(tenants.authenticate(made.apiKey), null);
  assert.equal(tenants.exists('acme'), false);
  assert.equal(await code(() => tenants.create('acme')), 'TENANT_EXISTS');
  await assert.rejects(tenants.delete('default'), /cannot be deleted/);
});

test('ensure() makes a tenant without keys (auth stays off) with its quotas once; a deleted tenant stays deleted', async () => {
  const { tenants, store } = service({ defaults: { maxMemoryMb: 1024 } });
  const scope = await tenants.ensure('chain-0xabc', { maxMemoryMb: 512, maxConcurrency: 2 });
  assert.equal(scope.name, 'chain-0xabc');
  assert.equal(scope.caps.memoryMb, 512);
  assert.equal(tenants.authEnabled, false, 'no admin key was made');
  assert.equal(store.listKeys('chain-0xabc').length, 0);
  assert.equal((await tenants.ensure('chain-0xabc', { maxMemoryMb: 64 })).caps.memoryMb, 512, 'quotas are set on creation only');
  const release = await scope.acquire!();
  release();
  assert.equal(await code(() => tenants.ensure('Not A Name')), 'VALIDATION_FAILED');
  assert.equal(await code(() => tenants.ensure('chain-0xdef', { maxMemoryMb: 1 })), 'LIMIT_OUT_OF_RANGE');
  await tenants.delete('chain-0xabc');
  assert.equal(await code(() => tenants.ensure('chain-0xabc')), 'TENANT_NOT_FOUND');
});

test("reload: what another gateway wrote to the store is in force, running counts of live tenants are kept", async () => {
  const { tenants, store } = service();
  await tenants.create('acme', { maxConcurrency: 2 });
  const release = await tenants.acquireSlot('acme');
  // Written past the service, as a cluster gateway's copy of the shared state is.
  store.insertTenant('beta', { maxMemoryMb: 64 }, 1);
  store.insertKey({ id: 'key_b', tenant: 'beta', hash: hashKey('kdl_beta'), prefix: 'kdl_b', isAdmin: false, createdAtMs: 1 });
  store.setQuotas('acme', { maxConcurrency: 1 });
  assert.equal(tenants.authenticate('kdl_beta'), null, 'not before the reload');
  tenants.reload();
  assert.equal(tenants.authenticate('kdl_beta')?.tenant, 'beta');
  assert.equal(tenants.quotasOf('beta').maxMemoryMb, 64);
  assert.equal(tenants.running('acme'), 1, 'the running count stays');
  assert.equal(await code(() => tenants.acquireSlot('acme')), 'TENANT_CONCURRENCY_LIMIT', 'the new quota holds with it');
  release();
  store.revokeKey('beta', 'key_b', 2);
  store.deleteTenant('acme', 2);
  tenants.reload();
  assert.equal(tenants.authenticate('kdl_beta'), null, 'a revoked key is refused');
  assert.equal(tenants.exists('acme'), false, 'a deleted tenant is gone');
  assert.equal(tenants.exists('default'), true);
});
