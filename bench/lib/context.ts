import type { Row } from './table.js';

export interface BenchContext {
  repoRoot: string;
  /** Latency samples per scenario (>= 20 for Docker rows and >= 50 for sandbox rows unless overridden). */
  runs: { docker: number; sandbox: number; functions: number; microvm: number };
  /** Whether --runs was given (heavy scenarios then use at most that many runs too). */
  runsOverridden: boolean;
  /** A temp dir for payload files, removed at the end. */
  workDir: string;
  /** Progress goes to stderr; stdout carries only the report. */
  log(message: string): void;
  /** Where the JSON goes; groups write their SVG charts here too, named `<stamp>-<chart>.svg`. */
  resultsDir: string;
  stamp: string;
  /** Scale knobs of the density, burst and throughput groups (`--density-n`, `--idle-ms`, `--burst`, `--step-ms`). */
  scale: BenchScale;
}

export interface BenchScale {
  /** Distinct python handlers warmed in the density group. */
  densityN: number;
  /** Idle window over which a warm sandbox's CPU is read. */
  idleMs: number;
  /** Sizes of the simultaneous `echo` bursts. */
  burstSizes: number[];
  /** Cold functions the invocation burst is spread over (10 invocations each). */
  burstFunctions: number;
  /** Time per concurrency step of the throughput curve. */
  stepMs: number;
}

/** Rows for the table, plus the raw data (every sample) for the JSON file. */
export interface GroupResult {
  rows: Row[];
  data: Record<string, unknown>;
}

/** Label on every container the bench itself starts (baselines), so that a final sweep can remove leftovers. */
export const BENCH_LABEL = `dev.kindling.bench=${process.pid}`;

/** Environment for host and bwrap baselines: none of this shell's extras (NODE_EXTRA_CA_CERTS adds ~40 ms to node). */
export const CLEAN_ENV: NodeJS.ProcessEnv = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C.UTF-8' };
