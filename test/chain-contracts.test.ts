/**
 * The project's contracts (KindlingJobs, FaaSServiceManager) on a real anvil, driven through viem: assignment by
 * load, who may answer, release on result and on timeout, access control of the manager's hooks, and that the jobs
 * contract speaks the pinned Tangle interface the operator uses.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  BaseError,
  ContractFunctionRevertedError,
  createPublicClient,
  createWalletClient,
  encodeAbiParameters,
  http,
  parseEventLogs,
  type Abi,
  type Address,
  type Hex,
  type PublicClient,
} from 'viem';
import { generatePrivateKey, privateKeyToAccount } from 'viem/accounts';
import { foundry } from 'viem/chains';
import { readFileSync } from 'node:fs';
import { TANGLE_JOBS_ABI, decodeJobResult, encodeJobError, encodeJobInputs, encodeJobOutput } from '@kindling/sdk/tangle';
import { kindlingJobsArtifact, serviceManagerArtifact } from '../src/chain/contracts.js';
import { deployKindlingChain } from '../src/chain/deploy.js';
import { startAnvil, type Anvil } from './helpers/anvil.js';

const TIMEOUT_S = 60;
let anvil: Anvil;
let publicClient: PublicClient;

before(async () => {
  anvil = await startAnvil();
  publicClient = createPublicClient({ chain: { ...foundry, id: anvil.chainId }, transport: http(anvil.rpcUrl) });
});
after(async () => anvil?.stop());

const jobsAbi = kindlingJobsArtifact().abi;
const managerAbi = serviceManagerArtifact().abi;
// A revert in the manager bubbles up through the jobs contract: decode with both contracts' errors.
const jobsAbiWithManagerErrors = [...jobsAbi, ...managerAbi.filter((item) => item.type === 'error')] as Abi;

function wallet(key: Hex) {
  return createWalletClient({ account: privateKeyToAccount(key), chain: { ...foundry, id: anvil.chainId }, transport: http(anvil.rpcUrl) });
}

interface Setup {
  jobs: Address;
  manager: Address;
  serviceId: bigint;
  /** keys[1..] : operators and customers; keys[0] deployed. */
  keys: Hex[];
}

async function deploy(): Promise<Setup> {
  const deployment = await deployKindlingChain({ walletClient: wallet(anvil.keys[0]!), publicClient, assignmentTimeoutSeconds: TIMEOUT_S });
  return { jobs: deployment.jobsContract, manager: deployment.serviceManager, serviceId: deployment.serviceId, keys: anvil.keys };
}

async function send(key: Hex, address: Address, abi: Abi, functionName: string, args: readonly unknown[], valueWei = 0n) {
  const client = wallet(key);
  // Simulating first makes a revert throw here with its decoded custom error.
  const { request } = await publicClient.simulateContract({ account: client.account, address, abi, functionName, args, value: valueWei });
  const hash = await client.writeContract(request);
  const receipt = await publicClient.waitForTransactionReceipt({ hash });
  assert.equal(receipt.status, 'success', `${functionName} transaction ${hash}`);
  return receipt;
}

async function deployContract(key: Hex, abi: Abi, bytecode: Hex, args: readonly unknown[]): Promise<Address> {
  const client = wallet(key);
  const hash = await client.deployContract({ abi, bytecode, args });
  const receipt = await publicClient.waitForTransactionReceipt({ hash });
  assert.equal(receipt.status, 'success', `deploy transaction ${hash}`);
  return receipt.contractAddress!;
}

/** A test-only contract from contracts/test/, compiled by the build into dist/contracts/test/. */
function testArtifact(name: string): { abi: Abi; bytecode: Hex } {
  return JSON.parse(readFileSync(new URL(`../contracts/test/${name}.json`, import.meta.url), 'utf8')) as { abi: Abi; bytecode: Hex };
}

async function timePasses(seconds: number): Promise<void> {
  await publicClient.request({ method: 'evm_increaseTime' as never, params: [seconds] as never });
  await publicClient.request({ method: 'evm_mine' as never, params: [] as never });
}

async function register(setup: Setup, key: Hex, capacity = 4, priceWei = 0n): Promise<Address> {
  const inputs = encodeAbiParameters([{ type: 'uint32' }, { type: 'uint256' }], [capacity, priceWei]);
  await send(key, setup.jobs, jobsAbiWithManagerErrors, 'registerOperator', [setup.serviceId, inputs]);
  return privateKeyToAccount(key).address;
}

async function submit(setup: Setup, customerKey: Hex, jobIndex = 0, valueWei = 0n): Promise<{ callId: bigint; operator: Address }> {
  const receipt = await send(customerKey, setup.jobs, jobsAbiWithManagerErrors, 'submitJob', [setup.serviceId, jobIndex, '0x1234'], valueWei);
  const [submitted] = parseEventLogs({ abi: jobsAbi, logs: receipt.logs, eventName: 'JobSubmitted' });
  const [assigned] = parseEventLogs({ abi: managerAbi, logs: receipt.logs, eventName: 'JobAssigned' });
  assert.ok(submitted, 'JobSubmitted in the receipt');
  assert.ok(assigned, 'JobAssigned in the receipt');
  const s = submitted.args as unknown as { serviceId: bigint; callId: bigint; jobIndex: number; caller: Address; inputs: Hex };
  const a = assigned.args as unknown as { serviceId: bigint; callId: bigint; operator: Address; deadline: bigint };
  assert.deepEqual([s.serviceId, s.jobIndex, s.caller, s.inputs], [setup.serviceId, jobIndex, privateKeyToAccount(customerKey).address, '0x1234']);
  assert.deepEqual([a.serviceId, a.callId], [setup.serviceId, s.callId]);
  return { callId: s.callId, operator: a.operator };
}

async function loadOf(setup: Setup, operator: Address): Promise<number> {
  const [, , load] = (await publicClient.readContract({ address: setup.manager, abi: managerAbi, functionName: 'operatorInfo', args: [operator] })) as [number, bigint, number, boolean, bigint];
  return load;
}

async function assignmentOf(setup: Setup, callId: bigint): Promise<{ operator: Address; deadline: bigint; done: boolean }> {
  const [operator, deadline, done] = (await publicClient.readContract({ address: setup.manager, abi: managerAbi, functionName: 'assignmentOf', args: [setup.serviceId, callId] })) as [Address, bigint, boolean];
  return { operator, deadline, done };
}

/** Resolves when `action` reverts with the custom error `errorName`; fails with what happened otherwise. */
async function expectRevert(action: Promise<unknown>, errorName: string): Promise<void> {
  try {
    await action;
  } catch (error) {
    const reverted = error instanceof BaseError ? error.walk((e) => e instanceof ContractFunctionRevertedError) : undefined;
    const name = reverted instanceof ContractFunctionRevertedError ? reverted.data?.errorName : undefined;
    assert.equal(name, errorName, `expected a ${errorName} revert, got: ${(error as Error).message.split('\n')[0]}`);
    return;
  }
  assert.fail(`expected a ${errorName} revert, but the call succeeded`);
}

function byAddress(list: Address[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const a of list) counts[a.toLowerCase()] = (counts[a.toLowerCase()] ?? 0) + 1;
  return counts;
}

test('jobs are assigned to the least-loaded of 3 operators, and a result frees its operator for the next job', async () => {
  const setup = await deploy();
  const operators = [await register(setup, setup.keys[1]!), await register(setup, setup.keys[2]!), await register(setup, setup.keys[3]!)];
  const customer = setup.keys[4]!;

  const first = [];
  for (let i = 0; i < 6; i++) first.push(await submit(setup, customer));
  // Equal operators take turns: 6 jobs, 2 each.
  assert.deepEqual(Object.values(byAddress(first.map((j) => j.operator))).sort(), [2, 2, 2]);
  for (const op of operators) assert.equal(await loadOf(setup, op), 2);

  // The second operator answers one job: its load drops, and it is the least loaded for the next submission.
  const answered = first.find((j) => j.operator === operators[1])!;
  await send(setup.keys[2]!, setup.jobs, jobsAbiWithManagerErrors, 'submitResult', [setup.serviceId, answered.callId, '0x']);
  assert.equal(await loadOf(setup, operators[1]!), 1);
  assert.equal((await assignmentOf(setup, answered.callId)).done, true);
  const next = await submit(setup, customer);
  assert.equal(next.operator, operators[1]);
  assert.equal(await loadOf(setup, operators[1]!), 2);
});

test('an operator with spare capacity is preferred over a full one with less load', async () => {
  const setup = await deploy();
  const small = await register(setup, setup.keys[1]!, 1);
  const big = await register(setup, setup.keys[2]!, 8);
  const assigned = [];
  for (let i = 0; i < 4; i++) assigned.push((await submit(setup, setup.keys[4]!)).operator);
  // small is full after its first job; big takes the rest even with more load.
  assert.deepEqual(assigned, [small, big, big, big]);
});

test('only the assigned operator may submit the result, and only once', async () => {
  const setup = await deploy();
  const operators = [await register(setup, setup.keys[1]!), await register(setup, setup.keys[2]!), await register(setup, setup.keys[3]!)];
  const { callId, operator } = await submit(setup, setup.keys[4]!);
  const assigneeKey = setup.keys[1 + operators.indexOf(operator)]!;
  const otherKey = setup.keys[1 + ((operators.indexOf(operator) + 1) % 3)]!;

  await expectRevert(send(otherKey, setup.jobs, jobsAbiWithManagerErrors, 'submitResult', [setup.serviceId, callId, '0xaa']), 'NotAssignedOperator');
  // A customer who is no operator at all is refused the same way.
  await expectRevert(send(setup.keys[4]!, setup.jobs, jobsAbiWithManagerErrors, 'submitResult', [setup.serviceId, callId, '0xaa']), 'NotAssignedOperator');

  const receipt = await send(assigneeKey, setup.jobs, jobsAbiWithManagerErrors, 'submitResult', [setup.serviceId, callId, '0xbeef']);
  const [resultEvent] = parseEventLogs({ abi: jobsAbi, logs: receipt.logs, eventName: 'JobResultSubmitted' });
  const [completed] = parseEventLogs({ abi: jobsAbi, logs: receipt.logs, eventName: 'JobCompleted' });
  const [released] = parseEventLogs({ abi: managerAbi, logs: receipt.logs, eventName: 'JobReleased' });
  assert.deepEqual(resultEvent?.args, { serviceId: setup.serviceId, callId, operator, result: '0xbeef' });
  assert.deepEqual(completed?.args, { serviceId: setup.serviceId, callId });
  assert.deepEqual(released?.args, { serviceId: setup.serviceId, callId, operator, reason: 0 });
  assert.equal(await loadOf(setup, operator), 0);

  const call = (await publicClient.readContract({ address: setup.jobs, abi: jobsAbi, functionName: 'getJobCall', args: [setup.serviceId, callId] })) as { resultCount: number; completed: boolean; jobIndex: number };
  assert.deepEqual([call.jobIndex, call.resultCount, call.completed], [0, 1, true]);

  await expectRevert(send(assigneeKey, setup.jobs, jobsAbiWithManagerErrors, 'submitResult', [setup.serviceId, callId, '0xbeef']), 'JobAlreadyCompleted');
  await expectRevert(send(assigneeKey, setup.jobs, jobsAbiWithManagerErrors, 'submitResult', [setup.serviceId, callId + 1n, '0x']), 'UnknownJobCall');
});

test('a timed-out assignment can be released by anyone after its deadline, and goes to another operator', async () => {
  const setup = await deploy();
  const operators = [await register(setup, setup.keys[1]!), await register(setup, setup.keys[2]!)];
  const { callId, operator: first } = await submit(setup, setup.keys[4]!);
  const firstKey = setup.keys[1 + operators.indexOf(first)]!;
  const bystander = setup.keys[5]!;

  await expectRevert(send(bystander, setup.manager, managerAbi, 'releaseTimedOut', [setup.serviceId, callId]), 'NotTimedOut');

  await publicClient.request({ method: 'evm_increaseTime' as never, params: [TIMEOUT_S + 1] as never });
  await publicClient.request({ method: 'evm_mine' as never, params: [] as never });
  const receipt = await send(bystander, setup.manager, managerAbi, 'releaseTimedOut', [setup.serviceId, callId]);
  const [released] = parseEventLogs({ abi: managerAbi, logs: receipt.logs, eventName: 'JobReleased' });
  const [reassigned] = parseEventLogs({ abi: managerAbi, logs: receipt.logs, eventName: 'JobAssigned' });
  assert.deepEqual(released?.args, { serviceId: setup.serviceId, callId, operator: first, reason: 1 });
  const second = (reassigned?.args as { operator: Address } | undefined)?.operator;
  assert.ok(second && second !== first, `reassigned to another operator (got ${second})`);
  assert.equal(await loadOf(setup, first), 0);
  assert.equal(await loadOf(setup, second), 1);
  const block = await publicClient.getBlock();
  assert.equal((await assignmentOf(setup, callId)).deadline, block.timestamp + BigInt(TIMEOUT_S));

  // The old assignee lost the job; the new one answers it; then there is nothing left to release.
  await expectRevert(send(firstKey, setup.jobs, jobsAbiWithManagerErrors, 'submitResult', [setup.serviceId, callId, '0x']), 'NotAssignedOperator');
  await send(setup.keys[1 + operators.indexOf(second)]!, setup.jobs, jobsAbiWithManagerErrors, 'submitResult', [setup.serviceId, callId, '0x']);
  assert.equal(await loadOf(setup, second), 0);
  await expectRevert(send(bystander, setup.manager, managerAbi, 'releaseTimedOut', [setup.serviceId, callId]), 'AssignmentDone');
  await expectRevert(send(bystander, setup.manager, managerAbi, 'releaseTimedOut', [setup.serviceId, callId + 1n]), 'UnknownAssignment');
});

test('ties in load go to the operator assigned least recently', async () => {
  const setup = await deploy();
  const [a, b] = [await register(setup, setup.keys[1]!), await register(setup, setup.keys[2]!), await register(setup, setup.keys[3]!)];
  const answer = (key: Hex, callId: bigint) => send(key, setup.jobs, jobsAbiWithManagerErrors, 'submitResult', [setup.serviceId, callId, '0x']);
  const job0 = await submit(setup, setup.keys[4]!);
  const job1 = await submit(setup, setup.keys[4]!);
  await submit(setup, setup.keys[4]!);
  assert.deepEqual([job0.operator, job1.operator], [a, b]);
  await answer(setup.keys[1]!, job0.callId);
  const job3 = await submit(setup, setup.keys[4]!);
  assert.equal(job3.operator, a);
  await answer(setup.keys[1]!, job3.callId);
  await answer(setup.keys[2]!, job1.callId);
  // a and b both have no load; b waited longer (a was assigned last), so b gets the next job though a comes first.
  assert.equal((await submit(setup, setup.keys[4]!)).operator, b);
});

test('a timed-out job goes to another operator even when that one is more loaded', async () => {
  const setup = await deploy();
  const [a, b] = [await register(setup, setup.keys[1]!), await register(setup, setup.keys[2]!)];
  const jobs = [];
  for (let i = 0; i < 4; i++) jobs.push(await submit(setup, setup.keys[4]!));
  assert.deepEqual(jobs.map((j) => j.operator), [a, b, a, b]);
  await send(setup.keys[1]!, setup.jobs, jobsAbiWithManagerErrors, 'submitResult', [setup.serviceId, jobs[2]!.callId, '0x']);
  await publicClient.request({ method: 'evm_increaseTime' as never, params: [TIMEOUT_S + 1] as never });
  await publicClient.request({ method: 'evm_mine' as never, params: [] as never });
  // a (load 1) is less loaded than b (load 2), but a is the one that let the job time out.
  await send(setup.keys[5]!, setup.manager, managerAbi, 'releaseTimedOut', [setup.serviceId, jobs[0]!.callId]);
  assert.equal((await assignmentOf(setup, jobs[0]!.callId)).operator, b);
  assert.deepEqual([await loadOf(setup, a), await loadOf(setup, b)], [0, 3]);
});

test('a timed-out job of the only operator goes back to it', async () => {
  const setup = await deploy();
  const only = await register(setup, setup.keys[1]!);
  const { callId } = await submit(setup, setup.keys[4]!);
  await publicClient.request({ method: 'evm_increaseTime' as never, params: [TIMEOUT_S + 1] as never });
  await publicClient.request({ method: 'evm_mine' as never, params: [] as never });
  await send(setup.keys[5]!, setup.manager, managerAbi, 'releaseTimedOut', [setup.serviceId, callId]);
  assert.equal((await assignmentOf(setup, callId)).operator, only);
  assert.equal(await loadOf(setup, only), 1);
});

test('the manager hooks refuse every caller but the jobs contract', async () => {
  const setup = await deploy();
  const caller = setup.keys[6]!;
  const me = privateKeyToAccount(caller).address;
  const inputs = encodeAbiParameters([{ type: 'uint32' }, { type: 'uint256' }], [4, 0n]);
  await expectRevert(send(caller, setup.manager, managerAbi, 'onRegister', [me, inputs]), 'OnlyJobsContract');
  await expectRevert(send(caller, setup.manager, managerAbi, 'onUnregister', [me]), 'OnlyJobsContract');
  await expectRevert(send(caller, setup.manager, managerAbi, 'onJobCall', [setup.serviceId, 0, 0n, '0x']), 'OnlyJobsContract');
  await expectRevert(
    send(caller, setup.manager, managerAbi, 'onJobResult', [setup.serviceId, 0, 0n, me, `0x${'00'.repeat(32)}`, '0x']),
    'OnlyJobsContract',
  );
  // Nothing changed: the caller did not become an operator.
  assert.deepEqual(await publicClient.readContract({ address: setup.manager, abi: managerAbi, functionName: 'operatorList' }), []);
});

test('a submission with no registered operator reverts NoOperators, and so does one after the last unregisters', async () => {
  const setup = await deploy();
  await expectRevert(send(setup.keys[4]!, setup.jobs, jobsAbiWithManagerErrors, 'submitJob', [setup.serviceId, 0, '0x']), 'NoOperators');
  const op = await register(setup, setup.keys[1]!);
  await submit(setup, setup.keys[4]!);
  await send(setup.keys[1]!, setup.jobs, jobsAbiWithManagerErrors, 'unregisterOperator', [setup.serviceId]);
  const [, , load, active] = (await publicClient.readContract({ address: setup.manager, abi: managerAbi, functionName: 'operatorInfo', args: [op] })) as [number, bigint, number, boolean];
  assert.deepEqual([load, active], [1, false]);
  await expectRevert(send(setup.keys[4]!, setup.jobs, jobsAbiWithManagerErrors, 'submitJob', [setup.serviceId, 0, '0x']), 'NoOperators');
  await expectRevert(send(setup.keys[4]!, setup.jobs, jobsAbiWithManagerErrors, 'submitJob', [setup.serviceId + 1n, 0, '0x']), 'UnknownService');
});

test('registration takes capacity and price (capacity 0 means 4); registering again updates them', async () => {
  const setup = await deploy();
  const op = await register(setup, setup.keys[1]!, 0, 5n);
  const info = async () => publicClient.readContract({ address: setup.manager, abi: managerAbi, functionName: 'operatorInfo', args: [op] });
  assert.deepEqual(await info(), [4, 5n, 0, true, 0n]);
  await register(setup, setup.keys[1]!, 7, 9n);
  assert.deepEqual(await info(), [7, 9n, 0, true, 0n]);
  assert.deepEqual(await publicClient.readContract({ address: setup.manager, abi: managerAbi, functionName: 'operatorList' }), [op]);
});

test('the compiled KindlingJobs ABI contains every item of the pinned Tangle jobs interface, identically', () => {
  const normalize = (value: unknown): unknown =>
    Array.isArray(value)
      ? value.map(normalize)
      : value && typeof value === 'object'
        ? Object.fromEntries(Object.entries(value).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => [k, normalize(v)]))
        : value;
  for (const pinned of TANGLE_JOBS_ABI) {
    const compiled = jobsAbi.find((item) => item.type === pinned.type && 'name' in item && item.name === pinned.name);
    assert.ok(compiled, `KindlingJobs has the ${pinned.type} ${pinned.name}`);
    assert.deepEqual(normalize(compiled), normalize(pinned), `${pinned.type} ${pinned.name} matches the pinned interface`);
  }
});

test('nobody can attach a second service to a manager, nor a service to a manager someone else deployed', async () => {
  const setup = await deploy();
  const operator = await register(setup, setup.keys[1]!);
  const attacker = setup.keys[5]!;
  // The attack: a service of the attacker's pointing at the real manager, whose jobs would load its operators for free.
  await expectRevert(send(attacker, setup.jobs, jobsAbiWithManagerErrors, 'createService', [setup.manager]), 'ManagerAlreadyBound');
  // Even the manager's owner cannot give it a second service.
  await expectRevert(send(setup.keys[0]!, setup.jobs, jobsAbiWithManagerErrors, 'createService', [setup.manager]), 'ManagerAlreadyBound');
  assert.equal(await publicClient.readContract({ address: setup.jobs, abi: jobsAbi, functionName: 'serviceCount' }), setup.serviceId + 1n);
  assert.equal(await loadOf(setup, operator), 0);

  // A fresh manager, not yet bound: only the account that deployed it may create its service.
  const artifact = serviceManagerArtifact();
  const fresh = await deployContract(setup.keys[0]!, artifact.abi, artifact.bytecode, [setup.jobs, BigInt(TIMEOUT_S)]);
  await expectRevert(send(attacker, setup.jobs, jobsAbiWithManagerErrors, 'createService', [fresh]), 'NotManagerOwner');
  const receipt = await send(setup.keys[0]!, setup.jobs, jobsAbiWithManagerErrors, 'createService', [fresh]);
  const [bound] = parseEventLogs({ abi: managerAbi, logs: receipt.logs, eventName: 'ServiceBound' });
  const serviceId = (bound?.args as { serviceId: bigint } | undefined)?.serviceId;
  assert.equal(serviceId, setup.serviceId + 1n);
  assert.equal(await publicClient.readContract({ address: fresh, abi: managerAbi, functionName: 'boundServiceId' }), serviceId);
  assert.equal(await publicClient.readContract({ address: fresh, abi: managerAbi, functionName: 'owner' }), privateKeyToAccount(setup.keys[0]!).address);
  // Nobody but the jobs contract may bind it either.
  await expectRevert(send(attacker, fresh, managerAbi, 'onServiceCreated', [99n, privateKeyToAccount(attacker).address]), 'OnlyJobsContract');
});

test('a bound manager refuses hook calls for any other service id', async () => {
  // A manager whose "jobs contract" is a plain account, so the test can call its hooks with any service id.
  const [owner, jobsAccount] = [anvil.keys[0]!, anvil.keys[6]!];
  const artifact = serviceManagerArtifact();
  const manager = await deployContract(owner, artifact.abi, artifact.bytecode, [privateKeyToAccount(jobsAccount).address, BigInt(TIMEOUT_S)]);
  const ownerAddress = privateKeyToAccount(owner).address;
  await expectRevert(send(jobsAccount, manager, managerAbi, 'onJobCall', [7n, 0, 0n, '0x']), 'ServiceNotBound');
  await send(jobsAccount, manager, managerAbi, 'onServiceCreated', [7n, ownerAddress]);
  await expectRevert(send(jobsAccount, manager, managerAbi, 'onServiceCreated', [8n, ownerAddress]), 'ManagerAlreadyBound');
  await send(jobsAccount, manager, managerAbi, 'onRegister', [privateKeyToAccount(anvil.keys[1]!).address, encodeAbiParameters([{ type: 'uint32' }, { type: 'uint256' }], [4, 0n])]);
  await expectRevert(send(jobsAccount, manager, managerAbi, 'onJobCall', [8n, 0, 0n, '0x']), 'WrongService');
  await expectRevert(
    send(jobsAccount, manager, managerAbi, 'onJobResult', [8n, 0, 0n, privateKeyToAccount(anvil.keys[1]!).address, `0x${'00'.repeat(32)}`, '0x']),
    'WrongService',
  );
  await send(jobsAccount, manager, managerAbi, 'onJobCall', [7n, 0, 0n, '0x']);
});

test('a manager that re-enters submitResult cannot post a second result for the same call', async () => {
  const deployer = anvil.keys[0]!;
  const jobsArtifact = kindlingJobsArtifact();
  const jobs = await deployContract(deployer, jobsArtifact.abi, jobsArtifact.bytecode, []);
  const hostile = testArtifact('ReentrantManager');
  const manager = await deployContract(deployer, hostile.abi, hostile.bytecode, [jobs]);
  const created = await send(deployer, jobs, jobsAbi, 'createService', [manager]);
  const [event] = parseEventLogs({ abi: jobsAbi, logs: created.logs, eventName: 'ServiceCreated' });
  const serviceId = (event!.args as { serviceId: bigint }).serviceId;
  await send(anvil.keys[4]!, jobs, jobsAbi, 'submitJob', [serviceId, 0, '0x']);
  // The manager calls submitResult again from inside onJobResult: the call is already completed by then.
  await expectRevert(send(anvil.keys[1]!, jobs, jobsAbi, 'submitResult', [serviceId, 0n, '0xaa']), 'JobAlreadyCompleted');
  const call = (await publicClient.readContract({ address: jobs, abi: jobsAbi, functionName: 'getJobCall', args: [serviceId, 0n] })) as { resultCount: number; completed: boolean };
  assert.deepEqual([call.resultCount, call.completed], [0, false]);
});

async function balanceOf(address: Address): Promise<bigint> {
  return publicClient.getBalance({ address });
}

async function creditOf(setup: Setup, operator: Address): Promise<bigint> {
  return (await publicClient.readContract({ address: setup.manager, abi: managerAbi, functionName: 'pendingWithdrawal', args: [operator] })) as bigint;
}

test('a job paying less than every operator price reverts PaymentTooLow; one that pays goes to an operator it covers', async () => {
  const setup = await deploy();
  const cheap = await register(setup, setup.keys[1]!, 4, 0n);
  const dear = await register(setup, setup.keys[2]!, 4, 100n);
  // Free jobs go to the price-0 operator only, even when the priced one is less loaded.
  const free = [await submit(setup, setup.keys[4]!), await submit(setup, setup.keys[4]!)];
  assert.deepEqual(free.map((j) => j.operator), [cheap, cheap]);
  // A payment covering both prices goes by load as before.
  assert.equal((await submit(setup, setup.keys[4]!, 0, 100n)).operator, dear);
  assert.equal(await balanceOf(setup.manager), 100n);

  await send(setup.keys[1]!, setup.jobs, jobsAbiWithManagerErrors, 'unregisterOperator', [setup.serviceId]);
  try {
    await send(setup.keys[4]!, setup.jobs, jobsAbiWithManagerErrors, 'submitJob', [setup.serviceId, 0, '0x'], 99n);
    assert.fail('a payment of 99 wei under a price of 100 wei was accepted');
  } catch (error) {
    const reverted = error instanceof BaseError ? error.walk((e) => e instanceof ContractFunctionRevertedError) : undefined;
    assert.ok(reverted instanceof ContractFunctionRevertedError, (error as Error).message);
    assert.equal(reverted.data?.errorName, 'PaymentTooLow');
    assert.deepEqual(reverted.data?.args, [100n]);
  }
  assert.equal(await balanceOf(setup.manager), 100n);
});

test('a result credits the job payment to the operator who posted it, who withdraws it', async () => {
  const setup = await deploy();
  const op = await register(setup, setup.keys[1]!, 4, 1000n);
  const jobsBefore = await balanceOf(setup.jobs);
  // Paying more than the price is allowed: the whole payment goes to the operator.
  const { callId } = await submit(setup, setup.keys[4]!, 0, 1500n);
  assert.equal(await balanceOf(setup.manager), 1500n);
  assert.equal(await balanceOf(setup.jobs), jobsBefore);
  assert.equal(await publicClient.readContract({ address: setup.manager, abi: managerAbi, functionName: 'paymentOf', args: [setup.serviceId, callId] }), 1500n);
  const call = (await publicClient.readContract({ address: setup.jobs, abi: jobsAbi, functionName: 'getJobCall', args: [setup.serviceId, callId] })) as { payment: bigint };
  assert.equal(call.payment, 1500n);

  await expectRevert(send(setup.keys[1]!, setup.manager, managerAbi, 'withdraw', []), 'NothingToWithdraw');
  const receipt = await send(setup.keys[1]!, setup.jobs, jobsAbiWithManagerErrors, 'submitResult', [setup.serviceId, callId, '0x']);
  const [credited] = parseEventLogs({ abi: managerAbi, logs: receipt.logs, eventName: 'PaymentCredited' });
  assert.deepEqual(credited?.args, { serviceId: setup.serviceId, callId, operator: op, amountWei: 1500n });
  assert.equal(await creditOf(setup, op), 1500n);
  // Nothing was transferred in the hook: the money is still in the manager until the operator pulls it.
  assert.equal(await balanceOf(setup.manager), 1500n);

  const before = await balanceOf(op);
  const withdrawal = await send(setup.keys[1]!, setup.manager, managerAbi, 'withdraw', []);
  const gas = withdrawal.gasUsed * withdrawal.effectiveGasPrice;
  assert.equal(await balanceOf(op), before + 1500n - gas);
  assert.equal(await balanceOf(setup.manager), 0n);
  assert.equal(await creditOf(setup, op), 0n);
  await expectRevert(send(setup.keys[1]!, setup.manager, managerAbi, 'withdraw', []), 'NothingToWithdraw');
});

test('on timeout the payment moves with the job, to an operator it covers, and is paid to the one that answers', async () => {
  const setup = await deploy();
  const [a, b] = [await register(setup, setup.keys[1]!, 4, 10n), await register(setup, setup.keys[2]!, 4, 10n)];
  // c is cheaper to the customer's eye but more expensive than the payment: never a candidate for this job.
  const c = await register(setup, setup.keys[3]!, 4, 50n);
  const { callId, operator: first } = await submit(setup, setup.keys[4]!, 0, 10n);
  assert.equal(first, a);
  await submit(setup, setup.keys[4]!, 0, 10n); // b now has load 1, c none
  await timePasses(TIMEOUT_S + 1);
  await send(setup.keys[5]!, setup.manager, managerAbi, 'releaseTimedOut', [setup.serviceId, callId]);
  assert.equal((await assignmentOf(setup, callId)).operator, b);
  assert.equal(await loadOf(setup, c), 0);
  await send(setup.keys[2]!, setup.jobs, jobsAbiWithManagerErrors, 'submitResult', [setup.serviceId, callId, '0x']);
  assert.deepEqual([await creditOf(setup, a), await creditOf(setup, b), await creditOf(setup, c)], [0n, 10n, 0n]);
  assert.equal(await balanceOf(setup.manager), 20n);
});

test('the service owner can remove an operator: no new jobs, no re-registration, its open job released at the deadline', async () => {
  const setup = await deploy();
  const [a, b] = [await register(setup, setup.keys[1]!), await register(setup, setup.keys[2]!)];
  const held = await submit(setup, setup.keys[4]!);
  assert.equal(held.operator, a);
  await expectRevert(send(setup.keys[5]!, setup.manager, managerAbi, 'removeOperator', [a]), 'NotOwner');
  const receipt = await send(setup.keys[0]!, setup.manager, managerAbi, 'removeOperator', [a]);
  const [removed] = parseEventLogs({ abi: managerAbi, logs: receipt.logs, eventName: 'OperatorRemoved' });
  assert.deepEqual(removed?.args, { operator: a });
  const [, , load, active] = (await publicClient.readContract({ address: setup.manager, abi: managerAbi, functionName: 'operatorInfo', args: [a] })) as [number, bigint, number, boolean];
  assert.deepEqual([load, active], [1, false]);
  // a has the lower load after b takes a job, yet gets nothing new; registering again is refused.
  await submit(setup, setup.keys[4]!);
  assert.equal((await submit(setup, setup.keys[4]!)).operator, b);
  await expectRevert(register(setup, setup.keys[1]!), 'OperatorIsRemoved');
  // Its open assignment goes to another operator once the deadline passes, as for any silent operator.
  await timePasses(TIMEOUT_S + 1);
  await send(setup.keys[5]!, setup.manager, managerAbi, 'releaseTimedOut', [setup.serviceId, held.callId]);
  assert.equal((await assignmentOf(setup, held.callId)).operator, b);
  assert.equal(await loadOf(setup, a), 0);
});

test('with the allow-list on, only addresses the owner approved may register', async () => {
  const setup = await deploy();
  const early = await register(setup, setup.keys[1]!);
  const stranger = privateKeyToAccount(setup.keys[2]!).address;
  const invited = privateKeyToAccount(setup.keys[3]!).address;
  await expectRevert(send(setup.keys[5]!, setup.manager, managerAbi, 'setApprovalRequired', [true]), 'NotOwner');
  await expectRevert(send(setup.keys[5]!, setup.manager, managerAbi, 'approveOperator', [stranger, true]), 'NotOwner');
  await send(setup.keys[0]!, setup.manager, managerAbi, 'setApprovalRequired', [true]);
  await send(setup.keys[0]!, setup.manager, managerAbi, 'approveOperator', [invited, true]);
  await expectRevert(register(setup, setup.keys[2]!), 'NotApproved');
  assert.equal(await register(setup, setup.keys[3]!), invited);
  // Operators registered before the allow-list went on stay until the owner removes them.
  const [, , , active] = (await publicClient.readContract({ address: setup.manager, abi: managerAbi, functionName: 'operatorInfo', args: [early] })) as [number, bigint, number, boolean];
  assert.equal(active, true);
  // Off again: registration is open.
  await send(setup.keys[0]!, setup.manager, managerAbi, 'setApprovalRequired', [false]);
  assert.equal(await register(setup, setup.keys[2]!), stranger);
});

/** A fresh funded account (beyond anvil's ten dev keys). */
async function freshKey(): Promise<Hex> {
  const key = generatePrivateKey();
  await publicClient.request({ method: 'anvil_setBalance' as never, params: [privateKeyToAccount(key).address, '0x3635c9adc5dea00000'] as never });
  return key;
}

async function operatorList(setup: Setup): Promise<Address[]> {
  return (await publicClient.readContract({ address: setup.manager, abi: managerAbi, functionName: 'operatorList' })) as Address[];
}

test('registration is capped at MAX_OPERATORS (TooManyOperators); unregistering and removal swap-pop the list, which frees a place', async () => {
  const setup = await deploy();
  const max = Number(await publicClient.readContract({ address: setup.manager, abi: managerAbi, functionName: 'MAX_OPERATORS' }));
  assert.equal(max, 32);
  const keys: Hex[] = [];
  for (let i = 0; i < max; i++) {
    keys.push(await freshKey());
    await register(setup, keys[i]!);
  }
  assert.equal((await operatorList(setup)).length, max);
  const late = await freshKey();
  await expectRevert(register(setup, late), 'TooManyOperators');
  // Registering again (an update) is not a new place.
  await register(setup, keys[3]!, 8);
  // Only the owner removes; a removal takes the operator off the list and the last one takes its place.
  const third = privateKeyToAccount(keys[2]!).address;
  await expectRevert(send(setup.keys[5]!, setup.manager, managerAbi, 'removeOperator', [third]), 'NotOwner');
  await send(setup.keys[0]!, setup.manager, managerAbi, 'removeOperator', [third]);
  let list = await operatorList(setup);
  assert.equal(list.length, max - 1);
  assert.equal(list.includes(third), false);
  assert.equal(list[2], privateKeyToAccount(keys[max - 1]!).address, 'the last operator moved into the removed one\'s place');
  await register(setup, late);
  await expectRevert(register(setup, await freshKey()), 'TooManyOperators');
  // Unregistering frees a place too; registering again takes one.
  await send(keys[0]!, setup.jobs, jobsAbiWithManagerErrors, 'unregisterOperator', [setup.serviceId]);
  list = await operatorList(setup);
  assert.equal(list.length, max - 1);
  assert.equal(list.includes(privateKeyToAccount(keys[0]!).address), false);
  await register(setup, keys[0]!);
  assert.equal((await operatorList(setup)).length, max);
});

test('after a removal swap-pops the list, jobs still go to the least-loaded operator, ties to the one assigned least recently', async () => {
  const setup = await deploy();
  const [a, b, c] = [await register(setup, setup.keys[1]!), await register(setup, setup.keys[2]!), await register(setup, setup.keys[3]!)];
  assert.equal((await submit(setup, setup.keys[4]!)).operator, a);
  assert.equal((await submit(setup, setup.keys[4]!)).operator, b);
  await send(setup.keys[0]!, setup.manager, managerAbi, 'removeOperator', [a]);
  assert.deepEqual(await operatorList(setup), [c, b]);
  assert.equal((await submit(setup, setup.keys[4]!)).operator, c);
  // b and c have load 1: b was assigned longer ago.
  assert.equal((await submit(setup, setup.keys[4]!)).operator, b);
  assert.equal((await submit(setup, setup.keys[4]!)).operator, c);
});

/** Submits job `jobIndex` with real inputs; returns the call and its assignee. */
async function submitJob(setup: Setup, customerKey: Hex, jobIndex: number, args: readonly unknown[], valueWei = 0n): Promise<{ callId: bigint; operator: Address }> {
  const receipt = await send(customerKey, setup.jobs, jobsAbiWithManagerErrors, 'submitJob', [setup.serviceId, jobIndex, encodeJobInputs(jobIndex, args)], valueWei);
  const [submitted] = parseEventLogs({ abi: jobsAbi, logs: receipt.logs, eventName: 'JobSubmitted' });
  const [assigned] = parseEventLogs({ abi: managerAbi, logs: receipt.logs, eventName: 'JobAssigned' });
  return { callId: (submitted!.args as unknown as { callId: bigint }).callId, operator: (assigned!.args as unknown as { operator: Address }).operator };
}

const keyOf = (setup: Setup, operators: Address[], operator: Address): Hex => setup.keys[1 + operators.indexOf(operator)]!;
const advanced = (mode: string, checkpointId: string, branchFrom: string) => ['kindling/base', ['true'], [], '0x', mode, checkpointId, branchFrom, 0n];

test('a job that names an instance goes to the operator that made it, whatever the load; other callers and unknown ids are assigned by load', async () => {
  const setup = await deploy();
  const operators = [await register(setup, setup.keys[1]!), await register(setup, setup.keys[2]!), await register(setup, setup.keys[3]!)];
  const [customer, other] = [setup.keys[4]!, setup.keys[5]!];
  const customerAddress = privateKeyToAccount(customer).address;
  const start = await submitJob(setup, customer, 6, ['', 'kindling/base', 0, 0, 0, false]);
  const holder = start.operator;
  await send(keyOf(setup, operators, holder), setup.jobs, jobsAbiWithManagerErrors, 'submitResult', [setup.serviceId, start.callId, encodeJobOutput(6, ['sbx_holder1'])]);
  assert.equal(await publicClient.readContract({ address: setup.manager, abi: managerAbi, functionName: 'holderOf', args: [customerAddress, 'sbx_holder1'] }), holder);
  // Another operator takes a job: by load alone (ties to the one assigned least recently) the next job would go to the
  // third operator, and every later one away from the holder, whose load grows.
  await submit(setup, customer);
  const pinnedJobs: [number, readonly unknown[]][] = [
    [2, ['sbx_holder1', 'n', 'd']],
    [7, ['sbx_holder1']],
    [8, ['sbx_holder1']],
    [9, ['sbx_holder1']],
    [10, ['sbx_holder1', 8080, 'http', '']],
    [11, ['sbx_holder1', '/work', '0x']],
    [5, [['sbx_holder1', 'sbx_elsewhere'], 'union']],
    [1, advanced('persistent', 'sbx_holder1', '')],
  ];
  for (const [jobIndex, args] of pinnedJobs) {
    const { callId, operator } = await submitJob(setup, customer, jobIndex, args);
    assert.equal(operator, holder, `job ${jobIndex} naming the instance goes to its holder`);
    assert.equal(await publicClient.readContract({ address: setup.manager, abi: managerAbi, functionName: 'isPinned', args: [setup.serviceId, callId] }), true);
  }
  assert.equal(await loadOf(setup, holder), pinnedJobs.length);
  // Another caller's job naming the same id is not pinned (ids are the caller's own), nor is an id nobody recorded.
  assert.notEqual((await submitJob(setup, other, 8, ['sbx_holder1'])).operator, holder);
  assert.notEqual((await submitJob(setup, customer, 8, ['sbx_unknown'])).operator, holder);
  // An error result records nothing (here: a checkpoint that was not made).
  const failed = await submitJob(setup, customer, 1, advanced('checkpointed', '', ''));
  await send(keyOf(setup, operators, failed.operator), setup.jobs, jobsAbiWithManagerErrors, 'submitResult', [setup.serviceId, failed.callId, encodeJobError('EXECUTION_TIMED_OUT', 'x')]);
  assert.equal(await publicClient.readContract({ address: setup.manager, abi: managerAbi, functionName: 'holderOf', args: [customerAddress, `call:${failed.callId}`] }), '0x0000000000000000000000000000000000000000');
});

test('snapshots, branches and call:N checkpoints are routed to the operator that made them', async () => {
  const setup = await deploy();
  const operators = [await register(setup, setup.keys[1]!), await register(setup, setup.keys[2]!), await register(setup, setup.keys[3]!)];
  const customer = setup.keys[4]!;
  const answer = async (job: { callId: bigint; operator: Address }, result: Hex) =>
    send(keyOf(setup, operators, job.operator), setup.jobs, jobsAbiWithManagerErrors, 'submitResult', [setup.serviceId, job.callId, result]);
  // Job 1 checkpointed on some operator makes call:N there.
  const checkpoint = await submitJob(setup, customer, 1, advanced('checkpointed', '', ''));
  await answer(checkpoint, encodeJobOutput(1, ['0x']));
  await submit(setup, customer); // load elsewhere, so the next jobs would go to another operator by load
  for (const [jobIndex, args] of [
    [3, [`call:${checkpoint.callId}`]],
    [4, [`call:${checkpoint.callId}`, 'b']],
    [6, [`call:${checkpoint.callId}`, '', 0, 0, 0, false]],
    [1, advanced('branched', '', `call:${checkpoint.callId}`)],
  ] as [number, unknown[]][]) {
    assert.equal((await submitJob(setup, customer, jobIndex, args)).operator, checkpoint.operator, `job ${jobIndex} on call:${checkpoint.callId}`);
  }
  // A snapshot made by job 2 routes job 3 to the same operator.
  const start = await submitJob(setup, customer, 6, ['', '', 0, 0, 0, false]);
  await answer(start, encodeJobOutput(6, ['sbx_2']));
  const snap = await submitJob(setup, customer, 2, ['sbx_2', '', '']);
  assert.equal(snap.operator, start.operator);
  await answer(snap, encodeJobOutput(2, ['snap_2']));
  assert.equal((await submitJob(setup, customer, 3, ['snap_2'])).operator, start.operator);
});

test('a job whose holder is gone fails: InstanceHolderGone at submission, INSTANCE_HOLDER_GONE on chain after the deadline (payment refunded)', async () => {
  const setup = await deploy();
  const operators = [await register(setup, setup.keys[1]!), await register(setup, setup.keys[2]!)];
  const customer = setup.keys[4]!;
  const customerAddress = privateKeyToAccount(customer).address;
  const start = await submitJob(setup, customer, 6, ['', '', 0, 0, 0, false]);
  const holder = start.operator;
  await send(keyOf(setup, operators, holder), setup.jobs, jobsAbiWithManagerErrors, 'submitResult', [setup.serviceId, start.callId, encodeJobOutput(6, ['sbx_gone'])]);
  // The holder takes the job, then goes silent: past the deadline the job is not reassigned but fails.
  const paused = await submitJob(setup, customer, 8, ['sbx_gone'], 7n);
  assert.equal(paused.operator, holder);
  await timePasses(TIMEOUT_S + 1);
  const receipt = await send(setup.keys[6]!, setup.manager, managerAbi, 'releaseTimedOut', [setup.serviceId, paused.callId]);
  const [released] = parseEventLogs({ abi: managerAbi, logs: receipt.logs, eventName: 'JobReleased' });
  assert.equal((released!.args as unknown as { reason: number }).reason, 2);
  assert.equal(parseEventLogs({ abi: managerAbi, logs: receipt.logs, eventName: 'JobAssigned' }).length, 0, 'not reassigned');
  const [posted] = parseEventLogs({ abi: jobsAbi, logs: receipt.logs, eventName: 'JobResultSubmitted' });
  const outcome = decodeJobResult(8, (posted!.args as unknown as { result: Hex }).result);
  assert.equal(outcome.kind === 'error' ? outcome.code : outcome.kind, 'INSTANCE_HOLDER_GONE');
  const call = (await publicClient.readContract({ address: setup.jobs, abi: jobsAbi, functionName: 'getJobCall', args: [setup.serviceId, paused.callId] })) as { completed: boolean };
  assert.equal(call.completed, true);
  assert.deepEqual([await loadOf(setup, holder), (await assignmentOf(setup, paused.callId)).done], [0, true]);
  assert.equal(await creditOf(setup, customerAddress), 7n);
  // The holder's late answer is refused; so is another release.
  await expectRevert(send(keyOf(setup, operators, holder), setup.jobs, jobsAbiWithManagerErrors, 'submitResult', [setup.serviceId, paused.callId, encodeJobOutput(8, ['paused'])]), 'JobAlreadyCompleted');
  await expectRevert(send(setup.keys[6]!, setup.manager, managerAbi, 'releaseTimedOut', [setup.serviceId, paused.callId]), 'AssignmentDone');
  // Once the owner removes the holder, a job naming its instance is refused at submission.
  await send(setup.keys[0]!, setup.manager, managerAbi, 'removeOperator', [holder]);
  await expectRevert(submitJob(setup, customer, 7, ['sbx_gone']), 'InstanceHolderGone');
  // Jobs that name no instance still go to the operator left.
  assert.notEqual((await submitJob(setup, customer, 6, ['', '', 0, 0, 0, false])).operator, holder);
});
