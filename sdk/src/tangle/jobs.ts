/**
 * The 12 jobs of the FaaS blueprint, as they travel on chain: each job's inputs are the ABI encoding of its argument
 * list, each result is the ABI encoding of its output list. Indices and argument lists are those of the original
 * blueprint (faas-infra-blueprint's `faas-lib/src/jobs.rs`); its optional arguments (`Option<T>`) are carried as the
 * type's zero value (empty string, empty list, 0), which is how an EVM caller writes "none".
 *
 * This table is shared by the customer side (SDK, CLI) and the operator, so both always agree on the encoding.
 */
import {
  decodeAbiParameters,
  encodeAbiParameters,
  encodeErrorResult,
  decodeErrorResult,
  parseAbiParameters,
  parseAbi,
  type AbiParameter,
  type Hex,
} from 'viem';

export interface JobDefinition {
  readonly index: number;
  /** The name of the original blueprint's job function, without the `_job` suffix. */
  readonly name: string;
  readonly inputs: readonly AbiParameter[];
  readonly outputs: readonly AbiParameter[];
}

function job(index: number, name: string, inputs: string, outputs: string): JobDefinition {
  return { index, name, inputs: parseAbiParameters(inputs), outputs: parseAbiParameters(outputs) };
}

export const JOBS: readonly JobDefinition[] = [
  job(0, 'execute_function', 'string image, string[] command, string[] env, bytes payload', 'bytes stdout'),
  job(
    1,
    'execute_advanced',
    'string image, string[] command, string[] env, bytes payload, string mode, string checkpointId, string branchFrom, uint64 timeoutSecs',
    'bytes stdout',
  ),
  job(2, 'create_snapshot', 'string containerId, string name, string description', 'string snapshotId'),
  job(3, 'restore_snapshot', 'string snapshotId', 'string instanceId'),
  job(4, 'create_branch', 'string parentSnapshotId, string branchName', 'string branchId'),
  job(5, 'merge_branches', 'string[] branchIds, string mergeStrategy', 'string mergedId'),
  job(
    6,
    'start_instance',
    'string snapshotId, string image, uint32 cpuCores, uint32 memoryMb, uint32 diskGb, bool enableSsh',
    'string instanceId',
  ),
  job(7, 'stop_instance', 'string instanceId', 'bool stopped'),
  job(8, 'pause_instance', 'string instanceId', 'string state'),
  job(9, 'resume_instance', 'string instanceId', 'string state'),
  job(10, 'expose_port', 'string instanceId, uint16 internalPort, string protocol, string subdomain', 'string url'),
  job(11, 'upload_files', 'string instanceId, string targetPath, bytes filesData', 'uint64 bytesWritten'),
];

/**
 * Job 1 may carry a ninth argument, `uint32 memoryMb` (the original had none; 0 means the default). Inputs encoded
 * with the original eight arguments decode unchanged.
 */
export const EXECUTE_ADVANCED_WITH_MEMORY: readonly AbiParameter[] = [
  ...JOBS[1]!.inputs,
  { type: 'uint32', name: 'memoryMb' },
];

export function jobDefinition(index: number): JobDefinition | undefined {
  return Number.isInteger(index) ? JOBS[index] : undefined;
}

/**
 * Results that are not the job's output: an error (the job could not run or its input was bad) or a reference to an
 * output too large for a transaction. Both are encoded like Solidity custom errors (4-byte selector + ABI arguments),
 * which cannot be confused with an output: every output list above starts with a 32-byte word whose first 4 bytes are
 * zero (an offset or a small number), and neither selector is zero.
 */
export const RESULT_ENVELOPES_ABI = parseAbi([
  'error KindlingJobError(string code, string message)',
  'error KindlingResultRef(bytes32 sha256, uint64 sizeBytes, string url)',
]);

export type JobResult =
  | { kind: 'output'; values: readonly unknown[] }
  | { kind: 'error'; code: string; message: string }
  | { kind: 'ref'; sha256: Hex; sizeBytes: bigint; url: string };

export function encodeJobInputs(index: number, args: readonly unknown[]): Hex {
  const def = requireJob(index);
  const params = index === 1 && args.length === 9 ? EXECUTE_ADVANCED_WITH_MEMORY : def.inputs;
  return encodeAbiParameters(params, args as never);
}

/** Decodes a job's inputs; throws a viem error when the bytes do not match the job's argument list. */
export function decodeJobInputs(index: number, inputs: Hex): readonly unknown[] {
  const def = requireJob(index);
  if (index === 1) {
    // Both forms decode without error as either list, so tell them apart by the offset of the first (dynamic)
    // argument, which is the size of the head: 9 words with memoryMb, 8 without.
    const withMemory = inputs.length >= 66 && BigInt(inputs.slice(0, 66)) === BigInt(9 * 32);
    return withMemory
      ? decodeAbiParameters(EXECUTE_ADVANCED_WITH_MEMORY, inputs)
      : [...decodeAbiParameters(def.inputs, inputs), 0];
  }
  return decodeAbiParameters(def.inputs, inputs);
}

export function encodeJobOutput(index: number, values: readonly unknown[]): Hex {
  return encodeAbiParameters(requireJob(index).outputs, values as never);
}

export function encodeJobError(code: string, message: string): Hex {
  return encodeErrorResult({ abi: RESULT_ENVELOPES_ABI, errorName: 'KindlingJobError', args: [code, message] });
}

export function encodeResultRef(sha256: Hex, sizeBytes: bigint, url: string): Hex {
  return encodeErrorResult({ abi: RESULT_ENVELOPES_ABI, errorName: 'KindlingResultRef', args: [sha256, sizeBytes, url] });
}

export function decodeJobResult(index: number, result: Hex): JobResult {
  if (result.length >= 10 && !result.startsWith('0x00000000')) {
    const decoded = decodeErrorResult({ abi: RESULT_ENVELOPES_ABI, data: result });
    if (decoded.errorName === 'KindlingJobError') {
      const [code, message] = decoded.args;
      return { kind: 'error', code, message };
    }
    const [sha256, sizeBytes, url] = decoded.args;
    return { kind: 'ref', sha256, sizeBytes, url };
  }
  return { kind: 'output', values: decodeAbiParameters(requireJob(index).outputs, result) };
}

function requireJob(index: number): JobDefinition {
  const def = jobDefinition(index);
  if (!def) throw new RangeError(`unknown job index ${index}: the FaaS blueprint has jobs 0-${JOBS.length - 1}`);
  return def;
}
