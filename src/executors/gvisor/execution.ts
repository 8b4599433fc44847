/**
 * One one-off execution in a gVisor sandbox: `runsc run` in the foreground with the server holding its stdio pipes,
 * watched to its end (exit status, OOM kills and usage from the sandbox's cgroup, the wall-clock backstop), then its
 * resources released.
 */
import type { ChildProcess } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import type { Execution, ExitInfo, ResourceUsage } from '../executor.js';
import type { Cgroup } from '../shared/cgroups.js';
import { signalNumber, signalOfExitCode } from '../shared/process.js';

export class GvisorExecution implements Execution {
  readonly stdin: Writable | null;
  readonly stdout: Readable;
  readonly stderr: Readable;
  readonly disposed: Promise<void>;
  private readonly result: Promise<ExitInfo>;
  private exited = false;
  private killed = false;
  private readonly timer: NodeJS.Timeout;

  constructor(
    readonly id: string,
    private readonly child: ChildProcess,
    private readonly cgroup: Cgroup,
    readonly coldStart: boolean,
    backstopMs: number,
    signal: AbortSignal | undefined,
    release: () => Promise<void>,
    private readonly deleteContainer: () => Promise<void>,
  ) {
    this.stdout = child.stdout!;
    this.stderr = child.stderr!;
    // A process that exits without reading its stdin makes writes fail with EPIPE: the user's business, never an
    // unhandled 'error' that takes the server down.
    child.stdin?.on('error', () => {});
    this.stdin = child.stdin ?? null;
    this.timer = setTimeout(() => this.kill(), backstopMs);
    const onAbort = (): void => this.kill();
    signal?.addEventListener('abort', onAbort, { once: true });
    const closed = new Promise<{ code: number | null; sig: NodeJS.Signals | null }>((resolve) => {
      child.once('error', () => resolve({ code: 1, sig: null }));
      child.once('close', (code, sig) => resolve({ code, sig }));
    });
    this.result = closed.then(async ({ code, sig }) => {
      this.exited = true;
      clearTimeout(this.timer);
      signal?.removeEventListener('abort', onAbort);
      // The sandbox (sentry, gofer) dies with its init; anything left in the cgroup goes now.
      await cgroup.kill().catch(() => {});
      const oomKilled = cgroup.oomKills() > 0;
      const usage = cgroup.usage();
      if (this.killed || oomKilled) return { exitCode: 137, signal: 'SIGKILL', oomKilled, usage };
      if (sig !== null) return { exitCode: 128 + signalNumber(sig), signal: sig, oomKilled, usage };
      const exitCode = code ?? 1;
      return { exitCode, signal: signalOfExitCode(exitCode), oomKilled, usage };
    });
    this.disposed = this.result.then(release, release).catch(() => {});
    if (signal?.aborted) this.kill();
  }

  wait(): Promise<ExitInfo> {
    return this.result;
  }

  kill(): void {
    if (this.exited || this.killed) return;
    this.killed = true;
    void (async () => {
      // The whole sandbox is the tree: its sentry and every guest process are in its cgroup. A kill that comes while
      // runsc is still making the sandbox finds the cgroup empty: repeated (with runsc's own delete) until runsc exits.
      while (!this.exited) {
        await this.cgroup.kill().catch(() => {});
        await this.deleteContainer();
        if (!this.exited) await new Promise((resolve) => setTimeout(resolve, 100));
      }
    })();
  }

  usageNow(): ResourceUsage | null {
    if (this.exited) return null;
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
