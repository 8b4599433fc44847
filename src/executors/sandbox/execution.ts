/**
 * One execution in a launcher: hands it the seccomp program, bwrap's arguments and the command line, then watches it
 * to the end (exit status, OOM kills and usage from its cgroup, the wall-clock backstop) and releases what it held.
 */
import type { Duplex, Readable, Writable } from 'node:stream';
import { KindlingError } from '../../core/errors.js';
import type { RunSpec } from '../../core/types.js';
import type { Execution, ExitInfo, ResourceUsage } from '../executor.js';
import type { Cgroup } from '../shared/cgroups.js';
import type { Logger } from '../shared/logger.js';
import { signalNumber, signalOfExitCode } from '../shared/process.js';
import { FD_ARGS, FD_SCRIPT, FD_SECCOMP } from './bwrap-args.js';
import type { LauncherProcess } from './launch-service.js';
import { LAUNCHER_CGROUP_FAILED, type Launcher } from './launcher.js';

/** `ExitInfo` plus whether the executor's own wall-clock backstop (limits.timeoutMs + grace) killed the tree. */
export interface SandboxExitInfo extends ExitInfo {
  timedOut: boolean;
}

export interface SandboxExecution extends Execution {
  readonly id: string;
  /** Host pid of the launcher/bwrap monitor process. */
  readonly pid: number | undefined;
  wait(): Promise<SandboxExitInfo>;
  /** Moves the wall-clock backstop to `backstopMs` from now (a pooled persistent sandbox taken: its own lifetime). */
  rearm(backstopMs: number): void;
}

export class ExecutionImpl implements SandboxExecution {
  readonly id: string;
  readonly specId: string;
  readonly stdin: Writable | null;
  readonly stdout: Readable;
  readonly stderr: Readable;
  readonly disposed: Promise<void>;
  readonly pid: number | undefined;
  private readonly child: LauncherProcess;
  private readonly cgroup: Cgroup;
  private readonly result: Promise<SandboxExitInfo>;
  private exited = false;
  private killed = false;
  private timedOut = false;
  private timer: NodeJS.Timeout;

  constructor(
    launcher: Launcher,
    spec: RunSpec,
    script: string,
    bwrapArgs: Buffer,
    seccomp: Buffer,
    readonly coldStart: boolean,
    backstopMs: number,
    signal: AbortSignal | undefined,
    private readonly log: Logger,
    release: () => Promise<void>,
  ) {
    const { process: child, cgroup, name } = launcher;
    this.id = name;
    this.specId = spec.id;
    this.child = child;
    this.cgroup = cgroup;
    this.pid = child.pid;
    const [stdin, stdout, stderr] = child.stdio as readonly [Duplex, Duplex, Duplex];
    this.stdout = stdout;
    this.stderr = stderr;
    // A process that exits without reading its stdin makes writes fail with EPIPE: that is the user's business, and
    // must never become an unhandled 'error' that takes the server down.
    stdin.on('error', () => {});
    if (spec.stdin) {
      this.stdin = stdin;
    } else {
      this.stdin = null;
      stdin.destroy();
    }

    const pipes = child.stdio as unknown as (Writable | null)[];
    for (const fd of [FD_SECCOMP, FD_SCRIPT, FD_ARGS]) pipes[fd]!.on('error', () => {});
    pipes[FD_SECCOMP]!.end(seccomp);
    pipes[FD_ARGS]!.end(bwrapArgs);
    pipes[FD_SCRIPT]!.end(script);

    const { exited, closed } = launcher;

    this.timer = this.backstop(backstopMs);
    const onAbort = (): void => this.kill();
    signal?.addEventListener('abort', onAbort, { once: true });
    const settle = (): void => {
      this.exited = true;
      clearTimeout(this.timer);
      signal?.removeEventListener('abort', onAbort);
    };

    const exitInfo = exited.then(async ({ code, sig }) => {
      settle();
      // Anything still in the cgroup (a detached grandchild that outlived the pid namespace's teardown) dies now, so
      // that the output pipes can close.
      await cgroup.kill();
      const oomKilled = cgroup.oomKills() > 0;
      // The kernel's accounting of the whole tree, read while the cgroup still exists (it is removed on release).
      const usage = cgroup.usage();
      await closed;
      const status = Buffer.concat(launcher.status).toString('utf8');
      return { code, sig, oomKilled, started: status.includes('"child-pid"'), setupError: launcherSetupError(status), usage };
    });

    this.result = exitInfo.then(({ code, sig, oomKilled, started, setupError, usage }) => {
      if (!started && !this.killed) {
        // The client gets what failed, the log also why (a syscall and its errno: the host's business).
        const why =
          setupError !== null || code === LAUNCHER_CGROUP_FAILED
            ? 'the launcher failed while setting it up (its cgroup, limits or privileges)'
            : `the launcher or bwrap exited with ${code ?? sig} before creating the sandbox`;
        this.log.error({ sandbox: name, executionId: spec.id, code, sig, reason: setupError }, `sandbox failed to start: ${why}`);
        throw new KindlingError('EXECUTOR_FAILED', `the sandbox did not start: ${why}; the server's log has the reason`, {
          details: { executor: 'sandbox' },
        });
      }
      return { ...exitInfoFrom(code, sig, oomKilled, this.timedOut), usage };
    });
    this.result.catch(() => {});

    this.disposed = exitInfo
      .catch((err: unknown) => {
        // spawn itself failed (e.g. /bin/sh missing): nothing ran.
        settle();
        this.log.error({ sandbox: name, err }, 'sandbox spawn failed');
      })
      .then(release)
      .catch((err: unknown) => {
        this.log.error({ sandbox: name, err }, 'sandbox cleanup failed; reap() will retry');
      });
    if (signal?.aborted) this.kill();
  }

  rearm(backstopMs: number): void {
    if (this.exited) return;
    clearTimeout(this.timer);
    this.timer = this.backstop(backstopMs);
  }

  private backstop(ms: number): NodeJS.Timeout {
    return setTimeout(() => {
      this.timedOut = true;
      this.kill();
    }, ms);
  }

  wait(): Promise<SandboxExitInfo> {
    return this.result.catch((err: unknown) => {
      if (err instanceof KindlingError) throw err;
      throw new KindlingError('EXECUTOR_FAILED', `the sandbox failed: ${(err as Error).message}`, { cause: err });
    });
  }

  kill(): void {
    if (this.exited || this.killed) return;
    this.killed = true;
    // The monitor first: its pid-1 child has PDEATHSIG=SIGKILL, and the kernel then kills the pid namespace. The
    // cgroup kill catches everything else.
    try {
      this.child.kill('SIGKILL');
    } catch {
      // already gone
    }
    this.cgroup.kill().catch((err: unknown) => this.log.warn({ sandbox: this.id, err }, 'sandbox kill incomplete'));
  }

  usageNow(): ResourceUsage | null {
    // The sandbox's own cgroup, read by the server: nothing inside the sandbox can write these counters.
    const usage = this.cgroup.usage();
    return usage.cpuMs === null ? null : usage;
  }

  /** destroy(): kill, and stop waiting for a consumer that may never drain the output. */
  abandon(): void {
    this.kill();
    this.stdin?.destroy();
    this.stdout.destroy();
    this.stderr.destroy();
  }
}

function exitInfoFrom(
  code: number | null,
  sig: NodeJS.Signals | null,
  oomKilled: boolean,
  timedOut: boolean,
): SandboxExitInfo {
  if (sig !== null) return { exitCode: 128 + signalNumber(sig), signal: sig, oomKilled, timedOut };
  const exitCode = code ?? 1;
  return { exitCode, signal: signalOfExitCode(exitCode), oomKilled, timedOut };
}

/**
 * The reason native/kindling-launch gave on the status fd for a failed setup step or exec ("kindling-launch: WHAT:
 * ERRNO"), or null (it did not fail there, or the shell chain ran, which gives none).
 */
export function launcherSetupError(status: string): string | null {
  return /^kindling-launch: (.+)$/m.exec(status)?.[1] ?? null;
}
