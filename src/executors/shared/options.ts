/**
 * The options every executor takes from the server, with one meaning each. An executor adds its own beside them
 * (paths of its tools, its limits); these are the ones the server sets the same way for all of them.
 */
import type { EgressPolicy } from '../../network/policy.js';
import type { Logger } from './logger.js';

export interface ExecutorBaseOptions {
  /** Per-server scratch directory (run dirs, VM dirs, FIFOs); each executor keeps its files in its own subdirectory. */
  stateDir: string;
  /**
   * Names this server's data dir. Every resource an executor makes (container, cgroup, VM dir, network namespace,
   * firewall chain) is labelled with it, and reap() removes only resources of this owner.
   */
  ownerId: string;
  /** Names this server process; labelled on resources beside the owner, so logs and the reaper can tell runs apart. */
  instanceId: string;
  /** Where the executor reports what it does; default: nowhere. */
  logger?: Logger;
  /**
   * Sandboxes kept started ahead of demand for each recently used shape (image + limits), handed to executions that
   * would otherwise wait for a cold start; 0 turns prewarming off, so every execution starts its sandbox on demand.
   * Each executor keeps at most its own total cap. Default: DEFAULT_PREWARM_PER_SHAPE of the executor.
   */
  prewarmPerShape?: number;
  /** A prewarmed sandbox nobody took for this long is stopped. Default: per executor (minutes). */
  prewarmIdleTtlMs?: number;
  /**
   * Enables `network: "egress"` with this policy (see src/network/); without it such executions are refused with
   * UNSUPPORTED_NETWORK.
   */
  egressPolicy?: EgressPolicy;
}

/**
 * What `prewarmPerShape` is when the server does not set it: fresh containers are the costliest cold start (hundreds
 * of ms) and cheap to keep; a sandbox launcher serves every shape (it is shaped when taken), so 2 cover bursts; a
 * microVM holds its whole guest memory while it waits.
 */
export const DEFAULT_PREWARM_PER_SHAPE = { docker: 6, sandbox: 2, microvm: 1 } as const;
