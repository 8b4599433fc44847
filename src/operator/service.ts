/**
 * Operator mode's composition: from the parsed settings (CLI flags or --operator-config) and a job runner, makes the
 * viem clients (HTTP polling; a WebSocket only to hear of new heads earlier), checks the chain id, registers the key
 * as an operator of the service when it is not one, and starts the Operator with its store, watcher and submitter.
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { createPublicClient, createWalletClient, defineChain, encodeAbiParameters, http, webSocket, type Address, type Hex } from 'viem';
import { privateKeyToAccount } from 'viem/accounts';
import { CursorStore } from './cursor-store.js';
import { DEFAULT_OPERATOR_SETTINGS } from './defaults.js';
import { JOBS_CONTRACT_ABI, SERVICE_MANAGER_ABI } from './chain-abi.js';
import { NonceManager } from './nonce-manager.js';
import { Operator, type OperatorChain, type OperatorJobRunner } from './operator.js';
import type { ResultStore } from './result-store.js';
import { Submitter, viemTxChain } from './submitter.js';
import { viemWatcherChain, Watcher } from './watcher.js';

/** Operator settings with units in their names; every optional one has a default (DEFAULT_OPERATOR_SETTINGS). */
export interface OperatorSettings {
  rpcUrl: string;
  wsUrl?: string;
  chainId: number;
  keyFile: string;
  jobsContract: Address;
  serviceManager: Address;
  serviceId: bigint;
  confirmations?: number;
  capacity?: number;
  maxGas?: bigint;
  maxResultBytes?: number;
  pollIntervalMs?: number;
  /**
   * Most JSON-RPC requests sent to the node in one HTTP request (requests made in the same event-loop turn go together:
   * the checks of 32 jobs scheduled at once are one round trip, not 128). 0 sends each request alone, for a node or
   * provider that refuses batches. Default 64.
   */
  rpcBatchSize?: number;
  /** A result or keeper transaction not mined within this is taken as lost: nonce read again, call resent. Default 60 s. */
  txTimeoutMs?: number;
  /** Price per job registered with the operator (wei). Default 0. */
  pricePerJobWei?: bigint;
  /** Quotas of the chain callers' tenants (PATCH /v1/tenants fields) over DEFAULT_CHAIN_TENANT_QUOTAS. */
  chainTenantQuotas?: Record<string, number>;
  /** First block read on a fresh data dir (the jobs contract's deployment block saves reading older ones). Default 0. */
  startBlock?: bigint;
  /** This server's URL as callers reach it (large results' and job 10's URLs). Default: the URL it listens on. */
  publicUrl?: string;
}

export { DEFAULT_OPERATOR_SETTINGS };

export interface RunningOperator {
  operator: Operator;
  address: Address;
  /** Drain (finish running jobs and post them), then release the store and the WebSocket. */
  close(options?: { abort?: boolean }): Promise<void>;
}

/** Reads a private key file: 0x + 64 hex digits, surrounding whitespace ignored. */
export async function readKeyFile(path: string, warn: (message: string) => void = () => {}): Promise<Hex> {
  const text = (await readFile(path, 'utf8').catch((error: unknown) => {
    throw new Error(`--key-file ${path} cannot be read: ${(error as Error).message}`);
  })).trim();
  const key = text.startsWith('0x') ? text : `0x${text}`;
  if (!/^0x[0-9a-fA-F]{64}$/.test(key)) throw new Error(`--key-file ${path} must hold one private key: 64 hex digits, optionally with 0x`);
  // The key spends the operator's funds: other users of the machine must not read it.
  if (((await stat(path)).mode & 0o077) !== 0) warn(`the key file ${path} is readable by other users; restrict it with chmod 600 ${path}`);
  return key as Hex;
}

export async function startOperatorService(input: {
  settings: OperatorSettings;
  runner: OperatorJobRunner;
  resultStore: ResultStore;
  /** The URL results are fetched from (this server's, as callers reach it). */
  publicUrl: string;
  dataDir: string;
  logger: Logger;
}): Promise<RunningOperator> {
  const settings = { ...DEFAULT_OPERATOR_SETTINGS, ...input.settings };
  const logger = input.logger.child({ component: 'operator' });
  const account = privateKeyToAccount(await readKeyFile(settings.keyFile, (message) => input.logger.warn(message)));
  const chain = defineChain({ id: settings.chainId, name: `chain ${settings.chainId}`, nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 }, rpcUrls: { default: { http: [settings.rpcUrl] } } });
  // Batching costs nothing when requests come one at a time (wait 0: only what is asked in the same turn goes together).
  const transport = http(settings.rpcUrl, { retryCount: 0, timeout: 30_000, ...(settings.rpcBatchSize > 0 ? { batch: { batchSize: settings.rpcBatchSize, wait: 0 } } : {}) });
  const publicClient = createPublicClient({ chain, transport, pollingInterval: 100 });
  const walletClient = createWalletClient({ chain, transport, account });
  const actual = await publicClient.getChainId();
  if (actual !== settings.chainId) throw new Error(`--rpc ${settings.rpcUrl} is chain ${actual}, not --chain-id ${settings.chainId}; point it at the right node or fix the id`);

  const submitter = new Submitter({
    chain: viemTxChain({ publicClient: publicClient as never, walletClient: walletClient as never, account }),
    nonces: new NonceManager({ pendingCount: () => publicClient.getTransactionCount({ address: account.address, blockTag: 'pending' }) }),
    maxGas: settings.maxGas,
    receiptTimeoutMs: settings.txTimeoutMs,
  });
  const info = await publicClient.readContract({ address: settings.serviceManager, abi: SERVICE_MANAGER_ABI, functionName: 'operatorInfo', args: [account.address] });
  if (!info[3]) {
    const registration = encodeAbiParameters([{ type: 'uint32' }, { type: 'uint256' }], [settings.capacity, settings.pricePerJobWei ?? 0n]);
    const outcome = await submitter.write({ address: settings.jobsContract, abi: JOBS_CONTRACT_ABI, functionName: 'registerOperator', args: [settings.serviceId, registration] });
    if (outcome.kind !== 'sent') throw new Error(`registering ${account.address} as an operator of service ${settings.serviceId} reverts with ${outcome.errorName}`);
    logger.info({ address: account.address, serviceId: settings.serviceId.toString(), capacity: settings.capacity, txHash: outcome.txHash }, 'registered as an operator of the service');
  }

  const scope = `${settings.chainId}:${settings.jobsContract.toLowerCase()}:${settings.serviceManager.toLowerCase()}:${settings.serviceId}`;
  const store = new CursorStore(join(input.dataDir, 'operator.db'), scope);
  const watcherChain = viemWatcherChain(publicClient as never, settings);
  const operatorChain: OperatorChain = {
    blockHash: watcherChain.blockHash,
    async jobCompleted(callId) {
      try {
        const call = await publicClient.readContract({ address: settings.jobsContract, abi: JOBS_CONTRACT_ABI, functionName: 'getJobCall', args: [settings.serviceId, callId] });
        return call.completed;
      } catch (error) {
        if (/UnknownJobCall/.test(String((error as Error).message))) return null;
        throw error;
      }
    },
    async assignmentOf(callId) {
      const [operator, deadline, done] = await publicClient.readContract({ address: settings.serviceManager, abi: SERVICE_MANAGER_ABI, functionName: 'assignmentOf', args: [settings.serviceId, callId] });
      return { operator, deadline, done };
    },
    async latestBlockTime() {
      return (await publicClient.getBlock({ blockTag: 'latest' })).timestamp;
    },
  };
  const base = input.publicUrl.replace(/\/+$/, '');
  // Reads asked together: one JSON-RPC batch's worth, or a few at a time for a node that takes no batches.
  const readsAtOnce = settings.rpcBatchSize > 0 ? settings.rpcBatchSize : 4;
  const operator = new Operator({
    serviceId: settings.serviceId,
    jobsContract: settings.jobsContract,
    serviceManager: settings.serviceManager,
    watcher: new Watcher({ chain: watcherChain, store, confirmations: settings.confirmations, readsAtOnce, ...(settings.startBlock === undefined ? {} : { startBlock: settings.startBlock }) }),
    store,
    submitter,
    chain: operatorChain,
    runner: input.runner,
    resultStore: input.resultStore,
    resultUrl: (serviceId, callId) => `${base}/v1/operator/results/${serviceId}/${callId}`,
    capacity: settings.capacity,
    maxResultBytes: settings.maxResultBytes,
    pollIntervalMs: settings.pollIntervalMs,
    readsAtOnce,
    logger,
  }).start();

  // New heads over a WebSocket only wake the loop early; polling goes on without it (and when it drops).
  let unwatch: (() => void) | null = null;
  if (settings.wsUrl) {
    const wsClient = createPublicClient({ chain, transport: webSocket(settings.wsUrl) });
    unwatch = wsClient.watchBlockNumber({ onBlockNumber: () => operator.wake(), onError: (error) => logger.debug({ err: error }, 'the WebSocket for new heads failed; polling goes on'), emitMissed: false });
  }
  logger.info({ address: account.address, serviceId: settings.serviceId.toString(), confirmations: settings.confirmations, capacity: settings.capacity, cursor: store.cursor()?.number.toString() ?? null }, 'operator started');
  return {
    operator,
    address: account.address,
    async close(options = {}) {
      unwatch?.();
      await operator.close(options);
      store.close();
    },
  };
}
