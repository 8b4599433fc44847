/**
 * Jobs 0 (execute_function) and 1 (execute_advanced): a command in an image, the payload as its stdin, its stdout as
 * the output. A non-zero exit is a result (its stdout is the output, as in the original); a timeout or an OOM kill is
 * not: the command did not finish, so the job answers an error (EXECUTION_TIMED_OUT / EXECUTION_OOM_KILLED).
 */
import { toHex } from 'viem';
import { KindlingError } from '../../core/errors.js';
import type { ExecutionResult } from '../../core/types.js';
import { resolveImageAlias } from '../../orchestrator/image-aliases.js';
import { COLLECT_STDOUT } from '../../orchestrator/io-plan.js';
import { RUNTIMES } from '../../orchestrator/runtimes.js';
import type { CreateSandboxRequest } from '../../orchestrator/sandboxes.js';
import { JobError, type JobContext, type JobOutput } from './context.js';
import { CHECKPOINT_METADATA_KEY, resolveSnapshotRef } from './refs.js';

export interface CommandSpec {
  image: string;
  command: readonly string[];
  env: readonly string[];
  payload: Uint8Array;
  /** 0: the server's default. */
  timeoutMs: number;
  /** 0: the server's default. */
  memoryMb: number;
}

/** The original's `K=V` list as an env object; an entry without `=` or with an empty name is refused. */
export function parseEnvList(list: readonly string[]): Record<string, string> {
  const env: Record<string, string> = {};
  list.forEach((entry, index) => {
    const at = entry.indexOf('=');
    if (at <= 0) throw new KindlingError('VALIDATION_FAILED', `env[${index}] "${entry.slice(0, 60)}" is not NAME=VALUE`, { details: { field: `env.${index}` } });
    env[entry.slice(0, at)] = entry.slice(at + 1);
  });
  return env;
}

/** An image name of the original (alpine:latest, python:3.11) or of this project, as the image to run. */
export function imageOf(name: string): string {
  if (name === '') throw new KindlingError('VALIDATION_FAILED', 'image is empty: give an image such as "alpine:latest", "python:3.11" or "kindling/base"', { details: { field: 'image' } });
  const resolved = resolveImageAlias(name);
  return 'runtime' in resolved ? RUNTIMES[resolved.runtime].image : resolved.image;
}

/** A persistent sandbox's image or runtime for an image name of a job. */
function sandboxImage(name: string): Pick<CreateSandboxRequest, 'image' | 'runtime'> {
  if (name === '') throw new KindlingError('VALIDATION_FAILED', 'image is empty: give an image such as "alpine:latest", "python:3.11" or "kindling/base"', { details: { field: 'image' } });
  const resolved = resolveImageAlias(name);
  return 'runtime' in resolved ? { runtime: resolved.runtime } : { image: resolved.image };
}

function checkPayload(context: JobContext, payload: Uint8Array): void {
  const cap = context.scope.maxPayloadBytes;
  if (cap !== undefined && payload.length > cap) {
    throw new KindlingError('PAYLOAD_TOO_LARGE', `the payload has ${payload.length} bytes; this caller's quota maxPayloadBytes allows ${cap}`, { details: { maxPayloadBytes: cap } });
  }
}

/** The stdout kept: the operator's maxOutputBytes, lowered to the tenant's cap (a request above a cap would be refused). */
function outputBytesOf(context: JobContext): number {
  return Math.min(context.settings.maxOutputBytes, context.scope.caps.outputBytes ?? Infinity);
}

function unfinished(result: Pick<ExecutionResult, 'timedOut' | 'oomKilled'>, timeoutMs: number | undefined): void {
  if (result.timedOut) throw new JobError('EXECUTION_TIMED_OUT', `the command ran past its timeout${timeoutMs === undefined ? '' : ` of ${timeoutMs} ms`} and was killed; give it a longer timeoutSecs (job 1) or make it faster`);
  if (result.oomKilled) throw new JobError('EXECUTION_OOM_KILLED', 'the command ran out of memory and was killed; give it more memoryMb (job 1)');
}

/** A one-off execution in a fresh sandbox, exactly as POST /v1/execute runs it (limits, tenant caps, queue). */
export async function executeOnce(context: JobContext, spec: CommandSpec): Promise<JobOutput> {
  checkPayload(context, spec.payload);
  const { result, stdout } = await context.services.executions.executeRaw(
    {
      image: imageOf(spec.image),
      command: [...spec.command],
      env: parseEnvList(spec.env),
      outputBytes: outputBytesOf(context),
      ...(spec.timeoutMs > 0 ? { timeoutMs: spec.timeoutMs } : {}),
      ...(spec.memoryMb > 0 ? { memoryMb: spec.memoryMb } : {}),
    },
    { signal: context.signal, tenant: context.scope, io: { stdin: { kind: 'bytes', bytes: Buffer.from(spec.payload) }, stdout: COLLECT_STDOUT } },
  );
  unfinished(result, spec.timeoutMs > 0 ? spec.timeoutMs : undefined);
  return { values: [toHex(stdout)], outputBytes: stdout };
}

/** A command in a persistent sandbox of the caller (its stdout is text there: UTF-8, invalid bytes replaced). */
async function runInSandbox(context: JobContext, sandboxId: string, spec: CommandSpec): Promise<JobOutput> {
  checkPayload(context, spec.payload);
  const result = await context.services.sandboxes.run(context.tenant, sandboxId, {
    command: [...spec.command],
    env: parseEnvList(spec.env),
    stdinBase64: Buffer.from(spec.payload).toString('base64'),
    outputBytes: outputBytesOf(context),
    ...(spec.timeoutMs > 0 ? { timeoutMs: spec.timeoutMs } : {}),
  }, { signal: context.signal });
  // Killed by a cancel: no result, and a `checkpointed` run must not snapshot what the kill left.
  context.signal.throwIfAborted();
  unfinished(result, spec.timeoutMs > 0 ? spec.timeoutMs : undefined);
  const stdout = Buffer.from(result.stdout, 'utf8');
  return { values: [toHex(stdout)], outputBytes: stdout };
}

export type AdvancedMode = 'ephemeral' | 'cached' | 'checkpointed' | 'branched' | 'persistent';
const MODES: readonly string[] = ['ephemeral', 'cached', 'checkpointed', 'branched', 'persistent'];

/** Job 1: see docs/operator.md, "Jobs", for each mode. */
export async function executeAdvanced(context: JobContext, spec: CommandSpec & { mode: string; checkpointId: string; branchFrom: string }): Promise<JobOutput> {
  const mode = spec.mode === '' ? 'ephemeral' : spec.mode.toLowerCase();
  if (!MODES.includes(mode)) throw new KindlingError('VALIDATION_FAILED', `mode "${spec.mode.slice(0, 40)}" is not one of ${MODES.join(', ')} (empty: ephemeral)`, { details: { field: 'mode' } });
  const sandboxes = context.services.sandboxes;
  switch (mode as AdvancedMode) {
    case 'ephemeral':
    case 'cached':
      return executeOnce(context, spec);
    case 'persistent':
      if (spec.checkpointId === '') throw new KindlingError('VALIDATION_FAILED', 'mode persistent needs checkpointId: the id of an instance (job 6, 3 or 4) to run in', { details: { field: 'checkpointId' } });
      return runInSandbox(context, spec.checkpointId, spec);
    case 'branched': {
      if (spec.branchFrom === '') throw new KindlingError('VALIDATION_FAILED', 'mode branched needs branchFrom: a snapshot id (job 2), or "call:N" for the checkpoint of job call N', { details: { field: 'branchFrom' } });
      const fromSnapshot = resolveSnapshotRef(context, spec.branchFrom);
      const branch = await sandboxes.create(context.tenant, { fromSnapshot, ...(spec.memoryMb > 0 ? { memoryMb: spec.memoryMb } : {}) });
      try {
        return await runInSandbox(context, branch.id, spec);
      } finally {
        await sandboxes.delete(context.tenant, branch.id);
      }
    }
    case 'checkpointed': {
      const sandbox = await sandboxes.create(context.tenant, {
        ...sandboxImage(spec.image),
        ...(spec.memoryMb > 0 ? { memoryMb: spec.memoryMb } : {}),
        metadata: { [CHECKPOINT_METADATA_KEY]: `${context.serviceId}:${context.callId}` },
      });
      let output: JobOutput;
      try {
        output = await runInSandbox(context, sandbox.id, spec);
        await sandboxes.snapshot(context.tenant, sandbox.id);
      } catch (error) {
        await sandboxes.delete(context.tenant, sandbox.id).catch(() => undefined);
        throw error;
      }
      // Kept (it names the checkpoint) but holding no memory: its files stay on disk, its processes end.
      await sandboxes.hibernate(context.tenant, sandbox.id).catch(() => undefined);
      return output;
    }
  }
}
