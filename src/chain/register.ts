/** Registers an account as an operator of a service on a KindlingJobs contract (the manager's onRegister hook). */
import { encodeAbiParameters, type Account, type Address, type Chain, type Hex, type PublicClient, type Transport, type WalletClient } from 'viem';
import { kindlingJobsArtifact, serviceManagerArtifact } from './contracts.js';

export interface RegisterOperatorOptions {
  walletClient: WalletClient<Transport, Chain | undefined, Account>;
  publicClient: PublicClient;
  jobsContract: Address;
  serviceId: bigint;
  /** Jobs the operator takes at once before others are preferred; 0 means the manager's default (4). */
  capacity?: number;
  pricePerJobWei?: bigint;
}

/** Registering again updates capacity and price (and reactivates an unregistered operator). */
export async function registerOperator(options: RegisterOperatorOptions): Promise<{ operator: Address; txHash: Hex }> {
  const capacity = options.capacity ?? 0;
  if (!Number.isInteger(capacity) || capacity < 0 || capacity > 0xffffffff) throw new RangeError(`capacity must be a whole number 0..4294967295, got ${capacity}`);
  const price = options.pricePerJobWei ?? 0n;
  if (price < 0n) throw new RangeError(`pricePerJobWei must be >= 0, got ${price}`);
  const { walletClient, publicClient } = options;
  const inputs = encodeAbiParameters([{ type: 'uint32' }, { type: 'uint256' }], [capacity, price]);
  const txHash = await walletClient.writeContract({
    address: options.jobsContract,
    // The manager's errors too, so its refusals (TooManyOperators, OperatorIsRemoved, NotApproved) are named, not a bare selector.
    abi: [...kindlingJobsArtifact().abi, ...serviceManagerArtifact().abi.filter((item) => item.type === 'error')],
    functionName: 'registerOperator',
    args: [options.serviceId, inputs],
    chain: walletClient.chain,
    account: walletClient.account,
  });
  const receipt = await publicClient.waitForTransactionReceipt({ hash: txHash });
  if (receipt.status !== 'success') throw new Error(`registering ${walletClient.account.address} failed in transaction ${txHash}`);
  return { operator: walletClient.account.address, txHash };
}
