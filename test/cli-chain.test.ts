/** `kindling chain deploy|register|submit|result`, the real CLI as a child process, against a real anvil. */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createPublicClient, createWalletClient, http, type Address, type Hex } from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import { foundry } from 'viem/chains';
import { TANGLE_JOBS_ABI, decodeJobInputs, encodeJobError, encodeJobOutput, encodeResultRef } from '@kindling/sdk/tangle';
import { startAnvil, type Anvil } from './helpers/anvil.js';

const BIN = fileURLToPath(new URL('../../bin/kindling.js', import.meta.url));
let anvil: Anvil;
let dir: string;

before(async () => {
  anvil = await startAnvil();
  dir = await mkdtemp(join(tmpdir(), 'kindling-cli-chain-'));
});
after(async () => {
  await anvil?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function kindling(...args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { timeout: 120_000 }, (error, stdout, stderr) => {
      resolve({ code: error ? ((error as { code?: number }).code ?? -1) : 0, stdout, stderr });
    });
  });
}

async function keyFile(index: number, mode = 0o600): Promise<string> {
  const path = join(dir, `key-${index}-${mode.toString(8)}`);
  await writeFile(path, `${anvil.keys[index]}\n`);
  await chmod(path, mode);
  return path;
}

function json(run: Run): Record<string, unknown> {
  assert.equal(run.code, 0, `exit 0 expected; stderr: ${run.stderr}`);
  return JSON.parse(run.stdout) as Record<string, unknown>;
}

/** Deploys and registers keys[1] as the only operator through the CLI, at a price of 1000 wei per job. */
async function deployAndRegister() {
  const deployed = json(await kindling('chain', 'deploy', '--rpc', anvil.rpcUrl, '--key-file', await keyFile(0), '--assignment-timeout-s', '60'));
  assert.match(String(deployed.jobsContract), /^0x[0-9a-fA-F]{40}$/);
  assert.match(String(deployed.serviceManager), /^0x[0-9a-fA-F]{40}$/);
  assert.equal(typeof deployed.serviceId, 'number');
  const common = ['--rpc', anvil.rpcUrl, '--jobs-contract', String(deployed.jobsContract), '--service-id', String(deployed.serviceId)];
  const registered = json(await kindling('chain', 'register', ...common, '--key-file', await keyFile(1), '--capacity', '2', '--price-wei', '1000'));
  assert.equal(registered.operator, privateKeyToAccount(anvil.keys[1]!).address);
  return { jobsContract: deployed.jobsContract as Address, serviceManager: deployed.serviceManager as Address, serviceId: BigInt(deployed.serviceId as number), common };
}

/** The operator (keys[1]) answers a call directly with viem. */
async function answer(jobsContract: Address, serviceId: bigint, callId: bigint, result: Hex): Promise<void> {
  const chain = { ...foundry, id: anvil.chainId };
  const operator = createWalletClient({ account: privateKeyToAccount(anvil.keys[1]!), chain, transport: http(anvil.rpcUrl) });
  const hash = await operator.writeContract({ address: jobsContract, abi: TANGLE_JOBS_ABI, functionName: 'submitResult', args: [serviceId, callId, result] });
  await createPublicClient({ chain, transport: http(anvil.rpcUrl) }).waitForTransactionReceipt({ hash });
}

test('deploy, register, submit and result: outputs, an error envelope (exit 1), a reference, and no result yet (exit 3)', async () => {
  const { jobsContract, serviceId, common } = await deployAndRegister();
  const customer = await keyFile(2);
  const submit = (job: string, args: unknown[]) => kindling('chain', 'submit', ...common, '--key-file', customer, '--job', job, '--args', JSON.stringify(args), '--value-wei', '1000');

  // The operator's price is 1000 wei: a job paying less is refused by name, with the fix.
  const cheap = await kindling('chain', 'submit', ...common, '--key-file', customer, '--job', '0', '--args', JSON.stringify(['alpine:latest', ['echo', 'hi'], [], '0x']), '--value-wei', '999');
  assert.equal(cheap.code, 2, cheap.stderr);
  assert.match(cheap.stderr, /the chain refused the submission: PaymentTooLow\(1000\): every active operator asks more than the payment \(--value-wei 999\); pass --value-wei 1000 or more/);

  const first = json(await submit('0', ['alpine:latest', ['echo', 'hi'], [], '0x']));
  assert.equal(first.callId, 0);
  const pending = await kindling('chain', 'result', ...common, '--call-id', '0');
  assert.equal(pending.code, 3, pending.stderr);
  assert.equal(pending.stdout, '');
  assert.match(pending.stderr, /no result yet for call 0 of service \d+/);

  // --wait-ms waits for the result that arrives meanwhile.
  const waiting = kindling('chain', 'result', ...common, '--call-id', '0', '--wait-ms', '60000');
  await answer(jobsContract, serviceId, 0n, encodeJobOutput(0, ['0x68690a']));
  const done = json(await waiting);
  assert.deepEqual(done, { callId: 0, operator: privateKeyToAccount(anvil.keys[1]!).address, outputs: ['0x68690a'] });

  // Job 11: uint64 output as a decimal string; its uint64-free inputs went on chain as given.
  const upload = json(await submit('11', ['i-1', '/work', '0x0102']));
  await answer(jobsContract, serviceId, BigInt(upload.callId as number), encodeJobOutput(11, [5n]));
  assert.deepEqual(json(await kindling('chain', 'result', ...common, '--call-id', String(upload.callId))).outputs, ['5']);

  const failed = json(await submit('3', ['snap-x']));
  await answer(jobsContract, serviceId, BigInt(failed.callId as number), encodeJobError('NOT_FOUND', 'no snapshot snap-x'));
  const errorRun = await kindling('chain', 'result', ...common, '--call-id', String(failed.callId));
  assert.equal(errorRun.code, 1);
  assert.deepEqual(JSON.parse(errorRun.stdout).error, { code: 'NOT_FOUND', message: 'no snapshot snap-x' });

  const big = json(await submit('0', ['alpine:latest', ['cat'], [], '0x00']));
  const sha = `0x${'ab'.repeat(32)}` as Hex;
  await answer(jobsContract, serviceId, BigInt(big.callId as number), encodeResultRef(sha, 123456n, 'http://op/v1/operator/results/0/3'));
  assert.deepEqual(json(await kindling('chain', 'result', ...common, '--call-id', String(big.callId))).ref, {
    sha256: sha,
    sizeBytes: 123456,
    url: 'http://op/v1/operator/results/0/3',
  });
});

test('submit encodes integers given as numbers or decimal strings by the job ABI', async () => {
  const { jobsContract, serviceId, common } = await deployAndRegister();
  const args = ['alpine:latest', ['sleep', '1'], ['A=1'], '0xff', 'cached', '', '', '18446744073709551615'];
  const submitted = json(await kindling('chain', 'submit', ...common, '--key-file', await keyFile(2), '--job', '1', '--args', JSON.stringify(args), '--value-wei', '1000'));
  const client = createPublicClient({ chain: { ...foundry, id: anvil.chainId }, transport: http(anvil.rpcUrl) });
  const [log] = await client.getContractEvents({ address: jobsContract, abi: TANGLE_JOBS_ABI, eventName: 'JobSubmitted', args: { serviceId, callId: BigInt(submitted.callId as number) }, fromBlock: 0n });
  assert.deepEqual(decodeJobInputs(1, log!.args.inputs!), [...args.slice(0, 7), 2n ** 64n - 1n, 0]);
});

test('bad --args exit 2 with the job argument list, before any transaction', async () => {
  const { common } = await deployAndRegister();
  const customer = await keyFile(2);
  const client = createPublicClient({ chain: { ...foundry, id: anvil.chainId }, transport: http(anvil.rpcUrl) });
  const blockBefore = await client.getBlockNumber();
  const cases: [string, string, RegExp][] = [
    ['0', '["alpine"]', /has 1 value\(s\), job 0 \(execute_function\) takes \[string image, string\[\] command, string\[\] env, bytes payload\]/],
    ['0', '["alpine", "echo", [], "0x"]', /argument 1 \(command\): expected a JSON array/],
    ['0', '["alpine", [], [], "hello"]', /argument 3 \(payload\): expected 0x-hex bytes/],
    ['10', '["i", 70000, "tcp", ""]', /70000 is out of range for uint16/],
    ['0', 'not json', /--args is not JSON/],
    ['12', '[]', /unknown job 12/],
  ];
  for (const [job, args, message] of cases) {
    const run = await kindling('chain', 'submit', ...common, '--key-file', customer, '--job', job, '--args', args);
    assert.equal(run.code, 2, `${args}: ${run.stderr}`);
    assert.match(run.stderr, message);
  }
  assert.equal(await client.getBlockNumber(), blockBefore, 'no transaction was sent');
});

test('key files: a bad one is refused (exit 2), a group- or world-readable one is used with a warning', async () => {
  const bad = join(dir, 'bad-key');
  await writeFile(bad, 'not a key\n', { mode: 0o600 });
  const refused = await kindling('chain', 'deploy', '--rpc', anvil.rpcUrl, '--key-file', bad);
  assert.equal(refused.code, 2);
  assert.match(refused.stderr, /must hold one private key as 0x-prefixed hex/);

  const open = await keyFile(0, 0o644);
  const run = await kindling('chain', 'deploy', '--rpc', anvil.rpcUrl, '--key-file', open);
  json(run);
  assert.match(run.stderr, /readable by other users; restrict it with chmod 600/);
  const quiet = await kindling('chain', 'deploy', '--rpc', anvil.rpcUrl, '--key-file', await keyFile(0));
  json(quiet);
  assert.equal(quiet.stderr, '');
});

test('a submission to a service without operators fails with exit 2 and the reason', async () => {
  const deployed = json(await kindling('chain', 'deploy', '--rpc', anvil.rpcUrl, '--key-file', await keyFile(0)));
  const run = await kindling('chain', 'submit', '--rpc', anvil.rpcUrl, '--key-file', await keyFile(2), '--jobs-contract', String(deployed.jobsContract), '--service-id', String(deployed.serviceId), '--job', '7', '--args', '["i-1"]');
  assert.equal(run.code, 2);
  assert.match(run.stderr, /the chain refused the submission: NoOperators\(\): no operator is registered for this service/);
  const unknown = await kindling('chain', 'submit', '--rpc', anvil.rpcUrl, '--key-file', await keyFile(2), '--jobs-contract', String(deployed.jobsContract), '--service-id', '9', '--job', '7', '--args', '["i-1"]');
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /UnknownService\(9\)/);
});

test('withdraw pays the operator its credited payments; remove-operator is for the manager owner only', async () => {
  const { jobsContract, serviceManager, serviceId, common } = await deployAndRegister();
  const manager = ['--rpc', anvil.rpcUrl, '--service-manager', serviceManager];
  const nothing = await kindling('chain', 'withdraw', ...manager, '--key-file', await keyFile(1));
  assert.equal(nothing.code, 2);
  assert.match(nothing.stderr, /the chain refused withdraw: NothingToWithdraw\(\): no payment is credited to this key yet/);

  const paid = json(await kindling('chain', 'submit', ...common, '--key-file', await keyFile(2), '--job', '7', '--args', '["i-1"]', '--value-wei', '1500'));
  await answer(jobsContract, serviceId, BigInt(paid.callId as number), encodeJobOutput(7, [true]));
  const operator = privateKeyToAccount(anvil.keys[1]!).address;
  assert.deepEqual(json(await kindling('chain', 'withdraw', ...manager, '--key-file', await keyFile(1))), { operator, amountWei: '1500' });

  const refused = await kindling('chain', 'remove-operator', ...manager, '--key-file', await keyFile(2), '--operator', operator);
  assert.equal(refused.code, 2);
  assert.match(refused.stderr, /NotOwner\(0x[0-9a-fA-F]{40}\): only the account that deployed the service manager/);
  assert.deepEqual(json(await kindling('chain', 'remove-operator', ...manager, '--key-file', await keyFile(0), '--operator', operator)), { operator, removed: true });
  // The only operator is gone: the next submission has nobody to go to.
  const after = await kindling('chain', 'submit', ...common, '--key-file', await keyFile(2), '--job', '7', '--args', '["i-1"]', '--value-wei', '1000');
  assert.equal(after.code, 2);
  assert.match(after.stderr, /NoOperators\(\)/);
});
