/**
 * Persistent sandboxes on the docker executor: one long-lived container per sandbox, made by the executor's own start
 * path (so the same hardening: no capabilities, Kindling's seccomp profile, no-new-privileges, read-only root, the
 * unprivileged uid, memory/cpu/pids/open-files limits, tmpfs work dir and /tmp bounded by `diskMb`, `network: none`,
 * the owner labels the reaper looks for, and the per-container parent cgroup that meters it). Its main process is the
 * image's shell blocked on a `read` from its stdin FIFO, which the server holds open and never writes: it uses no CPU
 * and needs nothing of the image but /bin/sh. The engine's tiny init is PID 1 and reaps what commands leave behind.
 *
 * Commands: the Engine API's exec (create, then start with the connection hijacked: stdin written to it, stdout and
 * stderr demultiplexed from it). An exec runs in the container's namespaces, cgroup, seccomp profile and uid, and runc
 * makes it a session leader. Its end is the engine's `exec_die` event (one event stream per sandbox, filtered on the
 * container), which carries the exit code: background children that keep the output open do not hold the result
 * back; their output is awaited only briefly after the main process ended.
 *
 * Killing one command: the exec's host pid (exec inspect) is the session id of everything it started that did not
 * call setsid itself; that session and the descendants by parent pid (among the container cgroup's processes, read on
 * the host) are SIGKILLed until none is left. The container and its other processes keep running.
 *
 * Pause/resume: the engine's pause/unpause (the cgroup freezer). Usage: the slot's parent cgroup, read on the host.
 *
 * Files (with `storage`): the bwrap executor's storage module (sandbox/storage.ts) mounts the sandbox's own ext4 disk
 * on the host (its /work an overlay over the snapshot it was made from); the container binds that overlay at its work
 * dir and the disk's tmp/ at /tmp, read-write, instead of the tmpfs of a one-shot container. The disk outlives the
 * container and the server: a container that died, or a server killed with -9, leaves the files, and the next start
 * with the same id binds the same disk. The kernel enforces its size (ENOSPC inside the container). A snapshot is
 * copied from the overlay with the container paused (the engine's freezer).
 *
 * Ports: the container's network namespace (its own, loopback only with `network: none`) is opened once through
 * /proc/PID/ns/net of a process of its cgroup, right after the start and before any command ran, and connections are
 * made from inside it by the native helper, exactly as for the bwrap executor (sandbox/ports.ts).
 */
import * as fs from 'node:fs';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import type Docker from 'dockerode';
import type { Container, Exec } from 'dockerode';
import { KindlingError } from '../../core/errors.js';
import type { RunSpec } from '../../core/types.js';
import type { Duplex } from 'node:stream';
import type { Execution, PersistentSandbox, PersistentSandboxOptions, PortConnectOptions, ResourceUsage, SandboxCapabilities, SandboxCommand, SandboxCommandRequest, StartOptions } from '../executor.js';
import { SandboxPorts } from '../sandbox/ports.js';
import type { Volume } from '../sandbox/storage.js';
import { killUntilGone, signalOfExitCode } from '../shared/process.js';
import type { SlotCgroup } from './cgroup-usage.js';
import { checkCommandRequest } from '../shared/command-request.js';

/** The container's main process: waits on its stdin (held open by the server, never written) without using CPU. */
const MAIN = ['/bin/sh', '-c', 'read -r _ || true; exit 0'];
/** Every command starts in its work dir (126 when it does not exist, like the sandbox executor), then becomes the command. */
const WRAPPER = 'cd -- "$1" || exit 126; shift; exec "$@"';
/** After a command's main process exited, output its background children still hold open is not waited for longer. */
const OUTPUT_GRACE_MS = 100;
/** How often a pause that runc gave up on ("unable to freeze": a busy cgroup v1 freezer stuck in FREEZING) is asked again. */
const PAUSE_ATTEMPTS = 5;

export interface DockerPersistentDeps {
  docker: Docker;
  /** The executor's start path, also giving the container and its metering cgroup. */
  start(spec: RunSpec, options: StartOptions): Promise<{ execution: Execution; container: Container; cgroup: SlotCgroup }>;
  /** The sandbox's disk (see sandbox/storage.ts): mounted before the container starts, bound at its work dir and /tmp. */
  storage?: {
    attach(sandboxId: string, diskMb: number, fromSnapshot: string | null): Promise<Volume>;
    snapshot(volume: Volume, snapshotId: string): Promise<number>;
  };
  /** The native port helper (tests); default dist/native/kindling-port. */
  portHelperPath?: string;
}

export async function startDockerPersistentSandbox(deps: DockerPersistentDeps, spec: RunSpec, options: PersistentSandboxOptions = {}): Promise<PersistentSandbox> {
  const { storage: wanted, restore, ...startOptions } = options;
  if (restore !== undefined) {
    // The contract: no saved processes without the `hibernate` capability (the caller starts a new tree on the files).
    throw new KindlingError('SANDBOX_STATE_LOST', `the docker executor keeps no processes of a hibernated sandbox (${spec.id}); start it on its files`, { details: { sandbox: spec.id } });
  }
  let volume: Volume | null = null;
  let started: { execution: Execution; container: Container; cgroup: SlotCgroup } | null = null;
  try {
    if (wanted !== undefined && deps.storage !== undefined) volume = await deps.storage.attach(spec.id, spec.limits.diskMb, wanted.fromSnapshot);
    const underTmp = spec.workdir === '/tmp' || spec.workdir.startsWith('/tmp/');
    const rwBinds = volume === null ? undefined : [{ source: volume.work, target: spec.workdir }, ...(underTmp ? [] : [{ source: volume.tmp, target: '/tmp' }])];
    started = await deps.start({ ...spec, command: MAIN, stdin: true, files: [], ...(rwBinds === undefined ? {} : { rwBinds }) }, startOptions);
    const { execution, container, cgroup } = started;
    // Pinned now, before any command (the tenant's code) ran in the container (see sandbox/ports.ts).
    const ports = SandboxPorts.open(spec.id, cgroup, deps.portHelperPath);
    const events = await deps.docker.getEvents({ filters: JSON.stringify({ container: [container.id], event: ['exec_die'] }) });
    const stored = volume === null || deps.storage === undefined ? null : { volume, snapshot: deps.storage.snapshot };
    return new DockerPersistentSandbox(spec, execution, container, cgroup, events as Readable, stored, ports);
  } catch (error) {
    // A half-made sandbox goes before the error is rethrown (the original error wins); the disk is unmounted, kept.
    if (started !== null) {
      started.execution.kill();
      await started.execution.disposed.catch(() => {});
    }
    await volume?.detach().catch(() => {});
    if (error instanceof KindlingError) throw error;
    throw new KindlingError('EXECUTOR_FAILED', `the persistent sandbox did not start: ${(error as Error).message}`, { cause: error });
  }
}

class DockerPersistentSandbox implements PersistentSandbox {
  readonly id: string;
  readonly capabilities: SandboxCapabilities = { pause: true, memorySnapshot: false, hibernate: false };
  readonly disposed: Promise<void>;
  private ended = false;
  /** Exec id -> what resolves that command's exit (from the exec_die event). */
  private readonly exits = new Map<string, (exitCode: number) => void>();
  private readonly env: string[];
  private readonly lifetime: NodeJS.Timeout;
  /** Paused by pause() (a snapshot's own pause is not counted). */
  private paused = false;
  /**
   * A snapshot under way: the engine refuses an exec into a paused container, so commands started meanwhile wait for
   * its end (as they wait for the thaw on the sandbox executor) instead of failing.
   */
  private snapshotting: Promise<unknown> | null = null;

  constructor(
    spec: RunSpec,
    private readonly execution: Execution,
    private readonly container: Container,
    private readonly cgroup: SlotCgroup,
    private readonly events: Readable,
    private readonly stored: { volume: Volume; snapshot: (volume: Volume, snapshotId: string) => Promise<number> } | null = null,
    private readonly ports: SandboxPorts | null = null,
  ) {
    this.id = spec.id;
    this.env = Object.entries(spec.env).map(([name, value]) => `${name}=${value}`);
    execution.stdout.resume();
    execution.stderr.resume();
    execution.stdin?.on('error', () => {});
    this.readEvents();
    // The owner destroys it first; this is the backstop for an owner that never does.
    this.lifetime = setTimeout(() => void this.destroy(), spec.limits.timeoutMs);
    this.lifetime.unref();
    const exited = execution.wait().then(
      () => undefined,
      () => undefined,
    );
    this.disposed = exited.then(async () => {
      this.ended = true;
      clearTimeout(this.lifetime);
      this.events.destroy();
      // Commands still waiting end as killed: the container is gone.
      for (const exit of this.exits.values()) exit(137);
      this.exits.clear();
      this.ports?.close();
      await execution.disposed.catch(() => {});
      // The disk is unmounted once the container is gone, never removed: its files outlive it (removeDisk).
      await stored?.volume.detach().catch(() => {});
    });
  }

  /* -- storage: snapshots ------------------------------------------------------------------------------------------ */
  async snapshot(snapshotId: string): Promise<{ bytes: number; memory: boolean }> {
    this.assertAlive();
    if (this.stored === null) throw new KindlingError('SNAPSHOTS_UNSUPPORTED', `sandbox ${this.id} keeps its files in memory (tmpfs): nothing to snapshot`, { details: { sandbox: this.id } });
    const { volume, snapshot } = this.stored;
    // Paused while copied, so that the copy is one moment of the files; a paused sandbox stays paused.
    const wasPaused = this.paused;
    const work = (async () => {
      if (!wasPaused) await this.engine(() => this.freeze(), 'pause');
      try {
        return { bytes: await snapshot(volume, snapshotId), memory: false };
      } finally {
        if (!wasPaused && !this.ended) await this.container.unpause().catch(() => {});
      }
    })();
    const running = work.catch(() => {});
    this.snapshotting = running;
    void running.then(() => {
      if (this.snapshotting === running) this.snapshotting = null;
    });
    return work;
  }

  /* -- ports ------------------------------------------------------------------------------------------------------- */
  connectPort(port: number, options: PortConnectOptions): Promise<Duplex> {
    this.assertAlive();
    if (this.ports === null) return Promise.reject(new KindlingError('EXECUTOR_FAILED', `the network namespace of sandbox ${this.id} could not be opened: its ports are unreachable`));
    return this.ports.connect(port, options);
  }

  get portConnections(): number {
    return this.ports?.connections ?? 0;
  }

  get alive(): boolean {
    return !this.ended;
  }

  private readEvents(): void {
    let buffered = '';
    this.events.setEncoding('utf8');
    this.events.on('error', () => {});
    this.events.on('data', (chunk: string) => {
      buffered += chunk;
      let at: number;
      while ((at = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, at);
        buffered = buffered.slice(at + 1);
        try {
          const event = JSON.parse(line) as { Actor?: { Attributes?: Record<string, string> } };
          const attributes = event.Actor?.Attributes ?? {};
          const exit = attributes.execID === undefined ? undefined : this.exits.get(attributes.execID);
          exit?.(Number(attributes.exitCode ?? 137));
        } catch {
          // not an event
        }
      }
    });
  }

  usage(): ResourceUsage | null {
    return this.ended ? null : this.cgroup.usage();
  }

  async pause(): Promise<void> {
    this.assertAlive();
    await this.engine(() => this.freeze(), 'pause');
    this.paused = true;
  }

  async resume(): Promise<void> {
    this.assertAlive();
    await this.engine(() => this.container.unpause(), 'resume');
    this.paused = false;
  }

  async destroy(): Promise<void> {
    this.execution.kill();
    await this.disposed;
  }

  async exec(request: SandboxCommandRequest): Promise<SandboxCommand> {
    this.assertAlive();
    checkCommandRequest(request);
    while (this.snapshotting !== null) await this.snapshotting;
    this.assertAlive();
    const exec = await this.engine(
      () =>
        this.container.exec({
          Cmd: ['/bin/sh', '-c', WRAPPER, 'kindling-cmd', request.workdir, ...request.command],
          Env: [...this.env, ...Object.entries(request.env).map(([name, value]) => `${name}=${value}`)],
          AttachStdin: request.stdin,
          AttachStdout: true,
          AttachStderr: true,
          Tty: false,
        }),
      'exec',
    );
    let resolveExit!: (exitCode: number) => void;
    const exited = new Promise<number>((resolve) => (resolveExit = resolve));
    this.exits.set(exec.id, resolveExit);
    void exited.then(() => this.exits.delete(exec.id));
    let stream: NodeJS.ReadWriteStream;
    try {
      stream = await this.engine(() => exec.start({ hijack: true, stdin: request.stdin }), 'exec');
    } catch (error) {
      this.exits.delete(exec.id);
      throw error;
    }
    return new DockerCommand(this, this.container.modem as DemuxModem, exec, stream as unknown as Readable & Writable, exited, resolveExit, request.stdin);
  }

  /** SIGKILLs the session of `hostPid` (an exec's main process) and its descendants; repeats until none is left. */
  async killTree(hostPid: number): Promise<void> {
    await killUntilGone(() => this.treeOf(hostPid));
  }

  /** Live (not zombie) host pids of the container that are `root`, in its session, or descendants of those. */
  private treeOf(root: number): number[] {
    const parents = new Map<number, number>();
    const tree = new Set<number>();
    for (const pid of this.cgroup.pids()) {
      try {
        const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
        // Fields after the command name (which may hold spaces and parentheses): state ppid pgrp session ...
        const [state, ppid, , session] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        if (state === 'Z') continue;
        parents.set(pid, Number(ppid));
        if (pid === root || Number(session) === root) tree.add(pid);
      } catch {
        // exited meanwhile
      }
    }
    for (let grew = tree.size > 0; grew; ) {
      grew = false;
      for (const [pid, ppid] of parents) {
        if (!tree.has(pid) && tree.has(ppid)) {
          tree.add(pid);
          grew = true;
        }
      }
    }
    return [...tree];
  }

  /**
   * The engine's pause. runc gives up when the cgroup v1 freezer stays FREEZING for a moment (seen under heavy load)
   * and thaws the container again, so that answer is asked again a few times before it counts as a failure.
   */
  private async freeze(): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.container.pause();
        return;
      } catch (error) {
        if (attempt >= PAUSE_ATTEMPTS || this.ended || !/unable to freeze/i.test((error as Error).message)) throw error;
      }
    }
  }

  private async engine<T>(work: () => Promise<T>, what: string): Promise<T> {
    try {
      return await work();
    } catch (error) {
      const status = (error as { statusCode?: number }).statusCode;
      if (this.ended || status === 404 || (status === 409 && /not running/i.test((error as Error).message))) {
        throw new KindlingError('SANDBOX_NOT_RUNNING', `sandbox ${this.id} has ended`, { details: { sandbox: this.id } });
      }
      throw new KindlingError('EXECUTOR_FAILED', `the Docker engine failed to ${what} in sandbox ${this.id}: ${(error as Error).message}`, { cause: error });
    }
  }

  private assertAlive(): void {
    if (this.ended) throw new KindlingError('SANDBOX_NOT_RUNNING', `sandbox ${this.id} has ended`, { details: { sandbox: this.id } });
  }
}

interface DemuxModem {
  demuxStream(stream: NodeJS.ReadableStream, stdout: NodeJS.WritableStream, stderr: NodeJS.WritableStream): void;
}

class DockerCommand implements SandboxCommand {
  readonly stdin: Writable | null;
  readonly stdout = new PassThrough();
  readonly stderr = new PassThrough();
  private readonly done: Promise<{ exitCode: number; signal: string | null }>;
  private killed = false;
  private finished = false;

  constructor(
    private readonly sandbox: DockerPersistentSandbox,
    modem: DemuxModem,
    private readonly exec: Exec,
    private readonly stream: Readable & Writable,
    exited: Promise<number>,
    private readonly resolveExit: (exitCode: number) => void,
    withStdin: boolean,
  ) {
    stream.on('error', () => {});
    modem.demuxStream(stream, this.stdout, this.stderr);
    const streamEnded = new Promise<void>((resolve) => {
      stream.once('end', resolve);
      stream.once('close', resolve);
    });
    if (withStdin) {
      const input = new PassThrough();
      input.on('error', () => {});
      input.pipe(stream);
      this.stdin = input;
    } else {
      this.stdin = null;
    }
    // The output ended (the process and everything holding its stdout are gone): the engine knows the exit code, even
    // should its event be missed.
    void streamEnded.then(async () => {
      const info = await exec.inspect().catch(() => null);
      // Still running with its output closed: its exec_die event will tell.
      if (info !== null && !info.Running && info.ExitCode !== null) resolveExit(info.ExitCode);
    });
    this.done = exited.then(async (status) => {
      // The main process has exited: its output is in the connection. Background children may hold it open for ever,
      // so its end is awaited only briefly.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([streamEnded, new Promise((resolve) => (timer = setTimeout(resolve, OUTPUT_GRACE_MS)))]);
      clearTimeout(timer);
      stream.destroy();
      this.stdin?.destroy();
      for (const through of [this.stdout, this.stderr]) if (!through.writableEnded) through.end();
      this.finished = true;
      const exitCode = this.killed ? 137 : status;
      return { exitCode, signal: this.killed ? 'SIGKILL' : signalOfExitCode(exitCode) };
    });
  }

  wait(): Promise<{ exitCode: number; signal: string | null }> {
    return this.done;
  }

  /**
   * The exec's host pid: the engine answers the hijacked start before its process is started, so inspect is asked
   * until it names the pid (null once the command ended or the engine cannot say).
   */
  private async pidOf(exec: Exec): Promise<number | null> {
    for (let attempt = 0; attempt < 200 && !this.finished; attempt++) {
      const info = await exec.inspect().catch(() => null);
      if (info === null) return null;
      if (info.Pid > 0) return info.Pid;
      if (!info.Running && info.ExitCode !== null) return null;
      await new Promise((resolve) => setTimeout(resolve, Math.min(2 + attempt, 20)));
    }
    return null;
  }

  kill(): void {
    if (this.killed || this.finished) return;
    this.killed = true;
    void (async () => {
      // Asked only when needed: most commands are never killed.
      const pid = await this.pidOf(this.exec);
      if (pid !== null) await this.sandbox.killTree(pid);
      this.resolveExit(137);
    })();
  }
}
