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
import { FrameDecoder, FrameType, encodeBody, encodeFrame, parseCallUsage, type CallUsage, type Frame } from '../../../agent/protocol.js';
import { AGENT_SOCKET } from '../../../agent/files.js';
import { KindlingError } from '../../core/errors.js';
import type { RunSpec } from '../../core/types.js';
import { AgentLoadError, type AgentInvocation, type Execution, type InvokeCallOptions, type LoadRequest, type StartOptions, type WarmSandbox } from '../executor.js';

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
}

const TAIL_BYTES = 8192;

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
    return new AgentSandbox(spec.id, exec, socket, dir, performance.now() - startedAt, tail);
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

interface Pending {
  id: number;
  body: Buffer[];
  logs: Buffer[];
  onLog: ((chunk: Buffer) => void) | undefined;
  /** From a USAGE frame (before an ERROR). */
  usage: CallUsage | null;
  startedAt: number;
  resolve: (result: AgentInvocation) => void;
  timer: NodeJS.Timeout;
}

class AgentSandbox implements WarmSandbox {
  readonly disposed: Promise<void>;
  private readonly decoder = new FrameDecoder();
  private pending: Pending | null = null;
  private nextId = 1;
  private dead = false;
  private timedOut = false;
  /** Set while a LOAD waits for its HELLO or ERROR. */
  private loading: ((frame: Frame | null) => void) | null = null;

  constructor(
    readonly id: string,
    private readonly execution: Execution,
    private readonly socket: net.Socket,
    dir: string,
    public startMs: number,
    private readonly tail: Tail,
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
      const info = await exited;
      this.finishPending(info?.exitCode ?? 137, info?.oomKilled ?? false);
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
    return new Promise((resolve) => {
      this.pending = {
        id,
        body: [],
        logs: [],
        onLog: options.onLog,
        usage: null,
        startedAt: performance.now(),
        resolve,
        timer: setTimeout(() => {
          // A handler past its limit cannot be interrupted inside its runtime: the sandbox goes.
          this.timedOut = true;
          this.execution.kill();
        }, options.timeoutMs),
      };
      this.socket.cork();
      this.socket.write(encodeFrame(FrameType.INVOKE, id));
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
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
    } catch {
      this.execution.kill();
      return;
    }
    for (const frame of frames) {
      if (this.loading !== null && frame.id === 0 && (frame.type === FrameType.HELLO || frame.type === FrameType.ERROR)) {
        this.loading(frame);
        continue;
      }
      const pending = this.pending;
      if (pending === null || frame.id !== pending.id) continue;
      switch (frame.type) {
        case FrameType.RESULT_CHUNK:
          pending.body.push(frame.payload);
          break;
        case FrameType.STDERR:
          pending.logs.push(frame.payload);
          // Live: log followers see a handler's output while it still runs, not only when it returns.
          pending.onLog?.(frame.payload);
          break;
        case FrameType.RESULT_END:
          this.settle(0, Buffer.concat(pending.body), { usage: parseCallUsage(frame.payload) });
          break;
        case FrameType.USAGE:
          pending.usage = parseCallUsage(frame.payload);
          break;
        case FrameType.ERROR:
          this.settle(1, frame.payload, { usage: pending.usage });
          break;
        default:
          break;
      }
    }
  }

  private settle(exitCode: number, body: Buffer, flags: { timedOut?: boolean; oomKilled?: boolean; usage?: CallUsage | null } = {}): void {
    const pending = this.pending;
    if (pending === null) return;
    this.pending = null;
    clearTimeout(pending.timer);
    pending.resolve({
      body,
      logs: Buffer.concat(pending.logs),
      exitCode,
      durationMs: Math.round((performance.now() - pending.startedAt) * 100) / 100,
      timedOut: flags.timedOut ?? false,
      oomKilled: flags.oomKilled ?? false,
      ...(flags.usage ? { usage: { cpuMs: flags.usage.cpuMs, memoryPeakBytes: flags.usage.maxRssBytes } } : {}),
    });
  }

  /** The sandbox ended while an invocation was running: that invocation ends with the sandbox's status. */
  private finishPending(exitCode: number, oomKilled: boolean): void {
    if (this.pending === null) return;
    const code = this.timedOut ? 137 : exitCode === 0 ? 137 : exitCode;
    const why = this.timedOut ? 'the invocation passed its timeout; the sandbox was killed' : oomKilled ? 'the sandbox ran out of memory' : `the sandbox died (exit code ${exitCode})`;
    this.settle(code, Buffer.from(`${why}\n${this.tail.text()}`), { timedOut: this.timedOut, oomKilled });
  }

  private die(): void {
    if (this.dead) return;
    this.dead = true;
    this.loading?.(null);
    this.socket.destroy();
    this.execution.kill();
  }
}
