/** The SDK's TangleClient against a real anvil with the project's contracts: submit, read and await results. */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createPublicClient, createWalletClient, encodeAbiParameters, http, type Hex, type PublicClient } from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import { foundry } from 'viem/chains';
import { TangleClient, TANGLE_JOBS_ABI, decodeJobInputs, encodeJobError, encodeJobOutput } from '@kindling/sdk/tangle';
import { KindlingError } from '@kindling/sdk';
import { deployKindlingChain } from '../src/chain/deploy.js';
import { startAnvil, type Anvil } from './helpers/anvil.js';

let anvil: Anvil;
let publicClient: PublicClient;
before(async () => {
  anvil = await startAnvil();
  publicClient = createPublicClient({ chain: { ...foundry, id: anvil.chainId }, transport: http(anvil.rpcUrl) });
});
after(async () => anvil?.stop());

const wallet = (key: Hex) =>
  createWalletClient({ account: privateKeyToAccount(key), chain: { ...foundry, id: anvil.chainId }, transport: http(anvil.rpcUrl) });

/** A fresh deployment with one registered operator (keys[1]); the customer is keys[2]. */
async function setUp() {
  const deployment = await deployKindlingChain({ walletClient: wallet(anvil.keys[0]!), publicClient, assignmentTimeoutSeconds: 60 });
  const operator = wallet(anvil.keys[1]!);
  const hash = await operator.writeContract({
    address: deployment.jobsContract,
    abi: [{ type: 'function', name: 'registerOperator', stateMutability: 'nonpayable', inputs: [{ type: 'uint64', name: 'serviceId' }, { type: 'bytes', name: 'inputs' }], outputs: [] }],
    functionName: 'registerOperator',
    args: [deployment.serviceId, encodeAbiParameters([{ type: 'uint32' }, { type: 'uint256' }], [4, 0n])],
  });
  await publicClient.waitForTransactionReceipt({ hash });
  const answer = async (callId: bigint, result: Hex) => {
    const tx = await operator.writeContract({ address: deployment.jobsContract, abi: TANGLE_JOBS_ABI, functionName: 'submitResult', args: [deployment.serviceId, callId, result] });
    await publicClient.waitForTransactionReceipt({ hash: tx });
  };
  const client = new TangleClient({ publicClient, walletClient: wallet(anvil.keys[2]!), jobsContract: deployment.jobsContract });
  return { ...deployment, client, answer, operatorAddress: operator.account.address };
}

test('submitJob returns the call id from the receipt; getResult and waitForResult decode the result', async () => {
  const { serviceId, client, answer, operatorAddress } = await setUp();
  const args = ['alpine:latest', ['echo', 'hi'], [], '0x'];
  const first = await client.submitJob(serviceId, 0, args);
  const second = await client.submitJob(serviceId, 0, args);
  assert.deepEqual([first.callId, second.callId], [0n, 1n]);
  assert.ok(second.blockNumber > first.blockNumber);

  const call = await client.getJobCall(serviceId, first.callId);
  assert.equal(call.jobIndex, 0);
  assert.equal(call.caller, privateKeyToAccount(anvil.keys[2]!).address);
  assert.equal(await client.getResult(serviceId, first.callId), undefined);

  const waiting = client.waitForResult(serviceId, first.callId, { timeoutMs: 30_000, pollMs: 20, fromBlock: first.blockNumber });
  await answer(first.callId, encodeJobOutput(0, ['0x68690a']));
  const record = await waiting;
  assert.equal(record.operator, operatorAddress);
  assert.deepEqual(record.result, { kind: 'output', values: ['0x68690a'] });

  await answer(second.callId, encodeJobError('INVALID_INPUT', 'bad image'));
  assert.deepEqual((await client.getResult(serviceId, second.callId))?.result, { kind: 'error', code: 'INVALID_INPUT', message: 'bad image' });
});

test('the submitted inputs are the job ABI encoding of the arguments', async () => {
  const { serviceId, client, jobsContract } = await setUp();
  const submitted = await client.submitJob(serviceId, 3, ['snap-1']);
  const [log] = await publicClient.getContractEvents({ address: jobsContract, abi: TANGLE_JOBS_ABI, eventName: 'JobSubmitted', args: { serviceId, callId: submitted.callId }, fromBlock: submitted.blockNumber });
  assert.deepEqual(decodeJobInputs(3, log!.args.inputs!), ['snap-1']);
});

test('waitForResult gives up with a TIMEOUT error when no result comes', async () => {
  const { serviceId, client } = await setUp();
  const { callId } = await client.submitJob(serviceId, 7, ['i-1']);
  await assert.rejects(client.waitForResult(serviceId, callId, { timeoutMs: 200, pollMs: 20 }), (error: unknown) => {
    assert.ok(error instanceof KindlingError);
    assert.equal(error.code, 'TIMEOUT');
    assert.match(error.message, /no result for call 0/);
    return true;
  });
});

test('arguments that do not fit the job are refused before any transaction', async () => {
  const { serviceId, client } = await setUp();
  const before = await publicClient.getBlockNumber();
  await assert.rejects(client.submitJob(serviceId, 0, ['alpine']));
  await assert.rejects(client.submitJob(serviceId, 99, []), /unknown job index 99/);
  assert.equal(await publicClient.getBlockNumber(), before);
});
