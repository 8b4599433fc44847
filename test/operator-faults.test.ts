/**
 * Operator mode under faults, on a real anvil with real `kindling operator` processes: load spread over 3 operators,
 * an operator killed with SIGKILL mid-job (the keeper reassigns after the deadline, the job completes once, the
 * restarted operator does not resubmit), a reorg that removes a job while it runs, a result transaction dropped from
 * the node's pool (sent again with the same nonce, no gap) and one whose block a reorg removes (sent again).
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import type { Hex } from 'viem';
import { decodeJobResult } from '@kindling/sdk/tangle';
import { startAnvil, type Anvil } from './helpers/anvil.js';
import { deployOn, logged, startOperator, type ChainSetup, type OperatorProcess } from './helpers/operator.js';
import { sandboxUnavailableReason } from './helpers/server.js';
import { waitFor } from './helpers/wait.js';

const skip = await sandboxUnavailableReason();

const anvils: Anvil[] = [];
const operators: OperatorProcess[] = [];
after(async () => {
  // SIGTERM (a graceful stop releases the sandbox executor's mounts), then the data dirs; anvils in any case.
  const stopped = await Promise.allSettled(operators.map(async (operator) => {
    await operator.stop();
    await operator.remove();
  }));
  for (const anvil of anvils) await anvil.stop();
  for (const result of stopped) if (result.status === 'rejected') throw result.reason;
});

async function chain(assignmentTimeoutSeconds = 300): Promise<ChainSetup> {
  const anvil = await startAnvil();
  anvils.push(anvil);
  return deployOn(anvil, assignmentTimeoutSeconds);
}

async function operator(setup: ChainSetup, keyIndex: number, options: { dataDir?: string; args?: string[] } = {}): Promise<OperatorProcess> {
  const started = await startOperator(setup, keyIndex, options);
  operators.push(started);
  return started;
}

async function rpc(setup: ChainSetup, method: string, params: unknown[] = []): Promise<unknown> {
  const response = await fetch(setup.anvil.rpcUrl, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }) });
  const body = (await response.json()) as { result?: unknown; error?: unknown };
  if (body.error) throw new Error(`${method}: ${JSON.stringify(body.error)}`);
  return body.result;
}


describe('operator faults (anvil, 3 operators, kill -9, reorg)', { skip: skip ?? false }, () => {
  it('3 operators: jobs spread by load; kill -9 one mid-job: reassigned after the deadline, completed once, not resubmitted after its restart', async () => {
    // Jobs must end 2 s before the deadline (else they are stopped): 12 s leaves the 4 s job below room on a busy machine.
    const setup = await chain(12);
    const ops = [await operator(setup, 1, { args: ['--capacity', '2'] }), await operator(setup, 2, { args: ['--capacity', '2'] }), await operator(setup, 3, { args: ['--capacity', '2'] })];
    const calls = [];
    for (let i = 0; i < 6; i++) calls.push((await setup.customer.submitJob(setup.deployment.serviceId, 0, ['alpine', ['sh', '-c', 'sleep 1; echo done'], [], '0x'])).callId);
    const records = await Promise.all(calls.map((callId) => setup.customer.waitForResult(setup.deployment.serviceId, callId, { timeoutMs: 120_000, pollMs: 200 })));
    const perOperator = new Map<string, number>();
    for (const record of records) perOperator.set(record.operator.toLowerCase(), (perOperator.get(record.operator.toLowerCase()) ?? 0) + 1);
    assert.deepEqual([...perOperator.values()], [2, 2, 2], `6 jobs over 3 operators of capacity 2: ${JSON.stringify([...perOperator])}`);

    // A job that runs 4 s; its operator dies 0 s into it.
    const { callId } = await setup.customer.submitJob(setup.deployment.serviceId, 0, ['alpine', ['sh', '-c', 'sleep 4; echo finished'], [], '0x']);
    let victim: OperatorProcess | undefined;
    await waitFor(() => {
      victim = ops.find((op) => logged(op, 'running a job').some((line) => line.callId === callId.toString()));
      return victim !== undefined;
    }, { timeoutMs: 60_000, what: 'an operator to start the job' });
    await victim!.kill9();
    const record = await setup.customer.waitForResult(setup.deployment.serviceId, callId, { timeoutMs: 120_000, pollMs: 200 });
    assert.notEqual(record.operator.toLowerCase(), victim!.address.toLowerCase(), 'another operator answered');
    const decoded = decodeJobResult(0, record.raw);
    assert.equal(decoded.kind === 'output' && Buffer.from((decoded.values[0] as Hex).slice(2), 'hex').toString(), 'finished\n');
    assert.ok(ops.some((op) => op !== victim && logged(op, 'released a timed-out assignment (keeper)').some((line) => line.callId === callId.toString())), 'a keeper released it');

    // The dead one comes back with its data dir: it finds the job it was running, and posts nothing for it.
    const nonceBefore = await setup.publicClient.getTransactionCount({ address: victim!.address });
    const restarted = await operator(setup, ops.indexOf(victim!) + 1, { dataDir: victim!.dataDir, args: ['--capacity', '2'] });
    await waitFor(() => logged(restarted, 'job result').some((line) => line.callId === callId.toString()), { timeoutMs: 60_000, what: 'the restarted operator to settle the interrupted job' });
    assert.equal(logged(restarted, 'job result').find((line) => line.callId === callId.toString())?.outcome, 'already-completed');
    assert.equal(await setup.publicClient.getTransactionCount({ address: victim!.address }), nonceBefore, 'no transaction from the restarted operator');
    assert.equal(BigInt((await setup.customer.getJobCall(setup.deployment.serviceId, callId)).resultCount), 1n, 'completed once');
  });

  it('2 operators: jobs on an instance go to the operator holding it, whichever is less loaded', async () => {
    const setup = await chain();
    const ops = [await operator(setup, 1), await operator(setup, 2)];
    const id = setup.deployment.serviceId;
    const result = async (jobIndex: number, callId: bigint) => {
      const record = await setup.customer.waitForResult(id, callId, { timeoutMs: 120_000, pollMs: 200 });
      return { operator: record.operator.toLowerCase(), decoded: decodeJobResult(jobIndex, record.raw) };
    };
    const started = await result(6, (await setup.customer.submitJob(id, 6, ['', 'alpine', 0, 0, 0, false])).callId);
    assert.equal(started.decoded.kind, 'output', JSON.stringify(started.decoded));
    const instance = (started.decoded as { values: readonly unknown[] }).values[0] as string;
    assert.ok(ops.some((op) => op.address.toLowerCase() === started.operator));
    // By load, these would alternate between the two operators; each must reach the holder and succeed.
    const jobs: [number, unknown[]][] = [
      [1, ['alpine', ['sh', '-c', 'echo kept > /work/f; cat /work/f'], [], '0x', 'persistent', instance, '', 0n]],
      [8, [instance]],
      [9, [instance]],
      [1, ['alpine', ['cat', '/work/f'], [], '0x', 'persistent', instance, '', 0n]],
      [7, [instance]],
    ];
    for (const [jobIndex, args] of jobs) {
      const answered = await result(jobIndex, (await setup.customer.submitJob(id, jobIndex, args)).callId);
      assert.equal(answered.decoded.kind, 'output', `job ${jobIndex}: ${JSON.stringify(answered.decoded, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}`);
      assert.equal(answered.operator, started.operator, `job ${jobIndex} answered by the holder`);
    }
  });

  it('reorg with --confirmations 2: a running job whose block vanishes posts nothing; when it reappears it runs', async () => {
    const setup = await chain();
    const op = await operator(setup, 1, { args: ['--confirmations', '2'] });
    const snapshot = await rpc(setup, 'evm_snapshot');
    const { callId } = await setup.customer.submitJob(setup.deployment.serviceId, 0, ['alpine', ['sh', '-c', 'sleep 6; echo first'], [], '0x']);
    await rpc(setup, 'anvil_mine', ['0x2']);
    await waitFor(() => logged(op, 'running a job').some((line) => line.callId === callId.toString()), { timeoutMs: 60_000, what: 'the job to start at 2 confirmations' });
    const nonce = await setup.publicClient.getTransactionCount({ address: op.address });
    // The job's block and the two above it vanish; the new chain is longer (its blocks have other hashes).
    await rpc(setup, 'evm_revert', [snapshot]);
    await rpc(setup, 'evm_setNextBlockTimestamp', [Math.floor(Date.now() / 1000) + 100]);
    await rpc(setup, 'anvil_mine', ['0x5']);
    await waitFor(() => logged(op, 'a reorg removed the block of a running job: stopping it, posting nothing').length > 0, { timeoutMs: 60_000, what: 'the operator to notice the reorg' });
    await assert.rejects(setup.customer.getJobCall(setup.deployment.serviceId, callId), 'the call does not exist on the new chain');
    assert.equal(await setup.publicClient.getTransactionCount({ address: op.address }), nonce, 'no result was sent for the vanished job');
    // The same submission again: the call id comes back, and is run and answered once.
    const again = await setup.customer.submitJob(setup.deployment.serviceId, 0, ['alpine', ['echo', 'second'], [], '0x']);
    assert.equal(again.callId, callId);
    await rpc(setup, 'anvil_mine', ['0x2']);
    const record = await setup.customer.waitForResult(setup.deployment.serviceId, callId, { timeoutMs: 60_000, pollMs: 200 });
    const decoded = decodeJobResult(0, record.raw);
    assert.equal(decoded.kind === 'output' && Buffer.from((decoded.values[0] as Hex).slice(2), 'hex').toString(), 'second\n');
    assert.equal(BigInt((await setup.customer.getJobCall(setup.deployment.serviceId, callId)).resultCount), 1n);
  });

  it('a result transaction dropped from the pool is sent again within --tx-timeout-ms with the same nonce, leaving no gap', async () => {
    const setup = await chain();
    const op = await operator(setup, 1, { args: ['--tx-timeout-ms', '2000'] });
    const nonce = await setup.publicClient.getTransactionCount({ address: op.address });
    const { callId } = await setup.customer.submitJob(setup.deployment.serviceId, 0, ['alpine', ['sh', '-c', 'sleep 2; echo kept'], [], '0x']);
    await waitFor(() => logged(op, 'running a job').some((line) => line.callId === callId.toString()), { timeoutMs: 60_000, what: 'the job to start' });
    // Blocks stop; the result transaction waits in the pool, and the node drops it there.
    await rpc(setup, 'evm_setAutomine', [false]);
    await waitFor(async () => (await setup.publicClient.getTransactionCount({ address: op.address, blockTag: 'pending' })) > nonce, { timeoutMs: 60_000, what: 'the result transaction in the pool' });
    await rpc(setup, 'anvil_dropAllTransactions');
    await rpc(setup, 'evm_setAutomine', [true]);
    const record = await setup.customer.waitForResult(setup.deployment.serviceId, callId, { timeoutMs: 60_000, pollMs: 200 });
    const decoded = decodeJobResult(0, record.raw);
    assert.equal(decoded.kind === 'output' && Buffer.from((decoded.values[0] as Hex).slice(2), 'hex').toString(), 'kept\n');
    assert.equal(await setup.publicClient.getTransactionCount({ address: op.address }), nonce + 1, 'one result transaction, with the nonce the dropped one had');
    // The next job goes through at once: no transaction waits behind a gap.
    const next = await setup.customer.submitJob(setup.deployment.serviceId, 0, ['alpine', ['echo', 'next'], [], '0x']);
    await setup.customer.waitForResult(setup.deployment.serviceId, next.callId, { timeoutMs: 60_000, pollMs: 200 });
  });

  it('--confirmations 2: a result whose block a reorg removes is sent again, and completes once', async () => {
    const setup = await chain();
    const op = await operator(setup, 1, { args: ['--confirmations', '2'] });
    const { callId } = await setup.customer.submitJob(setup.deployment.serviceId, 0, ['alpine', ['sh', '-c', 'sleep 3; echo twice'], [], '0x']);
    await rpc(setup, 'anvil_mine', ['0x2']);
    await waitFor(() => logged(op, 'running a job').some((line) => line.callId === callId.toString()), { timeoutMs: 60_000, what: 'the job to start at 2 confirmations' });
    const snapshot = await rpc(setup, 'evm_snapshot');
    await waitFor(() => logged(op, 'job result').some((line) => line.callId === callId.toString()), { timeoutMs: 60_000, what: 'the result mined' });
    assert.equal((await setup.customer.getJobCall(setup.deployment.serviceId, callId)).completed, true);
    // The result's block vanishes (the job's block stays); the new chain is longer, with other hashes.
    await rpc(setup, 'evm_revert', [snapshot]);
    assert.equal((await setup.customer.getJobCall(setup.deployment.serviceId, callId)).completed, false, 'the result is gone with its block');
    await rpc(setup, 'evm_setNextBlockTimestamp', [Math.floor(Date.now() / 1000) + 100]);
    await rpc(setup, 'anvil_mine', ['0x3']);
    await waitFor(async () => {
      await rpc(setup, 'anvil_mine', ['0x1']);
      return (await setup.customer.getJobCall(setup.deployment.serviceId, callId)).completed;
    }, { timeoutMs: 60_000, intervalMs: 500, what: 'the result sent again' });
    assert.ok(logged(op, 'a reorg removed the block of a result transaction; sending the result again').some((line) => line.callId === callId.toString()));
    const record = await setup.customer.waitForResult(setup.deployment.serviceId, callId, { timeoutMs: 60_000, pollMs: 200 });
    const decoded = decodeJobResult(0, record.raw);
    assert.equal(decoded.kind === 'output' && Buffer.from((decoded.values[0] as Hex).slice(2), 'hex').toString(), 'twice\n');
    assert.equal(BigInt((await setup.customer.getJobCall(setup.deployment.serviceId, callId)).resultCount), 1n);
  });
});
