/**
 * The host process of one microVM (qemu or firecracker), whichever driver spawned it: exit tracking, stderr for error
 * messages, the start-up race against an early exit, and the agent handshake. The drivers differ only in how they
 * boot or restore the VM and how they reach the agent's socket.
 */
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { AgentClient } from './agent-client.js';

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class VmProcess {
  readonly exited: Promise<VmExit>;
  private exitedFlag = false;
  private readonly stderr: Buffer[] = [];
  /** Rejects with the spawn error (ENOENT, EACCES); attached at once, so an error emitted before pid() is kept. */
  private readonly spawnError: Promise<never>;

  constructor(
    /** For messages: `qemu`, `firecracker`. */
    readonly label: string,
    readonly child: ChildProcess,
    /** Where the guest console log (console.log) is written, when the driver writes one. */
    private readonly vmDir: string,
  ) {
    child.stderr?.on('data', (chunk: Buffer) => this.stderr.push(chunk));
    this.spawnError = new Promise<never>((_, reject) => child.once('error', reject));
    this.spawnError.catch(() => undefined);
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitedFlag = true;
        resolve({ code, signal });
      });
      // A spawn that failed (ENOENT, EACCES) emits 'error' and never 'exit'.
      child.once('error', () => {
        if (child.pid !== undefined) return;
        this.exitedFlag = true;
        resolve({ code: null, signal: null });
      });
    });
  }

  get alive(): boolean {
    return !this.exitedFlag;
  }

  /** The pid, or the spawn error (ENOENT, EACCES) when the binary did not start. */
  async pid(): Promise<number> {
    if (this.child.pid !== undefined) return this.child.pid;
    return this.spawnError;
  }

  /** Waits for `ready`, failing at once (with the process's stderr and console) if the process exits first. */
  async untilReady(ready: Promise<void>): Promise<void> {
    const exitedEarly = this.exited.then(({ code, signal }) => {
      throw new Error(`${this.label} exited during start-up (code ${code}, signal ${signal}): ${this.diagnostics()}`);
    });
    exitedEarly.catch(() => undefined);
    await Promise.race([ready, exitedEarly]);
  }

  /**
   * Pings the agent until it answers. Before the guest runs it, pings are lost (or queued in the guest): retry with
   * short timeouts until the deadline.
   */
  async handshake(agent: AgentClient, deadline: number, pingTimeoutMs: number): Promise<void> {
    for (;;) {
      try {
        await agent.ping(pingTimeoutMs);
        return;
      } catch (error) {
        if (Date.now() > deadline) throw new Error(`the agent did not answer: ${(error as Error).message}; ${this.diagnostics()}`);
        if (agent.closed) throw error;
      }
    }
  }

  /** Stderr of the VM process and the tail of the guest console, for error messages. */
  diagnostics(): string {
    let console = '';
    try {
      console = readFileSync(path.join(this.vmDir, 'console.log'), 'utf8').slice(-1500);
    } catch {}
    return `${this.label} stderr: ${Buffer.concat(this.stderr).toString().trim().slice(-500) || '(empty)'}; console: ${console.trim() || '(empty)'}`;
  }

  kill(): void {
    if (this.alive) this.child.kill('SIGKILL');
  }
}
