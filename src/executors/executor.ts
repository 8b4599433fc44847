import type { Readable, Writable } from 'node:stream';
import type { ExecutorName, RunSpec } from '../core/types.js';

/** What an executor says about itself in /readyz and in the start-up log. */
export interface ExecutorStatus {
  name: ExecutorName;
  ready: boolean;
  /** Why it is (not) ready, in words an operator can act on. */
  reason: string;
  details?: Record<string, unknown>;
}

/** How a process ended. User failures (non-zero exit, OOM, kill) are data here, never exceptions. */
export interface ExitInfo {
  exitCode: number;
  signal: string | null;
  oomKilled: boolean;
}

/**
 * One running process tree in a fresh sandbox. Streams are live: stdout/stderr must be consumed (backpressure reaches
 * the process), stdin must be ended by the caller when it has one.
 */
export interface Execution {
  readonly stdin: Writable | null;
  readonly stdout: Readable;
  readonly stderr: Readable;
  /** False when the sandbox was started ahead of the request (prewarmed), true when the request waited for it. */
  readonly coldStart: boolean;
  /** Resolves when the process tree has exited and both output streams have ended. Rejects only on platform faults. */
  wait(): Promise<ExitInfo>;
  /** Kills the whole process tree. Idempotent; `wait()` resolves afterwards. */
  kill(): void;
  /** Resolves once every resource of this execution (container, cgroup, mounts, temp dirs) is gone. */
  readonly disposed: Promise<void>;
}

export interface StartOptions {
  signal?: AbortSignal;
}

export interface ReapReport {
  removed: number;
}

/**
 * The contract between the orchestrator and a sandbox technology. `start` makes every resource it needs and, when it
 * fails half-way, removes what it made before rethrowing (the original error wins).
 */
export interface Executor {
  readonly name: ExecutorName;
  probe(): Promise<ExecutorStatus>;
  /** Images this executor can run right now (cheap: cached, refreshed by `refreshImages`). */
  hasImage(image: string): boolean;
  refreshImages(): Promise<string[]>;
  start(spec: RunSpec, options?: StartOptions): Promise<Execution>;
  /** Removes resources left by earlier runs of this server (same owner label) that are not in use now. */
  reap(): Promise<ReapReport>;
  /** Waits for in-flight executions to finish. Idempotent. */
  close(): Promise<void>;
  /** Kills in-flight executions and releases everything. Idempotent. */
  destroy(): Promise<void>;
}

/** Labels every executor stamps on what it creates, so that a reaper can find orphans. */
export const LABEL_MANAGED = 'dev.kindling.managed';
export const LABEL_OWNER = 'dev.kindling.owner';
export const LABEL_INSTANCE = 'dev.kindling.instance';
export const LABEL_EXECUTION = 'dev.kindling.execution';
