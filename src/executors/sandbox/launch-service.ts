/**
 * Launcher processes, and the spawner that forks them (native/kindling-launch --serve).
 *
 * A spawn from node forks the whole server process and holds its event loop until the child has exec'd: 5 to 10 ms
 * per sandbox here, longer the larger the server, plus the kernel's copy-on-write faults in the server afterwards. In a
 * burst of one-off executions that is the server's largest own cost per sandbox. The spawner is one small root
 * process, started once, that forks each launcher instead: the server writes one request line and goes on. The
 * launcher's fds 0-5 and 7 are unix stream connections to a socket the server listens on (root-only directory), each
 * announced by the launcher's random token and its fd number, so the streams the executor reads and writes are the
 * same kind of socket as a node spawn's pipes. The spawner reaps launchers and reports their exit status; signals go
 * through it too (it knows whether a pid is still its child, so a reused pid is never hit).
 *
 * Where the spawner cannot run (no native helper, or a socket path too long for a unix socket), launchers are
 * spawned from node as before (fromChildProcess).
 */
import { spawn, type ChildProcess, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { constants as osConstants } from 'node:os';
import { createInterface } from 'node:readline';
import type { Duplex } from 'node:stream';
import type { Logger } from '../shared/logger.js';
import { processExited } from '../shared/process.js';

export interface ExitStatus {
  code: number | null;
  sig: NodeJS.Signals | null;
}

/** A launcher's process as the executor sees it, whoever spawned it. */
export interface LauncherProcess {
  /** Host pid (undefined until known, or when the spawn failed). */
  readonly pid: number | undefined;
  /** Streams by fd number: 0-5 and 7 (null at 6 and beyond). */
  readonly stdio: readonly (Duplex | null)[];
  /** null while it runs. */
  readonly exitStatus: ExitStatus | null;
  /** The process ended (rejects when it could not be spawned). */
  readonly exited: Promise<ExitStatus>;
  /** The process ended and all of its streams closed. */
  readonly closed: Promise<void>;
  kill(signal: NodeJS.Signals): void;
}

/** The launcher's fds that are streams, and which way the server uses each. */
const READ_FDS = new Set([1, 2, 4]);
const WRITE_FDS = new Set([0, 3, 5, 7]);
const STREAM_FDS = 7;
const TOKEN_BYTES = 16;
/** A connection must name its launcher within this time (only root can reach the socket; still bounded). */
const GREETING_TIMEOUT_MS = 10_000;
/** A launcher must connect all of its fds within this time after the request. */
const CONNECT_TIMEOUT_MS = 10_000;
/** How long connections of a launcher that already exited may still arrive (they were queued before it ended). */
const LATE_CONNECT_GRACE_MS = 3_000;
/** How long a launcher orphaned by the spawner's death is waited for before it is reported ended anyway. */
const ORPHAN_WAIT_MS = 10_000;
/** The error code of spawn() when the helper cannot run here (the caller spawns launchers itself). */
export const LAUNCH_SERVICE_UNAVAILABLE = 'LAUNCH_SERVICE_UNAVAILABLE';
/** unix(7): sun_path holds 108 bytes with the NUL. */
const MAX_SOCKET_PATH_BYTES = 107;

export function fromChildProcess(child: ChildProcess): LauncherProcess {
  const exited = new Promise<ExitStatus>((resolve, reject) => {
    child.once('exit', (code, sig) => resolve({ code, sig }));
    child.once('error', reject);
  });
  exited.catch(() => {});
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
  return {
    get pid() {
      return child.pid;
    },
    stdio: child.stdio as unknown as (Duplex | null)[],
    get exitStatus() {
      return child.exitCode === null && child.signalCode === null ? null : { code: child.exitCode, sig: child.signalCode };
    },
    exited,
    closed,
    kill: (signal) => {
      child.kill(signal);
    },
  };
}

/** The socket path the service would listen on is usable (short enough for sun_path). */
export function launchSocketUsable(socketPath: string): boolean {
  return Buffer.byteLength(socketPath) <= MAX_SOCKET_PATH_BYTES;
}

class ServedLauncher implements LauncherProcess {
  pid: number | undefined;
  readonly stdio: (Duplex | null)[] = new Array<Duplex | null>(8).fill(null);
  exitStatus: ExitStatus | null = null;
  readonly exited: Promise<ExitStatus>;
  readonly closed: Promise<void>;
  /** Resolves when every fd has connected; rejects when the launcher ended (or timed out) first. */
  readonly connected: Promise<void>;
  private connectedCount = 0;
  private abandoned = false;
  private lateTimer: NodeJS.Timeout | undefined;
  private resolveExited!: (status: ExitStatus) => void;
  private resolveConnected!: () => void;
  private rejectConnected!: (err: Error) => void;
  private readonly socketsClosed: Promise<void>[] = [];

  constructor(
    readonly token: string,
    private readonly signalThrough: (token: string, signal: NodeJS.Signals) => void,
  ) {
    this.exited = new Promise<ExitStatus>((resolve) => (this.resolveExited = resolve));
    this.connected = new Promise<void>((resolve, reject) => {
      this.resolveConnected = resolve;
      this.rejectConnected = reject;
    });
    this.connected.catch(() => {});
    this.closed = this.connected.then(
      () => this.exited.then(() => Promise.all(this.socketsClosed)).then(() => {}),
      // Never fully connected: the sockets that did are destroyed on exit.
      () => this.exited.then(() => {}),
    );
  }

  attach(fd: number, socket: Socket): boolean {
    if (this.stdio[fd] !== null || this.abandoned) return false;
    this.stdio[fd] = socket;
    this.socketsClosed.push(new Promise<void>((resolve) => socket.once('close', () => resolve())));
    if (++this.connectedCount === STREAM_FDS) this.whenComplete();
    return true;
  }

  /** The spawner's "P" answer. */
  forked(pid: number): void {
    this.pid = pid;
    this.whenComplete();
  }

  /** Every fd connected and the pid known (the answer and the connections come on different sockets, in any order). */
  private whenComplete(): void {
    if (this.connectedCount < STREAM_FDS || this.pid === undefined) return;
    this.resolveConnected();
    if (this.exitStatus !== null) {
      // It exited before the last connection was taken: the exit is reported once the spawn's caller has the streams.
      clearTimeout(this.lateTimer);
      setImmediate(() => this.finishExit());
    }
  }

  onExit(status: ExitStatus): void {
    if (this.exitStatus !== null) return;
    this.exitStatus = status;
    if (this.connectedCount === STREAM_FDS && this.pid !== undefined) this.finishExit();
    else if (this.abandoned) this.abandon();
    // Its connections may still wait in the socket's backlog (a launcher that connected and then failed a setup step
    // leaves its reason on the status fd): they get a moment to arrive.
    else this.lateTimer = setTimeout(() => this.abandon(), LATE_CONNECT_GRACE_MS);
  }

  /** Gives up on connections that did not come (timed out, or the launcher ended before making them). */
  failConnecting(err: Error): void {
    this.abandoned = true;
    this.rejectConnected(err);
    if (this.exitStatus !== null) this.abandon();
    // Never forked as far as the server knows (a helper that does not answer): nothing will report an exit. A kill
    // sent after this reaches it if it is forked later (requests are handled in order).
    else if (this.pid === undefined) this.onExit({ code: null, sig: 'SIGKILL' });
  }

  private abandon(): void {
    this.abandoned = true;
    const status = this.exitStatus!;
    this.rejectConnected(new Error(`the sandbox launcher exited (${status.sig ?? status.code}) before it connected`));
    for (const s of this.stdio) s?.destroy();
    this.resolveExited(status);
  }

  private finishExit(): void {
    // As node does for a spawned child: what it would have read goes nowhere now (stdin destroyed), and output nobody
    // reads is discarded (flushStdio), so that every stream closes.
    for (const fd of WRITE_FDS) this.stdio[fd]?.destroy();
    for (const fd of READ_FDS) {
      const s = this.stdio[fd];
      if (s != null && s.readable && s.listenerCount('readable') === 0) s.resume();
    }
    this.resolveExited(this.exitStatus!);
  }

  kill(signal: NodeJS.Signals): void {
    if (this.exitStatus === null) this.signalThrough(this.token, signal);
  }
}

export interface LaunchServiceOptions {
  /** native/kindling-launch. */
  helperPath: string;
  /**
   * Where the server listens for launchers' connections: in a directory only root can enter (0700), so that no other
   * user can connect whatever mode the socket file gets.
   */
  socketPath: string;
  /** Makes the socket's directory (awaited before the first listen). */
  prepareDir: () => Promise<void>;
  log: Logger;
}

export class LaunchService {
  private spawner: ChildProcessWithoutNullStreams | null = null;
  private server: Server | null = null;
  private listening: Promise<void> | null = null;
  private readonly launchers = new Map<string, ServedLauncher>();
  /** Accepted connections, destroyed at close (net.Server.close waits for every one). */
  private readonly sockets = new Set<Socket>();
  /** The helper could not be started here (not executable, noexec mount): the caller spawns launchers itself. */
  private unavailable: Error | null = null;
  private closing = false;

  constructor(private readonly options: LaunchServiceOptions) {}

  /** Forks a launcher with these arguments (UID GID CORE_LIMIT NETNS|- PROCS_FILE...); resolves once its fds connected. */
  async spawn(args: readonly string[]): Promise<LauncherProcess> {
    if (this.closing) throw new Error('the launch service is closed');
    if (this.unavailable !== null) throw this.unavailable;
    await this.listen();
    const spawner = this.startSpawner();
    const token = randomBytes(TOKEN_BYTES / 2).toString('hex');
    const launcher = new ServedLauncher(token, (t, signal) => this.signal(t, signal));
    this.track(token, launcher);
    spawner.stdin.write(record(['S', token, ...args]));
    const timer = setTimeout(() => {
      launcher.kill('SIGKILL');
      launcher.failConnecting(new Error(`the sandbox launcher did not connect within ${CONNECT_TIMEOUT_MS} ms`));
    }, CONNECT_TIMEOUT_MS);
    try {
      await launcher.connected;
    } finally {
      clearTimeout(timer);
    }
    return launcher;
  }

  /**
   * While any launcher of this service lives, the spawner's answers keep this process alive (as a spawned child
   * would); with none, the idle spawner and socket do not.
   */
  private track(token: string, launcher: ServedLauncher): void {
    this.launchers.set(token, launcher);
    this.holdProcess();
    void launcher.exited.then(() => {
      this.launchers.delete(token);
      this.holdProcess();
    });
  }

  private holdProcess(): void {
    const spawner = this.spawner;
    if (spawner === null) return;
    const answers = spawner.stdout as Socket;
    // Both the answers and the process itself: a spawner that dies closes its stdout before its exit is reaped, and
    // its launchers are reported ended only on 'close' (which needs both).
    if (this.launchers.size > 0) {
      answers.ref();
      spawner.ref();
    } else {
      answers.unref();
      spawner.unref();
    }
  }

  /** Stops the spawner (its launchers get SIGKILL) and the listening socket. */
  async close(): Promise<void> {
    this.closing = true;
    this.spawner?.stdin.end();
    this.spawner = null;
    const server = this.server;
    this.server = null;
    this.listening = null;
    for (const socket of this.sockets) socket.destroy();
    if (server !== null) await new Promise<void>((resolve) => server.close(() => resolve()));
    fs.rmSync(this.options.socketPath, { force: true });
  }

  /** The spawner's pid (null when none runs). */
  get spawnerPid(): number | null {
    return this.spawner?.pid ?? null;
  }

  private signal(token: string, signal: NodeJS.Signals): void {
    const number = osConstants.signals[signal];
    if (this.spawner === null || number === undefined) return;
    this.spawner.stdin.write(record(['K', token, String(number)]));
  }

  private listen(): Promise<void> {
    this.listening ??= this.options.prepareDir().then(() => new Promise<void>((resolve, reject) => {
      const path = this.options.socketPath;
      fs.rmSync(path, { force: true }); // a socket file of an earlier run of this server
      const server = createServer({ allowHalfOpen: true }, (socket) => this.accept(socket));
      server.on('error', (err) => this.options.log.warn({ err }, 'the launch socket failed'));
      server.once('error', reject);
      // A burst forks many launchers at once, each connecting seven times.
      server.listen({ path, backlog: 4096 }, () => {
        server.removeListener('error', reject);
        // Not what keeps the server's process alive.
        server.unref();
        resolve();
      });
      this.server = server;
    }));
    const listening = this.listening;
    listening.catch(() => {
      if (this.listening === listening) this.listening = null;
    });
    return listening;
  }

  private accept(socket: Socket): void {
    socket.on('error', () => {});
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.setTimeout(GREETING_TIMEOUT_MS, () => socket.destroy());
    const onReadable = (): void => {
      const greeting = socket.read(TOKEN_BYTES + 1) as Buffer | null;
      if (greeting === null) return;
      socket.removeListener('readable', onReadable);
      socket.setTimeout(0);
      const token = greeting.subarray(0, TOKEN_BYTES).toString('latin1');
      const fd = greeting[TOKEN_BYTES]! - 0x30;
      const launcher = this.launchers.get(token);
      if (launcher === undefined || !(READ_FDS.has(fd) || WRITE_FDS.has(fd)) || !launcher.attach(fd, socket)) {
        socket.destroy();
        return;
      }
      // The server never writes where it reads, nor reads where it writes: those halves end now, so that the socket
      // closes when the launcher's side does (and anything a sandbox writes into its stdin is discarded).
      if (READ_FDS.has(fd)) socket.end();
      else socket.resume();
    };
    socket.on('readable', onReadable);
  }

  private startSpawner(): ChildProcessWithoutNullStreams {
    if (this.spawner !== null) return this.spawner;
    // detached: a terminal's Ctrl-C (SIGINT to the server's process group) must not take the launchers with it.
    const child = spawn(this.options.helperPath, ['--serve', this.options.socketPath], { stdio: ['pipe', 'pipe', 'pipe'], env: {}, cwd: '/', detached: true });
    this.spawner = child;
    child.on('error', (err) => {
      // Not started at all (not executable, a noexec mount): no 'close' follows. Launchers are spawned by the server
      // from now on (the caller falls back), and those asked for meanwhile fail now instead of at their timeout.
      if (child.pid === undefined) {
        this.unavailable = Object.assign(new Error(`the launch helper could not start: ${err.message}`), { code: LAUNCH_SERVICE_UNAVAILABLE });
        this.options.log.error({ err }, 'the sandbox launch helper could not start; launchers are spawned by the server');
        this.spawnerGone(child);
      }
    });
    child.stdin.on('error', () => {});
    createInterface({ input: child.stdout, crlfDelay: Infinity }).on('line', (line) => this.onAnswer(line));
    createInterface({ input: child.stderr, crlfDelay: Infinity }).on('line', (line) =>
      this.options.log.warn({ helper: 'kindling-launch' }, line),
    );
    // 'close', not 'exit': every answer it wrote before it ended has been read by then.
    child.once('close', (code, sig) => {
      if (!this.closing) this.options.log.warn({ code, sig }, 'the sandbox launch helper exited; its launchers are gone');
      this.spawnerGone(child);
    });
    // Not what keeps the server's process alive: it ends by itself once the server's end of its stdin closes.
    child.unref();
    for (const stream of [child.stdin, child.stdout, child.stderr] as unknown as Array<{ unref?: () => void }>) stream.unref?.();
    return child;
  }

  /** The spawner ended: its launchers died with it (their parent-death signal), or will before they run anything. */
  private spawnerGone(child: ChildProcessWithoutNullStreams): void {
    if (this.spawner === child) this.spawner = null;
    for (const launcher of [...this.launchers.values()]) {
      if (launcher.exitStatus !== null) continue;
      if (launcher.pid !== undefined) void this.whenGone(launcher);
      else launcher.failConnecting(this.unavailable ?? new Error('the launch helper exited before it forked the launcher'));
    }
  }

  /** A launcher orphaned by the spawner's death: reported ended once its pid is gone or a zombie (bounded wait). */
  private async whenGone(launcher: ServedLauncher): Promise<void> {
    const deadline = Date.now() + ORPHAN_WAIT_MS;
    while (launcher.exitStatus === null && !processExited(launcher.pid) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    launcher.onExit({ code: null, sig: 'SIGKILL' });
  }

  private onAnswer(line: string): void {
    const [kind, token, a, b] = line.split(' ');
    const launcher = this.launchers.get(token ?? '');
    if (launcher === undefined) return;
    if (kind === 'P') launcher.forked(Number(a));
    else if (kind === 'X') {
      launcher.onExit(a === 's' ? { code: null, sig: signalName(Number(b)) } : { code: Number(b), sig: null });
    }
  }
}

function record(fields: readonly string[]): string {
  return `${fields.map((f) => `${f}\0`).join('')}\0`;
}

function signalName(number: number): NodeJS.Signals {
  for (const [name, value] of Object.entries(osConstants.signals)) if (value === number) return name as NodeJS.Signals;
  return 'SIGKILL';
}
