/**
 * runsc's command line, for one state root (`--root`): every container this executor makes is listed there and
 * nowhere else, so `list` + `delete -force` in that root is the reaper, and another server's containers are never
 * seen. Global flags: the ptrace platform (no KVM needed) and `--network=none` (no network stack beyond loopback;
 * the only mode measured working here).
 */
import { execFile, spawn, type ChildProcess, type StdioOptions } from 'node:child_process';

export interface RunscOptions {
  /** The runsc binary. Default /usr/bin/runsc. */
  path: string;
  /** The state root of this executor's containers. */
  root: string;
  /** `ptrace` (default; works without /dev/kvm) or `kvm`. */
  platform: string;
}

export interface RunscResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface ContainerState {
  id: string;
  pid: number;
  status: string;
}

export class Runsc {
  constructor(readonly options: RunscOptions) {}

  args(command: string[]): string[] {
    return [`--root=${this.options.root}`, `--platform=${this.options.platform}`, '--network=none', ...command];
  }

  /** A long-running runsc (run, exec) whose stdio the caller holds: runsc's output goes to pipes, never to files. */
  spawn(command: string[], stdio: StdioOptions): ChildProcess {
    // An empty environment: nothing of the server's reaches runsc or, through it, the sandbox.
    return spawn(this.options.path, this.args(command), { stdio, env: {} });
  }

  /** A short runsc command to its end; never rejects (the exit code says how it went). */
  call(command: string[], timeoutMs = 60_000): Promise<RunscResult> {
    return new Promise((resolve) => {
      execFile(this.options.path, this.args(command), { env: {}, timeout: timeoutMs, maxBuffer: 16 << 20 }, (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : 1;
        resolve({ code, stdout: stdout.toString(), stderr: stderr.toString() });
      });
    });
  }

  /** `call`, rejecting with runsc's own message when it fails. */
  async must(command: string[], timeoutMs?: number): Promise<string> {
    const result = await this.call(command, timeoutMs);
    if (result.code !== 0) throw new Error(`runsc ${command[0]} failed (${result.code}): ${(result.stderr || result.stdout).trim().slice(-500)}`);
    return result.stdout;
  }

  async list(): Promise<ContainerState[]> {
    const result = await this.call(['list', '--format=json']);
    if (result.code !== 0) return [];
    const parsed = JSON.parse(result.stdout || 'null') as { id: string; pid: number; status: string }[] | null;
    return (parsed ?? []).map(({ id, pid, status }) => ({ id, pid, status }));
  }

  /** Kills the container's sandbox and removes its state; also for a container runsc thinks stopped. Never rejects. */
  async deleteForce(id: string): Promise<void> {
    await this.call(['delete', '--force', id]);
  }
}
