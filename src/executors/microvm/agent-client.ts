/**
 * The host side of agent/vm/protocol.ts over any byte stream (virtio-serial unix socket with QEMU, vsock with
 * Firecracker). One client per VM; stream ids are allocated here.
 */
import { PassThrough, Writable, type Duplex } from 'node:stream';
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
  type ErrorMessage,
  type ExecRequest,
  type ExitMessage,
  type Frame,
  type PongMessage,
  type SandboxSetup,
  type SeedReply,
} from '../../../agent/vm/protocol.js';

export class AgentError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AgentError';
  }
}

interface Pending {
  onFrame(frame: Frame): void;
  onClose(error: Error): void;
}

export interface AgentExec {
  stdin: Writable | null;
  stdout: PassThrough;
  stderr: PassThrough;
  exit: Promise<ExitMessage>;
  kill(): void;
}

export class AgentClient {
  private readonly decoder = new FrameDecoder();
  private readonly pending = new Map<number, Pending>();
  private nextStream: number;
  private closedError: Error | null = null;

  /** `firstStream`: after a restore, above every stream the guest may still have running (default 1). */
  constructor(
    private readonly channel: Duplex,
    firstStream = 1,
  ) {
    this.nextStream = firstStream;
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
    return pong;
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

  /** Starts a process; output streams end before `exit` resolves. Rejects `exit` on a platform failure only. */
  exec(request: ExecRequest): AgentExec {
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    let resolveExit!: (exit: ExitMessage) => void;
    let rejectExit!: (error: Error) => void;
    const exit = new Promise<ExitMessage>((resolve, reject) => {
      resolveExit = resolve;
      rejectExit = reject;
    });
    const finish = (): void => {
      this.pending.delete(stream);
      stdout.end();
      stderr.end();
    };
    const stream = this.open({
      onFrame: (frame) => {
        switch (frame.type) {
          case MessageType.STDOUT:
            stdout.write(frame.payload);
            return;
          case MessageType.STDERR:
            stderr.write(frame.payload);
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
    });
    this.send(encodeJson(MessageType.EXEC, stream, request));
    let stdin: Writable | null = null;
    if (request.stdin) {
      stdin = new Writable({
        write: (chunk: Buffer, _encoding, callback) => {
          for (let at = 0; at < chunk.length; at += MAX_CHUNK_BYTES) {
            this.send(encodeFrame(MessageType.STDIN, stream, chunk.subarray(at, at + MAX_CHUNK_BYTES)));
          }
          // Backpressure of the channel reaches the writer.
          if (this.channel.writableNeedDrain) this.channel.once('drain', () => callback());
          else callback();
        },
        final: (callback) => {
          this.send(encodeFrame(MessageType.STDIN_END, stream));
          callback();
        },
      });
    }
    return { stdin, stdout, stderr, exit, kill: () => void this.send(encodeFrame(MessageType.KILL, stream)) };
  }
}
