import type { Duplex, Readable, Writable } from 'node:stream';
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
  /** What the kernel accounted to the process tree (its cgroup), read before the cgroup is removed; absent when unknown. */
  usage?: ResourceUsage;
}

/** Kernel accounting of one execution. Fields are null when this executor or kernel cannot tell. */
export interface ResourceUsage {
  /** CPU time (user + system) of the whole tree, in milliseconds. */
  cpuMs: number | null;
  /** Highest memory use of the tree, in bytes. */
  memoryPeakBytes: number | null;
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
  /**
   * What the kernel accounted to this execution's cgroup so far, read by the host (never reported by the sandbox);
   * null once the cgroup is gone or when this executor cannot read it. Cheap (a cgroupfs file read): warm sandboxes
   * read it around every invocation.
   */
  usageNow?(): ResourceUsage | null;
  /** Resolves once every resource of this execution (container, cgroup, mounts, temp dirs) is gone. */
  readonly disposed: Promise<void>;
}

export interface StartOptions {
  signal?: AbortSignal;
  /**
   * Warm sandboxes only: how long the resident agent may take from the start to its HELLO (code loaded). A start that
   * takes longer is killed, its resources removed, and it fails with SANDBOX_START_TIMEOUT. Default 30000.
   */
  readyTimeoutMs?: number;
}

/** What one call into a warm sandbox's resident agent produced. The handler failing is data here, not an error. */
export interface AgentInvocation {
  /** The handler's return value; with `exitCode` 1 the error text (stack trace); after a crash the sandbox's output. */
  body: Buffer;
  /** What the handler printed (console / print) during this call, up to `outputBytes`. */
  logs: Buffer;
  /** The return value or the logs were longer than `outputBytes` and were cut there (the rest was dropped). */
  truncated: boolean;
  /** 0: returned; 1: threw; 128+N: the sandbox died (killed by signal N, e.g. 137 after a timeout or an OOM kill). */
  exitCode: number;
  durationMs: number;
  timedOut: boolean;
  oomKilled: boolean;
  /**
   * The call's CPU time (the delta of the sandbox's cgroup CPU counter across the call, read by the host: every process
   * and thread of the sandbox, whatever the code does to its own clocks) and the cgroup's peak memory so far; absent
   * when the executor cannot read its cgroup.
   */
  usage?: { cpuMs: number; memoryPeakBytes: number };
}

/**
 * A long-lived sandbox whose main process is a resident agent (a runtime wrapper that loaded the user's code once)
 * serving invocations over a unix socket in a bind-mounted directory. One invocation at a time; the owner (a warm
 * pool) serialises calls. No process is spawned and no `docker exec` is made per invocation.
 */
export interface WarmSandbox {
  readonly id: string;
  /** Milliseconds from the create request until the agent said HELLO: this sandbox's cold start. */
  readonly startMs: number;
  /** False once the sandbox died or was destroyed. */
  readonly alive: boolean;
  /** Runs one invocation. Rejects only on platform faults; a handler's throw, a timeout or a crash is a result. */
  invoke(body: Buffer, options: InvokeCallOptions): Promise<AgentInvocation>;
  /** Resolves when the sandbox is gone (died or destroyed) and all of its resources are released. */
  readonly disposed: Promise<void>;
  /** Kills the sandbox and releases everything. Idempotent. */
  destroy(): Promise<void>;
  /**
   * Receives the CPU time the sandbox used outside invocations (background threads or processes left running after a
   * handler returned, the module's top-level code at start): called with what accumulated, at the start of each
   * invocation and once when the sandbox ends. It includes the start (the runtime and the module's top-level code);
   * a generic sandbox's start before its code was loaded is the platform's and is not reported.
   */
  meter?(onIdle: (usage: { cpuMs: number }) => void): void;
  /**
   * For a generic sandbox (started ahead of demand without code): loads one function's code into it, after which it
   * serves that function only. Rejects with AgentLoadError when the code does not load (a user failure).
   */
  load?(code: LoadRequest, options: { timeoutMs: number }): Promise<void>;
}

export interface InvokeCallOptions {
  timeoutMs: number;
  /** Bytes of the return value and of the logs kept (each); the rest is dropped and the result says `truncated`. */
  outputBytes: number;
  /** Called with each piece of the handler's console/print output as it arrives (it is also in `logs` at the end). */
  onLog?: (chunk: Buffer) => void;
  /** The call's W3C traceparent: the handler's env TRACEPARENT during this call. */
  traceparent?: string;
}

/** The code a generic warm sandbox is specialised with. */
export interface LoadRequest {
  code: string;
  handler: string;
  env: Record<string, string>;
  /** node: load as an ES module (else CommonJS). */
  esModule: boolean;
  /** The file name the code is written to (`handler.ts` for deno and bun); without it, node's by `esModule`. */
  file?: string;
}

/** The user's code could not be loaded (syntax error, missing handler): a user failure, reported like a throw. */
export class AgentLoadError extends Error {
  constructor(readonly text: string) {
    super(text);
    this.name = 'AgentLoadError';
  }
}

/**
 * A command run inside a live persistent sandbox: in its namespaces, cgroup, seccomp filter and uid, beside whatever
 * else runs there. Streams are live and must be consumed; `stdin` (when asked for) must be ended by the caller.
 */
export interface SandboxCommand {
  readonly stdin: Writable | null;
  readonly stdout: Readable;
  readonly stderr: Readable;
  /**
   * Resolves when the command's main process has exited and its output was read. Processes it left running in the
   * background stay in the sandbox. Rejects only on platform faults.
   */
  wait(): Promise<{ exitCode: number; signal: string | null }>;
  /** Kills the command's process tree (not the sandbox). Idempotent; `wait()` resolves afterwards with 137. */
  kill(): void;
  /** The command's pid as seen inside the sandbox (its pid namespace), once known; null when it never started. */
  pid?(): Promise<number | null>;
}

export interface SandboxCommandRequest {
  command: string[];
  /** Added to the sandbox's environment for this command only. */
  env: Record<string, string>;
  /** Absolute directory the command starts in. */
  workdir: string;
  /** Whether the command gets a stdin stream (else it reads /dev/null). */
  stdin: boolean;
  /**
   * A background command of the API (its output kept for .../logs, no caller waiting on it). An executor that saves
   * processes across a hibernation may keep such a command's streams too: after the restore its output, exit and
   * kill() go on; otherwise (and for every other command) the command ends with the sandbox's processes (137).
   */
  background?: boolean;
}

/**
 * What a persistent sandbox of an executor can do beyond the common contract (commands, files, usage, destroy), so
 * that callers and the conformance suite test what is claimed instead of skipping what is not.
 */
export interface SandboxCapabilities {
  /** pause()/resume() freeze and thaw every process (no CPU while paused); false: both reject with a KindlingError saying so. */
  pause: boolean;
  /** A snapshot can keep memory and processes (not only files): `snapshot()` reports `memory: true` then. */
  memorySnapshot: boolean;
  /**
   * `hibernate()` saves every process and its memory to disk and releases the sandbox's RAM, and a later
   * `createPersistentSandbox(spec, { restore: 'hibernated' })` brings the processes back. False: the orchestrator's
   * hibernation keeps the files only (the processes end, and the next command starts a new process tree).
   */
  hibernate: boolean;
}

/**
 * A long-lived sandbox that runs many commands (processes and files persist between them), can be frozen and thawed,
 * and is destroyed explicitly. Made by `Executor.createPersistentSandbox`.
 */
export interface PersistentSandbox {
  readonly id: string;
  readonly capabilities: SandboxCapabilities;
  /** False once the sandbox died or was destroyed. */
  readonly alive: boolean;
  exec(request: SandboxCommandRequest): Promise<SandboxCommand>;
  /** Freezes every process (no CPU is used while frozen); resolves once the kernel reports them frozen. */
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** The kernel's accounting of the whole sandbox so far (its cgroup); null when unknown. */
  usage(): ResourceUsage | null;
  /** Resolves when the sandbox has ended (died or destroyed) and every resource of it is gone. */
  readonly disposed: Promise<void>;
  /** Kills everything in it and releases every resource. Idempotent. */
  destroy(): Promise<void>;
  /* -- storage (snapshots) ------------------------------------------------------------------------------------------ */
  /**
   * Executors with `sandboxStorage` only: copies the sandbox's work dir into a new immutable snapshot (processes and
   * memory are not kept), the sandbox frozen meanwhile (a paused one stays paused). Resolves with its size in bytes.
   */
  snapshot?(snapshotId: string): Promise<{ bytes: number; memory?: boolean }>;
  /**
   * Capability `hibernate` only: saves every process with its memory (and the files) to the executor's storage under
   * the sandbox's id, then ends the sandbox: its RAM is released, `alive` turns false and `disposed` resolves, while
   * the saved image stays until `sandboxStorage.removeDisk(id)`. Resolves with the image's size in bytes.
   */
  hibernate?(): Promise<{ bytes: number }>;
  /* --- ports (optional capability) ------------------------------------------------------------------------------ */
  /**
   * Connects to `port` on the sandbox's own loopback, from inside its network namespace, without giving the sandbox
   * any network: the connection's bytes both ways. Rejects with SANDBOX_PORT_UNREACHABLE when nothing listens there.
   * Absent: this executor cannot reach a sandbox's ports.
   */
  connectPort?(port: number, options: PortConnectOptions): Promise<Duplex>;
  /** Proxied connections open now. */
  readonly portConnections?: number;
  /* --- files on the host (optional) --------------------------------------------------------------------------------- */
  /**
   * Writes `body` to the sandbox's file `path` (absolute, normalized; parents made) without a command inside the
   * sandbox, with the sandbox user's permissions and disk quota. Resolves with the file's size, or null when this
   * path is not handled that way (nothing was read from `body`): the caller then writes it with a command. Rejects
   * with SANDBOX_DISK_FULL when the file does not fit (nothing kept), or with `body`'s own error (a partial file may
   * be left for the caller to remove).
   */
  writeFileDirect?(path: string, body: Readable | BodyPump, diskMb: number): Promise<{ size: number } | null>;
  /** The content of the sandbox's regular file `path`, or null when not handled that way (the caller uses a command). */
  readFileDirect?(path: string): Promise<Readable | null>;
}

/**
 * A request body the caller moves into a given stdin itself (the splice relay from the client's socket, which needs
 * the descriptor): resolves with the bytes delivered once done or once the reader closed its end; rejects when the
 * client broke off.
 */
export type BodyPump = (stdin: Writable) => Promise<number>;

/** What a persistent sandbox is made with beyond the start options. */
export interface PersistentSandboxOptions extends StartOptions {
  /**
   * Executors with `sandboxStorage`: the sandbox's files live on a disk of their own that outlives its processes (and
   * the server) until `sandboxStorage.removeDisk`; the disk of `spec.id` is reused when it exists (a restart: a new
   * process tree on the same files). `fromSnapshot`: a new disk starts with that snapshot's files (a read-only lower
   * layer, shared, not copied).
   */
  storage?: { fromSnapshot: string | null };
  /**
   * `'hibernated'`: bring back the processes `hibernate()` saved for `spec.id` (executors with the `hibernate`
   * capability); rejects with SANDBOX_STATE_LOST when no saved image is left (the caller then starts a new process
   * tree on the files). When `storage.fromSnapshot` names a memory snapshot, the processes of the snapshot come back
   * in the new sandbox the same way.
   */
  restore?: 'hibernated';
}

/** Files of persistent sandboxes kept on the host's disk (see sandbox/storage.ts). */
export interface SandboxStorageOps {
  removeDisk(sandboxId: string): Promise<void>;
  removeSnapshot(snapshotId: string): Promise<void>;
  /** At start-up: removes the disks and snapshots of ids not kept (their records are gone). Returns how many. */
  reap(keepSandboxes: ReadonlySet<string>, keepSnapshots: ReadonlySet<string>): Promise<number>;
}

export interface PortConnectOptions {
  /** The connection ends after this long without a byte either way. */
  idleTimeoutMs: number;
  /** How long the connect may take (a listener whose backlog is full, or a frozen one). */
  connectTimeoutMs: number;
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
  /**
   * The longest a healthy start() may take on this executor (a VM booting under emulation), when that is more than the
   * server's sandbox start timeout; the server abandons a start that takes longer than the larger of the two.
   */
  readonly maxStartMs?: number;
  /**
   * Starts a warm sandbox: `spec.command` runs the resident agent (see agent/files.ts), which connects back to a unix
   * socket in a directory bound at /.kindling-agent. Rejects with AgentLoadError when the user's code does not load.
   * Optional: executors without it cannot run handler-style functions.
   */
  createWarmSandbox?(spec: RunSpec, options?: StartOptions): Promise<WarmSandbox>;
  /**
   * Starts a persistent sandbox: `spec.command` is ignored (the executor runs its own supervisor as the sandbox's main
   * process), `spec.limits.timeoutMs` is the sandbox's whole lifetime (a backstop: the owner destroys it first).
   * Optional: executors without it cannot host persistent sandboxes (the API says so with SANDBOXES_UNSUPPORTED).
   */
  createPersistentSandbox?(spec: RunSpec, options?: PersistentSandboxOptions): Promise<PersistentSandbox>;
  /** Present when persistent sandboxes' files outlive their processes and can be snapshotted. */
  readonly sandboxStorage?: SandboxStorageOps;
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
