import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeJobResult, encodeJobInputs } from '@kindling/sdk/tangle';
import { KindlingError } from '../core/errors.js';
import { createJobRunner, type JobRunnerOptions } from './job-runner.js';

const CALLER = '0x00000000000000000000000000000000000000Ab';
const signal = new AbortController().signal;

/** Services that fail every call the way `fail` says; tenants always exist. */
function fakeServices(fail: () => never, ensured: string[] = []): Pick<JobRunnerOptions, 'executions' | 'sandboxes' | 'tenants'> {
  const sandboxes = new Proxy({}, { get: () => fail }) as JobRunnerOptions['sandboxes'];
  return {
    executions: { executeRaw: fail },
    sandboxes,
    tenants: {
      ensure: async (name) => {
        ensured.push(name);
        return { name, caps: {} };
      },
      checkRate: () => undefined,
    },
  };
}

test('an unexpected failure answers INTERNAL without its message, and is logged with the call', async () => {
  const logged: object[] = [];
  const runner = createJobRunner({
    ...fakeServices(() => {
      throw new Error('secret host path /var/lib/x');
    }),
    publicUrl: 'http://k',
    logger: { error: (context) => logged.push(context) },
  });
  const { result } = await runner.run({ serviceId: 1n, callId: 2n, jobIndex: 7, caller: CALLER, inputs: encodeJobInputs(7, ['sb_x']) }, signal);
  const decoded = decodeJobResult(7, result) as { kind: string; code: string; message: string };
  assert.equal(decoded.code, 'INTERNAL');
  assert.doesNotMatch(decoded.message, /secret/);
  assert.match(decoded.message, /service 1, call 2/);
  assert.equal(logged.length, 1);
});

test('an orchestrator error keeps its code and message; the caller acts as chain-<lowercase address>', async () => {
  const ensured: string[] = [];
  const runner = createJobRunner({
    ...fakeServices(() => {
      throw new KindlingError('SANDBOX_NOT_FOUND', 'no sandbox "sb_x"');
    }, ensured),
    publicUrl: 'http://k',
  });
  const { result } = await runner.run({ serviceId: 1n, callId: 3n, jobIndex: 8, caller: CALLER, inputs: encodeJobInputs(8, ['sb_x']) }, signal);
  assert.deepEqual(decodeJobResult(8, result), { kind: 'error', code: 'SANDBOX_NOT_FOUND', message: 'no sandbox "sb_x"' });
  assert.deepEqual(ensured, ['chain-0x00000000000000000000000000000000000000ab']);
});

test('unknown indices and undecodable inputs answer their codes before any service is called', async () => {
  const runner = createJobRunner({
    ...fakeServices(() => {
      throw new Error('must not be called');
    }),
    publicUrl: 'http://k',
  });
  for (const jobIndex of [12, -1, 1.5, 255]) {
    const decoded = decodeJobResult(0, (await runner.run({ serviceId: 1n, callId: 4n, jobIndex, caller: CALLER, inputs: '0x' }, signal)).result) as { code: string };
    assert.equal(decoded.code, 'UNKNOWN_JOB', `index ${jobIndex}`);
  }
  for (const inputs of ['0x', '0x12', encodeJobInputs(7, ['sb_x'])] as const) {
    const decoded = decodeJobResult(5, (await runner.run({ serviceId: 1n, callId: 5n, jobIndex: 5, caller: CALLER, inputs }, signal)).result) as { code: string };
    assert.equal(decoded.code, 'INPUT_UNDECODABLE', inputs);
  }
});

test('bad settings are refused when the runner is made, not by every job', () => {
  const services = fakeServices(() => {
    throw new Error('must not be called');
  });
  assert.throws(() => createJobRunner({ ...services, publicUrl: 'http://k', tenantQuotas: { maxMemoryMb: 1 } }), (error: unknown) => error instanceof KindlingError && error.code === 'LIMIT_OUT_OF_RANGE');
  assert.throws(() => createJobRunner({ ...services, publicUrl: 'http://k', tenantQuotas: { maxWidgets: 3 } }), (error: unknown) => error instanceof KindlingError && error.code === 'VALIDATION_FAILED');
  assert.throws(() => createJobRunner({ ...services, publicUrl: 'http://k', maxOutputBytes: 1.5 }), RangeError);
  assert.doesNotThrow(() => createJobRunner({ ...services, publicUrl: 'http://k', tenantQuotas: { maxMemoryMb: 512, maxConcurrency: 4 } }));
});
