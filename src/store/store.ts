import type { ExecutorName, RuntimeName } from '../core/types.js';

/** Function names: lower-case, digits and dashes, starting with a letter or digit, at most 63 characters. */
export const FUNCTION_NAME_PATTERN = /^[a-z0-9][a-z0-9-]{0,62}$/;

/** What a deploy asks for; validated by the orchestrator before it reaches the store. Immutable once stored. */
export interface FunctionSpec {
  runtime?: RuntimeName;
  code?: string;
  /** Handler style (node/python): the exported (node) or defined (python) function that takes the body. */
  handler?: string;
  image?: string;
  command?: string[];
  env?: Record<string, string>;
  timeoutMs?: number;
  memoryMb?: number;
  cpus?: number;
  /** Warm sandboxes kept ready for this version (handler style). Default 0. */
  minWarm?: number;
  /** Invocations of this version running at once; beyond it they queue, then get 429. */
  maxConcurrency?: number;
  /** Invocations that may wait for a sandbox beyond maxConcurrency; more get 429. Default: the server's. */
  maxQueued?: number;
  executor?: ExecutorName;
  /** Deployed from a bundle (a tar of a directory): its content, seen read-only at the work dir (/work). */
  bundle?: FunctionBundle;
  /** A node bundle's npm dependencies (read-only at /work/node_modules) or a python bundle's pip ones (at /work/.deps). */
  layer?: FunctionLayer;
  /**
   * Debian packages its runs need on top of its runtime's image (the spec's `apt`, or its bundle's kindling.json):
   * the deploy builds (or reuses) an image of the runtime's plus these, named by `aptImage`.
   */
  apt?: string[];
  /** The image a deploy made (or reused) for `apt`; set by the build only (`kindling/u.<tenant>.pkgs-...`). */
  aptImage?: string;
}

/** What a version records of its dependency layer (the installed files live in the server's layer store, by hash). */
export interface FunctionLayer {
  /** sha256 of package-lock.json + runtime image + npm version, hex: every version with the same lockfile shares it. */
  sha256: string;
  /** Bytes of the installed tree as archived by the build (counted against the tenant's maxCodeBytes, per version). */
  bytes: number;
  /** True when the layer was there already (no build ran for this version). */
  reused: boolean;
  /** How long this version's build took (0 when reused). */
  buildMs: number;
  /** What made it: npm (a node bundle's package-lock.json; absent on layers recorded before pip), pip, or compile (a go or rust program). */
  kind?: 'npm' | 'pip' | 'compile';
  /** The build of this deploy (GET /v1/functions/NAME/builds/ID/logs); absent on layers recorded before build ids. */
  buildId?: string;
}

/** What a version records of its bundle (the unpacked files live in the server's bundle store, by hash). */
export interface FunctionBundle {
  /** sha256 of the archive as uploaded, hex: versions with the same bytes share one unpacked copy. */
  sha256: string;
  /** Bytes of the archive (counted against the tenant's maxCodeBytes, per version). */
  bytes: number;
  /** Entries (files, directories, links) in it. */
  entries: number;
}

export interface FunctionVersion {
  /** The tenant that owns the function (functions are keyed by tenant and name). */
  tenant: string;
  name: string;
  /** 1, 2, 3, ... per function; never reused while the function exists. */
  version: number;
  spec: FunctionSpec;
  createdAtMs: number;
}

/** The bytes a version takes in the store (its spec as stored: JSON, UTF-8): what the tenant's code quota counts. */
export const specBytes = (spec: FunctionSpec): number => Buffer.byteLength(JSON.stringify(spec)) + (spec.bundle?.bytes ?? 0) + (spec.layer?.bytes ?? 0);

/**
 * What a tenant keeps on the server's disk, as the store counts it (in the same transaction as each write, so it is
 * never off after a crash or a rollback). Snapshots (a later feature) add their bytes here and to tenant_storage.
 */
export interface TenantStorageUsage {
  /** Function versions kept (all its functions). */
  functionVersions: number;
  /** Bytes of those versions (specBytes: code, command, env). */
  codeBytes: number;
  /** Bytes of the payloads of its async invocations still queued or running (dropped when one finishes). */
  queuedPayloadBytes: number;
  /** Bytes of its custom images' root file systems (kept by the images service, not this store; absent there). */
  imageBytes?: number;
}

/** Old versions a deploy deletes: all but the newest `keep` (the new one included) and the versions in `alsoKeep`. */
export interface VersionRetention {
  keep: number;
  /** Versions something still needs that the store cannot see (enqueues not committed yet). */
  alsoKeep?: readonly number[];
}

export interface FunctionRecord {
  tenant: string;
  name: string;
  /** The version invocations run. */
  latestVersion: number;
  createdAtMs: number;
  updatedAtMs: number;
}

/**
 * Persistence of the orchestrator's state. Synchronous on purpose: the SQLite implementation answers from the page
 * cache in microseconds, and a synchronous API keeps read-modify-write steps atomic within one process.
 */
export interface Store {
  /**
   * Adds a new immutable version (creating the function on its first deploy) and makes it the latest. With `retention`,
   * older versions beyond it go in the same transaction, except those a queued or running invocation refers to;
   * `pruned` lists the versions deleted.
   */
  putFunction(tenant: string, name: string, spec: FunctionSpec, nowMs: number, retention?: VersionRetention): { fn: FunctionRecord; version: FunctionVersion; created: boolean; pruned: number[] };
  /** The versions (and their bytes) that a deploy with `keep` and `alsoKeep` would delete: see putFunction. */
  prunableVersions(tenant: string, name: string, keep: number, alsoKeep: readonly number[]): { version: number; bytes: number }[];
  /** What the tenant keeps on disk (zeros for a tenant with nothing stored). */
  storageUsage(tenant: string): TenantStorageUsage;
  getFunction(tenant: string, name: string): FunctionRecord | null;
  /** The version, or the latest when `version` is omitted. */
  getVersion(tenant: string, name: string, version?: number): FunctionVersion | null;
  listFunctions(tenant: string): FunctionRecord[];
  listVersions(tenant: string, name: string): FunctionVersion[];
  /** Removes the function and all its versions; false when there was none. */
  deleteFunction(tenant: string, name: string): boolean;
  /** Names of every function of a tenant (a deleted tenant's functions go). */
  deleteTenantFunctions(tenant: string): string[];
  /** The bundle hashes (FunctionBundle.sha256) some kept version of any tenant refers to (bundle garbage collection). */
  bundleHashes(field?: 'bundle' | 'layer'): Set<string>;
  /** Whether some kept version refers to this bundle (or layer) hash: asked of one just before it is removed. */
  refersTo(field: 'bundle' | 'layer', sha256: string): boolean;
  /** The images kept versions name (`image`, and `aptImage` made for their packages), one row per tenant, function and image. */
  imageReferences(): { tenant: string; function: string; image: string }[];

  /**
   * Commits a queued invocation (with its payload). With an idempotency key already used for the same function (and
   * tenant) the existing invocation is returned instead and `created` is false: the same key never runs twice.
   */
  insertInvocation(input: NewInvocation): { invocation: InvocationRecord; created: boolean };
  getInvocation(id: string, tenant?: string): InvocationRecord | null;
  /** The stored payload of a queued/running invocation (dropped when it finishes). */
  getInvocationPayload(id: string): Buffer | null;
  /** The kept stdout/stderr of an invocation. */
  getInvocationOutput(id: string): { stdout: Buffer; stderr: Buffer } | null;
  listInvocations(filter: InvocationFilter): InvocationRecord[];
  /**
   * Atomically moves the oldest queued invocation (FIFO) to `running`; null when none is queued. Invocations of
   * `skipTenants` (tenants at their concurrency quota) are passed over, so they do not hold up other tenants.
   */
  claimNextInvocation(nowMs: number, skipTenants?: readonly string[]): InvocationRecord | null;
  /**
   * Puts a claimed invocation back in the queue. It never started (e.g. the function was at its limit): its claim is
   * not counted as an attempt. With `countAttempt` it may have run (its cluster worker was lost mid-run): the attempt
   * stays counted, so that redeliveries are bounded.
   */
  requeueInvocation(id: string, options?: { countAttempt?: boolean }): void;
  finishInvocation(id: string, outcome: InvocationOutcome): void;
  /** Records synchronous invocations that already finished (in one transaction); an id already stored is skipped. */
  insertFinishedInvocations(records: FinishedInvocation[]): void;
  /** Crash recovery: every `running` invocation becomes `failed` with `reason`; returns how many. */
  failRunningInvocations(reason: string, nowMs: number): number;
  /**
   * Crash recovery of a cluster gateway: every `running` invocation started fewer than `maxAttempts` times goes back
   * to the queue, in its place, its attempt still counted (it may have run); returns how many. The rest are failed by
   * failRunningInvocations.
   */
  requeueRunningInvocations(maxAttempts: number): number;
  setCallbackState(id: string, state: CallbackState, attempts: number): void;
  /** Finished invocations whose callback is still to be delivered (after a restart). */
  pendingCallbacks(): InvocationRecord[];
  /** Deletes finished invocations that finished before `beforeMs`; returns how many. */
  deleteInvocationsFinishedBefore(beforeMs: number): number;
  /**
   * Runs `fn`, which calls the methods above, in one transaction: its writes commit together (one commit instead of
   * one each, the costly part of a small write), or none of them when it throws (then it rethrows).
   */
  transaction<T>(fn: () => T): T;
  close(): void;
}

export const INVOCATION_STATUSES = ['queued', 'running', 'succeeded', 'failed'] as const;
export type InvocationStatus = (typeof INVOCATION_STATUSES)[number];
export type CallbackState = 'pending' | 'delivered' | 'failed';
/** `async`: queued with x-kindling-async and run by the dispatcher; `sync`: answered directly, recorded when finished. */
export type InvocationMode = 'sync' | 'async';

export interface NewInvocation {
  id: string;
  tenant: string;
  functionName: string;
  version: number;
  payload: Buffer;
  idempotencyKey: string | null;
  callbackUrl: string | null;
  createdAtMs: number;
  /** W3C traceparent of the request that accepted it: its run continues that trace (also after a restart). */
  traceparent?: string | null;
}

export interface InvocationRecord {
  id: string;
  tenant: string;
  functionName: string;
  version: number;
  mode: InvocationMode;
  status: InvocationStatus;
  idempotencyKey: string | null;
  callbackUrl: string | null;
  callbackState: CallbackState | null;
  callbackAttempts: number;
  /** How many times the dispatcher started it: 0 or 1 (never more: a half-run invocation is not retried). */
  attempts: number;
  exitCode: number | null;
  durationMs: number | null;
  coldStart: boolean | null;
  timedOut: boolean | null;
  error: string | null;
  payloadBytes: number;
  stdoutBytes: number | null;
  createdAtMs: number;
  startedAtMs: number | null;
  finishedAtMs: number | null;
  /** W3C traceparent of the request that accepted an async invocation; null for sync ones and older records. */
  traceparent: string | null;
}

export interface InvocationOutcome {
  status: 'succeeded' | 'failed';
  exitCode: number | null;
  durationMs: number | null;
  coldStart: boolean | null;
  timedOut: boolean | null;
  error: string | null;
  stdout: Buffer;
  stderr: Buffer;
  finishedAtMs: number;
}

/** A synchronous invocation as recorded once it finished: its outcome and the first bytes of its output. */
export interface FinishedInvocation {
  id: string;
  tenant: string;
  functionName: string;
  version: number;
  status: 'succeeded' | 'failed';
  payloadBytes: number;
  exitCode: number | null;
  durationMs: number | null;
  coldStart: boolean | null;
  timedOut: boolean | null;
  error: string | null;
  /** The kept head of stdout (the response body) and stderr (a handler's logs). */
  stdout: Buffer;
  stderr: Buffer;
  /** All stdout bytes the invocation produced (more than `stdout` holds when it was capped). */
  stdoutBytes: number;
  createdAtMs: number;
  startedAtMs: number | null;
  finishedAtMs: number;
}

export interface InvocationFilter {
  tenant?: string;
  functionName?: string;
  status?: InvocationStatus;
  /** createdAtMs >= sinceMs */
  sinceMs?: number;
  /** createdAtMs < untilMs */
  untilMs?: number;
  /** Newest first; default 100. */
  limit: number;
}
