/**
 * Background commands of a persistent sandbox: a handle per command (its id, pid, state and exit code), its output kept
 * in a bounded ring (the newest `outputBytes` of stdout and stderr together; older chunks are dropped and counted), and
 * followers that get what was kept so far, then every new chunk live, then the exit.
 *
 * Bounded everywhere: at most MAX_RUNNING background commands run at once per sandbox (one more is 429
 * SANDBOX_COMMAND_LIMIT), finished ones are kept for listing and logs up to MAX_FINISHED (the oldest finished is
 * forgotten first), and each keeps at most its `outputBytes` (default 1 MiB, at most 1 MiB) of output. A sandbox thus
 * holds at most (MAX_RUNNING + MAX_FINISHED) MiB of background output in the server's memory.
 */
import { StringDecoder } from 'node:string_decoder';
import type { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { KindlingError } from '../core/errors.js';
import type { SandboxCommand } from '../executors/executor.js';

export const MAX_RUNNING = 32;
export const MAX_FINISHED = 16;
export const DEFAULT_BACKGROUND_OUTPUT_BYTES = 1024 * 1024;
export const MAX_BACKGROUND_OUTPUT_BYTES = 1024 * 1024;

export type OutputStreamName = 'stdout' | 'stderr';
export interface OutputChunk {
  stream: OutputStreamName;
  data: string;
}

/** What the API answers for a background command. */
export interface SandboxCommandView {
  id: string;
  command: string[];
  /** Its pid inside the sandbox (its pid namespace); null if it never started. */
  pid: number | null;
  state: 'running' | 'exited';
  exitCode: number | null;
  signal: string | null;
  /** Ended by DELETE .../commands/CID (or the sandbox stopping). */
  killed: boolean;
  timedOut: boolean;
  startedAt: string;
  endedAt: string | null;
  /** The most output (stdout and stderr together) kept for logs; older output is dropped first. */
  outputBytes: number;
  /** Bytes of output dropped from the head of the ring so far. */
  droppedBytes: number;
}

export type CommandEvent = { type: 'output'; chunk: OutputChunk } | { type: 'exit'; view: SandboxCommandView };

/** A byte-bounded ring of output chunks: the newest `cap` bytes are kept. */
export class OutputRing {
  private readonly chunks: { chunk: OutputChunk; bytes: number }[] = [];
  private bytes = 0;
  dropped = 0;

  constructor(readonly cap: number) {}

  push(chunk: OutputChunk): void {
    let bytes = Buffer.byteLength(chunk.data);
    if (bytes > this.cap) {
      // One chunk larger than the whole ring: only its tail is kept.
      const tail = Buffer.from(chunk.data).subarray(bytes - this.cap);
      this.dropped += bytes - this.cap;
      chunk = { stream: chunk.stream, data: tail.toString('utf8') };
      bytes = tail.length;
    }
    this.chunks.push({ chunk, bytes });
    this.bytes += bytes;
    while (this.bytes > this.cap) {
      const head = this.chunks.shift()!;
      this.bytes -= head.bytes;
      this.dropped += head.bytes;
    }
  }

  snapshot(): OutputChunk[] {
    return this.chunks.map((entry) => entry.chunk);
  }

  get keptBytes(): number {
    return this.bytes;
  }
}

export class BackgroundCommand {
  readonly ring: OutputRing;
  readonly done: Promise<SandboxCommandView>;
  pid: number | null = null;
  killed = false;
  timedOut = false;
  private exit: { exitCode: number; signal: string | null } | null = null;
  private endedAtMs: number | null = null;
  private readonly startedAtMs = Date.now();
  private readonly followers = new Set<(event: CommandEvent) => void>();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    readonly id: string,
    readonly argv: string[],
    private readonly command: SandboxCommand,
    outputBytes: number,
    timeoutMs: number | null,
  ) {
    this.ring = new OutputRing(outputBytes);
    this.read(command.stdout, 'stdout');
    this.read(command.stderr, 'stderr');
    if (timeoutMs !== null) {
      this.timer = setTimeout(() => {
        this.timedOut = true;
        command.kill();
      }, timeoutMs);
      this.timer.unref();
    }
    const drained = Promise.all([command.stdout, command.stderr].map((stream) => finished(stream).catch(() => {})));
    this.done = command.wait().then(
      async (exit) => {
        // wait() ends the output streams; their last chunks are delivered before the exit.
        await drained;
        return this.finish(exit);
      },
      () => this.finish({ exitCode: 137, signal: 'SIGKILL' }),
    );
  }

  get running(): boolean {
    return this.exit === null;
  }

  get endedAt(): number | null {
    return this.endedAtMs;
  }

  /** The output kept so far and, from then on, every event live (in order); call the result to stop. */
  follow(listener: (event: CommandEvent) => void): { replay: OutputChunk[]; unsubscribe: () => void } {
    const replay = this.ring.snapshot();
    this.followers.add(listener);
    return { replay, unsubscribe: () => this.followers.delete(listener) };
  }

  /** Kills its process tree; resolves with the final view. */
  kill(): Promise<SandboxCommandView> {
    if (this.running) {
      this.killed = true;
      this.command.kill();
    }
    return this.done;
  }

  view(): SandboxCommandView {
    return {
      id: this.id,
      command: this.argv,
      pid: this.pid,
      state: this.exit === null ? 'running' : 'exited',
      exitCode: this.exit?.exitCode ?? null,
      signal: this.exit?.signal ?? null,
      killed: this.killed,
      timedOut: this.timedOut,
      startedAt: new Date(this.startedAtMs).toISOString(),
      endedAt: this.endedAtMs === null ? null : new Date(this.endedAtMs).toISOString(),
      outputBytes: this.ring.cap,
      droppedBytes: this.ring.dropped,
    };
  }

  private read(stream: Readable, name: OutputStreamName): void {
    const decoder = new StringDecoder('utf8');
    const emit = (data: string): void => {
      if (data === '') return;
      const chunk = { stream: name, data };
      this.ring.push(chunk);
      for (const listener of this.followers) listener({ type: 'output', chunk });
    };
    stream.on('data', (buffer: Buffer) => emit(decoder.write(buffer)));
    stream.once('end', () => emit(decoder.end()));
    stream.on('error', () => {});
  }

  private finish(exit: { exitCode: number; signal: string | null }): SandboxCommandView {
    if (this.timer !== null) clearTimeout(this.timer);
    this.exit = this.killed || this.timedOut ? { exitCode: 137, signal: 'SIGKILL' } : exit;
    this.endedAtMs = Date.now();
    const view = this.view();
    for (const listener of this.followers) listener({ type: 'exit', view });
    this.followers.clear();
    return view;
  }
}

/** The background commands of one sandbox. */
export class CommandRegistry {
  private readonly commands = new Map<string, BackgroundCommand>();

  /** Refuses one more running command beyond MAX_RUNNING (before anything is started). */
  assertRoom(sandbox: string): void {
    const running = [...this.commands.values()].filter((command) => command.running).length;
    if (running >= MAX_RUNNING) {
      throw new KindlingError('SANDBOX_COMMAND_LIMIT', `sandbox ${sandbox} has ${running} background commands running, its cap (${MAX_RUNNING}); wait for one or kill one (DELETE /v1/sandboxes/${sandbox}/commands/CID)`, { details: { sandbox, cap: MAX_RUNNING }, retryAfterSeconds: 1 });
    }
  }

  add(command: BackgroundCommand): void {
    this.commands.set(command.id, command);
    void command.done.then(() => this.prune());
  }

  get(sandbox: string, id: string): BackgroundCommand {
    const command = this.commands.get(id);
    if (command === undefined) throw new KindlingError('SANDBOX_COMMAND_NOT_FOUND', `no background command "${id.slice(0, 100)}" in sandbox ${sandbox} (finished ones are kept until ${MAX_FINISHED} newer ones finished)`, { details: { sandbox, command: id.slice(0, 100) } });
    return command;
  }

  /** Running ones first (oldest first), then the finished ones kept (most recently ended first). */
  list(): BackgroundCommand[] {
    const all = [...this.commands.values()];
    return [...all.filter((c) => c.running), ...all.filter((c) => !c.running).sort((x, y) => y.endedAt! - x.endedAt!)];
  }

  private prune(): void {
    const finished = [...this.commands.values()].filter((c) => !c.running).sort((x, y) => x.endedAt! - y.endedAt!);
    for (const command of finished.slice(0, Math.max(0, finished.length - MAX_FINISHED))) this.commands.delete(command.id);
  }
}
