/**
 * What every job handler gets: the orchestrator services (the same ones the HTTP API calls), the caller's tenant and
 * the operator's settings. Handlers return the job's output values (the ABI output list of sdk/src/tangle/jobs.ts);
 * they throw a KindlingError (the orchestrator's stable codes) or a JobError (codes only jobs have) when the job
 * cannot run, which the runner turns into a KindlingJobError result.
 */
import type { ExecutionService, TenantScope } from '../../orchestrator/execution-service.js';
import type { SandboxService } from '../../orchestrator/sandboxes.js';
import type { TenantService } from '../../orchestrator/tenants.js';

export interface JobServices {
  executions: Pick<ExecutionService, 'executeRaw'>;
  sandboxes: Pick<
    SandboxService,
    'create' | 'get' | 'list' | 'delete' | 'run' | 'snapshot' | 'listSnapshots' | 'pause' | 'resume' | 'hibernate' | 'readTar' | 'writeTar'
  >;
  tenants: Pick<TenantService, 'ensure' | 'checkRate'>;
}

export interface JobSettings {
  /** The server's URL as callers reach it (job 10 answers URLs under it), without a trailing slash. */
  publicUrl: string;
  /** stdout kept of a job 0/1 command (the execution's outputBytes limit, capped by the tenant's quota). */
  maxOutputBytes: number;
}

export interface JobContext {
  services: JobServices;
  settings: JobSettings;
  /** The caller's tenant (`chain-<lowercase address>`) and its scope (caps, concurrency slot). */
  tenant: string;
  scope: TenantScope;
  /** The on-chain call: checkpoints (job 1 `checkpointed`) are named after it. */
  serviceId: bigint;
  callId: bigint;
  signal: AbortSignal;
}

/** A handler's answer: the output values in ABI order, and for jobs 0/1 the raw stdout (for results too large for a transaction). */
export interface JobOutput {
  values: readonly unknown[];
  outputBytes?: Uint8Array;
}

/** Failures only jobs have (the orchestrator's own failures are KindlingErrors with the registry's codes). */
export const JOB_ERROR_CODES = [
  'INPUT_UNDECODABLE',
  'UNKNOWN_JOB',
  'INTERNAL',
  'EXECUTION_TIMED_OUT',
  'EXECUTION_OOM_KILLED',
  'SSH_UNSUPPORTED',
  'PROTOCOL_UNSUPPORTED',
  'MERGE_TOO_LARGE',
] as const;
export type JobErrorCode = (typeof JOB_ERROR_CODES)[number];

export class JobError extends Error {
  constructor(
    readonly code: JobErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'JobError';
  }
}
