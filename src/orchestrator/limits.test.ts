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
