/**
 * Deploys a local Kindling chain set-up: the jobs contract (KindlingJobs), one FaaS service manager bound to it, and
 * a service that uses that manager. Used by `kindling chain deploy` and the tests.
 */
import { getAddress, parseEventLogs, type Account, type Address, type Chain, type PublicClient, type Transport, type WalletClient } from 'viem';
import { kindlingJobsArtifact, serviceManagerArtifact } from './contracts.js';
import { DEFAULT_ASSIGNMENT_TIMEOUT_SECONDS } from './defaults.js';

export interface DeployOptions {
  walletClient: WalletClient<Transport, Chain | undefined, Account>;
  publicClient: PublicClient;
  /** How long an operator has to answer an assigned job before anyone may reassign it; default 300 s. */
  assignmentTimeoutSeconds?: number;
}

export interface KindlingChainDeployment {
  jobsContract: Address;
  serviceManager: Address;
  serviceId: bigint;
}

export { DEFAULT_ASSIGNMENT_TIMEOUT_SECONDS };

export async function deployKindlingChain(options: DeployOptions): Promise<KindlingChainDeployment> {
  const { walletClient, publicClient } = options;
  const timeoutSeconds = options.assignmentTimeoutSeconds ?? DEFAULT_ASSIGNMENT_TIMEOUT_SECONDS;
  if (!Number.isInteger(timeoutSeconds) || timeoutSeconds < 1) {
    throw new RangeError(`assignmentTimeoutSeconds must be a whole number of seconds >= 1, got ${timeoutSeconds}`);
  }
  const jobs = kindlingJobsArtifact();
  const manager = serviceManagerArtifact();

  const jobsContract = await deployed(
    publicClient,
    await walletClient.deployContract({ abi: jobs.abi, bytecode: jobs.bytecode, chain: walletClient.chain, account: walletClient.account }),
    'KindlingJobs',
  );
  const serviceManager = await deployed(
    publicClient,
    await walletClient.deployContract({
      abi: manager.abi,
      bytecode: manager.bytecode,
      args: [jobsContract, BigInt(timeoutSeconds)],
      chain: walletClient.chain,
      account: walletClient.account,
    }),
    'FaaSServiceManager',
  );
  const hash = await walletClient.writeContract({
    address: jobsContract,
    abi: jobs.abi,
    functionName: 'createService',
    args: [serviceManager],
    chain: walletClient.chain,
    account: walletClient.account,
  });
  const receipt = await publicClient.waitForTransactionReceipt({ hash });
  if (receipt.status !== 'success') throw new Error(`createService failed in transaction ${hash}`);
  // The id comes from the event in the receipt, not from a simulation (another transaction could take the id first).
  const [created] = parseEventLogs({ abi: jobs.abi, logs: receipt.logs, eventName: 'ServiceCreated' });
  const serviceId = (created?.args as { serviceId?: bigint } | undefined)?.serviceId;
  if (serviceId === undefined) throw new Error(`createService transaction ${hash} emitted no ServiceCreated event`);
  return { jobsContract, serviceManager, serviceId };
}

async function deployed(publicClient: PublicClient, hash: `0x${string}`, name: string): Promise<Address> {
  const receipt = await publicClient.waitForTransactionReceipt({ hash });
  if (receipt.status !== 'success' || !receipt.contractAddress) throw new Error(`deploying ${name} failed in transaction ${hash}`);
  // Checksummed, as users see addresses elsewhere (receipts give them in lower case).
  return getAddress(receipt.contractAddress);
}
