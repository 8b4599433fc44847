import { posix } from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { KindlingError, storageFullError } from '../core/errors.js';
import { newExecutionId } from '../core/ids.js';
import { systemClock, type Clock } from '../core/clock.js';
import { unknownExecutorMessage, type ExecuteRequest, type ExecutionResult, type ExecutorName, type InputFile, type ResourceLimits, type RunSpec } from '../core/types.js';
import type { Execution, Executor } from '../executors/executor.js';
import { ConcurrencyLimiter, type ConcurrencyLimiterOptions } from './concurrency-limiter.js';
import { DEFAULT_LIMIT_POLICY, resolveLimits, type LimitPolicy } from './limits.js';
import { RUNTIMES, runtimeDefinition } from './runtimes.js';
import { DEFAULT_IO, streamsStdin, type IoPlan } from './io-plan.js';
import { ATTR, type TraceSpan } from '../core/tracing.js';
import { InvocationPhases, resultAttributes } from './phases.js';

export type OutputStreamName = 'stdout' | 'stderr';

export interface ExecuteOptions {
  signal?: AbortSignal;
  /** Called with each decoded chunk as the process produces it (within the output cap). */
  onOutput?: (stream: OutputStreamName, text: string) => void;
  /** Called once the sandbox has started, before any output, with the execution id and whether it was cold. */
  onStarted?: (id: string, info: { coldStart: boolean; executor: ExecutorName }) => void;
  /** Where stdin comes from and where stdout goes; default: the request's own stdin, stdout collected. */
  io?: IoPlan;
  /** The deployed function this execution serves (metrics label); one-off executions have none. */
  functionName?: string;
  /** W3C trace context of the request; passed to the process as env TRACEPARENT and to observers. */
  trace?: TraceContext;
  /** The tenant it runs for: caps on its limits, its concurrency slot, the tenant of its usage record. */
  tenant?: TenantScope;
  /** Host directories bound read-only inside (a function's bundle at its work dir); never from a request. */
  roBinds?: { source: string; target: string }[];
  /**
   * A cluster worker's run for a gateway: the finished execution's usage goes here (the gateway meters it), and this
   * server's observers see it marked `meteredElsewhere` (counted in its metrics, not in its usage records).
   */
  onMetered?: (result: ExecutionResult, context: ExecutionContext) => void;
}

/** What an execution needs to know of its tenant. */
export interface TenantScope {
  name: string;
  /** Caps on resource limits (the tenant's quotas): defaults are lowered to them, requests above get 400. */
  caps: Partial<ResourceLimits>;
  /**
   * Takes a slot of the tenant's concurrency quota (or throws 429); absent when the caller already holds one. Async
   * in a cluster of several gateways, where the slots are shared (src/cluster/tenant-slots.ts).
   */
  acquire?: () => (() => void) | Promise<() => void>;
  /**
   * Throws the 429 `acquire` would throw now, reserving nothing. A function's call takes the tenant's slot only once
   * it holds the function's own, and checks this first: a tenant that runs all it may is refused at once, so it
   * neither waits in a function's queue nor makes a sandbox start, for a call that would be refused. Absent with
   * `acquire`.
   */
  checkSlot?: () => void;
  /** The tenant's cap on request bodies (quota maxPayloadBytes); absent: the server's limits. */
  maxPayloadBytes?: number;
  /** The tenant's concurrency quota; it also bounds the warm sandboxes its functions keep (minWarm summed). */
  maxConcurrency?: number;
  /** Dependency builds the tenant may run at once (quota maxConcurrentBuilds); absent: no cap but the server's. */
  maxConcurrentBuilds?: number;
}

/** The W3C trace context an execution runs under (see src/api/trace.ts). */
export interface TraceContext {
  traceId: string;
  /** The `traceparent` value the sandbox sees (this server's span as the parent). */
  traceparent: string;
  /** The exported span the execution runs under (tracing on); its phases become its children. */
  span?: TraceSpan;
  /** The phases of the invocation this execution serves, when its runner tracks them (else made here from `span`). */
  phases?: InvocationPhases;
}

/** What observers learn about a finished execution besides its result. */
export interface ExecutionContext {
  image: string;
  stdinBytes: number;
  streamedStdoutBytes: number;
  /** Output bytes of the process: stdout (kept and streamed) plus kept stderr. */
  outputBytes: number;
  functionName?: string;
  /** The tenant it ran for (usage records); absent: the tenant `default`. */
  tenant?: string;
  /** The memory limit the sandbox ran with (for GB-seconds). */
  memoryMb: number;
  traceId?: string;
  /** A cluster worker's run for a gateway: the gateway meters it, not this server. */
  meteredElsewhere?: boolean;
}

/** A finished execution with its output as bytes (the raw invoke path: no text decoding, no base64). */
export interface RawExecution {
  result: ExecutionResult;
  stdout: Buffer;
  stderr: Buffer;
}

/** Observers see every finished execution (metrics, usage); they never change the outcome. */
export interface ExecutionObserver {
  onExecutionFinished(result: ExecutionResult, context: ExecutionContext): void;
  onExecutionFailed?(error: KindlingError, context: { executor: ExecutorName; functionName?: string; tenant?: string }): void;
}

/** Turns the image a tenant names into the one an executor runs (custom images, see custom-images.ts). */
export interface ImageResolver {
  resolve(image: string, tenant: string | null): string;
  /** The built-in image a resolved custom image was built from (`kindling/python3.13`); null for any other image. */
  baseOf?(image: string): string | null;
}

export interface ExecutionServiceOptions {
  /** Custom images: a tenant's `kindling/<name>` becomes its own image; absent: names go to the executor as they are. */
  images?: ImageResolver;
  executors: ReadonlyMap<ExecutorName, Executor>;
  defaultExecutor: ExecutorName;
  concurrency: ConcurrencyLimiterOptions;
  limits?: LimitPolicy;
  observers?: ExecutionObserver[];
  clock?: Clock;
  /**
   * A sandbox start (executor.start()) not done after this long (or the executor's own maxStartMs, if larger) fails
   * with SANDBOX_START_TIMEOUT (503, retryable) and what it made is killed when it appears: a hung engine call never
   * holds a request, a concurrency slot or an async invocation for longer. Default 30000.
   */
  startTimeoutMs?: number;
}

export const BASE_ENV: Record<string, string> = {
  PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
  HOME: '/tmp',
  LANG: 'C.UTF-8',
};

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** Top-level directories of the image that a work dir (an empty tmpfs mounted over it) must not hide. */
const SYSTEM_DIRS = new Set(['proc', 'dev', 'sys', '.kindling', '.kindling-agent', 'etc', 'usr', 'bin', 'sbin', 'lib', 'lib32', 'lib64', 'libx32', 'boot', 'run']);

/**
 * One work-dir rule for every executor: /work (default), /tmp or anything under it, or another top-level directory
 * (new, or an existing non-system one whose content the empty tmpfs then hides).
 */
export function checkWorkdir(workdir: string): string {
  const fail = (why: string): never => {
    throw new KindlingError('VALIDATION_FAILED', `workdir "${workdir}" ${why}; use /work (the default), a path under /tmp, or a top-level directory such as /app`, { details: { field: 'workdir' } });
  };
  if (!workdir.startsWith('/') || workdir.includes('\0') || posix.normalize(workdir) !== workdir || (workdir.length > 1 && workdir.endsWith('/'))) {
    fail('must be an absolute, normalized path');
  }
  const segments = workdir.split('/').slice(1);
  const top = segments[0] ?? '';
  if (top === '') fail('cannot be the read-only root');
  if (SYSTEM_DIRS.has(top)) fail(`would hide the system directory /${top}`);
  if (top !== 'tmp' && segments.length > 1) fail('may be nested only under /tmp');
  return workdir;
}

/** Keeps the first `capBytes` of a stream, drains and counts the rest so the process never blocks on a full pipe. */
class OutputCollector {
  private readonly chunks: Buffer[] = [];
  private keptBytes = 0;
  truncated = false;
  private readonly decoder = new StringDecoder('utf8');

  constructor(
    private readonly capBytes: number,
    private readonly onText: ((text: string) => void) | undefined,
  ) {}

  push(chunk: Buffer): void {
    const room = this.capBytes - this.keptBytes;
    if (room <= 0) {
      if (chunk.length > 0) this.truncated = true;
      return;
    }
    const kept = chunk.length > room ? chunk.subarray(0, room) : chunk;
    if (kept.length < chunk.length) this.truncated = true;
    this.chunks.push(kept);
    this.keptBytes += kept.length;
    if (this.onText) {
      const text = this.decoder.write(kept);
      if (text.length > 0) this.onText(text);
    }
  }

  finish(): Buffer {
    if (this.onText) {
      const rest = this.decoder.end();
      if (rest.length > 0) this.onText(rest);
    }
    return Buffer.concat(this.chunks, this.keptBytes);
  }
}

/** Runs one-off executions: validates semantics, applies limits, queues, runs, collects, times out. */
export class ExecutionService {
  private readonly limiter: ConcurrencyLimiter;
  private readonly limits: LimitPolicy;
  private readonly clock: Clock;
  private readonly observers: ExecutionObserver[];
  private draining = false;

  constructor(private readonly options: ExecutionServiceOptions) {
    this.limiter = new ConcurrencyLimiter(options.concurrency);
    this.limits = options.limits ?? DEFAULT_LIMIT_POLICY;
    this.clock = options.clock ?? systemClock;
    this.observers = options.observers ?? [];
  }

  get queueStats(): ConcurrencyLimiter['stats'] {
    return this.limiter.stats;
  }

  /** Stops accepting new executions (SIGTERM); in-flight ones go on. */
  stopAccepting(): void {
    this.draining = true;
  }

  /** Whether the server is shutting down (executions that end now may have been killed by it). */
  get isDraining(): boolean {
    return this.draining;
  }

  private pickExecutor(requested: ExecutorName | undefined): Executor {
    const name = requested ?? this.options.defaultExecutor;
    const executor = this.options.executors.get(name);
    if (!executor) {
      throw new KindlingError('UNKNOWN_EXECUTOR', unknownExecutorMessage(name, this.options.executors.keys()));
    }
    return executor;
  }

  /**
   * The image `runtime` code runs on when the request names one: the runtime's own, or a custom image built from it
   * (the runtime's interpreter or compiler is there, plus its packages); else 400.
   */
  private codeImage(requested: string, runtime: string, own: string, tenant: string | null): string {
    const resolved = this.options.images?.resolve(requested, tenant) ?? requested;
    if (resolved === own) return resolved;
    const base = this.options.images?.baseOf?.(resolved) ?? null;
    if (base !== own) {
      throw new KindlingError('VALIDATION_FAILED', `${runtime} code runs on ${own} or on a custom image built from it (kindling images create NAME --from ${runtime} --apt PKG); "${requested.slice(0, 120)}" is ${base === null ? 'neither' : `built from ${base}`}`, { details: { field: 'image' } });
    }
    return resolved;
  }

  /** Turns a request into a RunSpec, or throws a 4xx KindlingError that says how to fix it. */
  async prepare(request: ExecuteRequest, caps: Partial<ResourceLimits> = {}, tenant: string | null = null): Promise<{ spec: RunSpec; executor: Executor; stdin: Buffer | null }> {
    const hasCode = request.runtime !== undefined || request.code !== undefined;
    // runtime + code may name an image too: a custom image built from the runtime's (its packages, its files).
    const codeImage = hasCode && request.command === undefined ? request.image : undefined;
    const hasImage = (request.image !== undefined && codeImage === undefined) || request.command !== undefined;
    if (hasCode && hasImage) {
      throw new KindlingError('CONFLICTING_FIELDS', 'give either "runtime" + "code" (with an "image" built from the runtime\'s, if any) or "image" + "command", not both');
    }
    if (request.stdin !== undefined && request.stdinBase64 !== undefined) {
      throw new KindlingError('CONFLICTING_FIELDS', 'give at most one of "stdin" and "stdinBase64"');
    }
    const executor = this.pickExecutor(request.executor);
    let image: string;
    let command: string[];
    let files: InputFile[] = [];
    let runtimeDefaults = {};
    if (hasCode) {
      if (request.runtime === undefined) throw new KindlingError('VALIDATION_FAILED', `"code" needs a "runtime" (${Object.keys(RUNTIMES).join(', ')})`);
      if (request.code === undefined) throw new KindlingError('VALIDATION_FAILED', `"runtime" needs "code": the ${request.runtime} source to run`);
      const runtime = runtimeDefinition(request.runtime);
      if (!runtime) throw new KindlingError('UNKNOWN_RUNTIME', `unknown runtime "${String(request.runtime)}"; use one of ${Object.keys(RUNTIMES).join(', ')}`);
      ({ command, files } = runtime.prepare(request.code));
      image = codeImage === undefined ? runtime.image : this.codeImage(codeImage, runtime.name, runtime.image, tenant);
      runtimeDefaults = runtime.defaults;
    } else if (hasImage) {
      if (request.image === undefined) throw new KindlingError('VALIDATION_FAILED', '"command" needs an "image", e.g. "kindling/base"');
      if (request.command === undefined || request.command.length === 0) {
        throw new KindlingError('VALIDATION_FAILED', '"image" needs a non-empty "command" array, e.g. ["sh","-c","echo hi"]');
      }
      image = this.options.images?.resolve(request.image, tenant) ?? request.image;
      command = request.command;
    } else {
      throw new KindlingError('VALIDATION_FAILED', 'nothing to run: give "runtime" + "code" or "image" + "command"');
    }
    if (!executor.hasImage(image)) {
      await executor.refreshImages().catch(() => undefined);
      if (!executor.hasImage(image)) {
        throw new KindlingError('UNKNOWN_IMAGE', `image "${image}" is not available on the ${executor.name} executor; build it with "kindling images build" or see "kindling images list"`);
      }
    }
    for (const name of Object.keys(request.env ?? {})) {
      if (!ENV_NAME.test(name)) {
        throw new KindlingError('VALIDATION_FAILED', `env: "${name}" is not a valid variable name; use letters, digits and _, not starting with a digit`, { details: { field: `env.${name}` } });
      }
    }
    const limits = resolveLimits(
      { timeoutMs: request.timeoutMs, memoryMb: request.memoryMb, cpus: request.cpus, pids: request.pids, outputBytes: request.outputBytes, diskMb: request.diskMb, openFiles: request.openFiles },
      runtimeDefaults,
      this.limits,
      caps,
    );
    const stdin =
      request.stdin !== undefined ? Buffer.from(request.stdin, 'utf8') : request.stdinBase64 !== undefined ? Buffer.from(request.stdinBase64, 'base64') : null;
    const spec: RunSpec = {
      id: newExecutionId(),
      image,
      command,
      env: { ...BASE_ENV, ...request.env },
      workdir: checkWorkdir(request.workdir ?? '/work'),
      limits,
      network: request.network ?? 'none',
      stdin: stdin !== null,
      files,
      labels: {},
    };
    return { spec, executor, stdin };
  }

  async execute(request: ExecuteRequest, options: ExecuteOptions = {}): Promise<ExecutionResult> {
    return (await this.executeWith(request, request.outputEncoding ?? 'utf8', options)).result;
  }

  /** Like execute(), with stdout/stderr handed back as bytes (the result's text fields are left empty). */
  executeRaw(request: ExecuteRequest, options: ExecuteOptions = {}): Promise<RawExecution> {
    return this.executeWith(request, null, options);
  }

  private async executeWith(request: ExecuteRequest, outputEncoding: 'utf8' | 'base64' | null, options: ExecuteOptions): Promise<RawExecution> {
    if (this.draining) throw new KindlingError('SHUTTING_DOWN', 'the server is shutting down and takes no new work; retry shortly', { retryAfterSeconds: 5 });
    const prepared = await this.prepare(request, options.tenant?.caps, options.tenant?.name ?? null);
    const io = options.io ?? DEFAULT_IO;
    if (streamsStdin(io.stdin) || io.stdin.kind === 'bytes') prepared.spec.stdin = true;
    if (options.trace) prepared.spec.env.TRACEPARENT = options.trace.traceparent;
    if (options.roBinds !== undefined) prepared.spec.roBinds = options.roBinds;
    const { spec, executor } = prepared;
    if (options.tenant) spec.labels['dev.kindling.tenant'] = options.tenant.name;
    // A one-off execution's phases are its own (children of the request's span); a function's are its runner's.
    const given = options.trace?.phases;
    const phases = given ?? (options.trace?.span ? new InvocationPhases(options.trace.span) : undefined);
    phases?.enter('queue');
    // The tenant's quota first (an immediate 429), then the server's queue.
    let releaseTenant: (() => void) | undefined;
    try {
      releaseTenant = await options.tenant?.acquire?.();
    } catch (error) {
      // Refused before it queued (the tenant's quota): not a failed execution for the observers.
      if (error instanceof KindlingError) phases?.fail(error.code, error.message);
      if (phases !== given) phases?.end();
      throw error;
    }
    const queuedAt = this.clock.monotonicMs();
    let release: (() => void) | undefined;
    try {
      release = await this.limiter.acquire(options.signal);
      const stdin = io.stdin.kind === 'none' && prepared.stdin !== null ? { kind: 'bytes' as const, bytes: prepared.stdin } : io.stdin;
      const raw = await this.run(spec, executor, { stdin, stdout: io.stdout }, outputEncoding, phases === given ? options : { ...options, trace: { ...options.trace!, phases } }, this.clock.monotonicMs() - queuedAt);
      if (phases !== given) options.trace?.span?.setAttributes({ [ATTR.executionId]: spec.id, [ATTR.executor]: executor.name, ...resultAttributes(raw.result) });
      return raw;
    } catch (error) {
      const full = storageFullError(error);
      const failure = full ?? (error instanceof KindlingError ? error : new KindlingError('INTERNAL', 'the execution failed inside the platform', { cause: error }));
      phases?.fail(failure.code, failure.message);
      const context = {
        executor: executor.name,
        ...(options.functionName === undefined ? {} : { functionName: options.functionName }),
        ...(options.tenant ? { tenant: options.tenant.name } : {}),
      };
      for (const observer of this.observers) observer.onExecutionFailed?.(failure, context);
      throw full ?? error;
    } finally {
      release?.();
      releaseTenant?.();
      if (phases !== given) phases?.end();
    }
  }

  /** executor.start() with a deadline; a start given up on is aborted, and killed should it still complete. */
  private async startWithin(executor: Executor, spec: RunSpec, signal: AbortSignal | undefined): Promise<Execution> {
    const deadlineMs = Math.max(this.options.startTimeoutMs ?? 30_000, executor.maxStartMs ?? 0);
    const giveUp = new AbortController();
    const started = executor.start(spec, { signal: signal ? AbortSignal.any([signal, giveUp.signal]) : giveUp.signal });
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        giveUp.abort();
        reject(new KindlingError('SANDBOX_START_TIMEOUT', `the ${executor.name} sandbox did not start within ${deadlineMs} ms (the executor did not answer); it was abandoned and is removed when it appears; retry`, { retryAfterSeconds: 1 }));
      }, deadlineMs);
    });
    try {
      return await Promise.race([started, deadline]);
    } catch (error) {
      if (giveUp.signal.aborted) {
        // The start may still complete: what it made is killed then, and its end awaited so nothing is left running.
        started.then(
          (late) => {
            late.kill();
            late.wait().catch(() => undefined);
          },
          () => undefined,
        );
      }
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  private async run(
    spec: RunSpec,
    executor: Executor,
    io: IoPlan,
    outputEncoding: 'utf8' | 'base64' | null,
    options: ExecuteOptions,
    queuedMs: number,
  ): Promise<RawExecution> {
    const phases = options.trace?.phases;
    phases?.enter('start', { [ATTR.executor]: executor.name });
    const startedAt = this.clock.monotonicMs();
    const execution = await this.startWithin(executor, spec, options.signal);
    const runningAt = this.clock.monotonicMs();
    phases?.annotate({ [ATTR.coldStart]: execution.coldStart });
    phases?.enter('run');
    options.onStarted?.(spec.id, { coldStart: execution.coldStart, executor: executor.name });

    // Whoever asked may go away (client disconnect, shutdown): the sandbox goes with it, whatever the executor does.
    const onAbort = (): void => execution.kill();
    if (options.signal?.aborted) execution.kill();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      execution.kill();
    }, spec.limits.timeoutMs);
    const onText = options.onOutput;
    const stdout = new OutputCollector(spec.limits.outputBytes, onText && ((text) => onText('stdout', text)));
    const stderr = new OutputCollector(spec.limits.outputBytes, onText && ((text) => onText('stderr', text)));
    let stdoutBytes = 0;
    let bypassed: Promise<void> | null = null;
    const sinkPlan = io.stdout.kind === 'sink' ? io.stdout : null;
    const sink = sinkPlan?.sink;
    // With a sink, `stdout` keeps only a copy of the head for the invocation's log (no text decoding, no callback).
    const keepBytes = Math.min(sinkPlan?.keepBytes ?? 0, spec.limits.outputBytes);
    const kept = sink ? new OutputCollector(keepBytes, undefined) : stdout;
    if (sinkPlan && sink) {
      // Log followers still see stdout as it is produced (up to the output limit; the sink has all of it).
      const live = onText ? new StringDecoder('utf8') : null;
      const wanted = sinkPlan.textWanted ?? (() => true);
      let liveBytes = 0;
      const bypass = sinkPlan.bypass;
      const onChunk = (chunk: Buffer): void => {
        stdoutBytes += chunk.length;
        kept.push(chunk);
        if (live && liveBytes < spec.limits.outputBytes && wanted()) {
          const part = chunk.subarray(0, spec.limits.outputBytes - liveBytes);
          liveBytes += part.length;
          const text = live.write(part);
          if (text.length > 0) onText!('stdout', text);
        }
        // Backpressure: a slow client slows the process down instead of growing a buffer here.
        if (!sink.write(chunk)) {
          execution.stdout.pause();
          sink.once('drain', () => {
            if (!handOver()) execution.stdout.resume();
          });
          return;
        }
        handOver();
      };
      // Nothing more to do here for the rest of stdout: hand it over (the bytes then never enter this process).
      const handOver = (): boolean => {
        const textWanted = live !== null && liveBytes < spec.limits.outputBytes && wanted();
        if (bypassed || !bypass || stdoutBytes < keepBytes || textWanted || !bypass.ready(execution.stdout, stdoutBytes)) return false;
        execution.stdout.off('data', onChunk);
        bypassed = bypass.start(execution.stdout).then((bytes) => {
          stdoutBytes += bytes;
        });
        return true;
      };
      execution.stdout.on('data', onChunk);
      sink.once('close', () => execution.stdout.resume());
    } else {
      execution.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    }
    execution.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));

    let stdinBytes = 0;
    if (execution.stdin) {
      const target = execution.stdin;
      // A process that exits without reading its input is not an error of the platform.
      target.on('error', () => undefined);
      const plan = io.stdin;
      if (plan.kind === 'pump') {
        plan.pump(target).then(
          (bytes) => (stdinBytes = bytes),
          // An upload that breaks off (client gone) ends the execution.
          () => execution.kill(),
        );
      } else if (plan.kind === 'stream') {
        const input = plan.stream;
        input.on('data', (chunk: Buffer) => (stdinBytes += chunk.length));
        // An upload that breaks off (client gone, body over the limit) ends the execution.
        input.on('error', () => execution.kill());
        input.pipe(target);
      } else {
        const bytes = plan.kind === 'bytes' ? plan.bytes : undefined;
        stdinBytes = bytes?.length ?? 0;
        target.end(bytes);
      }
    }

    try {
      const exit = await execution.wait().catch((error: unknown) => {
        if (error instanceof KindlingError) throw error;
        // The executor lost the sandbox (engine restarted, process vanished): the platform failed, not the user's code.
        execution.kill();
        throw new KindlingError('EXECUTOR_FAILED', `the ${executor.name} executor lost the execution: ${error instanceof Error ? error.message : String(error)}; retry`, { cause: error, retryAfterSeconds: 1 });
      });
      // The rest of stdout went around this process: its end (and its byte count) comes with the helper's.
      if (bypassed) await bypassed;
      const finishedAt = this.clock.monotonicMs();
      const stdoutKept = kept.finish();
      const stderrBytes = stderr.finish();
      const result: ExecutionResult = {
        id: spec.id,
        exitCode: exit.exitCode,
        signal: exit.signal,
        stdout: outputEncoding === null ? '' : stdoutKept.toString(outputEncoding),
        stderr: outputEncoding === null ? '' : stderrBytes.toString(outputEncoding),
        outputEncoding: outputEncoding ?? 'utf8',
        durationMs: Math.round((finishedAt - startedAt) * 100) / 100,
        coldStart: execution.coldStart,
        executor: executor.name,
        timedOut,
        oomKilled: exit.oomKilled,
        // A sink got all of stdout: only the log copy was capped, which the result does not report as truncation.
        truncated: stdout.truncated || stderr.truncated,
        stdoutTruncated: stdout.truncated,
        stderrTruncated: stderr.truncated,
        timings: {
          queuedMs: Math.round(queuedMs * 100) / 100,
          startMs: Math.round((runningAt - startedAt) * 100) / 100,
          runMs: Math.round((finishedAt - runningAt) * 100) / 100,
        },
        ...(exit.usage ? { usage: { cpuMs: exit.usage.cpuMs === null ? null : Math.round(exit.usage.cpuMs * 100) / 100, memoryPeakBytes: exit.usage.memoryPeakBytes } } : {}),
      };
      const context: ExecutionContext = {
        image: spec.image,
        stdinBytes,
        streamedStdoutBytes: stdoutBytes,
        outputBytes: (sink ? 0 : stdoutKept.length) + stderrBytes.length + stdoutBytes,
        memoryMb: spec.limits.memoryMb,
        ...(options.functionName === undefined ? {} : { functionName: options.functionName }),
        ...(options.tenant ? { tenant: options.tenant.name } : {}),
        ...(options.trace ? { traceId: options.trace.traceId } : {}),
        ...(options.onMetered ? { meteredElsewhere: true } : {}),
      };
      phases?.annotate(resultAttributes(result));
      for (const observer of this.observers) observer.onExecutionFinished(result, context);
      options.onMetered?.(result, context);
      return { result, stdout: stdoutKept, stderr: stderrBytes };
    } finally {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Waits until nothing runs or the deadline passes; returns whether it drained. */
  async drain(deadlineMs: number): Promise<boolean> {
    this.draining = true;
    const until = this.clock.monotonicMs() + deadlineMs;
    while (this.limiter.stats.running > 0 || this.limiter.stats.queued > 0) {
      if (this.clock.monotonicMs() > until) return false;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    return true;
  }
}
