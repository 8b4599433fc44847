/** What the `kindling chain` commands do (loaded on demand by chain.ts: this module loads viem). */
import { BaseError, ContractFunctionRevertedError, createPublicClient, createWalletClient, defineChain, getAddress, http, parseEventLogs, type Abi, type Account, type Address, type Chain, type Hex, type PublicClient, type Transport, type WalletClient } from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import { TangleClient, encodeJobInputs, type JobResultRecord } from '@kindling/sdk/tangle';
import { KindlingError } from '@kindling/sdk';
import { parseJobArgs, toJson } from '../chain/args.js';
import { kindlingJobsArtifact, serviceManagerArtifact } from '../chain/contracts.js';
import { deployKindlingChain } from '../chain/deploy.js';
import { DEFAULT_ASSIGNMENT_TIMEOUT_SECONDS } from '../chain/defaults.js';
import { registerOperator } from '../chain/register.js';
import {
  EXIT_JOB_ERROR,
  EXIT_NO_RESULT,
  readKeyFile,
  UsageError,
  type DeployCommandOptions,
  type RegisterCommandOptions,
  type RemoveOperatorCommandOptions,
  type ResultCommandOptions,
  type SubmitCommandOptions,
  type WithdrawCommandOptions,
} from './chain.js';

interface ChainClients {
  publicClient: PublicClient;
  walletClient?: WalletClient<Transport, Chain, Account>;
}

/** Clients for an RPC URL; the chain id is asked from the node, so any chain (anvil, a testnet) works as is. */
async function chainClients(rpcUrl: string, key?: Hex): Promise<ChainClients> {
  const transport = http(rpcUrl);
  let chainId: number;
  try {
    chainId = await createPublicClient({ transport }).getChainId();
  } catch (error) {
    throw new Error(`the RPC endpoint ${rpcUrl} did not answer eth_chainId: ${(error as Error).message.split('\n')[0]}`);
  }
  const chain = defineChain({
    id: chainId,
    name: `chain ${chainId}`,
    nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 },
    rpcUrls: { default: { http: [rpcUrl] } },
  });
  const publicClient = createPublicClient({ chain, transport }) as PublicClient;
  if (!key) return { publicClient };
  return { publicClient, walletClient: createWalletClient({ account: privateKeyToAccount(key), chain, transport }) };
}

/** Ids are counters from 0: JSON numbers (a decimal string only if one ever outgrew 2^53). */
const idJson = (id: bigint): number | string => (id <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(id) : id.toString());

const print = (value: unknown): void => void process.stdout.write(`${JSON.stringify(value)}\n`);

export async function deploy(options: DeployCommandOptions): Promise<void> {
  const timeoutSeconds = options.assignmentTimeoutS ?? BigInt(DEFAULT_ASSIGNMENT_TIMEOUT_SECONDS);
  if (timeoutSeconds < 1n) throw new UsageError('--assignment-timeout-s must be at least 1');
  const { publicClient, walletClient } = await chainClients(options.rpc, readKeyFile(options.keyFile));
  const deployment = await deployKindlingChain({ publicClient, walletClient: walletClient!, assignmentTimeoutSeconds: Number(timeoutSeconds) });
  print({ jobsContract: deployment.jobsContract, serviceManager: deployment.serviceManager, serviceId: idJson(deployment.serviceId) });
}

export async function register(options: RegisterCommandOptions): Promise<void> {
  const { publicClient, walletClient } = await chainClients(options.rpc, readKeyFile(options.keyFile));
  const { operator } = await registerOperator({
    publicClient,
    walletClient: walletClient!,
    jobsContract: getAddress(options.jobsContract),
    serviceId: options.serviceId,
    capacity: Number(options.capacity ?? 0n),
    pricePerJobWei: options.priceWei ?? 0n,
  });
  print({ operator, serviceId: idJson(options.serviceId) });
}

export async function submit(options: SubmitCommandOptions): Promise<void> {
  // The arguments are checked before the key is read or the chain is asked anything.
  const args = parseJobArgs(Number(options.job), options.args);
  const { publicClient, walletClient } = await chainClients(options.rpc, readKeyFile(options.keyFile));
  const jobsContract = getAddress(options.jobsContract);
  await explainRevert(publicClient, walletClient!, jobsContract, options, args);
  const client = new TangleClient({ publicClient, walletClient: walletClient!, jobsContract });
  const submitted = await client.submitJob(options.serviceId, Number(options.job), args, { valueWei: options.valueWei ?? 0n });
  print({ callId: idJson(submitted.callId), txHash: submitted.txHash, blockNumber: idJson(submitted.blockNumber) });
}

const managerAbi = (): Abi => serviceManagerArtifact().abi;

/** Sends a manager transaction, simulated first so a refusal (NotOwner, NothingToWithdraw) is named, not a selector. */
async function sendToManager(options: { rpc: string; keyFile: string; serviceManager: Address }, functionName: string, args: readonly unknown[]) {
  const { publicClient, walletClient } = await chainClients(options.rpc, readKeyFile(options.keyFile));
  const address = getAddress(options.serviceManager);
  let request;
  try {
    ({ request } = await publicClient.simulateContract({ account: walletClient!.account, address, abi: managerAbi(), functionName, args }));
  } catch (error) {
    const reverted = error instanceof BaseError ? error.walk((e) => e instanceof ContractFunctionRevertedError) : undefined;
    const data = reverted instanceof ContractFunctionRevertedError ? reverted.data : undefined;
    if (!data) throw error;
    throw new Error(`the chain refused ${functionName}: ${data.errorName}(${(data.args ?? []).map(String).join(', ')})${MANAGER_HINTS[data.errorName] ?? ''}`);
  }
  const hash = await walletClient!.writeContract(request);
  const receipt = await publicClient.waitForTransactionReceipt({ hash });
  if (receipt.status !== 'success') throw new Error(`${functionName} failed in transaction ${hash}`);
  return { receipt, account: walletClient!.account.address };
}

const MANAGER_HINTS: Record<string, string> = {
  NotOwner: ': only the account that deployed the service manager (kindling chain deploy) may remove operators',
  NothingToWithdraw: ': no payment is credited to this key yet (payments are credited when the operator posts a result)',
};

export async function removeOperator(options: RemoveOperatorCommandOptions): Promise<void> {
  await sendToManager(options, 'removeOperator', [getAddress(options.operator)]);
  print({ operator: getAddress(options.operator), removed: true });
}

export async function withdraw(options: WithdrawCommandOptions): Promise<void> {
  const { receipt, account } = await sendToManager(options, 'withdraw', []);
  const [event] = parseEventLogs({ abi: managerAbi(), logs: receipt.logs, eventName: 'Withdrawn' });
  const amount = (event?.args as { amountWei?: bigint } | undefined)?.amountWei ?? 0n;
  // Wei amounts outgrow JSON numbers: a decimal string.
  print({ operator: account, amountWei: amount.toString() });
}

export async function result(options: ResultCommandOptions): Promise<void> {
  const waitMs = options.waitMs ?? 0n;
  const { publicClient } = await chainClients(options.rpc);
  const client = new TangleClient({ publicClient, jobsContract: getAddress(options.jobsContract) });
  const from = options.fromBlock === undefined ? {} : { fromBlock: options.fromBlock };
  let record: JobResultRecord | undefined;
  try {
    record =
      waitMs > 0n
        ? await client.waitForResult(options.serviceId, options.callId, { ...from, timeoutMs: Number(waitMs), pollMs: 250 })
        : await client.getResult(options.serviceId, options.callId, from);
  } catch (error) {
    if (!(error instanceof KindlingError && error.code === 'TIMEOUT')) throw error;
  }
  if (!record) {
    const waited = waitMs > 0n ? ` after waiting ${waitMs} ms` : '';
    process.stderr.write(`kindling: no result yet for call ${options.callId} of service ${options.serviceId}${waited}; retry later or pass --wait-ms\n`);
    process.exitCode = EXIT_NO_RESULT;
    return;
  }
  const head = { callId: idJson(options.callId), operator: record.operator };
  const outcome = record.result;
  if (outcome.kind === 'output') print({ ...head, outputs: toJson(outcome.values) });
  else if (outcome.kind === 'ref') print({ ...head, ref: { sha256: outcome.sha256, sizeBytes: idJson(outcome.sizeBytes), url: outcome.url } });
  else {
    print({ ...head, error: { code: outcome.code, message: outcome.message } });
    process.exitCode = EXIT_JOB_ERROR;
  }
}

/**
 * A submission the chain would refuse fails here with the reason by name (`NoOperators()`, `UnknownService(7)`):
 * the pinned interface the SDK uses does not know the errors of the project's contracts, so a revert would otherwise
 * show as a bare selector. A revert these ABIs do not know is left to the real submission to report.
 */
async function explainRevert(
  publicClient: PublicClient,
  walletClient: WalletClient<Transport, Chain, Account>,
  jobsContract: Hex,
  options: SubmitCommandOptions,
  args: unknown[],
): Promise<void> {
  const abi = [...kindlingJobsArtifact().abi, ...serviceManagerArtifact().abi.filter((item) => item.type === 'error')] as Abi;
  try {
    await publicClient.simulateContract({
      account: walletClient.account,
      address: jobsContract,
      abi,
      functionName: 'submitJob',
      args: [options.serviceId, Number(options.job), encodeJobInputs(Number(options.job), args)],
      value: options.valueWei ?? 0n,
    });
  } catch (error) {
    const reverted = error instanceof BaseError ? error.walk((e) => e instanceof ContractFunctionRevertedError) : undefined;
    const data = reverted instanceof ContractFunctionRevertedError ? reverted.data : undefined;
    if (!data) return;
    const why =
      data.errorName === 'NoOperators'
        ? ': no operator is registered for this service (kindling chain register)'
        : data.errorName === 'PaymentTooLow'
          ? `: every active operator asks more than the payment (--value-wei ${options.valueWei ?? 0n}); pass --value-wei ${String(data.args?.[0])} or more`
          : data.errorName === 'InstanceHolderGone'
            ? ': the operator that holds the instance, snapshot or branch this job names is no longer registered, so nothing else can run it; start a new instance (job 6)'
            : '';
    throw new Error(`the chain refused the submission: ${data.errorName}(${(data.args ?? []).map(String).join(', ')})${why}`);
  }
}
