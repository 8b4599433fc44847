import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KindlingError } from '../core/errors.js';
import { DEFAULT_LIMIT_POLICY, resolveLimits } from './limits.js';

test('defaults apply, runtime defaults override them, requests override both', () => {
  assert.deepEqual(resolveLimits({}, {}, DEFAULT_LIMIT_POLICY), DEFAULT_LIMIT_POLICY.defaults);
  assert.equal(resolveLimits({}, { memoryMb: 1024 }, DEFAULT_LIMIT_POLICY).memoryMb, 1024);
  assert.equal(resolveLimits({ memoryMb: 64 }, { memoryMb: 1024 }, DEFAULT_LIMIT_POLICY).memoryMb, 64);
});

test('negative, zero, absurd and non-finite limits are rejected with the allowed range', () => {
  for (const bad of [{ timeoutMs: -5 }, { memoryMb: 0 }, { memoryMb: 10_000_000 }, { cpus: Number.NaN }, { pids: 1e9 }, { diskMb: Infinity }]) {
    assert.throws(
      () => resolveLimits(bad, {}, DEFAULT_LIMIT_POLICY),
      (error: unknown) => error instanceof KindlingError && error.code === 'LIMIT_OUT_OF_RANGE' && /must be between/.test(error.message),
      JSON.stringify(bad),
    );
  }
});

test('limits other than cpus must be whole numbers (a fraction of a MiB is a mistake, not a request)', () => {
  assert.throws(() => resolveLimits({ memoryMb: 100.3 }, {}, DEFAULT_LIMIT_POLICY), /whole number/);
  assert.throws(() => resolveLimits({ diskMb: 1.5 }, {}, DEFAULT_LIMIT_POLICY), /whole number/);
  assert.equal(resolveLimits({ cpus: 0.5 }, {}, DEFAULT_LIMIT_POLICY).cpus, 0.5);
});

test('tenant caps: defaults (also runtime defaults) are lowered to the cap, a request above it is TENANT_LIMIT_EXCEEDED', () => {
  const caps = { memoryMb: 128, timeoutMs: 2000, openFiles: 256 };
  const resolved = resolveLimits({}, { memoryMb: 1024, timeoutMs: 60_000 }, DEFAULT_LIMIT_POLICY, caps);
  assert.equal(resolved.memoryMb, 128, 'min(runtime default 1024, cap 128)');
  assert.equal(resolved.timeoutMs, 2000);
  assert.equal(resolved.openFiles, 256);
  assert.equal(resolved.cpus, DEFAULT_LIMIT_POLICY.defaults.cpus, 'no cap: the default');
  assert.equal(resolveLimits({ memoryMb: 64 }, {}, DEFAULT_LIMIT_POLICY, caps).memoryMb, 64, 'under the cap: as asked');
  assert.equal(resolveLimits({ memoryMb: 128 }, {}, DEFAULT_LIMIT_POLICY, caps).memoryMb, 128, 'at the cap: allowed');
  assert.throws(
    () => resolveLimits({ memoryMb: 129 }, {}, DEFAULT_LIMIT_POLICY, caps),
    (error: unknown) =>
      error instanceof KindlingError && error.code === 'TENANT_LIMIT_EXCEEDED' && error.statusCode === 400 && /cap of 128 MiB \(quota maxMemoryMb\)/.test(error.message),
  );
  // Out of the server's range stays LIMIT_OUT_OF_RANGE (the server's rule first).
  assert.throws(() => resolveLimits({ memoryMb: 1e9 }, {}, DEFAULT_LIMIT_POLICY, caps), /must be between/);
});

test('openFiles: default 1024, whole numbers from 16 to 65536', () => {
  assert.equal(resolveLimits({}, {}, DEFAULT_LIMIT_POLICY).openFiles, 1024);
  assert.equal(resolveLimits({ openFiles: 16 }, {}, DEFAULT_LIMIT_POLICY).openFiles, 16);
  assert.throws(() => resolveLimits({ openFiles: 8 }, {}, DEFAULT_LIMIT_POLICY), /openFiles must be between 16 and 65536 file descriptors/);
  assert.throws(() => resolveLimits({ openFiles: 100_000 }, {}, DEFAULT_LIMIT_POLICY), /LIMIT_OUT_OF_RANGE|must be between/);
});
