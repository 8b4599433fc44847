/**
 * The host side of agent/vm/protocol.ts over any byte stream (virtio-serial unix socket with QEMU, vsock with
 * Firecracker). One client per VM; stream ids are allocated here.
 */
import { Readable, Writable, type Duplex } from 'node:stream';
import {
  FrameDecoder,
  MAX_CHUNK_BYTES,
  MessageType,
  PROTOCOL_VERSION,
  ProtocolError,
  decodeFileBody,
  decodeJson,
  encodeFileBody,
  encodeFrame,
  encodeJson,
  FEATURE_WINDOW,
  type ErrorMessage,
  type ExecRequest,
  type ExitMessage,
  type Frame,
  type PongMessage,
  type SandboxSetup,
  type SeedReply,
  type WindowMessage,
} from '../../../agent/vm/protocol.js';

export class AgentError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AgentError';
  }
}

/**
 * Output of an exec: pushed as frames arrive; `onConsumed` runs after every read (however the stream is consumed:
 * flowing, piped, read() or async iteration all go through read()), when the buffer has shrunk. _read() is not
 * enough: Node calls it once and not again until the next push, which credit may be holding back.
 */
class ConsumedReadable extends Readable {
  constructor(private readonly onConsumed: () => void) {
    super();
  }

  override _read(): void {}

  override read(size?: number): unknown {
    const chunk: unknown = super.read(size);
    this.onConsumed();
    return chunk;
  }
}

/** STDIN bytes of a flow-controlled stream sent and acknowledged by the agent; `resume`: a writer waiting for credit. */
interface StdinCredit {
  sent: number;
  acked: number;
  resume: (() => void) | null;
}

interface Pending {
  onFrame(frame: Frame): void;
  onClose(error: Error): void;
  /** An exec's stream moved to another client (the same guest restored into a new VM; see detach/adopt). */
  rebind?(client: AgentClient): void;
  /** Taken along by detach() (an exec started with keepAcrossRestore). */
  keep?: boolean;
}

/**
 * Exec streams taken out of a client whose VM was saved (hibernated) with their processes: the guest keeps running
 * them under the same stream ids once restored, and a new client adopts them (constructor) so that their output,
 * EXIT and KILL go on. Nothing is delivered to them in between; `fail` ends them when the VM never comes back.
 */
export class DetachedStreams {
  constructor(readonly streams: ReadonlyMap<number, Pending>) {}

  get size(): number {
    return this.streams.size;
  }

  fail(error: Error): void {
    for (const pending of this.streams.values()) pending.onClose(error);
  }
}

export interface AgentExec {
  stdin: Writable | null;
  stdout: Readable;
  stderr: Readable;
  exit: Promise<ExitMessage>;
  /** Its stream id (see AgentClient.detach). */
  stream: number;
  kill(): void;
  /** Bytes of output received and not read yet, now and at most so far (with `window`: bounded, see exec()). */
  stats(): { bufferedBytes: number; peakBufferedBytes: number };
}

export class AgentClient {
  private readonly decoder = new FrameDecoder();
  private readonly pending = new Map<number, Pending>();
  private nextStream: number;
  private closedError: Error | null = null;
  /** What the agent said it can do beyond agent version 1.0.0 (PONG `features`), from the last PING. */
  private agentFeatures = new Set<string>();

  /**
   * `firstStream`: after a restore, above every stream the guest may still have running (default 1). `adopt`: exec
   * streams of the client of the VM this one was restored from, attached before any frame is read (so that nothing
   * the guest sends on them is lost).
   */
  constructor(
    private readonly channel: Duplex,
    firstStream = 1,
    adopt?: DetachedStreams,
  ) {
    this.nextStream = firstStream;
    for (const [stream, pending] of adopt?.streams ?? []) {
      this.pending.set(stream, pending);
      pending.rebind?.(this);
    }
    channel.on('data', (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = this.decoder.push(chunk);
      } catch (error) {
        this.fail(error as Error);
        return;
      }
      for (const frame of frames) this.pending.get(frame.id)?.onFrame(frame);
    });
    channel.on('error', (error) => this.fail(error));
    channel.on('close', () => this.fail(new AgentError('the agent channel closed')));
  }

  get closed(): boolean {
    return this.closedError !== null;
  }

  private fail(error: Error): void {
    if (this.closedError) return;
    this.closedError = error;
    for (const pending of this.pending.values()) pending.onClose(error);
    this.pending.clear();
    this.channel.destroy();
  }

  close(): void {
    this.fail(new AgentError('the agent client was closed'));
  }

  /**
   * Takes the running execs started with `keepAcrossRestore` out of this client without ending them (see
   * DetachedStreams): call once the VM's state was saved, before the VM is killed.
   */
  detach(): DetachedStreams {
    const taken = new Map<number, Pending>();
    for (const [stream, pending] of this.pending) {
      if (pending.keep !== true) continue;
      this.pending.delete(stream);
      taken.set(stream, pending);
    }
    return new DetachedStreams(taken);
  }

  private send(frame: Buffer): boolean {
    if (this.closedError) return false;
    return this.channel.write(frame);
  }

  private open(pending: Pending): number {
    if (this.closedError) throw this.closedError;
    const stream = this.nextStream++;
    this.pending.set(stream, pending);
    return stream;
  }

  /** One request answered by one frame (PING, PUT_FILE, GET_FILE). */
  private request(build: (stream: number) => Buffer, expect: number, timeoutMs: number): Promise<Frame> {
    return new Promise<Frame>((resolve, reject) => {
      let stream = 0;
      const timer = setTimeout(() => {
        this.pending.delete(stream);
        reject(new AgentError(`the agent did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(timer);
        this.pending.delete(stream);
      };
      try {
        stream = this.open({
          onFrame: (frame) => {
            done();
            if (frame.type === expect) resolve(frame);
            else if (frame.type === MessageType.ERROR) reject(new AgentError(decodeJson<ErrorMessage>(frame).message));
            else reject(new ProtocolError(`expected message ${expect}, got ${frame.type}`));
          },
          onClose: (error) => {
            done();
            reject(error);
          },
        });
      } catch (error) {
        clearTimeout(timer);
        reject(error as Error);
        return;
      }
      this.send(build(stream));
    });
  }

  async ping(timeoutMs = 5000): Promise<PongMessage> {
    const frame = await this.request((stream) => encodeJson(MessageType.PING, stream, { version: PROTOCOL_VERSION }), MessageType.PONG, timeoutMs);
    const pong = decodeJson<PongMessage>(frame);
    if (pong.version !== PROTOCOL_VERSION) throw new ProtocolError(`agent speaks protocol ${pong.version}, host ${PROTOCOL_VERSION}`);
    this.agentFeatures = new Set(Array.isArray(pong.features) ? pong.features.filter((f): f is string => typeof f === 'string') : []);
    return pong;
  }

  /** Whether the agent announced `feature` (protocol.ts: FEATURE_WINDOW, FEATURE_PORTS) in its last PONG. */
  supports(feature: string): boolean {
    return this.agentFeatures.has(feature);
  }

  async putFile(guestPath: string, data: Buffer, mode = 0o644, timeoutMs = 30_000): Promise<void> {
    await this.request((stream) => encodeFrame(MessageType.PUT_FILE, stream, encodeFileBody({ path: guestPath, mode }, data)), MessageType.OK, timeoutMs);
  }

  async getFile(guestPath: string, timeoutMs = 30_000): Promise<Buffer> {
    const frame = await this.request((stream) => encodeJson(MessageType.GET_FILE, stream, { path: guestPath }), MessageType.FILE, timeoutMs);
    return decodeFileBody(frame.payload).data;
  }

  /** Mixes `bytes` into the guest's RNG and reseeds its CRNG (after a snapshot restore, so that clones diverge). */
  async seed(bytes: Buffer, timeoutMs = 10_000): Promise<SeedReply> {
    const frame = await this.request((stream) => encodeFrame(MessageType.SEED, stream, bytes), MessageType.OK, timeoutMs);
    return frame.payload.length > 0 ? decodeJson<SeedReply>(frame) : { reseeded: false };
  }

  /** The next stream id this client will use (saved with a hibernated VM: a restored one continues above it). */
  get streamsUsed(): number {
    return this.nextStream;
  }

  /** Sets the guest's wall clock to the host's (after a restore, the guest has the time it was saved at). */
  async setClock(timeoutMs = 10_000): Promise<void> {
    await this.request((stream) => encodeJson(MessageType.CLOCK, stream, { epochMs: Date.now() }), MessageType.OK, timeoutMs);
  }

  /** Makes the VM a persistent sandbox (once): the cgroup and mounts every command shares. */
  async setUpSandbox(setup: SandboxSetup, timeoutMs = 30_000): Promise<void> {
    await this.request((stream) => encodeJson(MessageType.SANDBOX, stream, setup), MessageType.OK, timeoutMs);
  }

  /** Freezes (fsfreeze) or thaws the persistent sandbox's data disk; without one, `true` syncs. */
  async freeze(frozen: boolean, timeoutMs = 30_000): Promise<void> {
    await this.request((stream) => encodeJson(MessageType.FREEZE, stream, { frozen }), MessageType.OK, timeoutMs);
  }

  /**
   * Starts a process; output streams end before `exit` resolves. Rejects `exit` on a platform failure only.
   *
   * With `request.window` (agents that support FEATURE_WINDOW only), the stream has credit-based flow control: the
   * agent sends output only as far as this side granted, and this side grants more as the reader consumes it, so the
   * output held here stays under window + MAX_CHUNK_BYTES whatever the reader or the guest does (a guest that sends
   * past its credit loses the stream: stdout errors, the process is killed); stdin waits for the agent's
   * acknowledgements, so at most `window` bytes of it are in the guest unread. Without it, output is buffered as it
   * comes (the reader must keep up) and stdin is sent as fast as the channel takes it.
   *
   * `keepAcrossRestore`: a hibernation (detach) takes the stream along to the restored VM's client instead of ending it.
   */
  exec(request: ExecRequest, options: { keepAcrossRestore?: boolean } = {}): AgentExec {
    const window = request.window;
    // The client the stream belongs to: this one, or the one of the restored VM after a hibernation (rebind).
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    let owner: AgentClient = this;
    if (window !== undefined && !this.supports(FEATURE_WINDOW)) throw new AgentError('the guest agent has no flow control (agent version 1.0.0); the VM must be started from newer microvm assets');
    let received = 0;
    let granted = window ?? 0;
    let peak = 0;
    let stream = 0;
    const buffered = (): number => stdout.readableLength + stderr.readableLength;
    /** Grants what the reader consumed since the last grant, in steps of half a window (one WINDOW per step). */
    const grant = (): void => {
      if (window === undefined || !owner.pending.has(stream)) return;
      const target = received - buffered() + window;
      if (target - granted >= window / 2) {
        owner.send(encodeJson(MessageType.WINDOW, stream, { bytes: target - granted } satisfies WindowMessage));
        granted = target;
      }
    };
    const stdout = new ConsumedReadable(grant);
    const stderr = new ConsumedReadable(grant);
    let resolveExit!: (exit: ExitMessage) => void;
    let rejectExit!: (error: Error) => void;
    const exit = new Promise<ExitMessage>((resolve, reject) => {
      resolveExit = resolve;
      rejectExit = reject;
    });
    let stdinCredit: StdinCredit | null = null;
    const finish = (): void => {
      owner.pending.delete(stream);
      stdout.push(null);
      stderr.push(null);
      // A writer waiting for credit is let go (what it writes next goes nowhere: the stream is over).
      const resume = stdinCredit?.resume;
      if (stdinCredit) stdinCredit.resume = null;
      resume?.();
    };
    let stdoutEnded = false;
    const output = (target: Readable, payload: Buffer): void => {
      // Output after STDOUT_END is a guest's error: dropped (a push after the end would throw in the reader).
      if (target === stdout && stdoutEnded) return;
      received += payload.length;
      if (window !== undefined && received > granted + MAX_CHUNK_BYTES) {
        // The guest ignores its credit: the stream is dropped rather than buffered without bound.
        const error = new AgentError(`the guest sent ${received - granted} bytes past the flow-control window of stream ${stream}`);
        owner.send(encodeFrame(MessageType.KILL, stream));
        finish();
        // Destroyed without an error event (nobody may listen for one): the reason is `exit`'s rejection.
        stdout.destroy();
        stderr.destroy();
        rejectExit(error);
        return;
      }
      target.push(payload);
      peak = Math.max(peak, buffered());
    };
    stream = owner.open({
      onFrame: (frame) => {
        switch (frame.type) {
          case MessageType.STDOUT:
            output(stdout, frame.payload);
            return;
          case MessageType.STDERR:
            output(stderr, frame.payload);
            return;
          case MessageType.STDOUT_END:
            // The process's stdout ended before its exit (flow-controlled streams; see protocol.ts).
            stdoutEnded = true;
            stdout.push(null);
            return;
          case MessageType.WINDOW:
            if (stdinCredit !== null) {
              stdinCredit.acked = Math.min(stdinCredit.sent, stdinCredit.acked + Math.max(0, Number(decodeJson<WindowMessage>(frame).bytes) || 0));
              const resume = stdinCredit.resume;
              stdinCredit.resume = null;
              resume?.();
            }
            return;
          case MessageType.EXIT:
            finish();
            resolveExit(decodeJson<ExitMessage>(frame));
            return;
          case MessageType.ERROR:
            finish();
            rejectExit(new AgentError(decodeJson<ErrorMessage>(frame).message));
            return;
        }
      },
      onClose: (error) => {
        finish();
        rejectExit(error);
      },
      rebind: (client) => {
        owner = client;
      },
      keep: options.keepAcrossRestore === true,
    });
    owner.send(encodeJson(MessageType.EXEC, stream, request));
    let stdin: Writable | null = null;
    if (request.stdin) {
      const credit: StdinCredit | null = window === undefined ? null : (stdinCredit = { sent: 0, acked: 0, resume: null });
      stdin = new Writable({
        write: (chunk: Buffer, _encoding, callback) => {
          let at = 0;
          const pump = (): void => {
            while (at < chunk.length) {
              if (!owner.pending.has(stream)) return callback();
              const room = credit === null ? MAX_CHUNK_BYTES : Math.min(MAX_CHUNK_BYTES, window! - (credit.sent - credit.acked));
              if (room <= 0) {
                // Out of credit: wait for the agent's acknowledgement (WINDOW) of what it wrote into the process.
                credit!.resume = pump;
                return;
              }
              const piece = chunk.subarray(at, at + room);
              at += piece.length;
              // Counted before it goes: the acknowledgement may come back within send().
              if (credit !== null) credit.sent += piece.length;
              owner.send(encodeFrame(MessageType.STDIN, stream, piece));
            }
            // Backpressure of the channel reaches the writer.
            if (owner.channel.writableNeedDrain) owner.channel.once('drain', () => callback());
            else callback();
          };
          pump();
        },
        final: (callback) => {
          owner.send(encodeFrame(MessageType.STDIN_END, stream));
          callback();
        },
      });
    }
    return {
      stdin,
      stdout,
      stderr,
      exit,
      stream,
      kill: () => void owner.send(encodeFrame(MessageType.KILL, stream)),
      stats: () => ({ bufferedBytes: buffered(), peakBufferedBytes: peak }),
    };
  }
}
