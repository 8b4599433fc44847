import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KindlingError } from '../core/errors.js';
import { SqliteStore } from '../store/sqlite.js';
import { specBytes, type FunctionSpec } from '../store/store.js';
import { SqliteTenantStore } from '../store/tenants-sqlite.js';
import type { ExecutionService } from './execution-service.js';
import { FunctionService } from './function-service.js';
import { InvocationService } from './invocations.js';
import { LogBus } from './log-bus.js';
import { DEFAULT_STORAGE_QUOTAS, DEFAULT_VERSIONS_KEPT, type StorageQuotas } from './storage-quotas.js';
import { TenantService } from './tenants.js';

const UNLIMITED: StorageQuotas = { maxFunctionVersions: null, maxCodeBytes: null, maxQueuedPayloadBytes: null, maxImageBytes: null };

/** A function service over a real SQLite store; deploys skip the executors (prepare accepts every spec). */
function setup(quotas: Record<string, StorageQuotas>, options: { versionsKept?: number } = {}) {
  const store = new SqliteStore(':memory:');
  const executionService = { prepare: async () => ({}) } as unknown as ExecutionService;
  let invocations: InvocationService | null = null;
  const functions = new FunctionService({
    store,
    executionService,
    defaultExecutor: 'sandbox',
    storageQuotasOf: (tenant) => quotas[tenant] ?? UNLIMITED,
    ...(options.versionsKept === undefined ? {} : { versionsKept: options.versionsKept }),
    versionsInUse: (tenant, name) => invocations?.uncommittedVersions(tenant, name) ?? [],
  });
  invocations = new InvocationService({ store, functionService: functions, logBus: new LogBus(), storageQuotasOf: (tenant) => quotas[tenant] ?? UNLIMITED });
  return { store, functions, invocations };
}

async function refusal(promise: Promise<unknown>): Promise<KindlingError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof KindlingError, String(error));
    return error;
  }
  assert.fail('expected TENANT_STORAGE_LIMIT');
}

const spec = (code: string): FunctionSpec => ({ runtime: 'python', code });

describe('storage quotas', () => {
  it('defaults a normal user never reaches, and an error code in the 4xx range', () => {
    assert.equal(DEFAULT_VERSIONS_KEPT, 10);
    assert.deepEqual(DEFAULT_STORAGE_QUOTAS, { maxFunctionVersions: 1000, maxCodeBytes: 1024 ** 3, maxQueuedPayloadBytes: 1024 ** 3, maxImageBytes: 8 * 1024 ** 3 });
    const error = new KindlingError('TENANT_STORAGE_LIMIT', 'x');
    assert.ok(error.statusCode >= 400 && error.statusCode < 500);
  });

  it('refuses a deploy past the versions quota before anything is written; another tenant deploys on', async () => {
    const { store, functions } = setup({ acme: { ...UNLIMITED, maxFunctionVersions: 2 } });
    await functions.deploy('acme', 'a', spec('1'));
    await functions.deploy('acme', 'b', spec('2'));
    const error = await refusal(functions.deploy('acme', 'c', spec('3')));
    assert.equal(error.code, 'TENANT_STORAGE_LIMIT');
    assert.match(error.message, /maxFunctionVersions/);
    assert.match(error.message, /DELETE \/v1\/functions/);
    assert.match(error.message, /operator|admin/);
    assert.deepEqual(error.details, { quota: 'maxFunctionVersions', limit: 2, used: 2, requested: 1 });
    assert.equal(store.getFunction('acme', 'c'), null, 'nothing written');
    assert.deepEqual(store.storageUsage('acme').functionVersions, 2);
    await functions.deploy('globex', 'c', spec('3'));
    // Freeing space works: a deleted function's versions no longer count.
    await functions.delete('acme', 'a');
    await functions.deploy('acme', 'c', spec('3'));
  });

  it('counts what retention deletes: a redeploy at the versions quota replaces the oldest version', async () => {
    const { store, functions } = setup({ acme: { ...UNLIMITED, maxFunctionVersions: 2 } }, { versionsKept: 2 });
    await functions.deploy('acme', 'a', spec('1'));
    await functions.deploy('acme', 'a', spec('2'));
    await functions.deploy('acme', 'a', spec('3'));
    assert.deepEqual(store.listVersions('acme', 'a').map((v) => v.version), [2, 3]);
    assert.equal(store.storageUsage('acme').functionVersions, 2);
    assert.equal((await refusal(functions.deploy('acme', 'b', spec('1')))).code, 'TENANT_STORAGE_LIMIT');
  });

  it('refuses a deploy past the code bytes quota (what retention frees counts), another tenant unaffected', async () => {
    const big = spec('x'.repeat(600));
    const { store, functions } = setup({ acme: { ...UNLIMITED, maxCodeBytes: 2 * specBytes(big) + 10 } }, { versionsKept: 2 });
    await functions.deploy('acme', 'a', big);
    await functions.deploy('acme', 'a', big);
    // Kept 2: the third version replaces the first, so the sum stays the same.
    await functions.deploy('acme', 'a', big);
    const error = await refusal(functions.deploy('acme', 'b', big));
    assert.equal(error.code, 'TENANT_STORAGE_LIMIT');
    assert.match(error.message, /maxCodeBytes/);
    assert.equal(error.details?.quota, 'maxCodeBytes');
    assert.equal(store.getFunction('acme', 'b'), null);
    await functions.deploy('globex', 'b', big);
    await functions.deploy('globex', 'c', big);
    await functions.deploy('globex', 'd', big);
  });

  it('refuses an enqueue past the queued payload quota, counting enqueues of the same turn; another tenant enqueues on', async () => {
    const { store, functions, invocations } = setup({ acme: { ...UNLIMITED, maxQueuedPayloadBytes: 100 } });
    await functions.deploy('acme', 'f', spec('1'));
    await functions.deploy('globex', 'f', spec('1'));
    // Not started: nothing runs, the payloads stay queued. Two in one turn: the second sees the first.
    const first = invocations.enqueue({ tenant: 'acme', functionName: 'f', payload: Buffer.alloc(60) });
    const second = refusal(invocations.enqueue({ tenant: 'acme', functionName: 'f', payload: Buffer.alloc(60) }));
    await first;
    const error = await second;
    assert.equal(error.code, 'TENANT_STORAGE_LIMIT');
    assert.match(error.message, /maxQueuedPayloadBytes/);
    assert.deepEqual(error.details, { quota: 'maxQueuedPayloadBytes', limit: 100, used: 60, requested: 60 });
    assert.equal(store.storageUsage('acme').queuedPayloadBytes, 60);
    assert.equal(store.listInvocations({ tenant: 'acme', limit: 10 }).length, 1, 'the refused one was never written');
    await invocations.enqueue({ tenant: 'acme', functionName: 'f', payload: Buffer.alloc(40) });
    assert.throws(() => invocations.checkQueuedPayload('acme', 1), { code: 'TENANT_STORAGE_LIMIT' } as object);
    await invocations.enqueue({ tenant: 'globex', functionName: 'f', payload: Buffer.alloc(1000) });
    await invocations.close(0);
  });

  it('retention keeps a version that an enqueue of this turn (not committed yet) refers to', async () => {
    const { store, functions, invocations } = setup({}, { versionsKept: 1 });
    await functions.deploy('acme', 'f', spec('1'));
    const queued = invocations.enqueue({ tenant: 'acme', functionName: 'f', payload: Buffer.from('x') });
    await functions.deploy('acme', 'f', spec('2'));
    const { view } = await queued;
    assert.equal(view.version, 1);
    assert.deepEqual(store.listVersions('acme', 'f').map((v) => v.version), [1, 2]);
    // Once nothing needs v1, the next deploy removes it.
    await functions.deploy('acme', 'f', spec('3'));
    assert.deepEqual(store.listVersions('acme', 'f').map((v) => v.version), [1, 3], 'v1 is still queued');
    await invocations.close(0);
  });

  it('the tenant service resolves the storage quotas (defaults, server flags, per-tenant overrides) and shows the usage', async () => {
    const store = new SqliteTenantStore(':memory:');
    try {
      const tenants = new TenantService({ store, defaults: { maxCodeBytes: 5000 }, storageUsage: (tenant) => ({ functionVersions: tenant.length, codeBytes: 7, queuedPayloadBytes: 9 }) });
      const made = await tenants.create('acme', { maxFunctionVersions: 3, maxQueuedPayloadBytes: 0 });
      assert.equal(made.tenant.effectiveQuotas.maxFunctionVersions, 3);
      assert.equal(made.tenant.effectiveQuotas.maxCodeBytes, 5000);
      assert.equal(made.tenant.effectiveQuotas.maxQueuedPayloadBytes, 0);
      assert.deepEqual(made.tenant.usage, { functionVersions: 4, codeBytes: 7, queuedPayloadBytes: 9 });
      assert.equal(tenants.get('default').effectiveQuotas.maxQueuedPayloadBytes, DEFAULT_STORAGE_QUOTAS.maxQueuedPayloadBytes);
      assert.equal((await tenants.update('acme', { maxFunctionVersions: null })).effectiveQuotas.maxFunctionVersions, DEFAULT_STORAGE_QUOTAS.maxFunctionVersions);
      await assert.rejects(tenants.update('acme', { maxCodeBytes: -1 }), { code: 'LIMIT_OUT_OF_RANGE' } as object);
      await assert.rejects(tenants.update('acme', { maxFunctionVersions: 1.5 }), { code: 'LIMIT_OUT_OF_RANGE' } as object);
      const open = new TenantService({ store, defaults: { maxCodeBytes: null } });
      assert.equal(open.quotasOf('acme').maxCodeBytes, null, 'null (flag 0): no cap');
    } finally {
      store.close();
    }
  });
});
