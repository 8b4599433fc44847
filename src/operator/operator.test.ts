import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { destination, pino } from 'pino';
import type { Address, Hex } from 'viem';
import { decodeJobResult, encodeJobOutput } from '@kindling/sdk/tangle';
import { waitFor } from '../../test/helpers/wait.js';
import { CursorStore } from './cursor-store.js';
import { NonceManager } from './nonce-manager.js';
import { Operator, rpcBatchRefused, type OperatorChain, type OperatorJob, type OperatorJobRunner } from './operator.js';
import { ResultStore } from './result-store.js';
import { Submitter, type ContractCall, type TxChain, type TxReceipt } from './submitter.js';
import { Watcher } from './watcher.js';
import { FakeChain } from './test-support.js';

const ME = '0x00000000000000000000000000000000000000b1' as Address;
const OTHER = '0x00000000000000000000000000000000000000b2' as Address;
const JOBS = '0x00000000000000000000000000000000000000a1' as Address;
const MANAGER = '0x00000000000000000000000000000000000000a2' as Address;

/** The contracts' state as the operator reads and changes it, over a FakeChain of blocks. */
class World implements OperatorChain, TxChain {
  readonly address = ME;
  readonly chain = new FakeChain();
  completed = new Map<bigint, Hex>();
  assigned = new Map<bigint, { operator: Address; deadline: bigint }>();
  submits: { callId: bigint; result: Hex }[] = [];
  releases: bigint[] = [];
  /** Transactions sent (a batch of results is one). */
  transactions = 0;
  private nonce = 0;

  submitJob(callId: bigint, operator: Address, deadline = 10n ** 12n): void {
    this.assigned.set(callId, { operator, deadline });
    this.chain.mine([{ callId, inputs: `0x0${callId}` }], [{ callId, kind: 'assigned', operator, deadline, reason: 0 }]);
  }

  async jobCompleted(callId: bigint): Promise<boolean | null> {
    if (!this.assigned.has(callId)) return null;
    return this.completed.has(callId);
  }
  async assignmentOf(callId: bigint): Promise<{ operator: Address; deadline: bigint; done: boolean }> {
    const assignment = this.assigned.get(callId)!;
    return { ...assignment, done: this.completed.has(callId) };
  }
  blockHash(number: bigint): Promise<Hex | null> {
    return this.chain.blockHash(number);
  }
  async estimateGas(call: ContractCall): Promise<bigint> {
    const callId = call.args[1] as bigint;
    const revert = (errorName: string): never => {
      throw Object.assign(new Error(errorName), { data: { errorName } });
    };
    const check = (id: bigint): void => {
      if (!this.assigned.has(id)) revert('UnknownJobCall');
      if (this.completed.has(id)) revert('JobAlreadyCompleted');
      if (this.assigned.get(id)!.operator !== ME) revert('NotAssignedOperator');
    };
    if (call.functionName === 'submitResult') check(callId);
    // All or nothing, as the contract's batch.
    if (call.functionName === 'submitResults') for (const id of call.args[1] as bigint[]) check(id);
    return 50_000n;
  }
  async send(call: ContractCall, tx: { nonce: number }): Promise<Hex> {
    assert.equal(tx.nonce, this.nonce++);
    let hash: Hex = '0x01';
    const callId = call.args[1] as bigint;
    this.transactions++;
    if (call.functionName === 'submitResult' || call.functionName === 'submitResults') {
      const ids = call.functionName === 'submitResult' ? [callId] : (call.args[1] as bigint[]);
      const results = call.functionName === 'submitResult' ? [call.args[2] as Hex] : (call.args[2] as Hex[]);
      ids.forEach((id, i) => {
        this.completed.set(id, results[i]!);
        this.submits.push({ callId: id, result: results[i]! });
      });
      this.chain.mine([], ids.map((id) => ({ callId: id, kind: 'released' as const, operator: ME, deadline: 0n, reason: 0 })));
    } else if (call.functionName === 'releaseTimedOut') {
      this.releases.push(callId);
      hash = '0x02';
      this.assigned.set(callId, { operator: ME, deadline: 10n ** 12n });
      this.chain.mine([], [
        { callId, kind: 'released', operator: OTHER, deadline: 0n, reason: 1 },
        { callId, kind: 'assigned', operator: ME, deadline: 10n ** 12n, reason: 0 },
      ]);
    }
    return hash;
  }
  /** Holds the receipts of keeper releases (hash 0x02) until it resolves: a slow node. */
  releaseReceiptGate: Promise<void> | null = null;
  async waitForReceipt(hash: Hex): Promise<TxReceipt> {
    if (hash === '0x02' && this.releaseReceiptGate) await this.releaseReceiptGate;
    const blockNumber = BigInt(this.chain.blocks.length - 1);
    return { status: 'success', blockNumber, blockHash: this.chain.blocks[Number(blockNumber)]!.hash };
  }
  async balance(): Promise<bigint> {
    return 10n ** 18n;
  }
  pendingCount = async (): Promise<number> => this.nonce;
}

/** Job 0's output: the inputs echoed, or `size` bytes; `gate` holds runs until released. */
class FakeRunner implements OperatorJobRunner {
  runs: bigint[] = [];
  active = 0;
  maxActive = 0;
  size = 0;
  gate: Promise<void> | null = null;
  async run(job: OperatorJob, signal: AbortSignal): Promise<{ result: Hex; outputBytes?: Uint8Array }> {
    this.runs.push(job.callId);
    this.active++;
    this.maxActive = Math.max(this.maxActive, this.active);
    try {
      if (this.gate) await Promise.race([this.gate, new Promise((resolve) => signal.addEventListener('abort', resolve))]);
      const bytes = this.size > 0 ? new Uint8Array(this.size).fill(120) : new Uint8Array([job.jobIndex]);
      return { result: encodeJobOutput(0, [`0x${Buffer.from(bytes).toString('hex')}`]), outputBytes: bytes };
    } finally {
      this.active--;
    }
  }
}

const dirs: string[] = [];
/** Every operator made, closed at the end even when a test failed before its own close (else the process lives on). */
const operators: Operator[] = [];
after(async () => {
  await Promise.all(operators.map((operator) => operator.close({ abort: true })));
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

async function setup(world: World, runner: FakeRunner, options: { dir?: string; capacity?: number; confirmations?: number; now?: () => number; deadlineMarginMs?: number; keeper?: boolean } = {}): Promise<{ operator: Operator; store: CursorStore; dir: string }> {
  const dir = options.dir ?? (await mkdtemp(join(tmpdir(), 'kindling-operator-')));
  if (!options.dir) dirs.push(dir);
  const store = new CursorStore(join(dir, 'operator.db'), 'test');
  const operator = new Operator({
    serviceId: 0n,
    jobsContract: JOBS,
    serviceManager: MANAGER,
    watcher: new Watcher({ chain: world.chain, store, confirmations: options.confirmations ?? 0 }),
    store,
    submitter: new Submitter({ chain: world, nonces: new NonceManager(world), baseDelayMs: 1 }),
    chain: world,
    runner,
    resultStore: new ResultStore({ dir: join(dir, 'results') }),
    resultUrl: (serviceId, callId) => `http://op.example/v1/operator/results/${serviceId}/${callId}`,
    capacity: options.capacity ?? 2,
    maxResultBytes: 1024,
    pollIntervalMs: 5,
    retryDelayMs: 5,
    keeperIntervalMs: 5,
    logger: pino({ level: process.env.KINDLING_TEST_LOG ?? 'silent' }, destination(2)),
    ...(options.now ? { now: options.now } : {}),
    ...(options.deadlineMarginMs === undefined ? {} : { deadlineMarginMs: options.deadlineMarginMs }),
    ...(options.keeper === undefined ? {} : { keeper: options.keeper }),
  });
  operators.push(operator);
  return { operator: operator.start(), store, dir };
}

describe('Operator', () => {
  it('runs the calls assigned to it, at most capacity at once, posts each result once, and leaves others alone', async () => {
    const world = new World();
    const runner = new FakeRunner();
    let open!: () => void;
    runner.gate = new Promise((resolve) => (open = resolve));
    const { operator, store } = await setup(world, runner, { capacity: 2 });
    for (let i = 0n; i < 5n; i++) world.submitJob(i, ME);
    world.submitJob(5n, OTHER);
    await waitFor(() => runner.active === 2, { what: 'two jobs running' });
    open();
    await waitFor(() => world.submits.length === 5, { what: 'five results' });
    await waitFor(() => [0n, 1n, 2n, 3n, 4n].every((callId) => store.call(callId)?.state === 'done'), { what: 'the results read back from the chain' });
    await operator.close();
    assert.equal(runner.maxActive, 2, 'capacity 2');
    assert.deepEqual(world.submits.map((s) => s.callId).sort(), [0n, 1n, 2n, 3n, 4n]);
    assert.deepEqual(runner.runs.sort(), [0n, 1n, 2n, 3n, 4n], "the other operator's call is not run");
    assert.equal(store.call(0n)?.state, 'done');
    assert.equal(store.call(5n)?.state, 'seen');
    store.close();
  });

  it('results ready together go in one submitResults transaction; a batch with one call that cannot be posted falls back to one by one', async () => {
    const world = new World();
    const runner = new FakeRunner();
    let open!: () => void;
    runner.gate = new Promise((resolve) => (open = resolve));
    const { operator, store } = await setup(world, runner, { capacity: 8 });
    for (let i = 0n; i < 8n; i++) world.submitJob(i, ME);
    await waitFor(() => runner.active === 8, { what: 'eight jobs running' });
    open();
    await waitFor(() => world.submits.length === 8, { what: 'eight results' });
    assert.ok(world.transactions <= 2, `8 results ready at once went in ${world.transactions} transactions`);

    // Four more; one of them is completed on chain by someone else before its result goes.
    const before = world.transactions;
    runner.gate = new Promise((resolve) => (open = resolve));
    for (let i = 8n; i < 12n; i++) world.submitJob(i, ME);
    await waitFor(() => runner.active === 4, { what: 'four jobs running' });
    world.completed.set(10n, '0x');
    open();
    await waitFor(() => [8n, 9n, 11n].every((callId) => world.submits.some((submit) => submit.callId === callId)), { what: 'the three others posted' });
    await waitFor(() => [8n, 9n, 10n, 11n].every((callId) => store.call(callId)?.state === 'done'), { what: 'all four settled' });
    await operator.close();
    assert.equal(world.submits.filter((submit) => submit.callId === 10n).length, 0, 'nothing posted for the completed call');
    assert.ok(world.transactions - before <= 4, 'singles after the batch reverted');
    assert.equal(world.submits.length, 11);
    store.close();
  });

  it('puts a result over maxResultBytes in the result store and a KindlingResultRef on chain', async () => {
    const world = new World();
    const runner = new FakeRunner();
    runner.size = 5000;
    const { operator, store, dir } = await setup(world, runner);
    world.submitJob(0n, ME);
    await waitFor(() => world.submits.length === 1, { what: 'the result' });
    await operator.close();
    const decoded = decodeJobResult(0, world.submits[0]!.result);
    assert.equal(decoded.kind, 'ref');
    assert.ok(decoded.kind === 'ref');
    assert.equal(decoded.sizeBytes, 5000n);
    assert.equal(decoded.url, 'http://op.example/v1/operator/results/0/0');
    assert.equal((await readFile(join(dir, 'results', '0', '0'))).length, 5000);
    store.close();
  });

  it('after a crash mid-job: answers JOB_INTERRUPTED instead of running it again, and never reposts a done call', async () => {
    const world = new World();
    const runner = new FakeRunner();
    runner.gate = new Promise(() => {});
    const first = await setup(world, runner);
    world.submitJob(0n, ME);
    world.submitJob(1n, ME);
    await waitFor(() => runner.active === 2, { what: 'both running' });
    // Call 1 got its result on chain before the "crash" (another process of the same key, say).
    world.completed.set(1n, '0x');
    await first.operator.close({ abort: true });
    first.store.transition(1n, ['submitted'], 'done', { nowMs: 0 });
    first.store.close();
    const again = new FakeRunner();
    const second = await setup(world, again, { dir: first.dir });
    await waitFor(() => world.submits.length === 1, { what: 'the interrupted job answered' });
    await second.operator.close();
    const decoded = decodeJobResult(0, world.submits[0]!.result);
    assert.equal(decoded.kind === 'error' && decoded.code, 'JOB_INTERRUPTED');
    assert.deepEqual(again.runs, [], 'nothing runs a second time');
    second.store.close();
  });

  it("keeper: releases another operator's assignment past its deadline, then runs the job reassigned to it", async () => {
    const world = new World();
    const runner = new FakeRunner();
    let nowMs = 1_000_000;
    const { operator, store } = await setup(world, runner, { now: () => nowMs });
    world.submitJob(0n, OTHER, 2000n);
    await waitFor(() => store.call(0n) !== null, { what: 'the call read' });
    assert.deepEqual(world.releases, [], 'not before the deadline');
    nowMs = 2_001_000;
    await waitFor(() => world.submits.length === 1, { what: 'the reassigned job answered' });
    await operator.close();
    assert.deepEqual(world.releases, [0n]);
    assert.deepEqual(runner.runs, [0n]);
    store.close();
  });

  it('a job still running at its assignment deadline (less the margin) is stopped and answered ASSIGNMENT_DEADLINE_EXCEEDED', async () => {
    const world = new World();
    const runner = new FakeRunner();
    runner.gate = new Promise(() => {}); // runs until aborted
    let aborted = false;
    const run = runner.run.bind(runner);
    runner.run = (job, signal) => {
      signal.addEventListener('abort', () => (aborted = true));
      return run(job, signal);
    };
    const { operator, store } = await setup(world, runner, { deadlineMarginMs: 1000 });
    // The deadline is block time; this fake chain's block time is the wall clock.
    world.submitJob(0n, ME, BigInt(Math.floor(Date.now() / 1000) + 3));
    await waitFor(() => world.submits.length === 1, { what: 'the deadline answer', timeoutMs: 15_000 });
    // Done once the result's block is read past (confirmed).
    await waitFor(() => {
      world.chain.mine();
      return store.call(0n)?.state === 'done';
    }, { what: 'the answer confirmed' });
    await operator.close();
    assert.equal(aborted, true, 'the job was aborted');
    const decoded = decodeJobResult(0, world.submits[0]!.result);
    assert.equal(decoded.kind === 'error' && decoded.code, 'ASSIGNMENT_DEADLINE_EXCEEDED');
    store.close();
  });

  it('a job reassigned while it ran is stopped at its deadline and posts nothing; it waits as seen', async () => {
    const world = new World();
    const runner = new FakeRunner();
    runner.gate = new Promise(() => {});
    // No keeper: past the deadline it would release the call (the events still say ours) and this fake chain would
    // give it back at once with a far deadline, so the job would run again before the check below saw it stop.
    const { operator, store } = await setup(world, runner, { deadlineMarginMs: 0, keeper: false });
    world.submitJob(0n, ME, BigInt(Math.floor(Date.now() / 1000) + 2));
    await waitFor(() => runner.active === 1, { what: 'the job running' });
    // Released and given to another operator on chain (the events have not been read yet).
    world.assigned.set(0n, { operator: OTHER, deadline: 10n ** 12n });
    await waitFor(() => runner.active === 0, { what: 'the job stopped at its deadline', timeoutMs: 15_000 });
    await waitFor(() => store.call(0n)?.state === 'seen', { what: 'the call back to seen' });
    await operator.close();
    assert.deepEqual(world.submits, [], 'nothing posted');
    store.close();
  });

  it('a call of ours not started before its deadline is not run late: the keeper releases it, and it runs once given back', async () => {
    const world = new World();
    const runner = new FakeRunner();
    let open!: () => void;
    runner.gate = new Promise((resolve) => (open = resolve));
    const { operator, store } = await setup(world, runner, { capacity: 1, deadlineMarginMs: 0 });
    world.submitJob(0n, ME);
    await waitFor(() => runner.active === 1, { what: 'call 0 running' });
    // Call 1 waits behind call 0 (capacity 1) until past its deadline.
    world.submitJob(1n, ME, BigInt(Math.floor(Date.now() / 1000) + 1));
    await waitFor(() => world.releases.includes(1n), { what: 'call 1 released by our keeper', timeoutMs: 15_000 });
    open();
    await waitFor(() => world.submits.length === 2, { what: 'both answered' });
    await operator.close();
    assert.deepEqual(world.releases, [1n]);
    assert.deepEqual(runner.runs, [0n, 1n], 'call 1 ran once, after it came back with a new deadline');
    store.close();
  });

  it('a result whose block a reorg removes before it is --confirmations deep is sent again; done once deep enough', async () => {
    const world = new World();
    const runner = new FakeRunner();
    const { operator, store } = await setup(world, runner, { confirmations: 2 });
    world.submitJob(0n, ME);
    world.chain.mine();
    world.chain.mine();
    await waitFor(() => world.submits.length === 1, { what: 'the result' });
    const resultBlock = BigInt(world.chain.blocks.length - 1);
    assert.equal(store.call(0n)?.state, 'submitted', 'not done at depth 0');
    // The result's block is replaced (the job's block stays): the call is open again on the new chain.
    world.chain.reorgTo(resultBlock - 1n);
    world.completed.delete(0n);
    world.chain.mine();
    world.chain.mine();
    world.chain.mine();
    await waitFor(() => world.submits.length === 2, { what: 'the result sent again' });
    await waitFor(() => {
      world.chain.mine();
      return store.call(0n)?.state === 'done';
    }, { what: 'the second result confirmed' });
    await operator.close();
    assert.deepEqual(world.submits.map((submit) => submit.callId), [0n, 0n]);
    assert.deepEqual(runner.runs, [0n], 'the job itself ran once');
    store.close();
  });

  it('keeper: a release waiting for its receipt does not hold up reading and answering new jobs', async () => {
    const world = new World();
    const runner = new FakeRunner();
    let open!: () => void;
    world.releaseReceiptGate = new Promise((resolve) => (open = resolve));
    const { operator, store } = await setup(world, runner, { now: () => 2_001_000 });
    world.submitJob(0n, OTHER, 2000n);
    await waitFor(() => world.releases.length === 1, { what: 'the keeper sending its release' });
    world.submitJob(1n, ME);
    await waitFor(() => world.submits.some((submit) => submit.callId === 1n), { what: 'a new job answered while the release waits for its receipt' });
    open();
    await operator.close();
    assert.deepEqual(world.releases, [0n], 'one release, never two at once');
    store.close();
  });

  it('a reorg that removes a running job stops it and posts nothing; the job is run when it reappears', async () => {
    const world = new World();
    const runner = new FakeRunner();
    let open!: () => void;
    runner.gate = new Promise((resolve) => (open = resolve));
    const { operator, store } = await setup(world, runner);
    const before = world.chain.blocks.length - 1;
    world.submitJob(0n, ME);
    await waitFor(() => runner.active === 1, { what: 'the job running' });
    world.chain.reorgTo(BigInt(before));
    world.assigned.delete(0n);
    world.chain.mine();
    await waitFor(() => runner.active === 0, { what: 'the job stopped' });
    assert.equal(store.call(0n), null);
    assert.deepEqual(world.submits, []);
    open();
    world.submitJob(0n, ME);
    await waitFor(() => world.submits.length === 1, { what: 'the reappeared job answered' });
    await operator.close();
    assert.deepEqual(runner.runs, [0n, 0n]);
    store.close();
  });
});

it('rpcBatchRefused tells a node refusing a JSON-RPC batch from other failures', () => {
  assert.equal(rpcBatchRefused(Object.assign(new Error('request failed'), { cause: { name: 'InvalidRequestRpcError', code: -32600 } })), true);
  assert.equal(rpcBatchRefused(Object.assign(new Error('RPC Request failed.'), { details: 'batch too large' })), true);
  assert.equal(rpcBatchRefused(new Error('batch limit exceeded')), true);
  assert.equal(rpcBatchRefused(Object.assign(new Error('fetch failed'), { cause: { code: 'ECONNREFUSED' } })), false);
  assert.equal(rpcBatchRefused(Object.assign(new Error('reverted'), { data: { errorName: 'UnknownJobCall' } })), false);
});
