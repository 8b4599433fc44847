/**
 * The operator's defaults, apart from the modules that use them so that the CLI can show them in `--help` without
 * loading viem and the operator (every other command would pay for that at start).
 */

/** Results larger than this go on chain as a content hash + URL (see docs/operator.md). */
export const DEFAULT_MAX_RESULT_BYTES = 16 * 1024;
/** Gas one result transaction may use at most. */
export const DEFAULT_MAX_GAS = 5_000_000n;

/** A sent transaction not mined within this is taken as dropped or replaced: the nonce is read again, the call resent. */
export const DEFAULT_TX_TIMEOUT_MS = 60_000;

export const DEFAULT_OPERATOR_SETTINGS = { confirmations: 1, capacity: 4, maxGas: DEFAULT_MAX_GAS, maxResultBytes: DEFAULT_MAX_RESULT_BYTES, pollIntervalMs: 500, txTimeoutMs: DEFAULT_TX_TIMEOUT_MS, rpcBatchSize: 64 };

/**
 * Quotas of a chain caller's tenant (`chain-<address>`), made on its first job. Anyone with gas can call, and a new
 * address costs nothing, so the resource caps are small; an operator raises them with --chain-tenant-quotas. No rate
 * or concurrency cap by default: each job is a paid transaction, and the operator's --capacity bounds how many run
 * (a refusal there would put an error on chain for a job that could simply have waited). maxTimeoutMs
 * stays well under the service manager's default assignment timeout (300 s): a job that ran past its deadline would be
 * reassigned and run a second time by another operator.
 */
export const DEFAULT_CHAIN_TENANT_QUOTAS: Readonly<Record<string, number>> = {
  maxMemoryMb: 512,
  maxTimeoutMs: 120_000,
  maxCpus: 1,
  maxOutputBytes: 1024 * 1024,
  maxDiskMb: 512,
  maxPayloadBytes: 4 * 1024 * 1024,
  maxSandboxes: 4,
  maxPausedSandboxes: 8,
  maxSandboxMemoryMb: 2048,
  maxSandboxDiskMb: 4096,
  maxSnapshotBytes: 4 * 1024 * 1024 * 1024,
};
