/**
 * The operator's defaults, apart from the modules that use them so that the CLI can show them in `--help` without
 * loading viem and the operator (every other command would pay for that at start).
 */

/** Results larger than this go on chain as a content hash + URL (see docs/operator.md). */
export const DEFAULT_MAX_RESULT_BYTES = 16 * 1024;
/** Gas one result transaction may use at most. */
export const DEFAULT_MAX_GAS = 5_000_000n;

export const DEFAULT_OPERATOR_SETTINGS = { confirmations: 1, capacity: 4, maxGas: DEFAULT_MAX_GAS, maxResultBytes: DEFAULT_MAX_RESULT_BYTES, pollIntervalMs: 500 };
