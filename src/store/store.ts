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
}

export interface FunctionVersion {
  name: string;
  /** 1, 2, 3, ... per function; never reused while the function exists. */
  version: number;
  spec: FunctionSpec;
  createdAtMs: number;
}

export interface FunctionRecord {
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
  /** Adds a new immutable version (creating the function on its first deploy) and makes it the latest. */
  putFunction(name: string, spec: FunctionSpec, nowMs: number): { fn: FunctionRecord; version: FunctionVersion; created: boolean };
  getFunction(name: string): FunctionRecord | null;
  /** The version, or the latest when `version` is omitted. */
  getVersion(name: string, version?: number): FunctionVersion | null;
  listFunctions(): FunctionRecord[];
  listVersions(name: string): FunctionVersion[];
  /** Removes the function and all its versions; false when there was none. */
  deleteFunction(name: string): boolean;
  close(): void;
}
