import { lstat, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { systemClock, type Clock } from '../core/clock.js';
import { KindlingError } from '../core/errors.js';
import { EXECUTOR_NAMES, RUNTIME_NAMES, type ExecuteRequest, type ExecutionResult, type ExecutorName, type ResourceLimits } from '../core/types.js';
import { statusOf } from '../metrics/metrics.js';
import { FUNCTION_NAME_PATTERN, specBytes, type FunctionRecord, type FunctionSpec, type FunctionVersion, type Store } from '../store/store.js';
import { localFunctionWrites, type FunctionWrites } from '../store/writes.js';
import { ConcurrencyLimiter } from './concurrency-limiter.js';
import type { ExecutionContext, ExecutionService, ImageResolver, OutputStreamName, TenantScope, TraceContext } from './execution-service.js';
import { COLLECT_STDOUT, type IoPlan } from './io-plan.js';
import { handlersUnsupported, type InvocationEvent } from './handler-pools.js';
import { checkStorageQuota, DEFAULT_VERSIONS_KEPT, type StorageQuotas } from './storage-quotas.js';
import { BUNDLE_MOUNT, type BundleStore } from './bundles.js';
import { JAVA_HANDLER, JAVA_QUALIFIED_HANDLER, RUNTIMES, concreteRuntime, handlerFamily, runtimeDefinition, runtimeImage } from './runtimes.js';
import { COMPILED_MOUNT, COMPILED_RUNTIME_FAMILIES, layerMount, PYTHON_LAYER_MOUNT, type BuildResult, type DependencyBuilder } from './builds.js';
import { newId } from '../core/ids.js';
import type { BuildKind, BuildRecord, BuildStore } from '../store/builds-sqlite.js';
import { BuildLogs, type BuildLogMessage } from './build-logs.js';
import { validatePackages } from '../images/custom.js';
import type { PackagesImage } from './custom-images.js';

/** Makes (or reuses) the image for a function's Debian packages (custom-images.ts), and removes those no longer used. */
export interface PackageImages {
  imageForPackages(tenant: string, from: string, packages: readonly string[], onLog: (text: string) => void): Promise<PackagesImage>;
  collectFunctionImages(): Promise<void>;
}

/** A bundle's own settings file at its root: `{"apt": ["PKG", ...]}` (Debian packages its runs need). */
export const BUNDLE_SETTINGS_FILE = 'kindling.json';
const BUNDLE_SETTINGS_MAX_BYTES = 64 * 1024;

/** The tenant's quotas a deploy is checked against: warm sandboxes (maxConcurrency) and builds running at once (maxConcurrentBuilds). */
export interface DeployQuota {
  maxWarm?: number;
  maxBuilds?: number;
}

/** A deploy whose build runs: its build id, and whether the function was deleted meanwhile (its version is then not stored). */
interface Building {
  id: string;
  deleted: boolean;
}

const functionKey = (tenant: string, name: string): string => `${tenant}/${name}`;

/** What one invocation produced: the raw response body plus the facts the `x-kindling-*` headers carry. */
export interface InvocationResult {
  invocationId: string;
  tenant: string;
  functionName: string;
  version: number;
  exitCode: number;
  /** stdout of a command function; the handler's return value (or the error text, exit code 1) of a handler. */
  body: Buffer;
  stderr: Buffer;
  durationMs: number;
  coldStart: boolean;
  timedOut: boolean;
  /** The kernel killed it at its memory limit (when the executor can tell). */
  oomKilled?: boolean;
  /** The body or stderr was cut at the execution's `outputBytes` (the rest was dropped). */
  truncated?: boolean;
  executor: ExecutorName;
  /** Cluster mode: the worker that ran it (absent when it ran on the server that answers). */
  node?: string;
}

export interface InvokeOptions {
  signal?: AbortSignal;
  /** W3C trace context of the request (env TRACEPARENT of command functions; trace id in usage records). */
  trace?: TraceContext;
  /** Run this version instead of the latest (async invocations run the version that was latest when queued). */
  version?: number;
  /**
   * Output text as it is produced: a command's stdout/stderr (not stdout when `stdoutSink` is given), a handler's
   * console/print output as `stderr` (its return value is the result's body, not streamed).
   */
  onOutput?: (stream: OutputStreamName, text: string) => void;
  /**
   * Command functions: where stdin comes from (default: `body`) and where stdout goes (default: collected into the
   * result's `body`). Handlers take `body` as their argument and return their value in the result.
   */
  io?: Partial<IoPlan>;
  /** Called once the invocation runs (a sandbox started, or a warm one was leased), with its id and whether it was cold. */
  onStarted?: (id: string, info: { coldStart: boolean; executor: ExecutorName }) => void;
  /** The tenant's caps and concurrency slot (taken once here, for handler and command functions alike). */
  scope?: TenantScope;
  /**
   * A cluster worker's run for a gateway: the call's metering facts go here, for the gateway's usage records, instead
   * of to this server's usage meter.
   */
  onMetered?: (facts: InvocationEvent) => void;
}

/** Cluster mode: where an invocation runs when it is not here. */
export interface RemoteRouter {
  /**
   * The run on a worker, or null when it runs here. `runHere` runs it here after all (a node that is a worker too, when
   * the worker it chose turned out to be gone, or chose itself). `admit` takes a slot of the function's
   * `maxConcurrency` (waiting in its `maxQueued` queue) before a worker is chosen: the limit holds across all workers,
   * not per worker; the slot is released when the run ends.
   */
  route(version: FunctionVersion, executor: ExecutorName, body: Buffer, options: InvokeOptions, runHere: () => Promise<InvocationResult>, admit: () => Promise<() => void>): Promise<InvocationResult> | null;
  /** False when this server never runs the version itself (a gateway sends all its calls to workers). */
  runsHere(version: FunctionVersion): boolean;
  /** A function was deleted: the workers' warm sandboxes of it go too. */
  deleted(tenant: string, name: string): void;
}

/** Runs handler-style invocations (warm pools); absent on servers without an executor that keeps sandboxes warm. */
export interface HandlerInvoker {
  /** Whether `executor` can run handler-style functions. */
  supports(executor: ExecutorName): boolean;
  /** Called after a deploy: prewarm `minWarm` sandboxes of the new version, retire the older versions' pools. */
  deployed(version: FunctionVersion, executor: ExecutorName, caps?: Partial<ResourceLimits>): void;
  /** Called after a delete: close every pool of the function. */
  deleted(tenant: string, name: string): Promise<void>;
  invoke(version: FunctionVersion, executor: ExecutorName, body: Buffer, options: InvokeOptions): Promise<InvocationResult>;
  close(): Promise<void>;
}

export interface FunctionServiceOptions {
  /** Where functions are read from (and written to, unless `writes` is given). */
  store: Store;
  /** Where deploys and deletes go: a cluster gateway's shared state (which applies them to `store`); default `store`. */
  writes?: FunctionWrites;
  executionService: ExecutionService;
  /** Custom images: a handler function may run on one built from its runtime's image (custom-images.ts). */
  images?: ImageResolver;
  defaultExecutor: ExecutorName;
  handlers?: HandlerInvoker;
  clock?: Clock;
  /** Upper bound of `maxConcurrency`. Default 1000. */
  maxConcurrencyLimit?: number;
  /** Per-function limits of command functions that set none (handler functions: their warm pool's). */
  defaultMaxConcurrency?: number;
  defaultMaxQueued?: number;
  queueTimeoutMs?: number;
  /**
   * Several gateways: a slot of a function's explicit `maxConcurrency` shared by them (taken after this server's own,
   * waiting up to `waitMs` for one given back anywhere), so the limit holds across gateways. Null when none came free.
   * Absent: each server counts its own calls.
   */
  sharedFunctionSlots?: (version: FunctionVersion, max: number, options: { waitMs: number; signal?: AbortSignal }) => Promise<(() => void) | null>;
  /** Versions kept per function (the newest); older ones are deleted on deploy unless an invocation needs them. Default 10. */
  versionsKept?: number;
  /** Versions something outside the store still needs (async enqueues not committed yet); retention keeps them. */
  versionsInUse?: (tenant: string, name: string) => Iterable<number>;
  /** The tenant's storage quotas, checked before a version is stored; absent: no quotas. */
  storageQuotasOf?: (tenant: string) => StorageQuotas;
  /** Where deployed bundles are unpacked; absent: bundle deploys are refused (BUNDLES_UNSUPPORTED). */
  bundles?: BundleStore;
  /** Installs node bundles' npm dependencies into shared layers; absent: package.json is not acted on. */
  builder?: DependencyBuilder;
  /** Where layers are kept (collected like bundles). */
  layers?: BundleStore;
  /** Builds the images for functions' Debian packages ("apt"); absent: a deploy with packages is refused. */
  packageImages?: PackageImages;
  /** Where builds (status, error, log) are recorded; absent: builds run unrecorded (no build ids). */
  builds?: BuildStore;
  /** Cluster mode: sends invocations it can to a worker (src/cluster/remote-runs.ts); absent: everything runs here. */
  remote?: RemoteRouter;
  /**
   * Cluster gateways: a version's bundle and layer go to the cluster's object store before the version is stored, and
   * come from it when this server lacks them (src/cluster/shared-artifacts.ts); absent: they are this server's alone.
   */
  artifacts?: {
    publish(kind: 'bundle' | 'layer', sha256: string): Promise<void>;
    ensure(kind: 'bundle' | 'layer', sha256: string): Promise<void>;
  };
  /** Whether a collection keeps a bundle or layer; default: the store's versions refer to it (a worker stores none). */
  referencesFile?: (kind: 'bundle' | 'layer', sha256: string) => boolean;
  /** Called when removing unreferenced bundles failed (they are tried again after the next deploy or delete). */
  onError?: (error: unknown) => void;
}

/** The public view of a function: its latest version's spec, flattened, plus its identity and times. */
export interface FunctionView extends FunctionSpec {
  name: string;
  version: number;
  style: 'handler' | 'command';
  createdAtMs: number;
  updatedAtMs: number;
  /**
   * The function's newest dependency build: `building` while a deploy installs, `failed` (with its error) when the
   * last deploy's build failed and the version shown keeps serving, `ready` when it made (or reused) a layer.
   */
  lastBuild?: BuildRecord;
}

/** One version of a function: its spec as deployed, flattened, with when it was deployed and whether invocations run it. */
export interface FunctionVersionView extends FunctionSpec {
  name: string;
  version: number;
  style: 'handler' | 'command';
  /** Whether this is the version new invocations run. */
  latest: boolean;
  /** When this version was deployed. */
  createdAtMs: number;
}

/** Runtimes with a handler agent: the node and python ones (node, node18, node20, python, python3.11, python3.13), deno and bun. */
export const HANDLER_RUNTIMES: readonly string[] = RUNTIME_NAMES.filter((runtime) => handlerFamily(runtime) !== null);
const HANDLER_NAME = /^[A-Za-z_$][A-Za-z0-9_$]{0,127}$/;
/**
 * Every executor binds a bundle's directory, its dependency layer and a program compiled at deploy into its sandboxes
 * (microvm as read-only disks of the VM); handlers need warm sandboxes too, which gvisor and microvm do not keep.
 * Where the program is seen: COMPILED_MOUNT, a new top-level directory; a microVM's root is its image's read-only disk,
 * where none can be made, so there it is under the guest's /run (a tmpfs the guest's init mounts).
 */
const compiledMountOn = (executor: ExecutorName | undefined): string => (executor === 'microvm' ? MICROVM_COMPILED_MOUNT : COMPILED_MOUNT);
export const MICROVM_COMPILED_MOUNT = '/run/kindling-bin';
/** Executors that keep warm sandboxes and bind a go or java handler's compiled agent into them. */
const COMPILED_HANDLER_EXECUTORS: readonly ExecutorName[] = ['sandbox', 'docker'];

/**
 * A bundle's handler, `FILE:FUNCTION` (`handler.py:main`, `src/index.js:handler`): the file relative to the bundle's
 * root, the function it exports (node) or defines (python). Null when `handler` is not of that form.
 */
export function parseBundleHandler(handler: string, runtime?: string): { file: string; fn: string } | null {
  const colon = handler.lastIndexOf(':');
  if (colon <= 0) return null;
  const file = handler.slice(0, colon);
  const fn = handler.slice(colon + 1);
  // A java bundle's FUNCTION is [package.]Class.method; the other runtimes' is one name.
  const name = handlerFamily(runtime) === 'java' ? JAVA_QUALIFIED_HANDLER : HANDLER_NAME;
  if (!name.test(fn) || file.length > 1024 || file.startsWith('/') || file.includes('\0') || file.split('/').some((part) => part === '..' || part === '.' || part === '')) return null;
  return { file, fn };
}

export const isHandlerStyle = (spec: FunctionSpec): boolean => spec.handler !== undefined;

/** Deploys, lists, deletes and invokes functions. Command functions run as one-off executions (stdin -> stdout). */
export class FunctionService {
  private readonly store: Store;
  private readonly writes: FunctionWrites;
  private readonly clock: Clock;

  constructor(private readonly options: FunctionServiceOptions) {
    this.store = options.store;
    this.writes = options.writes ?? localFunctionWrites(options.store);
    this.clock = options.clock ?? systemClock;
  }

  /**
   * Deploys a new version of the tenant's function; `caps` (the tenant's quotas) bound its limits. A bundle with
   * dependencies is built first (the call waits for it): a failed build throws BUILD_FAILED before anything is stored,
   * so the previous version keeps serving.
   */
  async deploy(tenant: string, name: string, spec: FunctionSpec, caps: Partial<ResourceLimits> = {}, quota: DeployQuota = {}): Promise<{ view: FunctionView; created: boolean }> {
    const started = await this.startDeploy(tenant, name, spec, caps, quota);
    return 'building' in started ? started.done : started;
  }

  /**
   * Deploys like `deploy`, but a deploy that needs a build answers once the build started: `building` is its record
   * (status `building`) and `done` settles when the version is stored (or rejects with why not; the record says it
   * too). Until then the function keeps serving its previous version, and another deploy of it is refused with 409
   * BUILD_IN_PROGRESS. A deploy that needs no build is stored before this resolves, as with `deploy`.
   */
  async startDeploy(
    tenant: string,
    name: string,
    spec: FunctionSpec,
    caps: Partial<ResourceLimits> = {},
    quota: DeployQuota = {},
  ): Promise<{ view: FunctionView; created: boolean } | { building: BuildRecord; done: Promise<{ view: FunctionView; created: boolean }> }> {
    checkName(name);
    // A version stores the concrete runtime (`node` -> `node20`): what it runs never moves with the newest.
    if (spec.runtime !== undefined) spec = { ...spec, runtime: concreteRuntime(spec.runtime) };
    const executor = spec.executor ?? this.options.defaultExecutor;
    // A version's image for its packages is made by its build (from the client it is refused by the schema).
    delete spec.aptImage;
    await this.validate(spec, executor, caps, tenant);
    spec = await this.withPackages(spec);
    if (quota.maxWarm !== undefined) this.checkWarmQuota(tenant, name, spec.minWarm ?? 0, quota.maxWarm);
    // Only a build sets a layer (the gateway's schema refuses one from the client; a caller in-process gets the same).
    delete spec.layer;
    const kind = await this.buildKind(spec, executor);
    if (kind === null) return this.storeVersion(tenant, name, spec, executor, caps);
    // From the check to the reservation nothing awaits: of two deploys racing here, the second gets the 409.
    this.checkNotBuilding(tenant, name);
    // Refused before anything is stored or reserved: the tenant's own cap first (it is the one the tenant can act on),
    // then the server's build queue (a 202 must not be followed by "the queue was full").
    if (quota.maxBuilds !== undefined) this.checkBuildQuota(tenant, quota.maxBuilds);
    if (kind !== 'apt') this.options.builder!.checkRoom();
    const id = newId('bld', this.clock.nowMs());
    const building: Building = { id, deleted: false };
    const key = functionKey(tenant, name);
    this.building.set(key, building);
    const record: BuildRecord = { id, tenant, function: name, kind, status: 'building', startedAtMs: this.clock.nowMs() };
    try {
      this.options.builds?.start(record);
      this.buildLogs.open(id);
    } catch (error) {
      // The record could not be written (a full disk): no build runs, and the reservation must not outlive it (every
      // later deploy of the function would be refused as BUILD_IN_PROGRESS until a restart).
      if (this.building.get(key) === building) this.building.delete(key);
      throw error;
    }
    this.buildsByTenant.set(tenant, (this.buildsByTenant.get(tenant) ?? 0) + 1);
    const done = this.buildAndStore(tenant, name, spec, executor, caps, kind, building).finally(() => {
      if (this.building.get(key) === building) this.building.delete(key);
      const left = (this.buildsByTenant.get(tenant) ?? 1) - 1;
      if (left > 0) this.buildsByTenant.set(tenant, left);
      else this.buildsByTenant.delete(tenant);
      // After the record is final: a follower that gets `end` reads the outcome from the store.
      this.buildLogs.end(id);
    });
    // Tracked until settled, so that close() waits for the version (or the failure) to be written before the stores go.
    const settled = done.then(() => undefined, () => undefined);
    this.deploying.add(settled);
    void settled.then(() => this.deploying.delete(settled));
    return { building: record, done };
  }

  /**
   * What a deploy needs built: npm for a node bundle with package.json + package-lock.json, pip for a python bundle
   * with requirements.txt, compile for go or rust code (and a go bundle without a command) on an executor that binds
   * the program in; null for anything else.
   */
  private async buildKind(spec: FunctionSpec, executor: ExecutorName): Promise<BuildKind | null> {
    const layer = await this.layerKind(spec, executor);
    // The image for Debian packages is made first, in the same build (its log, then npm's or pip's).
    return layer ?? (spec.apt === undefined ? null : 'apt');
  }

  private async layerKind(spec: FunctionSpec, executor: ExecutorName): Promise<BuildKind | null> {
    const builder = this.options.builder;
    if (builder === undefined || this.options.layers === undefined) return null;
    if (compiledAtDeploy(spec, executor)) return 'compile';
    if (spec.bundle === undefined || this.options.bundles === undefined) return null;
    return builder.needsBuild(this.options.bundles.pathOf(spec.bundle.sha256), spec.runtime);
  }

  /** 429 TENANT_BUILD_LIMIT when the tenant has `max` builds running (quota maxConcurrentBuilds). */
  private checkBuildQuota(tenant: string, max: number): void {
    const running = this.buildsByTenant.get(tenant) ?? 0;
    if (running < max) return;
    throw new KindlingError(
      'TENANT_BUILD_LIMIT',
      `tenant "${tenant}" already has ${running} dependency builds running (quota maxConcurrentBuilds ${max}); wait until one ends (GET /v1/functions/NAME/builds) and deploy again, or ask an admin to raise the quota`,
      { retryAfterSeconds: 5, details: { maxConcurrentBuilds: max, running } },
    );
  }

    /** 409 BUILD_IN_PROGRESS while a deploy of the function builds: the build would replace whatever is deployed meanwhile. */
  private checkNotBuilding(tenant: string, name: string): void {
    const running = this.building.get(functionKey(tenant, name));
    if (running === undefined) return;
    throw new KindlingError(
      'BUILD_IN_PROGRESS',
      `function "${name}" is being deployed: build ${running.id} runs; wait until it ends (GET /v1/functions/${name}/builds/${running.id}, or follow GET /v1/functions/${name}/builds/${running.id}/logs?follow=true) and deploy again`,
      { details: { buildId: running.id } },
    );
  }

  /**
   * Stores the version. On one server nothing awaits from the checks to the write (the quota check and the write see
   * the same usage); across gateways two deploys of one tenant at the same moment may both pass the storage quota check.
   */
  private async storeVersion(tenant: string, name: string, spec: FunctionSpec, executor: ExecutorName, caps: Partial<ResourceLimits>): Promise<{ view: FunctionView; created: boolean }> {
    this.checkNotBuilding(tenant, name);
    let retention = { keep: Math.max(1, this.options.versionsKept ?? DEFAULT_VERSIONS_KEPT), alsoKeep: [...(this.options.versionsInUse?.(tenant, name) ?? [])] };
    this.checkStorageQuotas(tenant, name, spec, retention);
    if (this.options.artifacts !== undefined && (spec.bundle !== undefined || spec.layer !== undefined)) {
      // Across gateways: the files before the version (no gateway learns of a version whose files it cannot get), and
      // after the checks (a refused deploy puts nothing); the checks again, as the put awaited.
      await this.withArtifacts(spec, 'publish');
      this.checkNotBuilding(tenant, name);
      retention = { ...retention, alsoKeep: [...(this.options.versionsInUse?.(tenant, name) ?? [])] };
      this.checkStorageQuotas(tenant, name, spec, retention);
    }
    const { fn, version, created, pruned } = await this.writes.putFunction(tenant, name, spec, this.clock.nowMs(), retention);
    // Warm sandboxes form where the version runs: not on a cluster gateway that sends it to workers.
    if (isHandlerStyle(spec) && this.options.remote?.runsHere(version) !== false) this.options.handlers?.deployed(version, executor, caps);
    if (pruned.length > 0) this.collectBundles();
    return { view: toView(fn, version), created };
  }

  /**
   * The build of a deploy, then its version: the layer (built now, or reused), recorded as a build of the function
   * (status, error, log, the version it made). Throws BUILD_FAILED (or why the version could not be stored).
   */
  private async buildAndStore(tenant: string, name: string, spec: FunctionSpec, executor: ExecutorName, caps: Partial<ResourceLimits>, kind: BuildKind, building: Building): Promise<{ view: FunctionView; created: boolean }> {
    const builder = this.options.builder!;
    const records = this.options.builds;
    const id = building.id;
    const logSoFar = (): string => this.buildLogs.text(id)?.text ?? '';
    let built: BuildResult | null = null;
    let packages: PackagesImage | null = null;
    let stored = false;
    try {
      const onLog = (text: string): void => this.buildLogs.append(id, text);
      const scope = { name: tenant, caps };
      if (spec.apt !== undefined) {
        packages = await this.options.packageImages!.imageForPackages(tenant, runtimeImage(spec.runtime!), spec.apt, onLog);
        spec.aptImage = packages.image;
      }
      if (kind === 'compile') {
        // A bundle's handler is FILE:FUNCTION: the program is its package main with the agent; FUNCTION is the handler.
        const bundleHandler = spec.bundle === undefined || spec.handler === undefined ? undefined : parseBundleHandler(spec.handler, spec.runtime)?.fn;
        const source =
          spec.bundle === undefined
            ? { code: spec.code!, ...(spec.handler === undefined ? {} : { handler: spec.handler }) }
            : { bundleDir: this.options.bundles!.pathOf(spec.bundle.sha256), bundleSha256: spec.bundle.sha256, ...(bundleHandler === undefined ? {} : { handler: bundleHandler }) };
        built = await builder.compiledFor(source, spec.runtime!, scope, onLog);
      } else if (kind === 'npm' || kind === 'pip') {
        built = await builder.layerFor(this.options.bundles!.pathOf(spec.bundle!.sha256), kind, scope, onLog, spec.runtime);
      }
      if (building.deleted) throw new KindlingError('FUNCTION_NOT_FOUND', `function "${name}" was deleted while its build ran; deploy it again`);
      if (built !== null) spec.layer = { ...built.layer, ...(records === undefined ? {} : { buildId: id }) };
      // The build's own reservation is not a reason to refuse its version.
      if (this.building.get(functionKey(tenant, name)) === building) this.building.delete(functionKey(tenant, name));
      const result = await this.storeVersion(tenant, name, spec, executor, caps);
      stored = true;
      records?.finish(id, { status: 'ready', ...(built === null ? {} : { layerSha256: built.layer.sha256 }), version: result.view.version, log: tailOf(built === null || built.log === '' ? logSoFar() : built.log), finishedAtMs: this.clock.nowMs() });
      return result;
    } catch (error) {
      let failure = error instanceof KindlingError ? error : new KindlingError('INTERNAL', 'the dependency build failed inside the platform', { cause: error });
      // A build killed by the server's shutdown did not fail on its own: say so (it is not the lockfile's fault).
      if (this.options.executionService.isDraining) failure = new KindlingError('BUILD_FAILED', `the server stopped during the build; deploy again (${failure.message.split('\n')[0]!.slice(0, 300)})`);
      const log = typeof (failure.details as { log?: unknown } | undefined)?.log === 'string' ? String((failure.details as { log: string }).log) : logSoFar();
      try {
        records?.finish(id, { status: 'failed', error: failure.message, log: tailOf(log), finishedAtMs: this.clock.nowMs() });
      } catch (recordError) {
        this.options.onError?.(recordError);
      }
      if (records !== undefined && failure.code === 'BUILD_FAILED') {
        throw new KindlingError('BUILD_FAILED', `${failure.message}\n(build ${id}: GET /v1/functions/${name}/builds/${id}/logs, kindling functions build-log ${name} ${id})`, {
          details: { ...(failure.details as Record<string, unknown> | undefined), buildId: id },
        });
      }
      throw failure === error ? error : failure;
    } finally {
      if (built !== null) builder.release(built.layer.sha256, built);
      packages?.release();
      // A layer or image no version took (also a failed image: its error stays in this build's record and log).
      if (!stored && (built !== null || spec.apt !== undefined)) this.collectBundles();
    }
  }

  /** Deploys building now, by tenant (until their build settled, also when the function was deleted meanwhile). */
  private readonly buildsByTenant = new Map<string, number>();
    /** Deploys building now, by tenant/function: one at a time per function. */
  private readonly building = new Map<string, Building>();
  /** Deploys whose build runs (settled promises): close() waits for them. */
  private readonly deploying = new Set<Promise<void>>();
  /** Logs of the builds running now. */
  readonly buildLogs = new BuildLogs();

  /** The function's builds, newest first (the function need not exist: its first deploy may be building or failed). */
  builds(tenant: string, name: string): BuildRecord[] {
    checkName(name);
    return this.options.builds?.list(tenant, name) ?? [];
  }

  /** One build of the tenant's function; 404 BUILD_NOT_FOUND if it has none with this id (another tenant's too). */
  build(tenant: string, name: string, id: string): BuildRecord {
    checkName(name);
    const build = this.options.builds?.get(tenant, name, id) ?? null;
    if (build === null) throw new KindlingError('BUILD_NOT_FOUND', `function "${name.slice(0, 80)}" has no build "${id.slice(0, 80)}"; GET /v1/functions/${name.slice(0, 80)}/builds lists its builds`);
    return build;
  }

  /** A build's log: what it wrote so far while it runs (the newest 1 MiB), its stored log (the last 64 KiB) once it ended; 404 if none. */
  buildLog(tenant: string, name: string, id: string): { build: BuildRecord; log: string } {
    const build = this.build(tenant, name, id);
    const live = this.buildLogs.text(id);
    if (build.status === 'building' && live !== undefined) return { build, log: live.text };
    return { build, log: this.options.builds?.log(tenant, name, id) ?? '' };
  }

  /**
   * Follows a build's log: the log so far and then, while it runs, each chunk as it is written and `end` (the record
   * is final then); a build that ended gives its stored log and `end` at once. 404 as `build`. All in one tick: a build
   * cannot end between the record read and the subscription.
   */
  followBuildLog(tenant: string, name: string, id: string, listener: (message: BuildLogMessage) => void): { build: BuildRecord; replay: string; droppedBytes: number; running: boolean; stop: () => void } {
    const build = this.build(tenant, name, id);
    const following = build.status === 'building' ? this.buildLogs.follow(id, listener) : undefined;
    if (following === undefined) return { build, replay: this.options.builds?.log(tenant, name, id) ?? '', droppedBytes: 0, running: false, stop: () => undefined };
    return { build, replay: following.replay, droppedBytes: following.droppedBytes, running: true, stop: following.stop };
  }

  /**
   * The tenant's versions and code bytes after this deploy (one version more, less what retention deletes with it)
   * must stay within its quotas; else 409 TENANT_STORAGE_LIMIT before anything is written.
   */
  private checkStorageQuotas(tenant: string, name: string, spec: FunctionSpec, retention: { keep: number; alsoKeep: number[] }): void {
    const quotas = this.options.storageQuotasOf?.(tenant);
    if (quotas === undefined || (quotas.maxFunctionVersions === null && quotas.maxCodeBytes === null)) return;
    const usage = this.store.storageUsage(tenant);
    const pruned = this.store.prunableVersions(tenant, name, retention.keep, retention.alsoKeep);
    const prunedBytes = pruned.reduce((sum, version) => sum + version.bytes, 0);
    checkStorageQuota(tenant, 'maxFunctionVersions', quotas.maxFunctionVersions, usage.functionVersions - pruned.length, 1);
    checkStorageQuota(tenant, 'maxCodeBytes', quotas.maxCodeBytes, usage.codeBytes - prunedBytes, specBytes(spec));
  }

  /**
   * Warm sandboxes are capacity held for a tenant whether it calls or not: the minWarm of all its functions together
   * stays within its concurrency quota (it could never use more at once anyway).
   */
  private checkWarmQuota(tenant: string, name: string, minWarm: number, maxWarm: number): void {
    let others = 0;
    for (const fn of this.store.listFunctions(tenant)) {
      if (fn.name === name) continue;
      others += this.store.getVersion(tenant, fn.name, fn.latestVersion)?.spec.minWarm ?? 0;
    }
    if (others + minWarm > maxWarm) {
      throw new KindlingError(
        'TENANT_LIMIT_EXCEEDED',
        `minWarm ${minWarm} would keep ${others + minWarm} warm sandboxes for tenant "${tenant}" (its other functions keep ${others}), above its concurrency quota ${maxWarm}; lower minWarm`,
        { details: { field: 'minWarm', quota: 'maxConcurrency', limit: maxWarm } },
      );
    }
  }

  get(tenant: string, name: string): FunctionView {
    const fn = FUNCTION_NAME_PATTERN.test(name) ? this.store.getFunction(tenant, name) : null;
    const version = fn === null ? null : this.store.getVersion(tenant, name, fn.latestVersion);
    if (fn === null || version === null) throw notFound(name);
    const lastBuild = this.options.builds?.list(tenant, name)[0];
    return { ...toView(fn, version), ...(lastBuild === undefined ? {} : { lastBuild }) };
  }

  /** Every version the store keeps of the function (see --function-versions-kept), oldest first. */
  versions(tenant: string, name: string): FunctionVersionView[] {
    const fn = FUNCTION_NAME_PATTERN.test(name) ? this.store.getFunction(tenant, name) : null;
    if (fn === null) throw notFound(name);
    return this.store.listVersions(tenant, name).map((version) => ({
      ...version.spec,
      name: fn.name,
      version: version.version,
      style: isHandlerStyle(version.spec) ? 'handler' : 'command',
      latest: version.version === fn.latestVersion,
      createdAtMs: version.createdAtMs,
    }));
  }

  list(tenant: string): FunctionView[] {
    return this.store.listFunctions(tenant).flatMap((fn) => {
      const version = this.store.getVersion(tenant, fn.name, fn.latestVersion);
      const lastBuild = version?.spec.bundle === undefined ? undefined : this.options.builds?.list(tenant, fn.name)[0];
      return version === null ? [] : [{ ...toView(fn, version), ...(lastBuild === undefined ? {} : { lastBuild }) }];
    });
  }

  async delete(tenant: string, name: string): Promise<void> {
    checkName(name);
    // A build running for the function stores no version when it ends (the delete wins, also over a first deploy).
    const building = this.building.get(functionKey(tenant, name));
    if (building !== undefined) {
      building.deleted = true;
      // A deploy after the delete is a new function's: the old build no longer holds it.
      this.building.delete(functionKey(tenant, name));
    }
    if (!(await this.writes.deleteFunction(tenant, name)) && building === undefined) throw notFound(name);
    this.options.builds?.deleteFunction(tenant, name);
    this.options.remote?.deleted(tenant, name);
    await this.options.handlers?.deleted(tenant, name);
    this.collectBundles();
  }

  /**
   * Another gateway of the cluster deleted the function (its records here are gone already): its warm sandboxes here
   * close, and what only it referred to is collected.
   */
  deletedElsewhere(tenant: string, name: string): void {
    const building = this.building.get(functionKey(tenant, name));
    if (building !== undefined) building.deleted = true;
    void this.options.handlers?.deleted(tenant, name)?.catch((error: unknown) => this.options.onError?.(error));
    this.collectBundles();
  }

  /**
   * Removes unpacked bundles, layers and images made for packages that no kept version refers to any more (in the
   * background; a failure is retried next time).
   */
  collectBundles(): void {
    const bundles = this.options.bundles;
    const layers = this.options.layers;
    this.collecting = this.collecting.then(async () => {
      // Asked per directory just before it goes: a version that refers to it may have arrived since the collection began
      // (another gateway's deploy), or a worker may have started a run that uses it. The store is asked only of those
      // the snapshot did not name.
      const keeps = (kind: 'bundle' | 'layer'): ((sha256: string) => boolean) => {
        const asked = this.options.referencesFile;
        if (asked !== undefined) return (sha256) => asked(kind, sha256);
        const snapshot = this.store.bundleHashes(kind);
        return (sha256) => snapshot.has(sha256) || this.store.refersTo(kind, sha256);
      };
      await bundles?.collect(keeps('bundle'));
      if (layers !== undefined) await layers.collect(keeps('layer'));
      await this.options.packageImages?.collectFunctionImages();
    }).then(
      () => undefined,
      (error: unknown) => this.options.onError?.(error),
    );
  }

  private collecting: Promise<void> = Promise.resolve();

  /** Resolves once the bundle collections started so far are done (tests, shutdown). */
  bundlesCollected(): Promise<void> {
    return this.collecting;
  }

  /** A deleted tenant's functions go, with their warm sandboxes. */
  async deleteTenant(tenant: string): Promise<void> {
    const names = await this.writes.deleteTenantFunctions(tenant);
    for (const [key, building] of this.building) {
      if (!key.startsWith(`${tenant}/`)) continue;
      building.deleted = true;
      this.building.delete(key);
    }
    this.options.builds?.deleteTenant(tenant);
    for (const name of names) this.options.remote?.deleted(tenant, name);
    await Promise.all(names.map((name) => this.options.handlers?.deleted(tenant, name)));
    this.collectBundles();
  }

  /** The version an invocation of `name` runs (the latest unless `version` is given) and its style; 404 if none. */
  resolve(tenant: string, name: string, version?: number): { version: FunctionVersion; style: 'handler' | 'command' } {
    const found = FUNCTION_NAME_PATTERN.test(name) ? this.store.getVersion(tenant, name, version) : null;
    if (found === null) throw version === undefined ? notFound(name) : new KindlingError('FUNCTION_NOT_FOUND', `function "${name.slice(0, 80)}" has no version ${version} (it was deleted or redeployed from scratch)`);
    return { version: found, style: isHandlerStyle(found.spec) ? 'handler' : 'command' };
  }

  async invoke(tenant: string, name: string, body: Buffer, options: InvokeOptions = {}): Promise<InvocationResult> {
    const { version } = this.resolve(tenant, name, options.version);
    return this.invokeVersion(version, body, options, { remote: true });
  }

  /**
   * Runs a version already resolved: `invoke` after its lookup, and a cluster worker with the version a gateway sent
   * (`remote: false`: it runs here, never forwarded again).
   */
  async invokeVersion(version: FunctionVersion, body: Buffer, options: InvokeOptions, route: { remote: boolean; admitted?: boolean }): Promise<InvocationResult> {
    const { tenant, name, spec } = version;
    const executor = spec.executor ?? this.options.defaultExecutor;
    // The tenant's concurrency quota covers handler and command functions alike. Its slot is taken once the function's
    // own slot is held (by admit, by the warm pool for handlers): a call waiting in a function's queue holds none of
    // its tenant's quota, which counts what runs, so it cannot starve the tenant's other functions. A tenant that runs
    // all it may is refused at once all the same (checkSlot reserves nothing).
    options.scope?.checkSlot?.();
    // Cluster mode: a worker runs it when the router takes it (null: it runs here).
    // (Optional chaining: on a server on its own no argument, not even the closure, is made.)
    const forwarded = route.remote
      ? this.options.remote?.route(version, executor, body, options, () => this.invokeHere(version, body, options), () => this.admit(version, options.signal, options.scope))
      : undefined;
    if (forwarded) return await forwarded;
    // It runs here. A version deployed through another gateway: its bundle and layer come from the cluster the first
    // time (later, a stat each; functions without files await nothing more).
    if (this.options.artifacts !== undefined && (spec.bundle !== undefined || spec.layer !== undefined)) await this.withArtifacts(spec, 'ensure');
    if (isHandlerStyle(spec)) {
      const handlers = this.options.handlers;
      if (handlers === undefined || !handlers.supports(executor)) {
        throw handlersUnsupported(executor);
      }
      // A go handler's agent is its compiled program, which only executors that bind files can run (the server's
      // default executor may have changed since the deploy).
      const family = handlerFamily(spec.runtime);
      if ((family === 'go' || family === 'java') && !COMPILED_HANDLER_EXECUTORS.includes(executor)) {
        throw new KindlingError('HANDLERS_UNSUPPORTED', `${family} handler "${name}" runs on the ${COMPILED_HANDLER_EXECUTORS.join(' or ')} executor, not ${executor}; redeploy it with "executor": "sandbox"`, { details: { executor } });
      }
      return await handlers.invoke(version, executor, body, options);
    }
    // Per function version: maxConcurrency running, maxQueued waiting (then 429), as for handler functions.
    // (A cluster node running it here after all holds the slot the router took already: not taken twice.)
    const release = route.admitted === true ? () => undefined : await this.admit(version, options.signal, options.scope);
    let raw;
    try {
      const binds = this.bindsOf(spec, executor);
      raw = await this.options.executionService.executeRaw(commandRequest(spec, executor), {
        ...(binds.length === 0 ? {} : { roBinds: binds }),
        io: { stdin: options.io?.stdin ?? { kind: 'bytes', bytes: body }, stdout: options.io?.stdout ?? COLLECT_STDOUT },
        functionName: name,
        tenant: { name: tenant, caps: options.scope?.caps ?? {} },
        ...(options.signal ? { signal: options.signal } : {}),
        ...(options.trace ? { trace: options.trace } : {}),
        ...(options.onOutput ? { onOutput: options.onOutput } : {}),
        ...(options.onStarted ? { onStarted: options.onStarted } : {}),
        ...(options.onMetered ? { onMetered: (result: ExecutionResult, context: ExecutionContext) => options.onMetered?.(commandFacts(result, context, tenant, name)) } : {}),
      });
    } finally {
      release();
    }
    return {
      invocationId: raw.result.id,
      tenant,
      functionName: name,
      version: version.version,
      exitCode: raw.result.exitCode,
      body: raw.stdout,
      stderr: raw.stderr,
      durationMs: raw.result.durationMs,
      coldStart: raw.result.coldStart,
      timedOut: raw.result.timedOut,
      oomKilled: raw.result.oomKilled,
      truncated: raw.result.truncated,
      executor: raw.result.executor,
    };
  }

  /**
   * Runs it here after all (a cluster node that is a worker too), without taking the tenant's slot or the function's
   * maxConcurrency slot again: the router holds the latter while it runs.
   */
  private invokeHere(version: FunctionVersion, body: Buffer, options: InvokeOptions): Promise<InvocationResult> {
    const { acquire: _taken, checkSlot: _checked, ...scope } = options.scope ?? { name: version.tenant, caps: {} };
    return this.invokeVersion(version, body, { ...options, scope }, { remote: false, admitted: true });
  }

  async close(): Promise<void> {
    // Deploys still building end once the executions are drained or killed (the server's close does that first):
    // their versions or failures are written before the stores close.
    await Promise.all(this.deploying);
    await this.options.handlers?.close();
  }

  private readonly limiters = new Map<string, ConcurrencyLimiter>();

  /**
   * A bundle at /work, and its layer (if any): dependencies at /work/node_modules over it (or /work/.deps), a compiled
   * program at /kindling-bin (compiledMountOn).
   */
  bindsOf(spec: FunctionSpec, executor: ExecutorName): { source: string; target: string }[] {
    const binds = spec.bundle === undefined ? [] : [{ source: this.bundlePath(spec.bundle.sha256), target: BUNDLE_MOUNT }];
    if (spec.layer !== undefined) {
      if (this.options.layers === undefined) throw new KindlingError('BUNDLES_UNSUPPORTED', 'this server keeps no dependency layers');
      binds.push({ source: this.options.layers.pathOf(spec.layer.sha256), target: spec.layer.kind === 'compile' ? compiledMountOn(executor) : layerMount(spec.layer) });
    }
    return binds;
  }

  /** A cluster worker, before it warms a version up: its bundle and layer, fetched unless they are here. */
  fetchFiles(spec: FunctionSpec): Promise<void> {
    return this.withArtifacts(spec, 'ensure');
  }

  /** Publishes (before the store) or fetches (before a run) a version's bundle and layer; nothing without a cluster. */
  private async withArtifacts(spec: FunctionSpec, step: 'publish' | 'ensure'): Promise<void> {
    const artifacts = this.options.artifacts;
    if (artifacts === undefined) return;
    if (spec.bundle !== undefined) await artifacts[step]('bundle', spec.bundle.sha256);
    if (spec.layer !== undefined) await artifacts[step]('layer', spec.layer.sha256);
  }

  private bundlePath(sha256: string): string {
    if (this.options.bundles === undefined) throw new KindlingError('BUNDLES_UNSUPPORTED', 'this server keeps no function bundles');
    return this.options.bundles.pathOf(sha256);
  }

  /**
   * A slot of the function's maxConcurrency: this server's (queued up to maxQueued), then, with several gateways and a
   * maxConcurrency the function sets itself, the cluster's (the default limit stays per gateway: a shared slot costs
   * two replicated writes per call).
   */
  private async admit(version: FunctionVersion, signal: AbortSignal | undefined, scope: TenantScope | undefined): Promise<() => void> {
    const release = await this.admitFunction(version, signal);
    // Then the tenant's slot (a 429 at its quota gives the function's slot back).
    let releaseTenant: (() => void) | undefined;
    try {
      releaseTenant = await scope?.acquire?.();
      // Cancelled while the slot was taken (a cluster's shared slot is a round trip): nothing starts.
      signal?.throwIfAborted();
    } catch (error) {
      releaseTenant?.();
      release();
      throw error;
    }
    return releaseTenant === undefined
      ? release
      : () => {
          releaseTenant();
          release();
        };
  }

  private async admitFunction(version: FunctionVersion, signal: AbortSignal | undefined): Promise<() => void> {
    const startedMs = this.clock.nowMs();
    const release = await this.limiterFor(version).acquire(signal);
    const shared = this.options.sharedFunctionSlots;
    const max = version.spec.maxConcurrency;
    if (shared === undefined || max === undefined) return release;
    const maxQueued = version.spec.maxQueued ?? this.options.defaultMaxQueued ?? 256;
    const waitMs = maxQueued === 0 ? 0 : Math.max(0, (this.options.queueTimeoutMs ?? 30_000) - (this.clock.nowMs() - startedMs));
    let releaseShared: (() => void) | null;
    try {
      releaseShared = await shared(version, max, { waitMs, ...(signal ? { signal } : {}) });
    } catch (error) {
      release();
      throw error;
    }
    if (releaseShared === null) {
      release();
      // The wait ended because the caller went away: its own reason (as the local queue gives), not a refusal.
      if (signal?.aborted === true) throw signal.reason;
      throw new KindlingError('TOO_MANY_REQUESTS', `function ${version.name} already runs ${max} calls at once across the cluster's gateways (its maxConcurrency)${waitMs > 0 ? `, and none finished within ${waitMs} ms` : ''}; retry after the Retry-After delay`, {
        retryAfterSeconds: 1,
      });
    }
    return () => {
      releaseShared();
      release();
    };
  }

  private limiterFor(version: FunctionVersion): ConcurrencyLimiter {
    const key = `${version.tenant}/${version.name}@${version.version}`;
    let limiter = this.limiters.get(key);
    if (limiter === undefined) {
      // One per live version; older versions' limiters go when a newer one is first used.
      for (const other of this.limiters.keys()) if (other.startsWith(`${version.tenant}/${version.name}@`)) this.limiters.delete(other);
      limiter = new ConcurrencyLimiter({
        maxConcurrent: version.spec.maxConcurrency ?? this.options.defaultMaxConcurrency ?? 10,
        maxQueued: version.spec.maxQueued ?? this.options.defaultMaxQueued ?? 256,
        queueTimeoutMs: this.options.queueTimeoutMs ?? 30_000,
        slotName: `execution slot of function ${version.name}`,
        limitName: "the function's maxConcurrency",
      });
      this.limiters.set(key, limiter);
    }
    return limiter;
  }

  /** Semantic checks; the shapes were checked by the gateway's schema. Throws 4xx KindlingErrors. */
  private async validate(spec: FunctionSpec, executor: ExecutorName, caps: Partial<ResourceLimits>, tenant: string): Promise<void> {
    const fail = (field: string, message: string): never => {
      throw new KindlingError('VALIDATION_FAILED', message, { details: { field } });
    };
    if (!(EXECUTOR_NAMES as readonly string[]).includes(executor)) {
      throw new KindlingError('UNKNOWN_EXECUTOR', `unknown executor "${executor}"; use one of ${EXECUTOR_NAMES.join(', ')}`);
    }
    const max = this.options.maxConcurrencyLimit ?? 1000;
    if (spec.maxConcurrency !== undefined && !(Number.isInteger(spec.maxConcurrency) && spec.maxConcurrency >= 1 && spec.maxConcurrency <= max)) {
      throw new KindlingError('LIMIT_OUT_OF_RANGE', `maxConcurrency must be a whole number between 1 and ${max}, got ${spec.maxConcurrency}`, { details: { field: 'maxConcurrency' } });
    }
    if (spec.maxQueued !== undefined && !(Number.isInteger(spec.maxQueued) && spec.maxQueued >= 0 && spec.maxQueued <= 100_000)) {
      throw new KindlingError('LIMIT_OUT_OF_RANGE', `maxQueued must be a whole number between 0 and 100000, got ${spec.maxQueued}`, { details: { field: 'maxQueued' } });
    }
    const ceiling = spec.maxConcurrency ?? max;
    if (spec.minWarm !== undefined && !(Number.isInteger(spec.minWarm) && spec.minWarm >= 0 && spec.minWarm <= ceiling)) {
      throw new KindlingError('LIMIT_OUT_OF_RANGE', `minWarm must be a whole number between 0 and maxConcurrency (${ceiling}), got ${spec.minWarm}`, { details: { field: 'minWarm' } });
    }
    if (spec.bundle !== undefined) {
      await this.validateBundle(spec, executor);
    } else if (spec.handler !== undefined) {
      if (handlerFamily(spec.runtime) === 'java') {
        if (!JAVA_HANDLER.test(spec.handler)) fail('handler', `a java handler is Class.method, the public class the code defines and its method, like "Handler.handle"; got "${spec.handler.slice(0, 130)}"`);
      } else if (!HANDLER_NAME.test(spec.handler)) {
        fail('handler', `handler must be a function name like "main" or "handler", got "${spec.handler}"`);
      }
      if (spec.command !== undefined) {
        throw new KindlingError('CONFLICTING_FIELDS', '"handler" goes with "runtime" + "code" (and optionally an "image" built from the runtime\'s), not with "command"');
      }
      if (spec.runtime === undefined || !HANDLER_RUNTIMES.includes(spec.runtime)) {
        if (spec.runtime !== undefined && !(RUNTIME_NAMES as readonly string[]).includes(spec.runtime)) {
          throw new KindlingError('UNKNOWN_RUNTIME', `unknown runtime "${spec.runtime}"; handlers run on ${HANDLER_RUNTIMES.join(', ')}`);
        }
        fail('runtime', `a handler needs "runtime": one of ${HANDLER_RUNTIMES.join(', ')} (other runtimes deploy as commands: drop "handler")`);
      }
      if (spec.code === undefined) fail('code', `a handler needs "code": the ${spec.runtime} source that defines "${spec.handler}"`);
      if (this.options.handlers === undefined || !this.options.handlers.supports(executor)) {
        throw handlersUnsupported(executor);
      }
    }
    const compiledHandler = spec.handler !== undefined ? handlerFamily(spec.runtime) : null;
    if (spec.handler !== undefined && (compiledHandler === 'go' || compiledHandler === 'java')) {
      // Its agent is compiled with the code at deploy and bound in: code only, on an executor that binds files.
      const family = compiledHandler;
      if (spec.image !== undefined) throw new KindlingError('CONFLICTING_FIELDS', `a ${family} handler runs on kindling/${family}: drop "image"`, { details: { field: 'image' } });
      const goFunction = spec.bundle === undefined ? spec.handler : (parseBundleHandler(spec.handler, spec.runtime)?.fn ?? '');
      if (family === 'go' && !/^[A-Za-z_][A-Za-z0-9_]*$/.test(goFunction)) fail('handler', `a go handler is a Go function name like "Handle" (in a bundle FILE:FUNCTION, e.g. "main.go:Handle"), got "${spec.handler.slice(0, 130)}"`);
      if (!COMPILED_HANDLER_EXECUTORS.includes(executor) || this.options.builder === undefined || this.options.layers === undefined) {
        throw new KindlingError('HANDLERS_UNSUPPORTED', `${family} handlers are compiled at deploy and run on the ${COMPILED_HANDLER_EXECUTORS.join(' or ')} executor, not ${executor}; deploy with another "executor", or as a command (no "handler")`, { details: { executor } });
      }
    }
    if (spec.handler !== undefined && spec.image !== undefined) {
      this.checkHandlerImage(spec.image, spec.runtime!, tenant);
      // The agent is the command; the image and limits are what a one-off execution would have checked.
      const { runtime: _runtime, code: _code, ...rest } = commandRequest(spec);
      await this.options.executionService.prepare({ ...rest, command: ['true'], executor }, caps, tenant);
      return;
    }
    // The same checks a one-off execution gets: fields that go together, runtime, image, limits in range.
    // A bundle's handler has no command of its own (the agent is the command): the image and limits are checked.
    // So has a go bundle compiled at deploy (its program is the command).
    const noCommand = spec.bundle !== undefined && (spec.handler !== undefined || compiledAtDeploy(spec, executor));
    await this.options.executionService.prepare({ ...commandRequest(spec), ...(noCommand ? { command: ['true'] } : {}), executor }, caps, tenant);
  }

  /**
   * The spec with its Debian packages settled: `apt` as given, or from its bundle's kindling.json (both: they must
   * agree), checked, without duplicates; no `apt` when there are none. Throws a 400 that says what to change.
   */
  private async withPackages(spec: FunctionSpec): Promise<FunctionSpec> {
    let apt = spec.apt === undefined ? undefined : validatePackages(spec.apt, 'apt');
    if (spec.bundle !== undefined && this.options.bundles !== undefined) {
      const fromFile = await readBundleSettings(this.options.bundles.pathOf(spec.bundle.sha256));
      if (fromFile !== undefined && apt !== undefined && [...fromFile].sort().join(' ') !== [...apt].sort().join(' ')) {
        throw new KindlingError('CONFLICTING_FIELDS', `the spec's "apt" (${apt.join(' ')}) and the bundle's ${BUNDLE_SETTINGS_FILE} (${fromFile.join(' ')}) list different packages: keep one of them`, { details: { field: 'apt' } });
      }
      apt ??= fromFile;
    }
    const { apt: _given, ...rest } = spec;
    if (apt === undefined || apt.length === 0) return rest;
    if (spec.runtime === undefined || runtimeDefinition(spec.runtime) === undefined) {
      throw new KindlingError('VALIDATION_FAILED', '"apt" adds Debian packages to a runtime\'s image: give "runtime" (with an "image" + "command", build your own image with the packages: kindling images create NAME --from IMAGE --apt PKG)', { details: { field: 'apt' } });
    }
    if (spec.image !== undefined) {
      throw new KindlingError('CONFLICTING_FIELDS', '"apt" adds packages to the runtime\'s image, and "image" names another: drop "apt" and put the packages in that image (kindling images create NAME --from IMAGE --apt PKG), or drop "image"', { details: { field: 'apt' } });
    }
    if (this.options.packageImages === undefined) {
      throw new KindlingError('VALIDATION_FAILED', 'this server builds no images for functions\' Debian packages; deploy without "apt"', { details: { field: 'apt' } });
    }
    return { ...rest, apt };
  }

  /**
   * A handler's `image`: its runtime's own, or a custom image built from it (the agent runs on the runtime's
   * interpreter, which the image must have). Throws a 4xx that says which runtime the image is for.
   */
  private checkHandlerImage(image: string, runtime: string, tenant: string): void {
    const own = runtimeImage(runtime);
    const resolved = this.options.images?.resolve(image, tenant) ?? image;
    if (resolved === own) return;
    const base = this.options.images?.baseOf?.(resolved) ?? null;
    if (base === null) {
      throw new KindlingError('VALIDATION_FAILED', `a ${runtime} handler runs on ${own} or on a custom image built from it (kindling images create NAME --from ${runtime} --apt PKG); "${image.slice(0, 120)}" is neither`, { details: { field: 'image' } });
    }
    if (base !== own) {
      const fits = Object.values(RUNTIMES).find((r) => r.image === base && r.name !== 'node' && r.name !== 'python');
      throw new KindlingError('VALIDATION_FAILED', `custom image "${image.slice(0, 120)}" is built from ${base}, and runtime ${runtime} runs on ${own}: deploy with ${fits === undefined ? `a runtime of ${base}` : `"runtime": "${fits.name}"`}, or build the image --from ${runtime}`, { details: { field: 'image', base } });
    }
  }

  /**
   * A bundle function: handler style (`runtime` node/python + `handler` FILE:FUNCTION, the file in the bundle) or
   * command style (`command` run in the bundle's directory, with `runtime`'s image or an `image`). No `code`.
   */
  private async validateBundle(spec: FunctionSpec, executor: ExecutorName): Promise<void> {
    const bundle = spec.bundle!;
    const bundles = this.options.bundles;
    if (bundles === undefined) throw new KindlingError('BUNDLES_UNSUPPORTED', 'this server keeps no function bundles; deploy the code as JSON ("code")');
    if (!(await bundles.has(bundle.sha256))) throw new KindlingError('BUNDLE_INVALID', 'the bundle is not in this server\'s bundle store; upload it again');
    if (spec.code !== undefined) throw new KindlingError('CONFLICTING_FIELDS', 'a bundle brings its own code: drop "code" (the handler names the file, FILE:FUNCTION)');
    if (spec.handler !== undefined) {
      const parsed = parseBundleHandler(spec.handler, spec.runtime);
      if (parsed === null) {
        const example = handlerFamily(spec.runtime) === 'java' ? '"src/com/acme/Api.java:com.acme.Api.handle" (FUNCTION is [package.]Class.method)' : '"handler.py:main" or "src/index.js:handler"';
        throw new KindlingError('VALIDATION_FAILED', `a bundle's handler is FILE:FUNCTION with FILE relative to the bundle's root, e.g. ${example}; got "${spec.handler.slice(0, 200)}"`, { details: { field: 'handler' } });
      }
      if (spec.command !== undefined) throw new KindlingError('CONFLICTING_FIELDS', '"handler" goes with "runtime" (and optionally an "image" built from the runtime\'s), not with "command"');
      if (spec.runtime === undefined || !HANDLER_RUNTIMES.includes(spec.runtime)) {
        throw new KindlingError('VALIDATION_FAILED', `a handler needs "runtime": one of ${HANDLER_RUNTIMES.join(', ')} (other runtimes deploy as commands: give "command" instead of "handler")`, { details: { field: 'runtime' } });
      }
      const found = await lstat(join(bundles.pathOf(bundle.sha256), parsed.file)).catch(() => null);
      if (found === null || found.isDirectory()) {
        throw new KindlingError('VALIDATION_FAILED', `the handler's file "${parsed.file.slice(0, 200)}" is not a file of the bundle; name a file relative to the bundle's root (FILE:FUNCTION)`, { details: { field: 'handler', file: parsed.file.slice(0, 200) } });
      }
      if (this.options.handlers === undefined || !this.options.handlers.supports(executor)) throw handlersUnsupported(executor);
      return;
    }
    const family = spec.runtime === undefined ? undefined : runtimeDefinition(spec.runtime)?.family;
    if ((family === 'go' || family === 'rust') && spec.command === undefined && spec.image === undefined) return;
    if (spec.command === undefined || spec.command.length === 0) {
      throw new KindlingError('VALIDATION_FAILED', 'a bundle runs as a handler ("runtime" + "handler": "FILE:FUNCTION") or as a command ("runtime" or "image" + "command", e.g. ["python3", "main.py"])', { details: { field: 'handler' } });
    }
    if (spec.runtime !== undefined && spec.image !== undefined) throw new KindlingError('CONFLICTING_FIELDS', 'give "runtime" or "image" with a bundle\'s command, not both');
    if (spec.runtime !== undefined && runtimeDefinition(spec.runtime) === undefined) throw new KindlingError('UNKNOWN_RUNTIME', `unknown runtime "${spec.runtime}"; use one of ${Object.keys(RUNTIMES).join(', ')}`);
  }
}

/**
 * Whether the deploy of this version compiles its program: go or rust code, or a go or rust bundle without a command
 * (every executor binds the program into its sandboxes).
 */
function compiledCode(spec: FunctionSpec): boolean {
  if (spec.runtime === undefined) return false;
  const family = runtimeDefinition(spec.runtime)?.family;
  if (family === undefined || !COMPILED_RUNTIME_FAMILIES.includes(family)) return false;
  // A go or rust bundle without a command is its program (a go one with a handler: its package main with the agent).
  if (spec.bundle !== undefined) return (family === 'go' || family === 'rust') && spec.command === undefined;
  return spec.code !== undefined && spec.command === undefined && spec.image === undefined;
}

/** Whether the deploy compiles its program: go and rust code (compiledCode), and java handlers (with their agent). */
function compiledAtDeploy(spec: FunctionSpec, executor: ExecutorName): boolean {
  // A java handler: its code, or its bundle's sources (with the bundle's jars on the class path), with the agent.
  if (COMPILED_HANDLER_EXECUTORS.includes(executor) && spec.handler !== undefined && (spec.code !== undefined || spec.bundle !== undefined) && handlerFamily(spec.runtime) === 'java') return true;
  return compiledCode(spec);
}

/**
 * The Debian packages a bundle's kindling.json lists (`{"apt": [...]}`), or undefined when it has none. A file that is
 * not JSON, not an object, has unknown fields or is not a plain file: 400 naming the file.
 */
async function readBundleSettings(bundleDir: string): Promise<string[] | undefined> {
  const file = join(bundleDir, BUNDLE_SETTINGS_FILE);
  const found = await lstat(file).catch(() => null);
  if (found === null) return undefined;
  const invalid = (why: string): KindlingError => new KindlingError('BUNDLE_INVALID', `the bundle's ${BUNDLE_SETTINGS_FILE} ${why}; it is JSON like {"apt": ["python3-numpy"]}`, { details: { file: BUNDLE_SETTINGS_FILE } });
  if (!found.isFile()) throw invalid('is not a plain file');
  if (found.size > BUNDLE_SETTINGS_MAX_BYTES) throw invalid(`is larger than ${BUNDLE_SETTINGS_MAX_BYTES} bytes`);
  let settings: unknown;
  try {
    settings = JSON.parse(await readFile(file, 'utf8'));
  } catch (error) {
    throw invalid(`is not JSON (${(error as Error).message.slice(0, 200)})`);
  }
  if (settings === null || typeof settings !== 'object' || Array.isArray(settings)) throw invalid('is not a JSON object');
  const unknown = Object.keys(settings).filter((key) => key !== 'apt');
  if (unknown.length > 0) throw invalid(`has fields this server does not know (${unknown.slice(0, 5).join(', ').slice(0, 200)}); the one it reads is "apt"`);
  const apt = (settings as { apt?: unknown }).apt;
  return apt === undefined ? undefined : validatePackages(apt, `${BUNDLE_SETTINGS_FILE}: apt`);
}

/** A command function's run as the metering facts a handler call gives (a cluster gateway meters both alike). */
function commandFacts(result: ExecutionResult, context: ExecutionContext, tenant: string, functionName: string): InvocationEvent {
  return {
    invocationId: result.id,
    tenant,
    functionName,
    executor: result.executor,
    status: statusOf(result),
    coldStart: result.coldStart,
    durationMs: result.durationMs,
    inBytes: context.stdinBytes,
    outBytes: context.outputBytes,
    queuedMs: result.timings?.queuedMs ?? 0,
    memoryMb: context.memoryMb,
    ...(typeof result.usage?.cpuMs === 'number' ? { cpuMs: result.usage.cpuMs } : {}),
    ...(typeof result.usage?.memoryPeakBytes === 'number' ? { memoryPeakBytes: result.usage.memoryPeakBytes } : {}),
    ...(context.traceId === undefined ? {} : { traceId: context.traceId }),
  };
}

function commandRequest(spec: FunctionSpec, executor?: ExecutorName): ExecuteRequest {
  const request: ExecuteRequest = {};
  const compiled = spec.layer?.kind === 'compile' && executor !== undefined;
  if (compiled) {
    // The program compiled at deploy (bindsOf binds it), in the runtime's image: nothing is compiled per call.
    request.image = spec.aptImage ?? runtimeImage(spec.runtime!);
    request.command = [`${compiledMountOn(executor)}/main`];
  } else if (spec.bundle !== undefined) {
    // A bundle's command runs in the runtime's image (or the one named), in the bundle's directory.
    const image = spec.aptImage ?? spec.image ?? (spec.runtime === undefined ? undefined : runtimeDefinition(spec.runtime)?.image);
    if (image !== undefined) request.image = image;
  } else {
    if (spec.runtime !== undefined) request.runtime = spec.runtime;
    if (spec.code !== undefined) request.code = spec.code;
    // The image made for its Debian packages (built from the runtime's: ExecutionService.prepare allows it).
    const image = spec.aptImage ?? spec.image;
    if (image !== undefined) request.image = image;
  }
  if (spec.command !== undefined && !compiled) request.command = spec.command;
  // A python layer is on the import path of a command too (the function's own PYTHONPATH, if any, wins).
  if (spec.layer?.kind === 'pip') request.env = { PYTHONPATH: PYTHON_LAYER_MOUNT, ...spec.env };
  else if (spec.env !== undefined) request.env = spec.env;
  if (spec.timeoutMs !== undefined) request.timeoutMs = spec.timeoutMs;
  if (spec.memoryMb !== undefined) request.memoryMb = spec.memoryMb;
  if (spec.cpus !== undefined) request.cpus = spec.cpus;
  if (spec.executor !== undefined) request.executor = spec.executor;
  return request;
}

/** Bytes of a build's log stored when it ends (npm and pip print their errors last). */
const LOG_KEPT_BYTES = 64 * 1024;
const tailOf = (log: string): string => (log.length > LOG_KEPT_BYTES ? log.slice(-LOG_KEPT_BYTES) : log);

function checkName(name: string): void {
  if (!FUNCTION_NAME_PATTERN.test(name)) {
    throw new KindlingError('VALIDATION_FAILED', `function name "${name.slice(0, 80)}" must match ${FUNCTION_NAME_PATTERN.source} (lower-case letters, digits, dashes; at most 63)`, { details: { field: 'name' } });
  }
}

function notFound(name: string): KindlingError {
  return new KindlingError('FUNCTION_NOT_FOUND', `no function named "${name.slice(0, 80)}"; deploy it with PUT /v1/functions/NAME (kindling deploy)`, { details: { name: name.slice(0, 80) } });
}

function toView(fn: FunctionRecord, version: FunctionVersion): FunctionView {
  return {
    ...version.spec,
    name: fn.name,
    version: version.version,
    style: isHandlerStyle(version.spec) ? 'handler' : 'command',
    createdAtMs: fn.createdAtMs,
    updatedAtMs: fn.updatedAtMs,
  };
}
