/**
 * Handler-style invocations: one WarmPool per function version, sandboxes whose main process is the runtime's
 * resident agent (agent/), and the accounting (metrics) of cold and warm starts.
 *
 * Isolation: a warm sandbox serves one version of one function, never another; a redeploy retires the older
 * versions' pools (queued calls still finish there, new calls go to the new version, which starts fresh).
 * State: module-level state and files in /tmp persist between invocations served by the same warm sandbox (as in
 * AWS Lambda); each sandbox has its own /tmp (tmpfs), never shared with another sandbox, and gone with it.
 */
import { COMPILED_MOUNT, COMPILED_PROGRAM, JAVA_ARGS_FILE, layerMount, PYTHON_LAYER_MOUNT } from './builds.js';
import { StringDecoder } from 'node:string_decoder';
import { availableParallelism } from 'node:os';
import { posix } from 'node:path';
import { AGENT_MOUNT, AGENT_SOCKET, agentLaunch, agentLaunchModule, genericAgentLaunch, handlerFileName, isNodeEsModule, type AgentLaunch } from '../../agent/files.js';
import { PrewarmPool } from '../executors/shared/prewarm-pool.js';
import { systemClock, type Clock } from '../core/clock.js';
import { KindlingError } from '../core/errors.js';
import { newId } from '../core/ids.js';
import { ATTR, spanClockMs } from '../core/tracing.js';
import type { ExecutorName, ResourceLimits, RunSpec, RuntimeName } from '../core/types.js';
import { AgentLoadError, type Executor, type WarmSandbox } from '../executors/executor.js';
import type { FunctionVersion } from '../store/store.js';
import { BASE_ENV } from './execution-service.js';
import { parseBundleHandler, type HandlerInvoker, type InvocationResult, type InvokeOptions } from './function-service.js';
import { BUNDLE_MOUNT } from './bundles.js';
import { ConcurrencyLimiter } from './concurrency-limiter.js';
import { DEFAULT_LIMIT_POLICY, resolveLimits, type LimitPolicy } from './limits.js';
import { WarmCapacity, WarmPool, type EvictionReason } from './warm-pool.js';
import { COMPILED_HANDLER_FAMILIES, handlerFamily, JAVA_HANDLER, JAVA_QUALIFIED_HANDLER, runtimeImage, type HandlerFamily } from './runtimes.js';

/**
 * What a warm sandbox of each runtime is charged against the memory budget before its first call measured it (then
 * its cgroup's peak counts): an idle handler sandbox's cgroup memory on the sandbox executor, rounded up
 * (see docs/configuration.md for the measurement). Never more than the sandbox's limit.
 */
export const WARM_MEMORY_ESTIMATE_MB: Readonly<Record<string, number>> = { python: 8, node: 16, deno: 32, bun: 24, java: 48 };
const DEFAULT_WARM_MEMORY_ESTIMATE_MB = 16;

/** The file name a generic agent writes a TypeScript runtime's code to (LOAD's `file`); node and python need none. */
function loadFile(runtime: string | undefined, code: string): { file?: string } {
  const family = handlerFamily(runtime);
  return family === 'deno' || family === 'bun' ? { file: handlerFileName(family, code) } : {};
}

export interface InvocationEvent {
  invocationId: string;
  tenant: string;
  functionName: string;
  executor: ExecutorName;
  status: 'succeeded' | 'failed' | 'timeout' | 'oom' | 'error';
  coldStart: boolean;
  durationMs: number;
  inBytes: number;
  outBytes: number;
  /** Time spent waiting for a warm sandbox. */
  queuedMs: number;
  /** Cold starts: how long the sandbox took to start (create request to agent HELLO). */
  sandboxStartMs?: number;
  /** The memory limit of the warm sandbox (for GB-seconds). */
  memoryMb: number;
  /**
   * CPU time of the call: the delta of the warm sandbox's cgroup CPU counter across it, read by the server (every
   * process and thread of the sandbox); absent when the executor cannot read its cgroup.
   */
  cpuMs?: number;
  /** Peak memory of the warm sandbox's cgroup so far, when known. */
  memoryPeakBytes?: number;
  traceId?: string;
  /** A cluster worker's run for a gateway: the gateway meters it (this server's usage meter skips it). */
  meteredElsewhere?: boolean;
}

/**
 * CPU a warm sandbox used outside invocations (its start, background threads or processes left running after a
 * handler returned), billed to the function's tenant as idle usage.
 */
export interface IdleUsageEvent {
  tenant: string;
  functionName: string;
  executor: ExecutorName;
  cpuMs: number;
  memoryMb: number;
}

export interface InvocationObserver {
  onInvocation(event: InvocationEvent): void;
  onIdleUsage?(event: IdleUsageEvent): void;
}

export interface HandlerPoolsOptions {
  executors: ReadonlyMap<ExecutorName, Executor>;
  /**
   * The image an executor is given for a function's `image` (a custom image built from its runtime's, named as the
   * tenant names it: custom-images.ts); absent: the name as it is.
   */
  resolveImage?: (image: string, tenant: string) => string;
  /** Used when a function does not set maxConcurrency. */
  defaultMaxConcurrency: number;
  /** Waiters per function version when the function does not set maxQueued. */
  defaultMaxQueued: number;
  queueTimeoutMs: number;
  idleTtlMs: number;
  maxUses: number;
  /** A sandbox older than this is recycled when released; it is killed at twice this age whatever it does. */
  maxAgeMs: number;
  maxWarmSandboxes: number;
  /** Memory warm sandboxes use together (measured after each call; an estimate per runtime before), in MiB. */
  maxWarmMemoryMb: number;
  /** Warm sandboxes one tenant may hold; beyond, its own least recently used idle one goes. Default maxWarmSandboxes. */
  maxWarmSandboxesPerTenant?: number;
  /**
   * The host's available memory (MiB) and the floor below which idle warm sandboxes are evicted, one per sandbox
   * start (reason "pressure"). Unset: no such check.
   */
  availableMemoryMb?: () => number;
  minAvailableMemoryMb?: number;
  /** Each eviction of an idle warm sandbox, with the cap it made room under (metrics). */
  onEvict?: (reason: EvictionReason) => void;
  limits?: LimitPolicy;
  observers?: InvocationObserver[];
  clock?: Clock;
  onError?: (error: unknown, context: { function: string }) => void;
  /**
   * Generic warm sandboxes kept per (executor, runtime, memory, cpus) shape: started without code, they are given a
   * function's code on its cold start, so the runtime's own start-up is off the request path (OpenWhisk's "stem
   * cells"). Each serves one function version once loaded, never another. 0 turns them off.
   */
  genericPerShape?: number;
  /**
   * How long a warm sandbox may take to start (executor start, runtime, agent handshake, the function's code loaded).
   * One that takes longer is killed and removed, counted as a failed sandbox, and a fresh one is tried once before the
   * invocation fails with SANDBOX_START_TIMEOUT (503, retryable). Default 30000.
   */
  startTimeoutMs?: number;
  /**
   * Cold starts of warm sandboxes running at once, across all functions (the rest wait their turn, up to queueTimeoutMs).
   * Without it a burst over many cold functions starts them all together: each start gets a sliver of the CPU, all
   * miss startTimeoutMs together and every caller gets an error. Default: 2 per CPU core.
   */
  maxConcurrentStarts?: number;
  /**
   * A generic sandbox that did not finish loading a function's code in time (killed; counted like a failed start).
   * Failed starts of fresh sandboxes are counted by the executor's instrumentation.
   */
  onStartFailed?: (executor: ExecutorName) => void;
  /** Shapes warmed by startWarming() (e.g. node and python with the default limits on the default executor). */
  genericWarmAtStart?: { executor: ExecutorName; runtime: RuntimeName }[];
  /** The host directory of an unpacked bundle (see bundles.ts); needed by functions deployed from a bundle. */
  bundlePath?: (sha256: string) => string;
  /** Host directory of a dependency layer by hash (bound read-only at /work/node_modules); absent: no layers. */
  layerPath?: (sha256: string) => string;
}

interface Entry {
  pool: WarmPool<WarmSandbox>;
  version: FunctionVersion;
  executor: Executor;
  memoryMb: number;
  /** Bytes of the return value and of the logs kept per invocation (the tenant's cap lowers the default). */
  outputBytes: number;
}

/** The handler agent of a deployed handler's runtime (validated at deploy: always node or python). */
function handlerFamilyOf(runtime: string | undefined): HandlerFamily {
  const family = handlerFamily(runtime);
  if (family === null) throw new Error(`runtime ${runtime} has no handler agent`);
  return family;
}

/** Pools are keyed by tenant, function and version: two tenants' `hello` never share a sandbox. */
const keyOf = (tenant: string, name: string, version: number): string => `${tenant}/${name}@${version}`;

/** A generic sandbox serves only functions whose sandbox limits are exactly its own (tenant caps may lower them). */
interface GenericShape {
  executor: ExecutorName;
  /** The handler agent it runs and the image (node and node18 share one shape: the same image). */
  family: HandlerFamily;
  image: string;
  memoryMb: number;
  cpus: number;
  pids: number;
  diskMb: number;
  openFiles: number;
}
const genericKey = (shape: GenericShape): string =>
  JSON.stringify({ executor: shape.executor, family: shape.family, image: shape.image, memoryMb: shape.memoryMb, cpus: shape.cpus, pids: shape.pids, diskMb: shape.diskMb, openFiles: shape.openFiles });
const shapeOf = (executor: ExecutorName, runtime: string, limits: ResourceLimits): GenericShape => ({
  executor,
  family: handlerFamilyOf(runtime),
  image: runtimeImage(runtime),
  memoryMb: limits.memoryMb,
  cpus: limits.cpus,
  pids: limits.pids,
  diskMb: limits.diskMb,
  openFiles: limits.openFiles,
});

/**
 * A handler-style function on an executor without warm sandboxes: permanent for this server's configuration (a retry
 * gets the same answer), so a 400 that says what to change, not a retryable 503.
 */
export function handlersUnsupported(executor: string): KindlingError {
  return new KindlingError(
    'HANDLERS_UNSUPPORTED',
    `handler-style functions cannot run on the ${executor} executor of this server (it keeps no warm sandboxes); deploy with another "executor", or as a command (no "handler")`,
  );
}

export class HandlerPools implements HandlerInvoker {
  readonly capacity: WarmCapacity;
  private readonly pools = new Map<string, Entry>();
  private readonly limits: LimitPolicy;
  private closing = false;

  private readonly generic: PrewarmPool<WarmSandbox>;
  /** Cold starts of warm sandboxes in progress, across all functions (maxConcurrentStarts). */
  private readonly starts: ConcurrencyLimiter;

  constructor(private readonly options: HandlerPoolsOptions) {
    this.starts = new ConcurrencyLimiter({
      maxConcurrent: options.maxConcurrentStarts ?? 2 * availableParallelism(),
      // Every queued start holds a reserved place in the warm capacity, so the capacity bounds the queue already.
      maxQueued: Math.max(1, options.maxWarmSandboxes),
      queueTimeoutMs: options.queueTimeoutMs,
      slotName: 'warm sandbox start',
      limitName: '--max-concurrent-warm-starts',
    });
    this.capacity = new WarmCapacity({
      maxSandboxes: options.maxWarmSandboxes,
      maxMemoryMb: options.maxWarmMemoryMb,
      ...(options.maxWarmSandboxesPerTenant === undefined ? {} : { maxPerTenant: options.maxWarmSandboxesPerTenant }),
      ...(options.availableMemoryMb === undefined ? {} : { availableMemoryMb: options.availableMemoryMb }),
      ...(options.minAvailableMemoryMb === undefined ? {} : { minAvailableMemoryMb: options.minAvailableMemoryMb }),
      ...(options.onEvict === undefined ? {} : { onEvict: options.onEvict }),
    });
    this.limits = options.limits ?? DEFAULT_LIMIT_POLICY;
    const perShape = options.genericPerShape ?? 0;
    this.generic = new PrewarmPool<WarmSandbox>({
      create: (key) => this.createGeneric(JSON.parse(key) as GenericShape),
      destroy: (sandbox) => sandbox.destroy(),
      isAlive: (sandbox) => sandbox.alive,
      sizePerKey: perShape,
      maxItems: perShape * 4,
      idleTtlMs: options.idleTtlMs,
      // A safety net only: each start is already bounded by startTimeoutMs (see createGeneric).
      createTimeoutMs: (options.startTimeoutMs ?? 30_000) + 10_000,
      onError: (error, key) => options.onError?.(error, { function: `generic ${key}` }),
    });
  }

  /**
   * Starts the generic sandboxes of `genericWarmAtStart`. Not done by the constructor: a server that is built but
   * never listens (its port is taken) must not have started sandboxes.
   */
  startWarming(): void {
    if (this.closing) return;
    const defaults = resolveLimits({}, {}, this.limits);
    for (const { executor, runtime } of this.options.genericWarmAtStart ?? []) {
      if (this.supports(executor)) this.generic.replenish(genericKey(shapeOf(executor, runtime, defaults)));
    }
  }

  private createGeneric(shape: GenericShape): Promise<WarmSandbox> {
    const executor = this.options.executors.get(shape.executor);
    if (executor?.createWarmSandbox === undefined) return Promise.reject(new Error(`no warm sandboxes on ${shape.executor}`));
    // A go or java agent is compiled with its function's code: there is no generic one (coldSandbox never asks for it).
    const family = shape.family;
    if (family === 'go' || family === 'java') return Promise.reject(new Error(`no generic ${family} agent`));
    const launch = genericAgentLaunch(family);
    const limits = resolveLimits({ memoryMb: shape.memoryMb, cpus: shape.cpus, pids: shape.pids, diskMb: shape.diskMb, openFiles: shape.openFiles }, {}, this.limits);
    return executor.createWarmSandbox(
      {
        id: newId('warm'),
        image: shape.image,
        command: launch.command,
        env: { ...BASE_ENV },
        workdir: '/tmp',
        limits: { ...limits, timeoutMs: this.options.maxAgeMs * 2 },
        network: 'none',
        stdin: false,
        files: launch.files,
        labels: { 'dev.kindling.generic': shape.family },
      },
      { readyTimeoutMs: this.startTimeoutMs },
    );
  }

  private get startTimeoutMs(): number {
    return this.options.startTimeoutMs ?? 30_000;
  }

  /**
   * A sandbox for a cold start of `version`: a generic one given the code when one waits (its runtime is already up),
   * else a new one started with the code. Either way the shape is kept warm for the next cold start.
   */
  private async coldSandbox(version: FunctionVersion, executor: Executor, executorName: ExecutorName, limits: ReturnType<typeof resolveLimits>): Promise<WarmSandbox> {
    const key = genericKey(shapeOf(executorName, version.spec.runtime ?? '', limits));
    // A bundle is bound into the sandbox when it is made: a generic one (already made) cannot take it. Nor has one the
    // packages of a function's own image or of its "apt" (none is kept for such images: they are one tenant's).
    const fromGeneric = version.spec.bundle === undefined && version.spec.image === undefined && version.spec.aptImage === undefined && !COMPILED_HANDLER_FAMILIES.includes(handlerFamilyOf(version.spec.runtime));
    const generic = fromGeneric ? this.generic.take(key) : undefined;
    if (fromGeneric) this.generic.replenish(key);
    if (generic?.load !== undefined) {
      try {
        const code = version.spec.code ?? '';
        await generic.load(
          { code, handler: version.spec.handler ?? 'handler', env: { ...BASE_ENV, ...version.spec.env }, esModule: isNodeEsModule(code), ...loadFile(version.spec.runtime, code) },
          { timeoutMs: this.startTimeoutMs },
        );
        return generic;
      } catch (error) {
        void generic.destroy();
        if (error instanceof AgentLoadError) throw error;
        // Loading the code is the generic sandbox's start for this function: a hang there is a failed start too.
        if (error instanceof KindlingError && error.code === 'SANDBOX_START_TIMEOUT') this.options.onStartFailed?.(executorName);
        // A platform hiccup with the generic sandbox: fall back to a fresh one.
      }
    }
    try {
      return await executor.createWarmSandbox!(this.runSpec(version, limits), { readyTimeoutMs: this.startTimeoutMs });
    } catch (error) {
      // A start that hung was killed and removed; a hang of the platform (not of the function's code) is usually
      // gone on the next attempt, so one fresh sandbox is tried before the caller gets the retryable error.
      if (!(error instanceof KindlingError) || error.code !== 'SANDBOX_START_TIMEOUT') throw error;
      this.options.onError?.(error, { function: `${version.name}@${version.version}` });
      return executor.createWarmSandbox!(this.runSpec(version, limits), { readyTimeoutMs: this.startTimeoutMs });
    }
  }

  supports(executor: ExecutorName): boolean {
    return typeof this.options.executors.get(executor)?.createWarmSandbox === 'function';
  }

  /** Idle and busy warm sandboxes per live function version (metrics, console). */
  poolSizes(): { tenant: string; function: string; version: number; executor: ExecutorName; idle: number; busy: number; creating: number; waiting: number }[] {
    return [...this.pools.values()].map((entry) => {
      const stats = entry.pool.stats;
      return { tenant: entry.version.tenant, function: entry.version.name, version: entry.version.version, executor: entry.executor.name, idle: stats.idle, busy: stats.busy, creating: stats.creating, waiting: stats.waiting };
    });
  }

  stats(): Record<string, unknown> {
    return { capacity: this.capacity.stats, generic: this.generic.stats(), pools: Object.fromEntries([...this.pools].map(([key, entry]) => [key, entry.pool.stats])) };
  }

  deployed(version: FunctionVersion, executor: ExecutorName, caps: Partial<ResourceLimits> = {}): void {
    for (const [key, entry] of this.pools) {
      if (entry.version.tenant === version.tenant && entry.version.name === version.name && entry.version.version !== version.version) this.retire(key, entry);
    }
    this.poolFor(version, executor, caps);
  }

  async deleted(tenant: string, name: string): Promise<void> {
    const closing = [...this.pools].filter(([, entry]) => entry.version.tenant === tenant && entry.version.name === name);
    for (const [key] of closing) this.pools.delete(key);
    await Promise.all(closing.map(([, entry]) => entry.pool.close()));
  }

  async invoke(version: FunctionVersion, executorName: ExecutorName, body: Buffer, options: InvokeOptions): Promise<InvocationResult> {
    const caps = options.scope?.caps ?? {};
    const entry = this.poolFor(version, executorName, caps);
    const invocationId = newId('inv');
    const base = { invocationId, tenant: version.tenant, functionName: version.name, version: version.version, executor: executorName };
    // The tenant's cap lowers the default (an explicit timeoutMs was checked against it at deploy).
    const timeoutMs = version.spec.timeoutMs ?? Math.min(this.limits.defaults.timeoutMs, caps.timeoutMs ?? Number.POSITIVE_INFINITY);
    const event = {
      invocationId,
      tenant: version.tenant,
      functionName: version.name,
      executor: executorName,
      inBytes: body.length,
      memoryMb: entry.memoryMb,
      ...(options.trace ? { traceId: options.trace.traceId } : {}),
    };
    // A cluster worker hands the facts to the gateway, which meters the call; its own observers still see it.
    const observe = (facts: InvocationEvent): void => {
      if (options.onMetered) {
        options.onMetered(facts);
        this.observe({ ...facts, meteredElsewhere: true });
      } else {
        this.observe(facts);
      }
    };
    const clock = this.options.clock ?? systemClock;
    const queuedFrom = clock.monotonicMs();
    options.signal?.throwIfAborted();
    let lease;
    try {
      lease = await entry.pool.acquire(options.signal);
      if (options.signal?.aborted) {
        // Cancelled while it waited: the sandbox goes back unused (NaN: no duration for the estimate).
        lease.release(true, NaN);
        throw options.signal.reason;
      }
    } catch (error) {
      if (options.signal?.aborted && error === options.signal.reason) throw error;
      if (error instanceof AgentLoadError) {
        // The user's module does not load: like a program that fails, a result with exit code 1 and the error text.
        observe({ ...event, status: 'failed', coldStart: true, durationMs: 0, outBytes: error.text.length, queuedMs: clock.monotonicMs() - queuedFrom });
        return { ...base, exitCode: 1, body: Buffer.from(`${error.text}\n`), stderr: Buffer.alloc(0), durationMs: 0, coldStart: true, timedOut: false };
      }
      const failure = error instanceof KindlingError ? error : new KindlingError('EXECUTOR_FAILED', 'could not get a warm sandbox', { cause: error });
      if (failure.code !== 'TOO_MANY_REQUESTS') observe({ ...event, status: 'error', coldStart: true, durationMs: 0, outBytes: 0, queuedMs: clock.monotonicMs() - queuedFrom });
      throw failure;
    }
    // The tenant's concurrency slot, once the function's is held: a call waiting for a slot (or a sandbox) of the
    // function holds none of its tenant's quota, which counts what runs. Refused: the sandbox goes back unused.
    let releaseTenant: (() => void) | undefined;
    try {
      releaseTenant = await options.scope?.acquire?.();
      // Cancelled while the slot was taken (a cluster's shared slot is a round trip): nothing runs.
      options.signal?.throwIfAborted();
    } catch (error) {
      releaseTenant?.();
      lease.release(true, NaN);
      throw error;
    }
    try {
      const started = { coldStart: lease.coldStart, queuedMs: lease.waitedMs, ...(lease.coldStart ? { sandboxStartMs: lease.sandbox.startMs } : {}) };
      const phases = options.trace?.phases;
      if (phases) {
        // The pool times the wait and the sandbox's start as one: a cold start's last startMs were the sandbox starting,
        // the rest was waiting (for a slot of the function, a start slot of the server).
        const leasedAtMs = spanClockMs();
        phases.enter('start', { [ATTR.executor]: executorName, [ATTR.coldStart]: lease.coldStart }, lease.coldStart ? leasedAtMs - lease.sandbox.startMs : leasedAtMs);
        phases.enter('run', undefined, leasedAtMs);
      }
      options.onStarted?.(invocationId, { coldStart: lease.coldStart, executor: executorName });
      // The handler's console/print output, live (log followers); the whole of it also comes back in `result.logs`.
      const onText = options.onOutput;
      const decoder = onText ? new StringDecoder('utf8') : null;
      const onLog = decoder
        ? (chunk: Buffer): void => {
            const text = decoder.write(chunk);
            if (text.length > 0) onText!('stderr', text);
          }
        : undefined;
      let result;
      // Cancelled while it runs (the client went away, a cluster worker was fenced): a handler cannot be interrupted
      // inside its sandbox, so the sandbox goes, and with it the call.
      const sandbox = lease.sandbox;
      const cancel = (): void => void sandbox.destroy();
      options.signal?.addEventListener('abort', cancel, { once: true });
      try {
        result = await sandbox.invoke(body, { timeoutMs, outputBytes: entry.outputBytes, ...(onLog ? { onLog } : {}), ...(options.trace ? { traceparent: options.trace.traceparent } : {}) });
        const rest = decoder?.end();
        if (rest) onText!('stderr', rest);
      } catch (error) {
        lease.release(false, NaN);
        observe({ ...event, ...started, status: 'error', durationMs: 0, outBytes: 0 });
        if (options.signal?.aborted) throw options.signal.reason;
        throw error instanceof KindlingError ? error : new KindlingError('EXECUTOR_FAILED', 'the warm sandbox failed', { cause: error });
      } finally {
        options.signal?.removeEventListener('abort', cancel);
      }
      if (options.signal?.aborted) {
        // It ended as its sandbox was killed (a crash as far as the agent could tell): the caller's reason is the answer.
        // It ran until then: its time and CPU are billed (as a failed call), or cancelling would be a way to run free.
        lease.release(false, NaN);
        const usage = result.usage ? { cpuMs: result.usage.cpuMs, memoryPeakBytes: result.usage.memoryPeakBytes } : {};
        observe({ ...event, ...started, status: 'failed', durationMs: result.durationMs, outBytes: 0, ...usage });
        throw options.signal.reason;
      }
      const healthy = result.exitCode <= 1 && lease.sandbox.alive;
      // What the sandbox's cgroup peaked at so far is what it counts against the warm memory budget from now on.
      const usedMb = result.usage?.memoryPeakBytes ? Math.min(entry.memoryMb, result.usage.memoryPeakBytes / 1_048_576) : undefined;
      lease.release(healthy, result.durationMs, usedMb);
      const status = result.timedOut ? 'timeout' : result.oomKilled ? 'oom' : result.exitCode === 0 ? 'succeeded' : 'failed';
      const usage = result.usage ? { cpuMs: result.usage.cpuMs, memoryPeakBytes: result.usage.memoryPeakBytes } : {};
      observe({ ...event, ...started, status, durationMs: result.durationMs, outBytes: result.body.length, ...usage });
      return { ...base, exitCode: result.exitCode, body: result.body, stderr: result.logs, durationMs: result.durationMs, coldStart: lease.coldStart, timedOut: result.timedOut, oomKilled: result.oomKilled, truncated: result.truncated };
    } finally {
      releaseTenant?.();
    }
  }

  async close(): Promise<void> {
    this.closing = true;
    const entries = [...this.pools.values()];
    this.pools.clear();
    await Promise.all([...entries.map((entry) => entry.pool.close()), this.generic.close()]);
  }

  /* ------------------------------------------------------------------------------------------------------------ */

  private observe(event: InvocationEvent): void {
    for (const observer of this.options.observers ?? []) observer.onInvocation(event);
  }

  /** From now on the sandbox's CPU outside invocations is billed to this function's tenant. */
  private metered(sandbox: WarmSandbox, version: FunctionVersion, executor: ExecutorName, memoryMb: number): WarmSandbox {
    sandbox.meter?.(({ cpuMs }) => {
      const event: IdleUsageEvent = { tenant: version.tenant, functionName: version.name, executor, cpuMs, memoryMb };
      for (const observer of this.options.observers ?? []) observer.onIdleUsage?.(event);
    });
    return sandbox;
  }

  private retire(key: string, entry: Entry): void {
    this.pools.delete(key);
    entry.pool.retire();
    // Retired pools close themselves once empty (onEmpty); a pool that never empties is closed at shutdown via close().
    this.retiredPools.add(entry.pool);
  }

  private readonly retiredPools = new Set<WarmPool<WarmSandbox>>();

  /** The pool of a version; made on first use with the tenant's caps of that moment (a redeploy picks up new ones). */
  private poolFor(version: FunctionVersion, executorName: ExecutorName, caps: Partial<ResourceLimits>): Entry {
    if (this.closing) throw new KindlingError('SHUTTING_DOWN', 'the server is shutting down', { retryAfterSeconds: 5 });
    const key = keyOf(version.tenant, version.name, version.version);
    const existing = this.pools.get(key);
    if (existing !== undefined) {
      if (existing.version.createdAtMs === version.createdAtMs) return existing;
      // The same name and number from another deploy (the function was deleted and deployed again; a cluster worker
      // learns of it only with its next call): the pool's sandboxes hold the old code. Calls in them finish there.
      this.retire(key, existing);
    }
    const executor = this.options.executors.get(executorName);
    if (executor?.createWarmSandbox === undefined) {
      throw handlersUnsupported(executorName);
    }
    const spec = version.spec;
    const limits = resolveLimits({ memoryMb: spec.memoryMb, cpus: spec.cpus }, {}, this.limits, caps);
    const maxConcurrency = spec.maxConcurrency ?? this.options.defaultMaxConcurrency;
    const pool: WarmPool<WarmSandbox> = new WarmPool<WarmSandbox>({
      key,
      create: async () => {
        const release = await this.starts.acquire();
        try {
          return this.metered(await this.coldSandbox(version, executor, executorName, limits), version, executorName, limits.memoryMb);
        } finally {
          release();
        }
      },
      minWarm: spec.minWarm ?? 0,
      maxConcurrency,
      maxQueued: spec.maxQueued ?? this.options.defaultMaxQueued,
      queueTimeoutMs: this.options.queueTimeoutMs,
      idleTtlMs: this.options.idleTtlMs,
      maxUses: this.options.maxUses,
      maxAgeMs: this.options.maxAgeMs,
      memoryMb: Math.min(limits.memoryMb, WARM_MEMORY_ESTIMATE_MB[handlerFamily(spec.runtime) ?? ''] ?? DEFAULT_WARM_MEMORY_ESTIMATE_MB),
      capacity: this.capacity,
      tenant: version.tenant,
      ...(this.options.clock ? { clock: this.options.clock } : {}),
      onError: (error) => this.options.onError?.(error, { function: key }),
      onEmpty: () => {
        if (this.retiredPools.delete(pool)) void pool.close();
      },
    });
    const entry = { pool, version, executor, memoryMb: limits.memoryMb, outputBytes: limits.outputBytes };
    this.pools.set(key, entry);
    return entry;
  }

  private runSpec(version: FunctionVersion, limits: ReturnType<typeof resolveLimits>): RunSpec {
    const spec = version.spec;
    const runtime = handlerFamilyOf(spec.runtime);
    const bundled = spec.bundle === undefined ? null : parseBundleHandler(spec.handler ?? '', spec.runtime);
    if (spec.bundle !== undefined && (bundled === null || this.options.bundlePath === undefined)) {
      throw new KindlingError('BUNDLES_UNSUPPORTED', 'this server keeps no function bundles');
    }
    if (spec.layer !== undefined && this.options.layerPath === undefined) throw new KindlingError('BUNDLES_UNSUPPORTED', 'this server keeps no dependency layers');
    const layerBinds = spec.layer === undefined ? [] : [{ source: this.options.layerPath!(spec.layer.sha256), target: layerMount(spec.layer) }];
    let launch: AgentLaunch;
    if (runtime === 'go' || runtime === 'java') {
      // The program compiled at deploy is the agent (the function's code with agent/go/agent.go or
      // agent/java/KindlingAgent.java), bound at /kindling-bin.
      if (spec.layer?.kind !== 'compile') throw new KindlingError('HANDLERS_UNSUPPORTED', `${runtime} handler "${version.name}" has no compiled program: deploy it again on the sandbox or docker executor`);
      launch = runtime === 'go' ? { command: [COMPILED_PROGRAM, `${AGENT_MOUNT}/${AGENT_SOCKET}`], files: [] } : javaAgentLaunch(bundled?.fn ?? spec.handler ?? '', limits.memoryMb, bundled !== null);
    } else {
      launch = bundled === null ? agentLaunch(runtime, spec.code ?? '', spec.handler ?? 'handler') : agentLaunchModule(runtime, posix.join(BUNDLE_MOUNT, bundled.file), bundled.fn);
    }
    const binds = [...(spec.bundle === undefined ? [] : [{ source: this.options.bundlePath!(spec.bundle.sha256), target: BUNDLE_MOUNT }]), ...layerBinds];
    // The image made for the function's Debian packages, else its own, else its runtime's.
    const image = spec.aptImage ?? spec.image;
    const bundleBinds = binds.length === 0 ? {} : { roBinds: binds };
    // Python finds the bundle's top-level modules and packages from any file of it (the agent adds the file's own dir).
    const bundleEnv: Record<string, string> = spec.bundle !== undefined && runtime === 'python' ? { PYTHONPATH: spec.layer?.kind === 'pip' ? `${BUNDLE_MOUNT}:${PYTHON_LAYER_MOUNT}` : BUNDLE_MOUNT, PYTHONDONTWRITEBYTECODE: '1' } : {};
    return {
      id: newId('warm'),
      image: image === undefined ? runtimeImage(spec.runtime ?? '') : (this.options.resolveImage?.(image, version.tenant) ?? image),
      command: launch.command,
      env: { ...BASE_ENV, ...bundleEnv, ...spec.env },
      ...bundleBinds,
      // A bundle is the work dir (read-only); a single file's handler starts in /tmp.
      workdir: spec.bundle === undefined ? '/tmp' : BUNDLE_MOUNT,
      // The sandbox's own wall-clock limit is its lifetime; each invocation has its own timeout (see invoke).
      limits: { ...limits, timeoutMs: this.options.maxAgeMs * 2 },
      network: 'none',
      stdin: false,
      files: launch.files,
      labels: { 'dev.kindling.tenant': version.tenant, 'dev.kindling.function': version.name, 'dev.kindling.function-version': String(version.version) },
    };
  }
}

/**
 * The JVM of a java handler: the agent's and the function's classes (compiled at deploy) at /kindling-bin. The JVM is
 * told the sandbox's memory limit (it cannot always read the cgroup's from inside the sandbox) and sizes its heap to
 * 60% of it; the serial collector, since a warm sandbox serves one call at a time.
 */
function javaAgentLaunch(handler: string, memoryMb: number, bundle: boolean): AgentLaunch {
  const [, className, method] = (bundle ? JAVA_QUALIFIED_HANDLER : JAVA_HANDLER).exec(handler) ?? [];
  if (className === undefined || method === undefined) throw new KindlingError('VALIDATION_FAILED', `a java handler is Class.method, got "${handler.slice(0, 130)}"`);
  // A bundle's class path (its classes, its root for resources, its jars) was written by its build as an @argfile.
  const classPath = bundle ? [`@${COMPILED_MOUNT}/${JAVA_ARGS_FILE}`] : ['-cp', COMPILED_MOUNT];
  return {
    command: ['java', '-XX:+UseSerialGC', `-XX:MaxRAM=${memoryMb}m`, '-XX:MaxRAMPercentage=60', '-Xss1m', ...classPath, 'KindlingAgent', `${AGENT_MOUNT}/${AGENT_SOCKET}`, className, method],
    files: [],
  };
}
