/**
 * The sandbox start deadline of ExecutionService, against an executor whose start() is controlled by the test (the
 * logic only: a start that hangs on a real engine is covered by the executors' own timeouts and the fault tests).
 */
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { describe, it } from 'node:test';
import { KindlingError } from '../core/errors.js';
import type { ExecutorName, RunSpec } from '../core/types.js';
import type { Execution, Executor, ExitInfo, StartOptions } from '../executors/executor.js';
import { ExecutionService } from './execution-service.js';

/** An execution that ends when killed; it records the kill. */
function controlledExecution(): Execution & { killed: boolean } {
  let exit!: (info: ExitInfo) => void;
  const exited = new Promise<ExitInfo>((resolve) => (exit = resolve));
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const execution = {
    stdin: null,
    stdout,
    stderr,
    coldStart: true,
    killed: false,
    wait: () => exited,
    kill(): void {
      execution.killed = true;
      stdout.end();
      stderr.end();
      exit({ exitCode: 137, signal: 'SIGKILL', oomKilled: false });
    },
    disposed: exited.then(() => undefined),
  };
  return execution;
}

/** An executor whose start() resolves when the test says so; it keeps the signals it was given. */
function controlledExecutor(options: { maxStartMs?: number } = {}): Executor & { starts: { release: (execution: Execution) => void; signal: AbortSignal | undefined }[] } {
  const starts: { release: (execution: Execution) => void; signal: AbortSignal | undefined }[] = [];
  const executor = {
    name: 'sandbox' as ExecutorName,
    ...(options.maxStartMs === undefined ? {} : { maxStartMs: options.maxStartMs }),
    starts,
    probe: () => Promise.resolve({ available: true }),
    hasImage: () => true,
    refreshImages: () => Promise.resolve([]),
    start(_spec: RunSpec, startOptions: StartOptions = {}): Promise<Execution> {
      return new Promise<Execution>((resolve) => starts.push({ release: resolve, signal: startOptions.signal }));
    },
    reap: () => Promise.resolve(0),
    close: () => Promise.resolve(),
  };
  return executor as unknown as Executor & { starts: typeof starts };
}

const serviceWith = (executor: Executor, startTimeoutMs: number): ExecutionService =>
  new ExecutionService({ executors: new Map([[executor.name, executor]]), defaultExecutor: executor.name, concurrency: { maxConcurrent: 4, maxQueued: 4, queueTimeoutMs: 1000 }, startTimeoutMs });

const isStartTimeout = (error: unknown): boolean => error instanceof KindlingError && error.code === 'SANDBOX_START_TIMEOUT' && error.statusCode === 503;

describe('ExecutionService: the sandbox start deadline', () => {
  it('a start that does not finish in time fails with SANDBOX_START_TIMEOUT, aborts the start, frees its slot, and kills what appears later', async () => {
    const executor = controlledExecutor();
    const service = serviceWith(executor, 50);
    const startedAt = performance.now();
    await assert.rejects(service.execute({ runtime: 'bash', code: 'true' }), isStartTimeout);
    assert.ok(performance.now() - startedAt < 5000, 'it failed at its deadline, not later');
    assert.equal(executor.starts.length, 1);
    assert.equal(executor.starts[0]!.signal?.aborted, true, 'the executor was told to give up');
    assert.equal(service.queueStats.running, 0, 'the concurrency slot is free again');
    // The engine answers at last: the sandbox it made is killed at once.
    const late = controlledExecution();
    executor.starts[0]!.release(late);
    await late.wait();
    assert.equal(late.killed, true);
  });

  it("an executor's own maxStartMs extends the deadline (a VM booting under emulation)", async () => {
    // The executor's bound is far past the wait below, so a stalled test machine cannot make it expire first.
    const executor = controlledExecutor({ maxStartMs: 60_000 });
    const service = serviceWith(executor, 20);
    const running = service.execute({ runtime: 'bash', code: 'true' });
    // Past the server's deadline, within the executor's: the start completes and the execution runs to its end.
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(executor.starts[0]!.signal?.aborted, false, 'not given up at the server deadline');
    const execution = controlledExecution();
    executor.starts[0]!.release(execution);
    execution.kill();
    const result = await running;
    assert.equal(result.exitCode, 137);
  });

  it("the caller's signal still reaches the start", async () => {
    const executor = controlledExecutor();
    const service = serviceWith(executor, 60_000);
    const controller = new AbortController();
    const running = service.execute({ runtime: 'bash', code: 'true' }, { signal: controller.signal });
    await new Promise((resolve) => setImmediate(resolve));
    controller.abort();
    assert.equal(executor.starts[0]!.signal?.aborted, true);
    const execution = controlledExecution();
    executor.starts[0]!.release(execution);
    await running.catch(() => undefined);
    assert.equal(execution.killed, true, 'an execution started for a caller gone is killed');
  });
});
