/**
 * Runs the FaaS blueprint's 12 jobs (sdk/src/tangle/jobs.ts) on the orchestrator, for the chain operator: inputs
 * decoded by each job's ABI, the job run through the same services as the HTTP API under the on-chain caller's tenant
 * (`chain-<lowercase address>`, created on first use with the operator's quotas for chain callers), and the output
 * ABI-encoded. It never throws for bad input or a failing job: those answer a KindlingJobError result (a stable code
 * and a message saying how to fix it); see docs/operator.md, "Jobs".
 */
import type { Address, Hex } from 'viem';
import { decodeJobInputs, encodeJobError, encodeJobOutput, jobDefinition, JOBS } from '@kindling/sdk/tangle';
import { KindlingError } from '../core/errors.js';
import { DEFAULT_LIMIT_POLICY } from '../orchestrator/limits.js';
import { checkQuotas } from '../orchestrator/tenants.js';
import { JobError, type JobContext, type JobOutput, type JobServices } from './jobs/context.js';
import { executeAdvanced, executeOnce } from './jobs/execute.js';
import { createBranch, createSnapshot, exposePort, pauseInstance, restoreSnapshot, resumeInstance, startInstance, stopInstance, uploadFiles } from './jobs/instances.js';
import { mergeBranches } from './jobs/merge.js';

export interface JobCall {
  serviceId: bigint;
  callId: bigint;
  jobIndex: number;
  caller: Address;
  inputs: Hex;
}

export interface JobRunResult {
  /** The ABI-encoded output, or a KindlingJobError envelope. */
  result: Hex;
  /** Jobs 0 and 1: the command's stdout as bytes (for a result too large for a transaction: hash it and serve it). */
  outputBytes?: Uint8Array;
}

export interface JobRunner {
  /**
   * Runs the job; never rejects for bad input, a failing job or a failure inside the platform (those are error
   * envelopes). Rejects (with the signal's reason) only when `signal` aborted: the job's commands were killed, and
   * what they left is no result.
   */
  run(job: JobCall, signal: AbortSignal): Promise<JobRunResult>;
}

export interface JobRunnerOptions extends JobServices {
  /** The server's URL as callers reach it (job 10's URLs), e.g. https://kindling.example.com. */
  publicUrl: string;
  /** Quotas of a chain caller's tenant when it is created (the fields of PATCH /v1/tenants/NAME); default: the server's tenant defaults. */
  tenantQuotas?: Record<string, number>;
  /** stdout kept of a job 0/1 command (also capped by the tenant's maxOutputBytes). Default 1 MiB. */
  maxOutputBytes?: number;
  /** Where failures inside the platform are logged (the result carries only INTERNAL and a generic message). */
  logger?: { error(context: object, message: string): void };
}

export const DEFAULT_JOB_MAX_OUTPUT_BYTES = 1024 * 1024;

/** The tenant an on-chain caller acts as. */
export const chainTenantOf = (caller: Address): string => `chain-${caller.toLowerCase()}`;

type Handler = (context: JobContext, args: readonly unknown[]) => Promise<JobOutput> | JobOutput;

const secondsToMs = (seconds: bigint): number => (seconds > 0n ? Number(seconds) * 1000 : 0);

/** One handler per job index, each taking the decoded argument list in the ABI's order. */
const HANDLERS: readonly Handler[] = [
  (context, [image, command, env, payload]) =>
    executeOnce(context, { image: image as string, command: command as string[], env: env as string[], payload: hexBytes(payload as Hex), timeoutMs: 0, memoryMb: 0 }),
  (context, [image, command, env, payload, mode, checkpointId, branchFrom, timeoutSecs, memoryMb]) =>
    executeAdvanced(context, {
      image: image as string,
      command: command as string[],
      env: env as string[],
      payload: hexBytes(payload as Hex),
      mode: mode as string,
      checkpointId: checkpointId as string,
      branchFrom: branchFrom as string,
      timeoutMs: secondsToMs(timeoutSecs as bigint),
      memoryMb: Number(memoryMb),
    }),
  (context, [containerId]) => createSnapshot(context, containerId as string),
  (context, [snapshotId]) => restoreSnapshot(context, snapshotId as string),
  (context, [parentSnapshotId, branchName]) => createBranch(context, parentSnapshotId as string, branchName as string),
  (context, [branchIds, strategy]) => mergeBranches(context, branchIds as string[], strategy as string),
  (context, [snapshotId, image, cpuCores, memoryMb, diskGb, enableSsh]) =>
    startInstance(context, { snapshotId: snapshotId as string, image: image as string, cpuCores: Number(cpuCores), memoryMb: Number(memoryMb), diskGb: Number(diskGb), enableSsh: enableSsh as boolean }),
  (context, [instanceId]) => stopInstance(context, instanceId as string),
  (context, [instanceId]) => pauseInstance(context, instanceId as string),
  (context, [instanceId]) => resumeInstance(context, instanceId as string),
  (context, [instanceId, port, protocol]) => exposePort(context, instanceId as string, Number(port), protocol as string),
  (context, [instanceId, targetPath, filesData]) => uploadFiles(context, instanceId as string, targetPath as string, hexBytes(filesData as Hex)),
];

function hexBytes(hex: Hex): Uint8Array {
  return Buffer.from(hex.slice(2), 'hex');
}

const signature = (index: number): string => `${JOBS[index]!.name}(${JOBS[index]!.inputs.map((input) => `${input.type} ${input.name ?? ''}`.trim()).join(', ')})`;

export function createJobRunner(options: JobRunnerOptions): JobRunner {
  const services: JobServices = { executions: options.executions, sandboxes: options.sandboxes, tenants: options.tenants };
  const maxOutputBytes = options.maxOutputBytes ?? DEFAULT_JOB_MAX_OUTPUT_BYTES;
  if (!Number.isInteger(maxOutputBytes) || maxOutputBytes < 0 || maxOutputBytes > DEFAULT_LIMIT_POLICY.max.outputBytes) {
    throw new RangeError(`maxOutputBytes must be a whole number from 0 to ${DEFAULT_LIMIT_POLICY.max.outputBytes}, got ${maxOutputBytes}`);
  }
  // A bad quota is the operator's configuration error: refused here, at start-up, not by every job.
  if (options.tenantQuotas !== undefined) checkQuotas(options.tenantQuotas);
  const settings = { publicUrl: options.publicUrl.replace(/\/+$/, ''), maxOutputBytes };
  const failed = (code: string, message: string): JobRunResult => ({ result: encodeJobError(code, message) });

  return {
    async run(job, signal) {
      const definition = jobDefinition(job.jobIndex);
      const handler = HANDLERS[job.jobIndex];
      if (definition === undefined || handler === undefined) {
        return failed('UNKNOWN_JOB', `job index ${job.jobIndex} does not exist: the FaaS blueprint has jobs 0-${JOBS.length - 1} (0 execute_function ... 11 upload_files)`);
      }
      let args: readonly unknown[];
      try {
        args = decodeJobInputs(job.jobIndex, job.inputs);
      } catch {
        return failed('INPUT_UNDECODABLE', `the inputs are not the ABI encoding of job ${job.jobIndex}'s arguments: ${signature(job.jobIndex)}`);
      }
      try {
        const tenant = chainTenantOf(job.caller);
        const scope = await services.tenants.ensure(tenant, options.tenantQuotas ?? {});
        services.tenants.checkRate(tenant);
        const output = await handler({ services, settings, tenant, scope, serviceId: job.serviceId, callId: job.callId, signal }, args);
        signal.throwIfAborted();
        return { result: encodeJobOutput(job.jobIndex, output.values), ...(output.outputBytes === undefined ? {} : { outputBytes: output.outputBytes }) };
      } catch (error) {
        // A cancelled job has no result: the caller (shutdown, a reassigned job) must not submit what a kill left.
        if (signal.aborted) throw signal.reason ?? error;
        if (error instanceof KindlingError || error instanceof JobError) return failed(error.code, error.message);
        options.logger?.error({ err: error, serviceId: String(job.serviceId), callId: String(job.callId), jobIndex: job.jobIndex }, 'a job failed inside the platform');
        return failed('INTERNAL', `job ${job.jobIndex} (${definition.name}) failed inside the platform; the operator's log has the details (service ${job.serviceId}, call ${job.callId})`);
      }
    },
  };
}
