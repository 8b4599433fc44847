import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { describe, it } from 'node:test';
import { KindlingError } from '../core/errors.js';
import type { FinishedInvocation } from '../store/store.js';
import type { FunctionService, InvocationResult, InvokeOptions } from './function-service.js';
import { InvocationRunner, failureMessage, outcomeOf } from './invocation-runner.js';
import { LogBus, type LogMessage } from './log-bus.js';

type Behaviour = (options: InvokeOptions) => Promise<Partial<InvocationResult>>;

/** A function service whose one function `f` (version 3) does what the test says. */
function fakeFunctions(behaviour: Behaviour): Pick<FunctionService, 'invoke' | 'resolve'> & { calls: InvokeOptions[] } {
  const calls: InvokeOptions[] = [];
  return {
    calls,
    resolve: (tenant: string, name: string, version?: number) => {
      if (name !== 'f') throw new KindlingError('FUNCTION_NOT_FOUND', `no function named "${name}"`);
      return { version: { tenant, name, version: version ?? 3, spec: {}, createdAtMs: 0 }, style: 'command' } as ReturnType<FunctionService['resolve']>;
    },
    invoke: async (tenant: string, name: string, _body: Buffer, options: InvokeOptions = {}) => {
      calls.push(options);
      const partial = await behaviour(options);
      return {
        invocationId: 'ex-1',
        tenant,
        functionName: name,
        version: options.version ?? 3,
        exitCode: 0,
        body: Buffer.alloc(0),
        stderr: Buffer.alloc(0),
        durationMs: 5,
        coldStart: false,
        timedOut: false,
        executor: 'sandbox',
        ...partial,
      };
    },
  };
}

function setup(behaviour: Behaviour): { runner: InvocationRunner; records: FinishedInvocation[]; messages: LogMessage[]; functions: ReturnType<typeof fakeFunctions> } {
  const bus = new LogBus();
  const messages: LogMessage[] = [];
  bus.subscribe((message) => messages.push(message));
  const records: FinishedInvocation[] = [];
  const functions = fakeFunctions(behaviour);
  const runner = new InvocationRunner({ functions, logBus: bus, record: (finished) => records.push(finished), recordLogBytes: 4 });
  return { runner, records, messages, functions };
}

const started = (options: InvokeOptions): void => options.onStarted?.('ex-1', { coldStart: true, executor: 'sandbox' });

describe('outcomeOf: one rule for every invocation', () => {
  it('succeeded only for exit 0 within the time', () => {
    assert.deepEqual(outcomeOf({ exitCode: 0, timedOut: false }), { status: 'succeeded', error: null });
    assert.deepEqual(outcomeOf({ exitCode: 2, timedOut: false }), { status: 'failed', error: 'exited with code 2' });
    // A timeout is a failure even when the killed process reported 0.
    assert.deepEqual(outcomeOf({ exitCode: 0, timedOut: true }), { status: 'failed', error: 'timed out' });
  });

  it('platform failures are told by their stable code, anything else as what broke', () => {
    assert.equal(failureMessage(new KindlingError('EXECUTOR_FAILED', 'the engine went away')), 'EXECUTOR_FAILED: the engine went away');
    assert.equal(failureMessage(new Error('boom')), 'the platform failed: boom');
    const full = Object.assign(new Error('no space'), { code: 'ENOSPC' });
    assert.match(failureMessage(full), /^STORAGE_FULL: /);
  });
});

describe('InvocationRunner.invoke: a synchronous invocation', () => {
  it('starts, streams and ends on the log bus under the execution id, and records the outcome with the head of the output', async () => {
    const { runner, records, messages } = setup(async (options) => {
      started(options);
      options.onOutput?.('stderr', 'log line');
      return { exitCode: 1, body: Buffer.from('the return value'), stderr: Buffer.from('log line') };
    });
    const result = await runner.invoke({ tenant: 't', functionName: 'f', payload: Buffer.from('abc') });
    assert.equal(result.exitCode, 1);
    assert.deepEqual(
      messages.map((message) => [message.kind, message.invocationId, message.kind === 'output' ? message.stream : message.kind === 'end' ? message.status : '']),
      [
        ['start', 'ex-1', ''],
        ['output', 'ex-1', 'stderr'],
        // The return value did not stream: it shows at the end, before the end.
        ['output', 'ex-1', 'stdout'],
        ['end', 'ex-1', 'failed'],
      ],
    );
    assert.equal(records.length, 1);
    const record = records[0]!;
    assert.equal(record.id, 'ex-1');
    assert.equal(record.status, 'failed');
    assert.equal(record.error, 'exited with code 1');
    assert.equal(record.version, 3);
    assert.equal(record.payloadBytes, 3);
    assert.equal(record.stdout.toString(), 'the ', 'the record keeps recordLogBytes of stdout');
    assert.equal(record.stdoutBytes, 'the return value'.length);
    assert.equal(record.coldStart, false);
  });

  it('a platform failure after the start is recorded as failed with its code, ended on the bus, then thrown', async () => {
    const { runner, records, messages } = setup(async (options) => {
      started(options);
      throw new KindlingError('EXECUTOR_FAILED', 'the engine went away');
    });
    await assert.rejects(runner.invoke({ tenant: 't', functionName: 'f', payload: Buffer.alloc(0) }), /engine went away/);
    assert.deepEqual(
      messages.map((message) => message.kind),
      ['start', 'end'],
    );
    assert.deepEqual(messages.at(-1), { kind: 'end', invocationId: 'ex-1', tenant: 't', functionName: 'f', status: 'failed' });
    assert.equal(records.length, 1);
    assert.equal(records[0]!.status, 'failed');
    assert.equal(records[0]!.error, 'EXECUTOR_FAILED: the engine went away');
    assert.equal(records[0]!.coldStart, true);
  });

  it('a failure before the start (a full queue) leaves no record and nothing on the bus', async () => {
    const { runner, records, messages } = setup(async () => {
      throw new KindlingError('TOO_MANY_REQUESTS', 'queue full');
    });
    await assert.rejects(runner.invoke({ tenant: 't', functionName: 'f', payload: Buffer.alloc(0) }), (error: unknown) => error instanceof KindlingError && error.code === 'TOO_MANY_REQUESTS');
    assert.equal(records.length, 0);
    assert.equal(messages.length, 0);
  });

  it('an input that broke off explains the failure better than the run: its error is thrown and recorded', async () => {
    const cut = new KindlingError('PAYLOAD_TOO_LARGE', 'over the limit');
    const { runner, records } = setup(async (options) => {
      started(options);
      throw new Error('stdin closed');
    });
    await assert.rejects(runner.invoke({ tenant: 't', functionName: 'f', payload: Buffer.alloc(0), inputError: () => cut }), (error: unknown) => error === cut);
    assert.equal(records[0]!.error, 'PAYLOAD_TOO_LARGE: over the limit');
  });

  it('runs the version it was given, and a sink plan only decodes text while someone follows', async () => {
    const { runner, functions } = setup(async (options) => {
      started(options);
      return {};
    });
    const sink = new PassThrough();
    await runner.invoke({ tenant: 't', functionName: 'f', version: 2, payload: Buffer.alloc(0), io: { stdout: { kind: 'sink', sink } } });
    const call = functions.calls[0]!;
    assert.equal(call.version, 2);
    const stdout = call.io?.stdout;
    assert.ok(stdout?.kind === 'sink' && stdout.textWanted, 'the runner tells the execution whether anyone wants the text');
    assert.equal(stdout.textWanted(), true, 'the test follows the bus');
  });
});

describe('InvocationRunner.run: an invocation with an id of its own (async)', () => {
  it('is on the bus under its id from the start, and the caller ends it', async () => {
    const { runner, messages, records } = setup(async (options) => {
      started(options);
      options.onOutput?.('stdout', 'hi');
      return { body: Buffer.from('hi') };
    });
    const report = await runner.run({ id: 'inv-9', tenant: 't', functionName: 'f', payload: Buffer.alloc(0) });
    assert.equal(report.kind, 'finished');
    assert.equal(report.outcome.status, 'succeeded');
    assert.deepEqual(
      messages.map((message) => [message.kind, message.invocationId]),
      [
        ['start', 'inv-9'],
        ['output', 'inv-9'],
      ],
      'streamed stdout is not repeated at the end, and the end is the caller\'s',
    );
    assert.equal(records.length, 0, 'run() records nothing: the async store does');
    runner.end('inv-9', 't', 'f', report.outcome.status);
    assert.deepEqual(messages.at(-1), { kind: 'end', invocationId: 'inv-9', tenant: 't', functionName: 'f', status: 'succeeded' });
  });

  it('never rejects: an unknown function is a failed report', async () => {
    const { runner } = setup(async () => ({}));
    const report = await runner.run({ id: 'inv-1', tenant: 't', functionName: 'gone', payload: Buffer.alloc(0) });
    assert.equal(report.kind, 'failed');
    assert.match(report.outcome.error ?? '', /^FUNCTION_NOT_FOUND: /);
  });
});
