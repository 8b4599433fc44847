/**
 * Operator mode end to end: a real anvil, the contracts deployed by the test, the real `kindling operator` CLI process
 * running jobs in real sandboxes, a customer submitting jobs and reading results back from the chain.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { bytesToHex, stringToHex, toHex, type Hex } from 'viem';
import { decodeJobResult, type JobResult } from '@kindling/sdk/tangle';
import { startAnvil, type Anvil } from './helpers/anvil.js';
import { deployOn, logged, startOperator, type ChainSetup, type OperatorProcess } from './helpers/operator.js';
import { sandboxUnavailableReason } from './helpers/server.js';

const skip = await sandboxUnavailableReason();

/** Submits raw inputs (possibly undecodable) for any job index, as a misbehaving client could. */
async function submitRaw(setup: ChainSetup, jobIndex: number, inputs: Hex): Promise<bigint> {
  const { TANGLE_JOBS_ABI } = await import('@kindling/sdk/tangle');
  const wallet = (setup.customer as unknown as { walletClient: { writeContract(args: object): Promise<Hex>; chain: unknown; account: unknown } }).walletClient;
  const hash = await wallet.writeContract({ address: setup.deployment.jobsContract, abi: TANGLE_JOBS_ABI, functionName: 'submitJob', args: [setup.deployment.serviceId, jobIndex, inputs], chain: wallet.chain, account: wallet.account });
  const receipt = await setup.publicClient.waitForTransactionReceipt({ hash });
  const { parseEventLogs } = await import('viem');
  return parseEventLogs({ abi: TANGLE_JOBS_ABI, logs: receipt.logs, eventName: 'JobSubmitted' })[0]!.args.callId;
}

async function resultOf(setup: ChainSetup, jobIndex: number, callId: bigint, timeoutMs = 120_000): Promise<JobResult> {
  const record = await setup.customer.waitForResult(setup.deployment.serviceId, callId, { timeoutMs, pollMs: 100 });
  return decodeJobResult(jobIndex, record.raw);
}

/** How many JobResultSubmitted events the chain has for a call (a job answered twice would show 2 or a revert). */
async function resultCount(setup: ChainSetup, callId: bigint): Promise<bigint> {
  return BigInt((await setup.customer.getJobCall(setup.deployment.serviceId, callId)).resultCount);
}

const stdoutOf = (result: JobResult): string => {
  assert.equal(result.kind, 'output', JSON.stringify(result, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)));
  return Buffer.from(((result as { values: readonly unknown[] }).values[0] as Hex).slice(2), 'hex').toString();
};

describe('operator end to end (anvil, the kindling operator CLI, sandboxes)', { skip: skip ?? false }, () => {
  let anvil: Anvil;
  let setup: ChainSetup;
  let operator: OperatorProcess;

  before(async () => {
    anvil = await startAnvil();
    setup = await deployOn(anvil);
    operator = await startOperator(setup, 1, { args: ['--max-result-bytes', '4096'] });
  });
  after(async () => {
    try {
      await operator?.stop();
      await operator?.remove();
    } finally {
      await anvil?.stop();
    }
  });

  it('job 0: a command runs in a sandbox and its stdout is the result on chain', async () => {
    const { callId } = await setup.customer.submitJob(setup.deployment.serviceId, 0, ['alpine:latest', ['sh', '-c', 'echo hello $NAME; cat'], ['NAME=chain'], stringToHex('payload-in')]);
    assert.equal(stdoutOf(await resultOf(setup, 0, callId)), 'hello chain\npayload-in');
    assert.equal(await resultCount(setup, callId), 1n);
  });

  it('each of the 12 jobs, submitted on chain and answered on chain', async () => {
    const run = async (jobIndex: number, args: readonly unknown[]): Promise<readonly unknown[]> => {
      const { callId } = await setup.customer.submitJob(setup.deployment.serviceId, jobIndex, args);
      const result = await resultOf(setup, jobIndex, callId);
      assert.equal(result.kind, 'output', `job ${jobIndex}: ${JSON.stringify(result, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}`);
      return (result as { values: readonly unknown[] }).values;
    };
    const dir = await mkdtemp(join(tmpdir(), 'kindling-tar-'));
    await writeFile(join(dir, 'hello.txt'), 'hello from the chain\n');
    const tar = execFileSync('tar', ['-cf', '-', '-C', dir, 'hello.txt']);
    await rm(dir, { recursive: true, force: true });
    assert.equal(stdoutOf({ kind: 'output', values: await run(0, ['alpine', ['echo', 'zero'], [], '0x']) }), 'zero\n');
    assert.equal(stdoutOf({ kind: 'output', values: await run(1, ['alpine', ['echo', 'one'], [], '0x', 'ephemeral', '', '', 0n]) }), 'one\n');
    const [instance] = (await run(6, ['', 'alpine', 0, 0, 0, false])) as [string];
    const [written] = (await run(11, [instance, '/work', bytesToHex(tar)])) as [bigint];
    assert.ok(written > 0n);
    const [snapshot] = (await run(2, [instance, 'snap', 'a snapshot'])) as [string];
    const [restored] = (await run(3, [snapshot])) as [string];
    const [branch] = (await run(4, [snapshot, 'b1'])) as [string];
    const [merged] = (await run(5, [[restored, branch], 'union'])) as [string];
    assert.ok(merged.length > 0);
    assert.deepEqual(await run(8, [instance]), ['paused']);
    assert.deepEqual(await run(9, [instance]), ['running']);
    const [url] = (await run(10, [instance, 8000, 'http', ''])) as [string];
    assert.equal(url, `${operator.url}/v1/sandboxes/${instance}/ports/8000/`);
    // Job 7 ends each instance the jobs made (what each job does inside is checked in operator-jobs.test.ts).
    for (const id of [instance, restored, branch, merged]) assert.deepEqual(await run(7, [id]), [true]);
  });

  it('bad inputs on chain get an error envelope, and the operator keeps serving', async () => {
    const undecodable = await submitRaw(setup, 0, '0x1234');
    const unknownJob = await submitRaw(setup, 200, '0x');
    const decoded = await resultOf(setup, 0, undecodable);
    assert.equal(decoded.kind === 'error' && decoded.code, 'INPUT_UNDECODABLE');
    const unknown = await resultOf(setup, 0, unknownJob);
    assert.equal(unknown.kind === 'error' && unknown.code, 'UNKNOWN_JOB');
    // A command that outlives its timeout (job 1, 1 s): a result still goes on chain, and a later job runs.
    const slow = await setup.customer.submitJob(setup.deployment.serviceId, 1, ['alpine', ['sleep', '30'], [], '0x', 'ephemeral', '', '', 1n]);
    const timedOut = await resultOf(setup, 1, slow.callId);
    assert.equal(timedOut.kind === 'error' && timedOut.code, 'EXECUTION_TIMED_OUT');
    // Chain callers get small quotas by default (anyone with gas may call): a timeout past 120 s is refused, so a job
    // cannot outlive its assignment (300 s) and be run again by another operator.
    const long = await setup.customer.submitJob(setup.deployment.serviceId, 1, ['alpine', ['true'], [], '0x', 'ephemeral', '', '', 600n]);
    const refused = await resultOf(setup, 1, long.callId);
    assert.equal(refused.kind === 'error' && refused.code, 'TENANT_LIMIT_EXCEEDED', JSON.stringify(refused));
    const after = await setup.customer.submitJob(setup.deployment.serviceId, 0, ['alpine', ['echo', 'still serving'], [], '0x']);
    assert.equal(stdoutOf(await resultOf(setup, 0, after.callId)), 'still serving\n');
  });

  it('a huge payload and a large output: the output goes off chain as hash + URL, served by the public route', async () => {
    const payload = bytesToHex(new Uint8Array(60_000).fill(97));
    const { callId } = await setup.customer.submitJob(setup.deployment.serviceId, 0, ['alpine', ['cat'], [], payload]);
    const result = await resultOf(setup, 0, callId);
    assert.equal(result.kind, 'ref');
    assert.ok(result.kind === 'ref');
    assert.equal(result.sizeBytes, 60_000n);
    assert.equal(result.url, `${operator.url}/v1/operator/results/${setup.deployment.serviceId}/${callId}`);
    const response = await fetch(result.url);
    assert.equal(response.status, 200);
    const body = new Uint8Array(await response.arrayBuffer());
    assert.equal(`0x${createHash('sha256').update(body).digest('hex')}`, result.sha256);
    const missing = await fetch(`${operator.url}/v1/operator/results/${setup.deployment.serviceId}/999999`);
    assert.equal(missing.status, 404);
    assert.equal(((await missing.json()) as { error: { code: string } }).error.code, 'OPERATOR_RESULT_NOT_FOUND');
  });

  it('a restart resumes from the cursor: jobs submitted while it was down run once, earlier ones not again', async () => {
    const before = await setup.customer.submitJob(setup.deployment.serviceId, 0, ['alpine', ['echo', 'before'], [], '0x']);
    await resultOf(setup, 0, before.callId);
    assert.equal(await operator.stop(), 0, 'SIGTERM drains and exits 0');
    const whileDown = await setup.customer.submitJob(setup.deployment.serviceId, 0, ['alpine', ['echo', 'while down'], [], toHex('')]);
    operator = await startOperator(setup, 1, { dataDir: operator.dataDir, args: ['--max-result-bytes', '4096'] });
    assert.equal(stdoutOf(await resultOf(setup, 0, whileDown.callId)), 'while down\n');
    // What ran, not what was posted: a result sent just before the stop and not yet --confirmations deep is checked
    // again after the restart (found completed: no transaction), which logs a 'job result' without running anything.
    const ran = logged(operator, 'running a job').map((line) => line.callId);
    assert.deepEqual(ran, [whileDown.callId.toString()], 'only the job submitted while it was down ran after the restart');
    assert.equal(await resultCount(setup, before.callId), 1n);
    assert.equal(await resultCount(setup, whileDown.callId), 1n);
  });
});
