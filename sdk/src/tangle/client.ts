/**
 * `TangleClient`: the customer side of the FaaS blueprint on chain. Submits a job to a Tangle jobs contract (a real
 * Tangle deployment or Kindling's KindlingJobs on a local chain: both speak the pinned `TANGLE_JOBS_ABI`) and reads
 * its result back from the `JobResultSubmitted` events, decoded by the job's output ABI.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import {
  parseEventLogs,
  type Account,
  type Address,
  type BlockNumber,
  type Chain,
  type Hex,
  type PublicClient,
  type Transport,
  type WalletClient,
} from 'viem';
import { KindlingError } from '../errors.js';
import { TANGLE_JOBS_ABI } from './abi.js';
import { decodeJobResult, encodeJobInputs, type JobResult } from './jobs.js';

export interface TangleClientOptions {
  /** Reads (logs, calls, receipts). */
  publicClient: PublicClient;
  /** Signs submissions; only `submitJob` needs it. Its account pays the gas and is the job's caller. */
  walletClient?: WalletClient<Transport, Chain | undefined, Account>;
  /** The jobs contract (ITangleJobs) address. */
  jobsContract: Address;
}

export interface SubmittedJob {
  /** The call id the contract assigned, read from the receipt's JobSubmitted event. */
  callId: bigint;
  txHash: Hex;
  /** The block that holds the submission; a good `fromBlock` for reading the result. */
  blockNumber: bigint;
}

export interface SubmitJobOptions {
  /** Wei sent with the submission (the job's payment); default 0. */
  valueWei?: bigint;
}

export interface JobResultRecord {
  /** The operator that submitted the result. */
  operator: Address;
  /** The decoded result: the job's outputs, an error envelope, or a reference to a large output. */
  result: JobResult;
  /** The result bytes as they are on chain. */
  raw: Hex;
  txHash: Hex;
  blockNumber: bigint;
}

export interface GetResultOptions {
  /** Search result events from this block on (e.g. the submission's `blockNumber`); default the first block. */
  fromBlock?: bigint;
}

export interface WaitForResultOptions extends GetResultOptions {
  /** Give up after this long with a `TIMEOUT` KindlingError; default 60 000 ms. */
  timeoutMs?: number;
  /** Time between two reads of the chain; default 1 000 ms. */
  pollMs?: number;
  signal?: AbortSignal;
}

export class TangleClient {
  readonly jobsContract: Address;
  private readonly publicClient: PublicClient;
  private readonly walletClient: TangleClientOptions['walletClient'];

  constructor(options: TangleClientOptions) {
    this.publicClient = options.publicClient;
    this.walletClient = options.walletClient;
    this.jobsContract = options.jobsContract;
  }

  /**
   * Encodes `args` with the job's input ABI (`encodeJobInputs`: a wrong count or type throws here, before any
   * transaction), submits the job and waits for its receipt. The call id comes from the receipt's JobSubmitted event,
   * never from a simulation (another submission in the same block could take the simulated id).
   */
  async submitJob(serviceId: bigint, jobIndex: number, args: readonly unknown[], options: SubmitJobOptions = {}): Promise<SubmittedJob> {
    const wallet = this.walletClient;
    if (!wallet) throw new TypeError('TangleClient.submitJob needs a walletClient (with an account) to sign the submission');
    const inputs = encodeJobInputs(jobIndex, args);
    const txHash = await wallet.writeContract({
      address: this.jobsContract,
      abi: TANGLE_JOBS_ABI,
      functionName: 'submitJob',
      args: [serviceId, jobIndex, inputs],
      value: options.valueWei ?? 0n,
      chain: wallet.chain,
      account: wallet.account,
    });
    const receipt = await this.publicClient.waitForTransactionReceipt({ hash: txHash });
    if (receipt.status !== 'success') throw new Error(`the submission of job ${jobIndex} to service ${serviceId} reverted (transaction ${txHash})`);
    const submitted = parseEventLogs({ abi: TANGLE_JOBS_ABI, logs: receipt.logs, eventName: 'JobSubmitted' }).find(
      (log) => log.address.toLowerCase() === this.jobsContract.toLowerCase() && log.args.serviceId === serviceId,
    );
    if (!submitted) throw new Error(`transaction ${txHash} emitted no JobSubmitted event of service ${serviceId}`);
    return { callId: submitted.args.callId, txHash, blockNumber: receipt.blockNumber };
  }

  /** The job call's index, caller and state as the contract stores them. */
  async getJobCall(serviceId: bigint, callId: bigint) {
    return await this.publicClient.readContract({
      address: this.jobsContract,
      abi: TANGLE_JOBS_ABI,
      functionName: 'getJobCall',
      args: [serviceId, callId],
    });
  }

  /** The call's first result, decoded by its job's output ABI; undefined while there is none. */
  async getResult(serviceId: bigint, callId: bigint, options: GetResultOptions = {}): Promise<JobResultRecord | undefined> {
    const logs = await this.publicClient.getContractEvents({
      address: this.jobsContract,
      abi: TANGLE_JOBS_ABI,
      eventName: 'JobResultSubmitted',
      args: { serviceId, callId },
      fromBlock: (options.fromBlock ?? 0n) as BlockNumber,
      toBlock: 'latest',
    });
    const first = logs[0];
    if (!first) return undefined;
    const { jobIndex } = await this.getJobCall(serviceId, callId);
    return {
      operator: first.args.operator!,
      result: decodeJobResult(jobIndex, first.args.result!),
      raw: first.args.result!,
      txHash: first.transactionHash,
      blockNumber: first.blockNumber,
    };
  }

  /** Polls `getResult` until there is one; a `TIMEOUT` KindlingError after `timeoutMs`, `ABORTED` on the signal. */
  async waitForResult(serviceId: bigint, callId: bigint, options: WaitForResultOptions = {}): Promise<JobResultRecord> {
    const timeoutMs = options.timeoutMs ?? 60_000;
    const pollMs = options.pollMs ?? 1_000;
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      if (options.signal?.aborted) {
        throw new KindlingError({ code: 'ABORTED', message: `stopped waiting for the result of call ${callId}`, cause: options.signal.reason });
      }
      const record = await this.getResult(serviceId, callId, options);
      if (record) return record;
      const left = deadline - performance.now();
      if (left <= 0) {
        throw new KindlingError({
          code: 'TIMEOUT',
          message: `no result for call ${callId} of service ${serviceId} after ${timeoutMs} ms; wait longer (timeoutMs) or check that an operator serves the service`,
          retryable: true,
        });
      }
      await sleep(Math.min(pollMs, left), undefined, options.signal ? { signal: options.signal } : undefined).catch(() => undefined);
    }
  }
}
