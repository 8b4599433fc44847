/**
 * The data plane for large streams: a small helper (`native/kindling-splice.c`) moves the bytes between the client's
 * TCP socket and the program's stdio with splice(2), so that a 1 GiB body never passes through this process's heap,
 * its event loop or its four copies per byte (socket read, pipe write, pipe read, socket write). The server keeps
 * everything else: the headers, the limits, the result, the trailers. Without the helper (not built, or
 * `--stream-relay off`) the same requests go through node streams as before.
 *
 * Node is told to stop reading the socket (or the program's stdout), hands over what it has already read, and lets
 * the helper take the rest. The descriptors are duplicated into the helper (child_process stdio, which also stops
 * node's own reading of them); they stay open in node, so the connection lives until both are done with it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { Socket } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import type { StdoutBypass } from '../orchestrator/io-plan.js';

export type RelayDirection = 'in' | 'out';

export interface StreamRelayOptions {
  /** The compiled native/kindling-splice.c. */
  binaryPath: string;
  /** Uploads declaring at least this many bytes go through the helper; smaller ones are read before it would start. */
  minUploadBytes: number;
  /** A client that sends (upload) or accepts (download) nothing for this long is given up. */
  clientIdleMs: number;
  /** Helpers running at once at most; past it, streams go through node. */
  maxHelpers: number;
  /**
   * After the answer went out, an upload helper still dropping the rest of a body (the program closed its stdin
   * early) gets this long to finish; then it is stopped and the connection closed.
   */
  drainGraceMs: number;
  /** Called when a relay ends, with the bytes it moved (metrics). */
  onMoved?: (direction: RelayDirection, bytes: number) => void;
  /** Called when the helper itself failed (not when the client went away). */
  onFailure?: (direction: RelayDirection, detail: string) => void;
}

/** Exit statuses of kindling-splice. */
const EXIT_DONE = 0;
const EXIT_CLIENT_GONE = 2;
const EXIT_CLIENT_IDLE = 3;

/** The OS descriptor behind a stream, when it is a libuv stream (TCP socket, socketpair, pipe); null otherwise. */
function descriptorOf(stream: unknown): number | null {
  if (!(stream instanceof Socket) || stream.destroyed) return null;
  const fd = (stream as unknown as { _handle?: { fd?: unknown } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : null;
}

/** Makes `stream` never ask its source for more: what it buffered so far is all node will read of it. */
function stopReading(stream: Readable): void {
  // `_read` is how a readable asks its source for data (for a request: resume the socket). A no-op here means node
  // never starts reading the descriptor again; spawn() stops the reading in progress, synchronously.
  (stream as unknown as { _read: () => void })._read = () => undefined;
  stream.pause();
}

/** Everything `stream` has buffered, without asking for more (call stopReading first). */
function takeBuffered(stream: Readable): Buffer[] {
  const chunks: Buffer[] = [];
  for (let chunk = stream.read() as Buffer | null; chunk !== null; chunk = stream.read() as Buffer | null) chunks.push(chunk);
  return chunks;
}

/** A helper's extra descriptor (node types `stdio` as a 5-tuple). */
function helperStdio(child: ChildProcess, fd: number): Readable | Writable {
  return (child.stdio as unknown as (Readable | Writable)[])[fd]!;
}

/** Lines a helper reports on its descriptor 5. */
function onReport(child: ChildProcess, onLine: (word: string, value: number) => void): void {
  const report = helperStdio(child, 5) as Readable;
  let pending = '';
  report.setEncoding('utf8');
  report.on('data', (text: string) => {
    pending += text;
    for (let end = pending.indexOf('\n'); end >= 0; end = pending.indexOf('\n')) {
      const [word, value] = pending.slice(0, end).split(' ');
      pending = pending.slice(end + 1);
      if (word !== undefined && value !== undefined) onLine(word, Number(value));
    }
  });
  report.on('error', () => undefined);
}

export class StreamRelay {
  private readonly running = new Set<ChildProcess>();
  /** Helpers stopped by this side (shutdown, the drain grace): their end is not a failure. */
  private readonly stopped = new WeakSet<ChildProcess>();
  /** The held upload of each socket: while its helper reads the socket, nobody else may (pipelined requests too). */
  private readonly owners = new WeakMap<Socket, HeldUpload>();
  private closed = false;

  constructor(private readonly options: StreamRelayOptions) {}

  /**
   * Takes over a request body before node reads more of it, when it is worth it: a declared Content-Length of at
   * least `minUploadBytes` on a plain socket. Returns null otherwise (the caller streams it through node).
   */
  holdUpload(upload: IncomingMessage, response: ServerResponse, fallback: () => Readable): HeldUpload | null {
    if (this.closed || this.running.size >= this.options.maxHelpers) return null;
    const declared = Number(upload.headers['content-length']);
    if (!Number.isSafeInteger(declared) || declared < this.options.minUploadBytes || upload.headers['transfer-encoding'] !== undefined) return null;
    // A pipelined request whose answer waits behind another one's has no socket of its own yet: node keeps it.
    if (descriptorOf(upload.socket) === null || response.socket !== upload.socket || this.owners.get(upload.socket)?.relayReading) return null;
    const held = new HeldUpload(this, upload, response, declared, fallback);
    this.owners.set(upload.socket, held);
    return held;
  }

  /**
   * Whether the rest of a program's stdout can go straight to the client now: both ends are descriptors and the
   * response is a started chunked HTTP/1.1 body.
   */
  canTakeOutput(stdout: Readable, response: ServerResponse): boolean {
    const chunked = (response as unknown as { chunkedEncoding?: boolean }).chunkedEncoding === true;
    return !this.closed && this.running.size < this.options.maxHelpers && chunked && response.headersSent && !response.writableEnded && !response.destroyed && descriptorOf(stdout) !== null && descriptorOf(response.socket) !== null;
  }

  /**
   * Moves the rest of `stdout` to the client: what node already read goes through `sink` (the writer of `response`),
   * then, once that is flushed, the helper sends the rest as chunks. `socketOwner`: the request's held upload, if any
   * (while its helper reads the socket, node must not). Resolves (never rejects) with the bytes that went
   * through the sink (`drained`) and through the helper (`sent`); when the client went away the response is destroyed (its 'close' cancels the execution). `stdout` is
   * destroyed at the end (its end of file was read by the helper).
   */
  takeOutput(stdout: Readable, sink: Writable, response: ServerResponse): Promise<{ drained: number; sent: number }> {
    stopReading(stdout);
    const buffered = takeBuffered(stdout);
    // The gate (fd 6): the helper sends nothing until node's own writes are out, in order.
    const socket = response.socket!;
    const child = this.spawnHelper(['out', String(this.options.clientIdleMs)], stdout, socket);
    // spawn() stopped node's reading of the socket too (it does so for every stream it hands over). Node reads on
    // unless an upload helper does (this request's or a pipelined one's): a chunked upload still arriving, end of
    // file, the next keep-alive request.
    if (!(this.owners.get(socket)?.relayReading ?? false)) socket.resume();
    let drained = 0;
    for (const chunk of buffered) {
      drained += chunk.length;
      sink.write(chunk);
    }
    const gate = helperStdio(child, 6) as Writable;
    gate.on('error', () => undefined);
    void flushed(sink, response, this.options.clientIdleMs).then(() => gate.end());
    let sent = 0;
    onReport(child, (word, value) => {
      if (word === 'sent') sent = value;
    });
    return this.exited(child).then((status) => {
      this.moved(child, 'out', sent, status);
      if (status !== EXIT_DONE) response.destroy();
      stdout.destroy();
      return { drained, sent };
    });
  }

  /**
   * The `stdoutBypass` of an execution whose stdout streams into `response` through `sink`: it takes over once at
   * least `minBytes` went out and the response streams (`streaming()`). `sentBytes()`: what the helper moved.
   */
  outputBypass(sink: Writable, response: ServerResponse, minBytes: number, streaming: () => boolean): { bypass: StdoutBypass; sentBytes: () => number } {
    let sent = 0;
    const bypass: StdoutBypass = {
      // What node still holds for the client is sent before the helper's first chunk (the gate in takeOutput).
      ready: (stdout, bytesSoFar) => bytesSoFar >= minBytes && streaming() && this.canTakeOutput(stdout, response),
      start: (stdout) =>
        this.takeOutput(stdout, sink, response).then((moved) => {
          sent = moved.sent;
          return moved.drained + moved.sent;
        }),
    };
    return { bypass, sentBytes: () => sent };
  }

  /** Stops every helper (server shutdown). */
  close(): void {
    this.closed = true;
    for (const child of this.running) this.stop(child);
  }

  /** @internal: stops a helper on purpose (its end is then not counted as a failure). */
  stop(child: ChildProcess): void {
    this.stopped.add(child);
    child.kill('SIGKILL');
  }

  /** @internal: starts a helper with `source` as fd 3 and `target` as fd 4, a report on fd 5 and a gate/head on fd 6. */
  spawnHelper(args: string[], source: Socket | Readable, target: Socket | Writable): ChildProcess {
    const child = spawn(this.options.binaryPath, args, { stdio: ['ignore', 'ignore', 'pipe', source as Socket, target as Socket, 'pipe', 'pipe'] });
    this.running.add(child);
    child.on('error', () => undefined);
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (text: string) => (stderr = (stderr + text).slice(-500)));
    child.once('close', () => {
      this.running.delete(child);
      if (stderr.length > 0 && !this.stopped.has(child)) this.options.onFailure?.(args[0] as RelayDirection, stderr.trim());
    });
    return child;
  }

  /** @internal: the helper's exit status (1 when it could not start or was killed). */
  exited(child: ChildProcess): Promise<number> {
    return new Promise((resolve) => {
      child.once('error', () => resolve(1));
      child.once('close', (code) => resolve(code ?? 1));
    });
  }

  /** @internal: counts what a helper moved; an end that is neither done, the client's doing nor ours is a failure. */
  moved(child: ChildProcess, direction: RelayDirection, bytes: number, status: number): void {
    this.options.onMoved?.(direction, bytes);
    const expected = status === EXIT_DONE || status === EXIT_CLIENT_GONE || status === EXIT_CLIENT_IDLE || this.stopped.has(child);
    if (!expected) this.options.onFailure?.(direction, `kindling-splice ${direction} exited with ${status}`);
  }

  /** @internal */
  get drainGraceMs(): number {
    return this.options.drainGraceMs;
  }

  /** @internal */
  get idleMs(): number {
    return this.options.clientIdleMs;
  }
}

/**
 * Resolves once everything written to `sink` and `response` is in the kernel, or the response is gone. A client that
 * takes nothing for `idleMs` is given up (the response is destroyed). Polled: a ServerResponse emits 'drain' only
 * after a write that returned false, and this usually takes a few ms.
 */
async function flushed(sink: Writable, response: ServerResponse, idleMs: number): Promise<void> {
  let waiting = 0;
  let left = sink.writableLength + response.writableLength;
  while (!response.destroyed && left > 0) {
    await new Promise((resolve) => setTimeout(resolve, 5));
    const now = sink.writableLength + response.writableLength;
    waiting = now < left ? 0 : waiting + 5;
    left = now;
    if (waiting >= idleMs) response.destroy();
  }
}

/**
 * A request body node has stopped reading. `pumpInto` gives it to a program's stdin through the helper (or, when the
 * stdin has no descriptor, through node via `fallback`); `release` gives it back to node when nothing will run.
 */
export class HeldUpload {
  private failure: unknown = null;
  private started = false;
  /** Whether the upload helper is reading the socket now (node must not). */
  relayReading = false;

  private helper: ChildProcess | null = null;

  constructor(
    private readonly relay: StreamRelay,
    private readonly upload: IncomingMessage,
    response: ServerResponse,
    private readonly declaredBytes: number,
    private readonly fallback: () => Readable,
  ) {
    stopReading(upload);
    // A request's socket stops on 'pause' (node's HTTP server listens for it): nothing more reaches the parser.
    upload.socket.pause();
    // The parser never sees the end of a relayed body: this connection cannot carry another request. (Headers set
    // here are merged into whatever writes the head later: fastify's reply or a streamed writeHead.)
    response.shouldKeepAlive = false;
    response.setHeader('connection', 'close');
    // The answer is out while the helper still drops the rest of the body (the program closed its stdin early): it
    // gets a grace period, then the connection closes. A slow client must not keep a helper and a socket for long.
    response.once('finish', () => {
      const helper = this.helper;
      if (helper === null || !this.relayReading) return;
      const timer = setTimeout(() => {
        if (this.relayReading) this.relay.stop(helper);
        upload.socket.destroy();
      }, this.relay.drainGraceMs);
      timer.unref();
      helper.once('close', () => clearTimeout(timer));
    });
  }

  /** Bytes the program took so far (known when the helper reports; on failure, what it reported last). */
  deliveredBytes = 0;

  /** What went wrong with the upload (the client went away or idled), if anything. */
  error(): unknown {
    return this.failure;
  }

  /**
   * Fills `stdin` with the body. Resolves with the bytes the program took (all of them, or fewer when it closed its
   * stdin early: the rest is then read and dropped in the background); rejects when the client broke off.
   */
  pumpInto(stdin: Writable): Promise<number> {
    this.started = true;
    if (descriptorOf(stdin) === null) return this.throughNode(stdin);
    const head = takeBuffered(this.upload);
    const headBytes = head.reduce((sum, chunk) => sum + chunk.length, 0);
    const child = this.relay.spawnHelper(['in', String(Math.max(0, this.declaredBytes - headBytes)), String(this.relay.idleMs)], this.upload.socket, stdin);
    this.helper = child;
    this.relayReading = true;
    const headPipe = helperStdio(child, 6) as Writable;
    headPipe.on('error', () => undefined);
    headPipe.end(Buffer.concat(head, headBytes));
    return new Promise((resolve, reject) => {
      onReport(child, (word, value) => {
        this.deliveredBytes = value;
        // The program closed its stdin: it has what it wants; the helper drops the rest of the body on its own.
        if (word === 'closed') resolve(value);
      });
      void this.relay.exited(child).then((status) => {
        this.relayReading = false;
        stdin.destroy();
        this.relay.moved(child, 'in', this.deliveredBytes, status);
        // Node reads the socket again: it notices a client that goes away before the answer (whatever ended the
        // helper), and the connection closes after it.
        if (!this.upload.socket.destroyed) this.upload.socket.resume();
        if (status === EXIT_DONE) {
          resolve(this.deliveredBytes);
          return;
        }
        this.failure =
          status === EXIT_CLIENT_IDLE
            ? new Error(`the client sent nothing for ${this.relay.idleMs} ms during the upload`)
            : status === EXIT_CLIENT_GONE
              ? new Error('the client disconnected during the upload')
              : new Error(`the upload relay failed (status ${status})`);
        reject(this.failure);
      });
    });
  }

  /** Nothing will read the body (the execution did not start): node reads and drops it, as for any early answer. */
  release(): void {
    if (this.started) return;
    this.started = true;
    delete (this.upload as unknown as { _read?: unknown })._read;
    this.upload.resume();
  }

  private throughNode(stdin: Writable): Promise<number> {
    delete (this.upload as unknown as { _read?: unknown })._read;
    const stream = this.fallback();
    let bytes = 0;
    return new Promise((resolve, reject) => {
      stream.on('data', (chunk: Buffer) => (bytes += chunk.length));
      stream.on('error', (error) => {
        this.failure = error;
        reject(error);
      });
      stream.on('end', () => resolve(bytes));
      stream.pipe(stdin);
    });
  }
}
