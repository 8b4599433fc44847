/**
 * How a gateway asks a worker to run one invocation over NATS, and how the worker answers (cluster mode, issue 18).
 *
 * The gateway subscribes to a fresh run subject, then publishes the request to the worker's invoke subject with the run
 * subject as its reply. Everything the worker says about that run goes to the run subject, told apart by the header
 * `k`: `started` (a sandbox started or a warm one was leased), `alive` (every second while it runs, so a gateway notices
 * a dead worker within seconds instead of waiting for the function's timeout), `out` (live output text), `chunk` (a
 * piece of a result larger than one NATS message) and `result` (the end). A cancel goes to the worker's cancel subject.
 *
 * A frame is binary: a 4-byte big-endian length, that many bytes of JSON metadata, then the raw bytes (payload, or body
 * then stderr). Payloads and bodies are bytes, never base64.
 */
import { KindlingError, ERROR_CODES, type ErrorCode } from '../core/errors.js';
import { EXECUTOR_NAMES, type ResourceLimits } from '../core/types.js';
import type { InvocationResult } from '../orchestrator/function-service.js';
import type { IdleUsageEvent, InvocationEvent } from '../orchestrator/handler-pools.js';
import type { FunctionVersion } from '../store/store.js';

export const invokeSubject = (nodeId: string): string => `kindling.workers.${nodeId}.invoke`;
export const cancelSubject = (nodeId: string): string => `kindling.workers.${nodeId}.cancel`;
/** A starting node asks whether its id is taken: a live node with that id answers `{nodeId, instance, startedAt}`. */
export const pingSubject = (nodeId: string): string => `kindling.workers.${nodeId}.ping`;
/** The same question among gateways (and `all` nodes), answered to the gateways' inboxes only. */
export const gatewayPingSubject = (nodeId: string): string => `kindling.gateways.${nodeId}.ping`;
export const RUN_SUBJECT_PREFIX = 'kindling.runs.';
/**
 * Workers send the idle usage of the warm sandboxes they keep for gateways' functions (CPU between calls: an
 * IdleUsageEvent as JSON); one gateway of the queue group records it.
 */
export const IDLE_USAGE_SUBJECT = 'kindling.usage.idle';
/** Gateways tell every worker a function was deleted (`{tenant, name}`): its warm sandboxes there go. */
export const DELETED_SUBJECT = 'kindling.functions.deleted';

/** The header that says what a message on a run subject is. */
export const KIND_HEADER = 'k';
/**
 * The header of a run request that names the worker process it is for (the `instance` of its registry entry). A worker
 * listens on its invoke subject without a queue group, so a connection the server still holds for it (a link that
 * died silently, which the server drops only at its own ping check) cannot take the call instead of the live one; a
 * process that shares the node id but is not that instance ignores the request.
 */
export const INSTANCE_HEADER = 'i';
export type RunMessageKind = 'started' | 'alive' | 'out' | 'chunk' | 'result';

/** What a worker needs to run one invocation: the whole version (workers read no store), the tenant's caps, the trace. */
export interface RunRequest {
  runId: string;
  /** The version to run; the worker picks the executor as a server does (the spec's, else the worker's default). */
  version: FunctionVersion;
  caps: Partial<ResourceLimits>;
  traceparent?: string;
  /** Whether the gateway wants live output (`out` messages): only when someone follows it. */
  output: boolean;
}

/** What a run's result says besides its body, stderr and whose it is: the facts that cross from worker to gateway. */
export type RunFacts = Pick<InvocationResult, 'invocationId' | 'exitCode' | 'durationMs' | 'coldStart' | 'timedOut' | 'oomKilled' | 'truncated' | 'executor'>;

/** The facts of a result, and no more (the optional ones only when set). */
export function runFactsOf(result: RunFacts): RunFacts {
  return {
    invocationId: result.invocationId,
    exitCode: result.exitCode,
    durationMs: result.durationMs,
    coldStart: result.coldStart,
    timedOut: result.timedOut,
    ...(result.oomKilled === undefined ? {} : { oomKilled: result.oomKilled }),
    ...(result.truncated === undefined ? {} : { truncated: result.truncated }),
    executor: result.executor,
  };
}

/** A finished run: its facts; its body and stderr are carried as raw bytes after the metadata. */
export interface RunResultMeta extends RunFacts {
  bodyBytes: number;
  /** The bytes of stderr after the body: the gateway checks that the answer adds up. */
  stderrBytes: number;
  /** The call's metering facts (handler functions), for the gateway's usage records. */
  metered?: InvocationEvent;
}

/** The end of a run: a result, or the error the worker's platform raised (user code failing is a result, not this). */
export type RunAnswer = { ok: true; result: RunResultMeta } | { ok: false; error: WireError };

export interface WireError {
  code: string;
  message: string;
  details?: Record<string, unknown>;
  retryAfterSeconds?: number;
}

export function encodeFrame(meta: unknown, ...parts: Uint8Array[]): Uint8Array {
  const json = Buffer.from(JSON.stringify(meta));
  const out = Buffer.allocUnsafe(4 + json.length + parts.reduce((sum, part) => sum + part.length, 0));
  out.writeUInt32BE(json.length, 0);
  json.copy(out, 4);
  let at = 4 + json.length;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** The metadata and the bytes after it (a view, not a copy). Throws on a frame that is cut short or not JSON. */
export function decodeFrame<T>(frame: Uint8Array): { meta: T; rest: Buffer } {
  const buffer = Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength);
  if (buffer.length < 4) throw new Error('a run frame shorter than its length prefix');
  const length = buffer.readUInt32BE(0);
  if (4 + length > buffer.length) throw new Error(`a run frame whose metadata (${length} bytes) runs past its end (${buffer.length})`);
  return { meta: JSON.parse(buffer.subarray(4, 4 + length).toString('utf8')) as T, rest: buffer.subarray(4 + length) };
}

/** An error as it crosses to the gateway: a KindlingError keeps its code (and so its status); anything else is INTERNAL. */
export function toWireError(error: unknown): WireError {
  if (error instanceof KindlingError) {
    return {
      code: error.code,
      message: error.message,
      ...(error.details === undefined ? {} : { details: error.details }),
      ...(error.retryAfterSeconds === undefined ? {} : { retryAfterSeconds: error.retryAfterSeconds }),
    };
  }
  return { code: 'EXECUTOR_FAILED', message: `the worker failed to run it: ${error instanceof Error ? error.message : String(error)}` };
}

export function fromWireError(wire: WireError, nodeId: string): KindlingError {
  const code: ErrorCode = Object.hasOwn(ERROR_CODES, wire.code) ? (wire.code as ErrorCode) : 'EXECUTOR_FAILED';
  return new KindlingError(code, String(wire.message), {
    details: { ...(wire.details ?? {}), node: nodeId },
    ...(typeof wire.retryAfterSeconds === 'number' ? { retryAfterSeconds: wire.retryAfterSeconds } : {}),
  });
}

/** An idle usage message as a worker sent it, checked (a malformed one is null: dropped, never recorded). */
export function parseIdleUsage(data: Uint8Array): IdleUsageEvent | null {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(data).toString('utf8'));
  } catch {
    return null;
  }
  const event = value as Partial<IdleUsageEvent> | null;
  if (event === null || typeof event !== 'object') return null;
  const { tenant, functionName, executor, cpuMs, memoryMb } = event;
  if (typeof tenant !== 'string' || typeof functionName !== 'string' || typeof executor !== 'string' || !(EXECUTOR_NAMES as readonly string[]).includes(executor)) return null;
  if (typeof cpuMs !== 'number' || !Number.isFinite(cpuMs) || cpuMs < 0 || typeof memoryMb !== 'number' || !Number.isFinite(memoryMb) || memoryMb < 0) return null;
  return { tenant, functionName, executor, cpuMs, memoryMb };
}

/** Splits a frame into pieces of at most `maxBytes` (views, not copies). */
export function chunks(frame: Uint8Array, maxBytes: number): Uint8Array[] {
  const pieces: Uint8Array[] = [];
  for (let at = 0; at < frame.length; at += maxBytes) pieces.push(frame.subarray(at, Math.min(frame.length, at + maxBytes)));
  return pieces;
}
