import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { tenantShareOf, warmCapacityDefaults } from './server-defaults.js';

describe('warmCapacityDefaults', () => {
  it('derives the caps from the machine: 24 GiB holds 2,000 python (~7 MiB) and 1,000 node (~14 MiB) warm sandboxes', () => {
    const defaults = warmCapacityDefaults({ totalMemoryMb: 24_105, openFilesLimit: 20_000 });
    assert.deepEqual(defaults, { maxWarmSandboxes: 3013, maxWarmMemoryMb: 18_078, maxWarmSandboxesPerTenant: 2259, minAvailableMemoryMb: 1205 });
    assert.ok(defaults.maxWarmSandboxesPerTenant >= 2000 && defaults.maxWarmMemoryMb >= 2000 * 7 && defaults.maxWarmMemoryMb >= 1000 * 14);
  });

  it('stays within the open-file limit, and never below 64 sandboxes on a small machine', () => {
    assert.equal(warmCapacityDefaults({ totalMemoryMb: 65_536, openFilesLimit: 10_240 }).maxWarmSandboxes, 1228);
    const small = warmCapacityDefaults({ totalMemoryMb: 256, openFilesLimit: 1024 });
    assert.deepEqual(small, { maxWarmSandboxes: 64, maxWarmMemoryMb: 192, maxWarmSandboxesPerTenant: 48, minAvailableMemoryMb: 256 });
    assert.equal(tenantShareOf(1), 1);
  });
});
