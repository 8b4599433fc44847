// Over 400 lines: the host side of the agent protocol (start handshake, one call at a time, crash and timeout handling) is one state machine.
/**
 * A warm sandbox on any executor that can bind a host directory into a sandbox (`RunSpec.agentDir`): the host
 * listens on `<agentsDir>/<id>/agent.sock`, starts the sandbox with the resident agent as its main process, and the
 * agent connects back through the bind mount.
 *
 * Why the host listens and the agent dials (not the other way round): the directory can stay read-only inside the
 * sandbox (connecting to a socket needs no write access to the mount), readiness is the agent's HELLO on a connection
 * the host already holds (no polling for a socket file to appear), and a sandbox can only ever reach its own socket.
 */
import { mkdir, rm, chmod, chown } from 'node:fs/promises';
import * as net from 'node:net';
import { join } from 'node:path';
import { FrameDecoder, FrameType, encodeBody, encodeFrame, type Frame } from '../../../agent/protocol.js';
import { FrameStreamDecoder, type FramePiece } from './frame-stream.js';
import { AGENT_SOCKET } from '../../../agent/files.js';
import { KindlingError } from '../../core/errors.js';
import type { RunSpec } from '../../core/types.js';
import { AgentLoadError, type AgentInvocation, type Execution, type ExitInfo, type InvokeCallOptions, type LoadRequest, type ResourceUsage, type StartOptions, type WarmSandbox } from '../executor.js';

export interface AgentSandboxOptions {
  /** Per-executor directory for the agents' socket dirs; every ancestor must be searchable by the sandbox uid. */
  agentsDir: string;
  /**
   * The only group, besides root, that may reach the socket: the sandbox's gid. The socket dir is root:<gid> 0710 and
   * the socket 0660, so no other user of the host can connect first and be handed the function's code, env and
   * payloads. The sandbox must run with this gid.
   */
  sandboxGid: number;
  /** How long the agent may take to load the user's code and say HELLO. Default 30000. */
  readyTimeoutMs?: number;
  /** A call that starts within this long of the last one's end reuses that CPU reading (see invoke). Default 50. */
  reuseCpuReadingMs?: number;
}

const TAIL_BYTES = 8192;
/** Idle CPU is reported once this much accumulated (and at the sandbox's end, whatever is left). */
const IDLE_REPORT_MS = 10;

/** A call that starts within this long of the last one's end reuses that CPU reading as its start (see invoke). */
const DEFAULT_REUSE_CPU_READING_MS = 50;
const round2 = (value: number): number => Math.round(value * 100) / 100;

/** Keeps the last bytes of a stream (diagnostics of a sandbox that died). */
class Tail {
  private chunks: Buffer[] = [];
  private bytes = 0;
  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.bytes += chunk.length;
    while (this.bytes - this.chunks[0]!.length >= TAIL_BYTES) this.bytes -= this.chunks.shift()!.length;
  }
  text(): string {
    return Buffer.concat(this.chunks).toString('utf8').slice(-TAIL_BYTES);
  }
}

export async function startAgentSandbox(
  start: (spec: RunSpec, options?: StartOptions) => Promise<Execution>,
  spec: RunSpec,
  options: AgentSandboxOptions,
  startOptions: StartOptions = {},
): Promise<WarmSandbox> {
  const startedAt = performance.now();
  // The deadline covers the whole start (the executor's start, the runtime, the agent's HELLO): a start that hangs
  // anywhere is killed and reported as SANDBOX_START_TIMEOUT, never awaited forever.
  const timeoutMs = startOptions.readyTimeoutMs ?? options.readyTimeoutMs ?? 30_000;
  const deadline = new AbortController();
  const deadlineTimer = setTimeout(() => deadline.abort(), timeoutMs);
  const timedOut = new Promise<{ timeout: true }>((resolve) => deadline.signal.addEventListener('abort', () => resolve({ timeout: true }), { once: true }));
  const dir = join(options.agentsDir, spec.id);
  const server = net.createServer();
  let execution: Execution | null = null;
  const tail = new Tail();
  try {
    await mkdir(options.agentsDir, { recursive: true, mode: 0o710 });
    await chown(options.agentsDir, 0, options.sandboxGid);
    await chmod(options.agentsDir, 0o710);
    // Closed to everyone but root before the socket exists: nobody can connect in the gap before its chmod.
    await mkdir(dir, { mode: 0o700 });
    await chown(dir, 0, options.sandboxGid);
    await chmod(dir, 0o710);
    const socketPath = join(dir, AGENT_SOCKET);
    // The kernel's limit (sun_path): a longer path would be cut short by listen() and the socket made elsewhere.
    if (Buffer.byteLength(socketPath) > 107) {
      throw new Error(`the agent socket path ${socketPath} is longer than the 107 bytes a unix socket path may have: use a shorter data dir`);
    }
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => resolve());
    });
    await chown(socketPath, 0, options.sandboxGid);
    await chmod(socketPath, 0o660);
    const connected = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
    const signal = startOptions.signal ? AbortSignal.any([startOptions.signal, deadline.signal]) : deadline.signal;
    const starting = start({ ...spec, agentDir: dir }, { ...startOptions, signal });
    const started = await Promise.race([starting.then((value) => ({ value })), timedOut]);
    if ('timeout' in started) {
      // The executor's start itself hangs (e.g. a stuck engine): whatever it makes later is killed on arrival.
      void starting.then(
        (late) => {
          late.kill();
          return late.disposed;
        },
        () => undefined,
      );
      throw new KindlingError('SANDBOX_START_TIMEOUT', `the warm sandbox did not start within ${timeoutMs} ms (the executor did not answer); retry`, { retryAfterSeconds: 1 });
    }
    execution = started.value;
    const exec = execution;
    exec.stdout.on('data', (chunk: Buffer) => tail.push(chunk));
    exec.stderr.on('data', (chunk: Buffer) => tail.push(chunk));
    exec.stdin?.end();
    const exited = exec.wait().then(
      (info) => ({ info }),
      (error: unknown) => ({ error }),
    );

    const outcome = await Promise.race([
      connected.then(async (socket) => ({ socket, first: await firstFrame(socket) })),
      exited.then((ended) => ({ ended })),
      timedOut,
    ]);
    server.close();
    if ('timeout' in outcome) {
      // A hung start (the runtime, the agent or the function's module top level never finishing) is the same for the
      // caller: the sandbox is killed below and a fresh one may be tried.
      throw new KindlingError('SANDBOX_START_TIMEOUT', `the warm sandbox did not finish starting (agent handshake, function code loaded) within ${timeoutMs} ms; it was killed${tail.text() ? `: ${tail.text().slice(-500)}` : ''}`, { retryAfterSeconds: 1 });
    }
    if ('ended' in outcome) {
      // The agents connect before they load user code: an exit before connecting is the platform's failure.
      const why = 'error' in outcome.ended ? String((outcome.ended.error as Error).message) : `exit code ${outcome.ended.info.exitCode}`;
      throw new KindlingError('EXECUTOR_FAILED', `the warm sandbox exited before its agent connected (${why})${tail.text() ? `: ${tail.text().slice(-500)}` : ''}`);
    }
    const { socket, first } = outcome;
    if (first === null || first.type !== FrameType.HELLO) {
      socket.destroy();
      // Connected, then no HELLO: the user's code failed to load or ended the process while loading.
      const text = first?.type === FrameType.ERROR ? first.payload.toString('utf8') : `the function's code ended the process while loading${tail.text() ? `:\n${tail.text()}` : ''}`;
      throw new AgentLoadError(text);
    }
    clearTimeout(deadlineTimer);
    return new AgentSandbox(spec.id, exec, socket, dir, performance.now() - startedAt, tail, options.reuseCpuReadingMs ?? DEFAULT_REUSE_CPU_READING_MS);
  } catch (error) {
    clearTimeout(deadlineTimer);
    server.close();
    if (execution !== null) {
      execution.kill();
      await execution.disposed.catch(() => undefined);
    }
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    if (error instanceof KindlingError || error instanceof AgentLoadError) throw error;
    throw new KindlingError('EXECUTOR_FAILED', `could not start a warm sandbox: ${(error as Error).message}`, { cause: error });
  }
}

/** Reads the first frame of a fresh connection (HELLO or ERROR), or null when it closes first. */
function firstFrame(socket: net.Socket): Promise<Frame | null> {
  return new Promise((resolve) => {
    const decoder = new FrameDecoder();
    const onData = (chunk: Buffer): void => {
      let frames: Frame[];
      try {
        frames = decoder.push(chunk);
      } catch {
        done(null);
        return;
      }
      if (frames.length > 0) done(frames[0]!);
    };
    const done = (frame: Frame | null): void => {
      socket.off('data', onData);
      socket.off('close', onClose);
      resolve(frame);
    };
    const onClose = (): void => done(null);
    socket.on('data', onData);
    socket.on('close', onClose);
  });
}

/**
 * Keeps the first `capBytes` of what the sandbox sends and counts (drops) the rest: a handler can write frames on its
 * agent socket as fast as it likes (its own process holds the socket), and the server's memory must not follow.
 */
class CappedBytes {
  private readonly chunks: Buffer[] = [];
  private kept = 0;
  truncated = false;
  constructor(private readonly capBytes: number) {}
  /** Returns the part that was kept (empty once the cap is reached). */
  push(chunk: Buffer): Buffer {
    const room = this.capBytes - this.kept;
    if (chunk.length > room) this.truncated = true;
    if (room <= 0) return EMPTY;
    // A copy of the kept part: a subarray would hold the whole (up to 16 MiB) frame of the socket's read alive.
    const part = Buffer.from(chunk.subarray(0, room));
    this.chunks.push(part);
    this.kept += part.length;
    return part;
  }
  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

const EMPTY = Buffer.alloc(0);

interface Pending {
  id: number;
  body: CappedBytes;
  logs: CappedBytes;
  onLog: ((chunk: Buffer) => void) | undefined;
  outputBytes: number;
  /** The cgroup's CPU counter when the call started (null: this executor cannot read it). */
  cpuAtStartMs: number | null;
  startedAt: number;
  resolve: (result: AgentInvocation) => void;
  timer: NodeJS.Timeout;
}

class AgentSandbox implements WarmSandbox {
  readonly disposed: Promise<void>;
  /** Result and log bytes arrive in pieces, never assembled (see frame-stream.ts). */
  private readonly decoder = new FrameStreamDecoder(new Set([FrameType.HELLO, FrameType.ERROR, FrameType.RESULT_END, FrameType.USAGE, FrameType.PONG]));
  private pending: Pending | null = null;
  private nextId = 1;
  private dead = false;
  private timedOut = false;
  /** The cgroup CPU counter up to which every millisecond was billed (to a call or as idle usage). */
  private billedCpuMs = 0;
  /** When the counter was last read at the end of a call (performance.now()), or null. */
  private lastReadAtMs: number | null = null;
  /** Idle CPU found but not yet reported (see chargeIdle). */
  private idleCpuMs = 0;
  private onIdle: ((usage: { cpuMs: number }) => void) | null = null;
  /** Set while a LOAD waits for its HELLO or ERROR. */
  private loading: ((frame: Frame | null) => void) | null = null;

  constructor(
    readonly id: string,
    private readonly execution: Execution,
    private readonly socket: net.Socket,
    dir: string,
    public startMs: number,
    private readonly tail: Tail,
    private readonly reuseCpuReadingMs: number,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => this.die());
    const exited = execution.wait().then(
      (info) => info,
      () => null,
    );
    void exited.then(() => this.die());
    this.disposed = (async () => {
      const info: ExitInfo | null = await exited;
      // The executor's last reading of the cgroup (taken before it was removed) closes the books: the call running
      // now gets its share, and whatever ran after the last call (until the kill) is idle usage.
      const final = info?.usage ?? null;
      this.finishPending(info?.exitCode ?? 137, info?.oomKilled ?? false, final);
      if (final?.cpuMs != null) this.chargeIdle(final.cpuMs, true);
      else this.chargeIdle(this.billedCpuMs, true);
      await execution.disposed.catch(() => undefined);
      await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    })();
  }

  get alive(): boolean {
    return !this.dead;
  }

  async load(request: LoadRequest, options: { timeoutMs: number }): Promise<void> {
    if (this.dead) throw new KindlingError('EXECUTOR_FAILED', 'the generic sandbox is gone');
    const started = performance.now();
    // The runtime's start before the code arrived is the platform's; from here on the CPU is the function's (its
    // module's top-level code included).
    this.billedCpuMs = this.readCpuMs() ?? 0;
    const answer = new Promise<Frame | null>((resolve) => {
      this.loading = resolve;
    });
    let timer: NodeJS.Timeout | undefined;
    this.socket.write(encodeFrame(FrameType.LOAD, 0, JSON.stringify(request)));
    const frame = await Promise.race([
      answer,
      new Promise<'timeout'>((resolve) => {
        timer = setTimeout(() => resolve('timeout'), options.timeoutMs);
      }),
    ]).finally(() => clearTimeout(timer));
    this.loading = null;
    if (frame === 'timeout') {
      this.die();
      throw new KindlingError('SANDBOX_START_TIMEOUT', `loading the function into a generic sandbox took over ${options.timeoutMs} ms; it was killed`, { retryAfterSeconds: 1 });
    }
    if (frame?.type === FrameType.HELLO) {
      this.startMs += performance.now() - started;
      return;
    }
    this.die();
    throw new AgentLoadError(frame?.type === FrameType.ERROR ? frame.payload.toString('utf8') : `the function's code ended the process while loading${this.tail.text() ? `:\n${this.tail.text()}` : ''}`);
  }

  invoke(body: Buffer, options: InvokeCallOptions): Promise<AgentInvocation> {
    if (this.dead) return Promise.reject(new KindlingError('EXECUTOR_FAILED', 'the warm sandbox is gone'));
    if (this.pending !== null) return Promise.reject(new KindlingError('INTERNAL', 'a warm sandbox serves one invocation at a time'));
    const id = this.nextId++;
    // What the sandbox burnt since the last call ended (threads or processes the handler left running) is idle usage;
    // the call's own CPU is counted from here. Calls back to back (under load) start from the reading at the end of
    // the last one instead: the CPU of the few ms between them counts as this call's, still the same tenant's, and
    // the server saves two cgroup reads a call (about 6% of its time per warm call at 2,000 calls a second).
    const reuse = this.lastReadAtMs !== null && performance.now() - this.lastReadAtMs < this.reuseCpuReadingMs;
    const cpuAtStartMs = reuse ? this.billedCpuMs : this.readCpuMs();
    if (cpuAtStartMs !== null) this.chargeIdle(cpuAtStartMs, false);
    return new Promise((resolve) => {
      this.pending = {
        id,
        // The execution's outputBytes bounds the kept return value and the kept logs (each), as for one-off runs.
        body: new CappedBytes(options.outputBytes),
        logs: new CappedBytes(options.outputBytes),
        onLog: options.onLog,
        outputBytes: options.outputBytes,
        cpuAtStartMs,
        startedAt: performance.now(),
        resolve,
        timer: setTimeout(() => {
          // A handler past its limit cannot be interrupted inside its runtime: the sandbox goes.
          this.timedOut = true;
          this.execution.kill();
        }, options.timeoutMs),
      };
      this.socket.cork();
      this.socket.write(encodeFrame(FrameType.INVOKE, id, options.traceparent === undefined ? undefined : JSON.stringify({ traceparent: options.traceparent })));
      for (const frame of encodeBody(FrameType.BODY_CHUNK, FrameType.BODY_END, id, body)) this.socket.write(frame);
      this.socket.uncork();
    });
  }

  async destroy(): Promise<void> {
    this.die();
    this.execution.kill();
    await this.disposed;
  }

  private onData(chunk: Buffer): void {
    try {
      this.decoder.push(chunk, (frame) => this.onFrame(frame));
    } catch {
      this.execution.kill();
    }
  }

  private onFrame(frame: FramePiece): void {
    if (this.loading !== null && frame.id === 0 && (frame.type === FrameType.HELLO || frame.type === FrameType.ERROR)) {
      this.loading(frame);
      return;
    }
    const pending = this.pending;
    if (pending === null || frame.id !== pending.id) return;
    switch (frame.type) {
      case FrameType.RESULT_CHUNK:
        pending.body.push(frame.payload);
        break;
      case FrameType.STDERR: {
        const kept = pending.logs.push(frame.payload);
        // Live: log followers see a handler's output while it still runs, not only when it returns (the kept part
        // only: past the cap nothing more is copied anywhere).
        if (kept.length > 0) pending.onLog?.(kept);
        break;
      }
      // RESULT_END's and USAGE's usage JSON is the agent's own report: user code can forge it (patch the clocks,
      // write frames on the socket), so it is ignored; the call is metered from the cgroup (see settle).
      case FrameType.RESULT_END:
        this.settle(0, pending.body.bytes());
        break;
      case FrameType.ERROR: {
        // Error text too is the sandbox's: kept up to the same cap (a copy, not a view of the socket's buffers).
        const text = Buffer.from(frame.payload.subarray(0, pending.outputBytes));
        this.settle(1, text, { truncated: text.length < frame.payload.length });
        break;
      }
      default:
        break;
    }
  }

  private settle(exitCode: number, body: Buffer, flags: { timedOut?: boolean; oomKilled?: boolean; truncated?: boolean; final?: ResourceUsage | null } = {}): void {
    const pending = this.pending;
    if (pending === null) return;
    this.pending = null;
    clearTimeout(pending.timer);
    // The host reads the counter: after a crash the cgroup may be gone, and the executor's last reading (exit info) is
    // the end of the call.
    const now = flags.final === undefined ? this.readUsage() : flags.final;
    let usage: AgentInvocation['usage'];
    if (now !== null && now.cpuMs !== null && pending.cpuAtStartMs !== null) {
      usage = { cpuMs: round2(Math.max(0, now.cpuMs - pending.cpuAtStartMs)), memoryPeakBytes: now.memoryPeakBytes ?? 0 };
      this.billedCpuMs = Math.max(this.billedCpuMs, now.cpuMs);
      this.lastReadAtMs = performance.now();
    } else {
      this.lastReadAtMs = null;
    }
    pending.resolve({
      body,
      logs: pending.logs.bytes(),
      truncated: (flags.truncated ?? false) || pending.body.truncated || pending.logs.truncated,
      exitCode,
      durationMs: Math.round((performance.now() - pending.startedAt) * 100) / 100,
      timedOut: flags.timedOut ?? false,
      oomKilled: flags.oomKilled ?? false,
      ...(usage ? { usage } : {}),
    });
  }

  meter(onIdle: (usage: { cpuMs: number }) => void): void {
    this.onIdle = onIdle;
  }

  private readUsage(): ResourceUsage | null {
    try {
      return this.execution.usageNow?.() ?? null;
    } catch {
      return null;
    }
  }

  private readCpuMs(): number | null {
    return this.readUsage()?.cpuMs ?? null;
  }

  /**
   * Bills the CPU between the last metered point and `cpuNowMs` as idle usage. Small amounts accumulate (a record per
   * call would be noise) until IDLE_REPORT_MS or the sandbox's end.
   */
  private chargeIdle(cpuNowMs: number, final: boolean): void {
    if (cpuNowMs > this.billedCpuMs) {
      this.idleCpuMs += cpuNowMs - this.billedCpuMs;
      this.billedCpuMs = cpuNowMs;
    }
    if (this.onIdle === null || this.idleCpuMs <= 0 || (!final && this.idleCpuMs < IDLE_REPORT_MS)) return;
    const cpuMs = round2(this.idleCpuMs);
    this.idleCpuMs = 0;
    try {
      this.onIdle({ cpuMs });
    } catch {
      // an observer's failure is not the sandbox's
    }
  }

  /** The sandbox ended while an invocation was running: that invocation ends with the sandbox's status. */
  private finishPending(exitCode: number, oomKilled: boolean, final: ResourceUsage | null): void {
    if (this.pending === null) return;
    const code = this.timedOut ? 137 : exitCode === 0 ? 137 : exitCode;
    const why = this.timedOut ? 'the invocation passed its timeout; the sandbox was killed' : oomKilled ? 'the sandbox ran out of memory' : `the sandbox died (exit code ${exitCode})`;
    this.settle(code, Buffer.from(`${why}\n${this.tail.text()}`), { timedOut: this.timedOut, oomKilled, final });
  }

  private die(): void {
    if (this.dead) return;
    this.dead = true;
    this.loading?.(null);
    this.socket.destroy();
    this.execution.kill();
  }
}
