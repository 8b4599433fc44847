/** Domain types shared by every layer. Units are in the names (`timeoutMs`, `memoryMb`). */

export const EXECUTOR_NAMES = ['docker', 'sandbox', 'microvm', 'gvisor'] as const;
export type ExecutorName = (typeof EXECUTOR_NAMES)[number];

/** Why `name` cannot be used on this server, and how to fix it (the message of UNKNOWN_EXECUTOR). */
export function unknownExecutorMessage(name: string, enabled: Iterable<string>): string {
  const list = [...enabled].join(', ');
  if (!(EXECUTOR_NAMES as readonly string[]).includes(name)) return `"${name}" is not an executor; use one of ${EXECUTOR_NAMES.join(', ')} (enabled on this server: ${list})`;
  return `executor "${name}" is not enabled on this server (enabled: ${list}); the operator enables it with kindling serve --enable-executors ${name} (or makes it the default with --executor ${name})`;
}

/**
 * `python` and `node` mean the newest: Debian trixie's `python3.13` and `node20` (stored as those names); `python3.11`
 * and `node18` are bookworm's. `deno` and `bun` run TypeScript (and JavaScript) as it is, types stripped.
 */
export const RUNTIME_NAMES = ['bash', 'python', 'node', 'rust', 'python3.11', 'python3.13', 'node18', 'node20', 'deno', 'bun', 'go', 'java'] as const;
export type RuntimeName = (typeof RUNTIME_NAMES)[number];
/** The language of a runtime: what its code files are and which handler agent serves it. */
export type RuntimeFamily = 'bash' | 'python' | 'node' | 'rust' | 'deno' | 'bun' | 'go' | 'java';

export type NetworkMode = 'none' | 'egress';

/** Limits applied to one execution. Every field has a default (see limits.ts) and is enforced by every executor. */
export interface ResourceLimits {
  /** Wall-clock limit; the whole process tree is killed when it passes. */
  timeoutMs: number;
  memoryMb: number;
  /** CPU quota in cores (0.5 = half a core). */
  cpus: number;
  pids: number;
  /** Bytes kept per output stream; the rest is drained and dropped, and the result says `truncated`. */
  outputBytes: number;
  /** Size of the writable scratch space (/tmp and the work dir). */
  diskMb: number;
  /** Open file descriptors per process (RLIMIT_NOFILE, soft and hard). */
  openFiles: number;
}

/** A file placed read-only under /.kindling inside the sandbox before the command starts (code, handler, wrapper). */
export interface InputFile {
  /** Name relative to /.kindling, e.g. `main.py`. No slashes. */
  name: string;
  content: string | Buffer;
}

/** Everything an executor needs to run one command. Validated and defaulted before it reaches an executor. */
export interface RunSpec {
  id: string;
  image: string;
  command: string[];
  env: Record<string, string>;
  workdir: string;
  limits: ResourceLimits;
  network: NetworkMode;
  /** Whether the process gets a stdin stream (else it reads /dev/null). */
  stdin: boolean;
  files: InputFile[];
  /** Labels stamped on every resource made for this run (in addition to the executor's own). */
  labels: Record<string, string>;
  /**
   * A host directory bound (read-only) at /.kindling-agent: it holds the unix socket a resident agent connects to.
   * Only warm sandboxes have one.
   */
  agentDir?: string;
  /**
   * Host directories bound read-write inside (persistent sandboxes: their disk at the work dir and /tmp), in place of
   * the tmpfs there would be at those paths.
   */
  rwBinds?: { source: string; target: string }[];
  /**
   * Host directories bound read-only inside (a function's bundle at its work dir), in place of the tmpfs there would
   * be at those paths. Every executor binds them (microvm as read-only disks of the VM, so the sources must never
   * change: the bundle and layer stores name them by content hash).
   */
  roBinds?: { source: string; target: string }[];
}

export interface ExecutionResult {
  id: string;
  exitCode: number;
  /** The signal that ended the process, when one did (e.g. SIGKILL). */
  signal: string | null;
  stdout: string;
  stderr: string;
  durationMs: number;
  coldStart: boolean;
  executor: ExecutorName;
  timedOut: boolean;
  oomKilled: boolean;
  /** True when either stream was cut at `outputBytes`. */
  truncated: boolean;
  /** How `stdout` and `stderr` are encoded (base64 when the request asked for it, for binary output). */
  outputEncoding: OutputEncoding;
  stdoutTruncated: boolean;
  stderrTruncated: boolean;
  /** Timings of the phases, for users who tune their code and for the bench. */
  timings: { queuedMs: number; startMs: number; runMs: number };
  /** The kernel's accounting (cgroup): CPU time and peak memory; null fields when the executor cannot tell. */
  usage?: { cpuMs: number | null; memoryPeakBytes: number | null };
}

export type OutputEncoding = 'utf8' | 'base64';

/** A one-off execution as a client asks for it (already schema-checked: types and shapes, not semantics). */
export interface ExecuteRequest {
  runtime?: RuntimeName;
  code?: string;
  image?: string;
  command?: string[];
  stdin?: string;
  stdinBase64?: string;
  env?: Record<string, string>;
  workdir?: string;
  timeoutMs?: number;
  memoryMb?: number;
  cpus?: number;
  pids?: number;
  outputBytes?: number;
  diskMb?: number;
  openFiles?: number;
  network?: NetworkMode;
  executor?: ExecutorName;
  outputEncoding?: OutputEncoding;
}
