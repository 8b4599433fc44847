/**
 * Defaults of the server that the CLI shows in `kindling serve --help`, apart from server.ts so that every other
 * command starts without loading the whole platform (server.ts pulls in fastify, the executors and the store: about
 * 1 s of module loading that `kindling sandbox exec` or `kindling chain submit` would pay for nothing).
 */
import type { FunctionPoolConfig } from './server.js';

export const DEFAULT_FUNCTION_POOLS: FunctionPoolConfig = {
  defaultMaxConcurrency: 10,
  defaultMaxQueued: 256,
  queueTimeoutMs: 30_000,
  idleTtlMs: 10 * 60_000,
  maxUses: 10_000,
  maxAgeMs: 30 * 60_000,
  maxWarmSandboxes: 64,
  genericPerShape: 1,
  maxWarmMemoryMb: 16_384,
  startTimeoutMs: 30_000,
};
