import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { quotasJson, readOperatorConfig } from './operator.js';

const dir = mkdtempSync(join(tmpdir(), 'kindling-operator-config-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const BASE = {
  rpcUrl: 'http://127.0.0.1:8545',
  chainId: 31337,
  keyFile: '/k',
  jobsContract: `0x${'1'.repeat(40)}`,
  serviceManager: `0x${'2'.repeat(40)}`,
  serviceId: 0,
};

test('--chain-tenant-quotas takes a JSON object of numbers and says what it wants otherwise', () => {
  assert.deepEqual(quotasJson('--chain-tenant-quotas')('{"maxConcurrency":4,"maxTimeoutMs":60000}'), { maxConcurrency: 4, maxTimeoutMs: 60000 });
  assert.throws(() => quotasJson('--chain-tenant-quotas')('maxConcurrency=4'), /JSON object of quota fields/);
  assert.throws(() => quotasJson('--chain-tenant-quotas')('[1]'), /JSON object of numbers/);
  assert.throws(() => quotasJson('--chain-tenant-quotas')('{"maxConcurrency":"4"}'), /JSON object of numbers/);
});

test('the operator config file carries chainTenantQuotas, and an unknown field names the known ones', async () => {
  const file = join(dir, 'op.json');
  writeFileSync(file, JSON.stringify({ ...BASE, chainTenantQuotas: { maxSandboxes: 1 } }));
  const settings = await readOperatorConfig(file);
  assert.deepEqual(settings.chainTenantQuotas, { maxSandboxes: 1 });
  assert.equal(settings.serviceId, 0n);
  writeFileSync(file, JSON.stringify({ ...BASE, chainTenantQuotas: { maxSandboxes: 'many' } }));
  await assert.rejects(readOperatorConfig(file), /chainTenantQuotas.*JSON object of numbers/);
  writeFileSync(file, JSON.stringify({ ...BASE, tenantQuota: 1 }));
  await assert.rejects(readOperatorConfig(file), /unknown field\(s\) tenantQuota; the fields are .*chainTenantQuotas/);
});

test('the operator config file takes rpcBatchSize (0 turns batching off); a negative one is refused', async () => {
  const file = join(dir, 'batch.json');
  writeFileSync(file, JSON.stringify({ ...BASE, rpcBatchSize: 0 }));
  assert.equal((await readOperatorConfig(file)).rpcBatchSize, 0);
  writeFileSync(file, JSON.stringify({ ...BASE, rpcBatchSize: 16 }));
  assert.equal((await readOperatorConfig(file)).rpcBatchSize, 16);
  writeFileSync(file, JSON.stringify({ ...BASE, rpcBatchSize: -1 }));
  await assert.rejects(readOperatorConfig(file), /rpcBatchSize/);
});
