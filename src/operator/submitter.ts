/**
 * Sends the operator's transactions (results, keeper releases, registration): estimates gas (which also tells, by
 * the revert it reports, when the call cannot succeed), caps it at `maxGas`, takes the next nonce from the account's
 * one NonceManager, waits for the receipt, and retries transient RPC failures with backoff. A transaction the node
 * refuses for its nonce, or one not mined within `receiptTimeoutMs` (dropped from the pool, replaced behind the
 * operator's back), makes the NonceManager read the account's nonce from the node again before the call is sent
 * again: a lost nonce would otherwise leave a gap that holds every later transaction until a restart. A revert is an outcome,
 * not an error: the caller decides what "JobAlreadyCompleted" or "NotAssignedOperator" mean (for a result both mean
 * there is nothing more to do).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { Abi, Address, Hex } from 'viem';
import { KindlingError } from '../core/errors.js';
import type { NonceManager } from './nonce-manager.js';

export interface Fees {
  maxFeePerGas: bigint;
  maxPriorityFeePerGas: bigint;
}

export interface TxReceipt {
  status: 'success' | 'reverted';
  /** The block the transaction is in (to tell later whether a reorg removed it). */
  blockNumber: bigint;
  blockHash: Hex;
}

export interface ContractCall {
  address: Address;
  abi: Abi;
  functionName: string;
  args: readonly unknown[];
}

/** What the submitter asks of the chain; `viemTxChain` is the real one, tests pass a fake. */
export interface TxChain {
  readonly address: Address;
  /** eth_estimateGas of the call from `address`; a revert throws an error whose cause chain carries `data.errorName`. */
  estimateGas(call: ContractCall): Promise<bigint>;
  /** Signs and broadcasts; resolves with the transaction hash. */
  send(call: ContractCall, tx: { gas: bigint; nonce: number; fees?: Fees }): Promise<Hex>;
  /**
   * EIP-1559 fees for the next transactions (null: let the client decide, e.g. a legacy chain). Read before the nonce
   * is taken, so that only signing and the broadcast are serialized per account.
   */
  fees?(): Promise<Fees | null>;
  /** The receipt once mined; rejects (WaitForTransactionReceiptTimeoutError) when it is not mined within timeoutMs. */
  waitForReceipt(hash: Hex, timeoutMs: number): Promise<TxReceipt>;
  balance(): Promise<bigint>;
}

export interface SubmitterOptions {
  chain: TxChain;
  nonces: NonceManager;
  /** Most gas one transaction may use (--max-gas); a call whose estimate is above fails with OPERATOR_GAS_CAP. Default 5,000,000. */
  maxGas?: bigint;
  /** Attempts for transient failures (RPC unreachable, timeouts, nonce races) before giving up. Default 6. */
  attempts?: number;
  /** First backoff; doubled per attempt up to 5 s. Default 200 ms. */
  baseDelayMs?: number;
  /**
   * A sent transaction not mined within this is taken as lost (dropped or replaced): the nonce is read from the node
   * again and the call is sent again (--tx-timeout-ms). Default 60 s.
   */
  receiptTimeoutMs?: number;
}

import { DEFAULT_MAX_GAS, DEFAULT_TX_TIMEOUT_MS } from './defaults.js';

export { DEFAULT_MAX_GAS };

/** A transaction on chain: its hash and the block it was mined in. */
export interface MinedTx {
  txHash: Hex;
  blockNumber: bigint;
  blockHash: Hex;
}

export type WriteOutcome = ({ kind: 'sent' } & MinedTx) | { kind: 'reverted'; errorName: string };

export type SubmitOutcome =
  | ({ kind: 'submitted' } & MinedTx)
  /** JobAlreadyCompleted: someone's result is on chain (ours, sent before a restart, or another operator's). */
  | { kind: 'already-completed' }
  /** NotAssignedOperator: the call is not (or no longer) ours; post nothing. */
  | { kind: 'not-assigned' }
  /** UnknownJobCall: the chain has no such call (a reorg removed it); post nothing now. */
  | { kind: 'unknown-call' };

/** The revert's custom error name anywhere in a viem error's cause chain, or null when it is no revert. */
export function revertName(error: unknown): string | null {
  for (let at = error, depth = 0; at !== null && at !== undefined && depth < 10; at = (at as { cause?: unknown }).cause, depth++) {
    const name = (at as { data?: { errorName?: unknown } }).data?.errorName;
    if (typeof name === 'string') return name;
    // A revert without data the ABI knows (a require message, a panic) is still a revert, not an RPC failure.
    if ((at as { name?: unknown }).name === 'ContractFunctionRevertedError') return (at as { reason?: string }).reason ?? 'reverted';
  }
  return null;
}

const TRANSIENT_NAMES = new Set([
  'HttpRequestError',
  'TimeoutError',
  'SocketClosedError',
  'WebSocketRequestError',
  'InternalRpcError',
  'LimitExceededRpcError',
  'ResourceUnavailableRpcError',
  'NonceTooLowError',
  'NonceTooHighError',
  'TransactionReceiptNotFoundError',
  'WaitForTransactionReceiptTimeoutError',
]);
const TRANSIENT_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CONNECT_TIMEOUT']);

/** Whether retrying the same request later may succeed (the node was unreachable, slow, or a nonce raced). */
export function isTransient(error: unknown): boolean {
  for (let at = error, depth = 0; at !== null && at !== undefined && depth < 10; at = (at as { cause?: unknown }).cause, depth++) {
    const { name, code, message } = at as { name?: unknown; code?: unknown; message?: unknown };
    if (typeof name === 'string' && TRANSIENT_NAMES.has(name)) return true;
    if (typeof code === 'string' && TRANSIENT_CODES.has(code)) return true;
    if (typeof message === 'string' && /fetch failed|nonce too (low|high)|replacement transaction underpriced/i.test(message)) return true;
  }
  return false;
}

function isReceiptTimeout(error: unknown): boolean {
  for (let at = error, depth = 0; at !== null && at !== undefined && depth < 10; at = (at as { cause?: unknown }).cause, depth++) {
    if ((at as { name?: unknown }).name === 'WaitForTransactionReceiptTimeoutError') return true;
  }
  return false;
}

function isOutOfFunds(error: unknown): boolean {
  for (let at = error, depth = 0; at !== null && at !== undefined && depth < 10; at = (at as { cause?: unknown }).cause, depth++) {
    const { name, message } = at as { name?: unknown; message?: unknown };
    if (name === 'InsufficientFundsError') return true;
    if (typeof message === 'string' && /insufficient funds/i.test(message)) return true;
  }
  return false;
}

export class Submitter {
  private readonly chain: TxChain;
  private readonly nonces: NonceManager;
  private readonly maxGas: bigint;
  private readonly attempts: number;
  private readonly baseDelayMs: number;
  private readonly receiptTimeoutMs: number;

  constructor(options: SubmitterOptions) {
    this.chain = options.chain;
    this.nonces = options.nonces;
    this.maxGas = options.maxGas ?? DEFAULT_MAX_GAS;
    this.attempts = Math.max(1, options.attempts ?? 6);
    this.baseDelayMs = options.baseDelayMs ?? 200;
    this.receiptTimeoutMs = options.receiptTimeoutMs ?? DEFAULT_TX_TIMEOUT_MS;
  }

  /** Forget the local nonce: the next send reads it from the node (after a reorg removed sent transactions). */
  resyncNonce(): void {
    this.nonces.reset();
  }

  get address(): Address {
    return this.chain.address;
  }

  /** submitResult on the jobs contract; see SubmitOutcome for what each revert means. */
  async submitResult(jobsContract: Address, abi: Abi, serviceId: bigint, callId: bigint, result: Hex): Promise<SubmitOutcome> {
    const outcome = await this.write({ address: jobsContract, abi, functionName: 'submitResult', args: [serviceId, callId, result] });
    if (outcome.kind === 'sent') return { kind: 'submitted', txHash: outcome.txHash, blockNumber: outcome.blockNumber, blockHash: outcome.blockHash };
    if (outcome.errorName === 'JobAlreadyCompleted') return { kind: 'already-completed' };
    if (outcome.errorName === 'NotAssignedOperator') return { kind: 'not-assigned' };
    if (outcome.errorName === 'UnknownJobCall') return { kind: 'unknown-call' };
    throw new Error(`submitResult(${serviceId}, ${callId}) reverts with ${outcome.errorName}`);
  }

  /**
   * Estimates, caps, sends and waits for one contract call. A revert (at estimation, or a transaction that reverted
   * because the state changed before it was mined: estimated again, which names the revert) is returned; running out
   * of funds throws OPERATOR_OUT_OF_FUNDS, an estimate above the cap OPERATOR_GAS_CAP; transient failures are retried.
   */
  async write(call: ContractCall): Promise<WriteOutcome> {
    let lastError: unknown = null;
    for (let attempt = 0; attempt < this.attempts; attempt++) {
      if (attempt > 0) await sleep(Math.min(5000, this.baseDelayMs * 2 ** (attempt - 1)));
      try {
        let estimate: bigint;
        try {
          estimate = await this.chain.estimateGas(call);
        } catch (error) {
          const reverted = revertName(error);
          if (reverted !== null && !isOutOfFunds(error)) return { kind: 'reverted', errorName: reverted };
          throw error;
        }
        if (estimate > this.maxGas) {
          throw new KindlingError('OPERATOR_GAS_CAP', `${call.functionName} needs about ${estimate} gas, more than the cap of ${this.maxGas} (--max-gas); raise the cap or lower --max-result-bytes so large results go off chain`, { details: { estimate: estimate.toString(), maxGas: this.maxGas.toString() } });
        }
        // 20 % headroom: the state may change a little between the estimate and the block (a storage slot set first).
        const withHeadroom = (estimate * 12n) / 10n;
        const gas = withHeadroom < this.maxGas ? withHeadroom : this.maxGas;
        const fees = (await this.chain.fees?.()) ?? null;
        const txHash = await this.nonces.send((nonce) => this.chain.send(call, { gas, nonce, ...(fees ? { fees } : {}) }));
        const receipt = await this.receipt(txHash);
        if (receipt.status === 'success') return { kind: 'sent', txHash, blockNumber: receipt.blockNumber, blockHash: receipt.blockHash };
        lastError = new Error(`${call.functionName} transaction ${txHash} reverted`);
        // Mined but reverted: the next estimate names the reason (e.g. another operator completed the job first).
      } catch (error) {
        if (error instanceof KindlingError) throw error;
        if (isOutOfFunds(error)) throw await this.outOfFunds(error);
        if (!isTransient(error)) throw error;
        lastError = error;
      }
    }
    throw lastError instanceof Error ? lastError : new Error(String(lastError));
  }

  private async receipt(txHash: Hex): Promise<TxReceipt> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.chain.waitForReceipt(txHash, this.receiptTimeoutMs);
      } catch (error) {
        if (isReceiptTimeout(error)) {
          // Not mined in time: dropped or replaced. Its nonce may be free again (a gap for every later transaction)
          // or taken: either way only the node knows the next one. The caller's retry sends the call again (or learns
          // from the estimate that the transaction made it after all).
          this.nonces.reset();
          throw error;
        }
        if (!isTransient(error) || attempt + 1 >= this.attempts) throw error;
        await sleep(Math.min(5000, this.baseDelayMs * 2 ** attempt));
      }
    }
  }

  private async outOfFunds(cause: unknown): Promise<KindlingError> {
    const balance = await this.chain.balance().catch(() => null);
    const shown = balance === null ? 'unknown (the balance could not be read)' : `${balance} wei`;
    return new KindlingError('OPERATOR_OUT_OF_FUNDS', `the operator account ${this.chain.address} cannot pay for its transactions (balance ${shown}); fund it, results are sent again once it can pay`, {
      cause,
      details: { address: this.chain.address, balanceWei: balance === null ? null : balance.toString() },
    });
  }
}

/** The clients viemTxChain needs (a viem PublicClient and a WalletClient with a local account). */
export interface TxClients {
  publicClient: {
    estimateContractGas(args: never): Promise<bigint>;
    waitForTransactionReceipt(args: { hash: Hex; pollingInterval?: number; timeout?: number }): Promise<{ status: 'success' | 'reverted'; blockNumber: bigint; blockHash: Hex }>;
    getBalance(args: { address: Address }): Promise<bigint>;
    estimateFeesPerGas(): Promise<{ maxFeePerGas?: bigint; maxPriorityFeePerGas?: bigint }>;
  };
  walletClient: { writeContract(args: never): Promise<Hex> };
  account: { address: Address };
  /** How often a receipt is polled for, in ms. Default 100. */
  receiptPollMs?: number;
}

export function viemTxChain(clients: TxClients): TxChain {
  const estimate = clients.publicClient.estimateContractGas as unknown as (args: object) => Promise<bigint>;
  const write = clients.walletClient.writeContract as unknown as (args: object) => Promise<Hex>;
  // Fees change per block at most: one estimate serves every transaction of the next second.
  let cached: { at: number; fees: Promise<Fees | null> } | null = null;
  return {
    fees() {
      if (cached === null || Date.now() - cached.at > 1000) {
        const fees = clients.publicClient.estimateFeesPerGas().then(
          (estimate) => (estimate.maxFeePerGas !== undefined && estimate.maxPriorityFeePerGas !== undefined ? { maxFeePerGas: estimate.maxFeePerGas, maxPriorityFeePerGas: estimate.maxPriorityFeePerGas } : null),
          () => null,
        );
        cached = { at: Date.now(), fees };
      }
      return cached.fees;
    },
    address: clients.account.address,
    estimateGas: (call) => estimate({ ...call, account: clients.account }),
    send: (call, tx) => write({ ...call, account: clients.account, gas: tx.gas, nonce: tx.nonce, ...(tx.fees ?? {}) }),
    async waitForReceipt(hash, timeoutMs) {
      const { status, blockNumber, blockHash } = await clients.publicClient.waitForTransactionReceipt({ hash, pollingInterval: clients.receiptPollMs ?? 100, timeout: timeoutMs });
      return { status, blockNumber, blockHash };
    },
    balance: () => clients.publicClient.getBalance({ address: clients.account.address }),
  };
}
