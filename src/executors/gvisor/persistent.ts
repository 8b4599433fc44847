/**
 * Persistent sandboxes on the gvisor executor: one long-lived runsc container per sandbox (`runsc run --detach`),
 * whose init is a shell that only sleeps, with every command started by `runsc exec` into it. Measured against the
 * bwrap executor's design (a supervisor reading command lines from a pipe, stdio over FIFOs): FIFOs on a host dir
 * bound into gVisor are proxied by its gofer, not host pipes, while `runsc exec` hands the sandbox the server's own
 * pipes as the command's stdio and reports its exit status: ~120-180 ms per command here, all of it runsc's start-up.
 * A command runs as the sandbox's uid with no capabilities, in the sandbox's gVisor kernel (same namespaces and
 * cgroup); what it leaves running in the background stays.
 *
 * Files: with `storage`, the sandbox's work dir and /tmp are the disk of the bwrap executor's storage (sandbox/storage.ts: an ext4
 * image of `diskMb` per sandbox, the work dir an overlay over the snapshot it was made from), bound in through the
 * gofer, so they outlive the sandbox's processes and the server, and snapshots are the same read-only layers. Without
 * it they are tmpfs in gVisor's memory (saved by a hibernation with the processes).
 *
 * Killing one command: a small shell run by `runsc exec` inside the sandbox stops (SIGSTOP) the command and, round by
 * round, every descendant found through /proc (a stopped process cannot fork), then SIGKILLs them all.
 *
 * Pause/resume: `runsc pause`/`runsc resume` (gVisor stops every task of its kernel). Hibernation: `runsc checkpoint`
 * writes every process with its memory to `<hibernated>/<id>` and stops the sandbox (its RAM is released: the
 * sentry exits); `runsc restore` from that image, with the same disk attached again, brings the processes back.
 * Memory snapshots (sandboxes with storage): checkpoint, copy the files, restore the source from the same image; a
 * sandbox made from the snapshot is restored from it too (see memorySnapshot()).
 */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { KindlingError } from '../../core/errors.js';
import type { RunSpec } from '../../core/types.js';
import type { PersistentSandbox, PersistentSandboxOptions, PortConnectOptions, ResourceUsage, SandboxCapabilities, SandboxCommand, SandboxCommandRequest } from '../executor.js';
import type { Cgroup } from '../shared/cgroups.js';
import { checkCommandRequest } from '../shared/command-request.js';
import type { Logger } from '../shared/logger.js';
import { signalOfExitCode } from '../shared/process.js';
import type { Volume } from '../sandbox/storage.js';
import type { GvisorExecutor } from './index.js';
import { bindMount, tmpfsMount } from './oci-spec.js';
import { streamEnded } from '../shared/streams.js';
import { GvisorPorts, portHelperMount } from './ports.js';
import type { Duplex } from 'node:stream';

export interface GvisorSandboxDeps {
  executor: GvisorExecutor;
  rootfs: string;
  shell: string | null;
  uid: number;
  gid: number;
  attach(sandboxId: string, diskMb: number, fromSnapshot: string | null): Promise<Volume>;
  /** Whether the sandbox's disk exists already (a restart: its files moved on from any snapshot it was made from). */
  hasDisk(sandboxId: string): boolean;
  /** Removes a disk this start made when the start fails (nothing of the user's is on it yet). */
  removeDisk(sandboxId: string): Promise<void>;
  snapshotFiles(volume: Volume, snapshotId: string): Promise<number>;
  /** Where a snapshot's saved processes live (`<snapshot dir>/memory`), beside its files' layer. */
  memoryImage(snapshotId: string): string;
  /** Removes a snapshot's files and saved processes (a snapshot that failed half-way is never recorded). */
  removeSnapshot(snapshotId: string): Promise<void>;
  track(sandbox: PersistentSandbox): void;
  log: Logger;
}

/** After a command's main process exited, output its background children still hold open is not waited for longer. */
const OUTPUT_GRACE_MS = 100;
/** How long a memory snapshot waits for commands whose `runsc exec` is still starting. */
const EXEC_SETTLE_MS = 5_000;

/** The init: sleeps forever, ignores the signals a stray `kill 1` would send, reaps orphans between sleeps. */
const INIT = 'trap "" HUP INT TERM; while :; do sleep 3600; done';

/** Runs the command in its work dir; a missing command is 127 and a missing dir 126, as in a shell. */
const LAUNCH = 'cd -- "$1" || exit 126; shift; exec "$@"';

/**
 * Stops the command ($1) and, until no new one appears, every descendant (by parent pid in /proc), then kills them
 * all. Stopped first so that none can fork a child the walk would miss.
 */
const KILL_TREE = [
  'all=" $1 "; kill -STOP "$1" 2>/dev/null',
  'while :; do',
  '  new=""',
  '  for s in /proc/[0-9]*/stat; do',
  '    read -r p c st pp rest < "$s" 2>/dev/null || continue',
  '    case "$all" in *" $pp "*) case "$all" in *" $p "*) ;; *) new="$new $p";; esac;; esac',
  '  done',
  '  [ -z "$new" ] && break',
  '  all="$all$new "',
  '  kill -STOP $new 2>/dev/null',
  'done',
  'kill -KILL $all 2>/dev/null; exit 0',
].join('\n');

export async function startGvisorSandbox(deps: GvisorSandboxDeps, spec: RunSpec, options: PersistentSandboxOptions = {}): Promise<PersistentSandbox> {
  const shell = deps.shell;
  if (shell === null) {
    throw new KindlingError('VALIDATION_FAILED', `image ${spec.image} has no shell: a persistent sandbox needs /bin/sh in its image`, { details: { field: 'image', executor: 'gvisor' } });
  }
  const { executor } = deps;
  const imagePath = executor.hibernatedPath(spec.id);
  const restoring = options.restore === 'hibernated';
  if (restoring && !fs.existsSync(path.join(imagePath, 'checkpoint.img'))) {
    throw new KindlingError('SANDBOX_STATE_LOST', `sandbox ${spec.id} has no saved processes on this server (its hibernation image is gone): start it again to get a new process tree on its files`, {
      details: { sandbox: spec.id },
    });
  }
  let volume: Volume | null = null;
  let cgroup: Cgroup | null = null;
  // Read before attach() makes the disk: only a new sandbox starts from a memory snapshot's processes.
  const newDisk = options.storage !== undefined && !deps.hasDisk(spec.id);
  try {
    // Without storage the files live in gVisor's memory (tmpfs): gone with the sandbox, kept by a hibernation.
    if (options.storage !== undefined) volume = await deps.attach(spec.id, spec.limits.diskMb, options.storage.fromSnapshot);
    const mounts =
      volume === null
        ? [tmpfsMount(spec.workdir, spec.limits.diskMb), tmpfsMount('/tmp', spec.limits.diskMb)]
        : [bindMount(volume.work, spec.workdir, false), bindMount(volume.tmp, '/tmp', false)];
    // The port relay (ports.ts), read-only: bound into every sandbox so that a restored one has it at the same place.
    const helper = portHelperMount();
    if (helper !== null) mounts.push(helper);
    cgroup = await executor.prepare(spec, deps.rootfs, [shell, '-c', INIT], '/', mounts);
    const bundle = executor.bundleDir(spec.id);
    // A memory snapshot's processes come back in every sandbox made from it (its files are the disk's lower layer); a
    // restart of one (after a server's crash, or a hibernation whose image is gone) starts a new process tree on its
    // files, which moved on from the snapshot's.
    const fromSnapshot = options.storage?.fromSnapshot ?? null;
    const memory = !restoring && newDisk && fromSnapshot !== null && fs.existsSync(path.join(deps.memoryImage(fromSnapshot), 'checkpoint.img')) ? deps.memoryImage(fromSnapshot) : null;
    const image = restoring ? imagePath : memory;
    const command = image !== null ? ['restore', '--detach', `--image-path=${image}`, `--bundle=${bundle}`, spec.id] : ['run', '--detach', `--bundle=${bundle}`, spec.id];
    await runDetached(executor, command, path.join(bundle, 'start.log'));
    const sandbox = new GvisorSandbox(spec.id, deps, shell, cgroup, volume, imagePath, helper !== null);
    deps.track(sandbox);
    return sandbox;
  } catch (error) {
    // A half-made sandbox goes before the error is rethrown (the original error wins).
    if (cgroup !== null) await executor.release(spec.id, cgroup);
    await volume?.detach().catch(() => {});
    // A retry of the same id must not take a disk made here for a restart (a memory snapshot's processes would not come back).
    if (newDisk) await deps.removeDisk(spec.id).catch(() => {});
    if (error instanceof KindlingError) throw error;
    if (restoring) {
      // The saved image cannot come back: the caller starts a new process tree on the files (the image is useless now).
      await fs.promises.rm(imagePath, { recursive: true, force: true }).catch(() => {});
      throw new KindlingError('SANDBOX_STATE_LOST', `sandbox ${spec.id}'s saved processes could not be restored (${(error as Error).message}); its files are kept and the next command starts a new process tree on them`, { cause: error, details: { sandbox: spec.id } });
    }
    throw new KindlingError('EXECUTOR_FAILED', `the gvisor sandbox did not start: ${(error as Error).message}`, { cause: error });
  }
}

/**
 * `runsc run|restore --detach`: the container's init inherits runsc's stdio, so runsc gets /dev/null in and a log file
 * for its errors (a pipe would be held open by the init, and the caller would never see end-of-file).
 */
async function runDetached(executor: GvisorExecutor, command: string[], logPath: string): Promise<void> {
  const log = fs.openSync(logPath, 'w', 0o600);
  try {
    const child = executor.runsc.spawn(command, ['ignore', 'ignore', log]);
    const code = await new Promise<number>((resolve) => {
      child.once('error', () => resolve(1));
      child.once('exit', (status) => resolve(status ?? 1));
    });
    if (code !== 0) throw new Error(`runsc ${command[0]} failed (${code}): ${runscReason(fs.readFileSync(logPath, 'utf8'))}`);
  } finally {
    fs.closeSync(log);
  }
}

class GvisorSandbox implements PersistentSandbox {
  readonly capabilities: SandboxCapabilities;
  readonly disposed: Promise<void>;
  private ended = false;
  private paused = false;
  private watcher: ChildProcess;
  /** Set while a memory snapshot stops and restores the sandbox: its init ending then is not its end. */
  private cycling = false;
  private endSandbox!: () => void;
  private seq = 0;
  private readonly commands = new Set<GvisorCommand>();
  /** Set while a memory snapshot is taken: new commands wait for it. */
  private snapshotting: Promise<unknown> | null = null;
  private readonly ports: GvisorPorts;

  constructor(
    readonly id: string,
    private readonly deps: GvisorSandboxDeps,
    private readonly shell: string,
    private readonly cgroup: Cgroup,
    private readonly volume: Volume | null,
    private readonly imagePath: string,
    portHelper: boolean,
  ) {
    this.ports = new GvisorPorts(deps.executor.runsc, id, `${deps.uid}:${deps.gid}`, portHelper);
    // Memory snapshots need the files' layer beside the saved processes: only with storage.
    this.capabilities = { pause: true, memorySnapshot: volume !== null, hibernate: true };
    const ended = new Promise<void>((resolve) => (this.endSandbox = resolve));
    this.watcher = this.watch();
    this.disposed = ended.then(async () => {
      this.ended = true;
      for (const command of this.commands) command.sandboxEnded();
      this.ports.close();
      await deps.executor.release(id, cgroup);
      // The disk is unmounted, never removed: its files outlive the processes (removed by removeDisk).
      await volume?.detach().catch(() => {});
    });
  }

  /** `runsc wait` returns when the container's init ends: killed, destroyed, checkpointed, or its sandbox crashed. */
  private watch(): ChildProcess {
    const watcher = this.deps.executor.runsc.spawn(['wait', this.id], ['ignore', 'ignore', 'ignore']);
    const done = (): void => {
      if (!this.cycling) this.endSandbox();
    };
    watcher.once('error', done);
    watcher.once('exit', done);
    return watcher;
  }

  get alive(): boolean {
    return !this.ended;
  }

  private assertAlive(): void {
    if (this.ended) throw new KindlingError('SANDBOX_NOT_RUNNING', `sandbox ${this.id} has ended: start it again to run commands`, { details: { sandbox: this.id } });
  }

  private async runsc(command: string[]): Promise<void> {
    await this.deps.executor.runsc.must(command).catch((error: unknown) => {
      if (this.ended) this.assertAlive();
      throw new KindlingError('EXECUTOR_FAILED', (error as Error).message, { cause: error });
    });
  }

  async exec(request: SandboxCommandRequest): Promise<SandboxCommand> {
    // A `runsc exec` that starts while a checkpoint is taken makes the restore fail: commands wait for the snapshot.
    while (this.snapshotting !== null) await this.snapshotting.catch(() => {});
    this.assertAlive();
    checkCommandRequest(request);
    if (this.paused) await this.resume();
    const pidFile = path.join(this.deps.executor.bundleDir(this.id), `cmd-${++this.seq}.pid`);
    const env = Object.entries(request.env).flatMap(([name, value]) => [`--env=${name}=${value}`]);
    const child = this.deps.executor.runsc.spawn(
      ['exec', `--user=${this.deps.uid}:${this.deps.gid}`, `--internal-pid-file=${pidFile}`, ...env, this.id, this.shell, '-c', LAUNCH, this.shell, request.workdir, ...request.command],
      [request.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    );
    const command = new GvisorCommand(this, child, pidFile);
    this.commands.add(command);
    void command.wait().finally(() => this.commands.delete(command));
    return command;
  }

  async connectPort(port: number, options: PortConnectOptions): Promise<Duplex> {
    this.assertAlive();
    // As for a command: a paused sandbox runs again (a frozen server would not accept).
    if (this.paused) await this.resume();
    return this.ports.connect(port, options);
  }

  get portConnections(): number {
    return this.ports.connections;
  }

  /** SIGKILLs the process `pid` (in the sandbox's pid namespace) and its descendants, from inside the sandbox. */
  async killTree(pid: number): Promise<void> {
    if (this.ended) return;
    if (this.paused) await this.resume().catch(() => {});
    await this.deps.executor.runsc.call(['exec', `--user=${this.deps.uid}:${this.deps.gid}`, this.id, this.shell, '-c', KILL_TREE, this.shell, String(pid)]);
  }

  async pause(): Promise<void> {
    this.assertAlive();
    await this.runsc(['pause', this.id]);
    this.paused = true;
  }

  async resume(): Promise<void> {
    this.assertAlive();
    await this.runsc(['resume', this.id]);
    this.paused = false;
  }

  usage(): ResourceUsage | null {
    if (this.ended) return null;
    const usage = this.cgroup.usage();
    return usage.cpuMs === null && usage.memoryPeakBytes === null ? null : usage;
  }

  async snapshot(snapshotId: string): Promise<{ bytes: number; memory: boolean }> {
    this.assertAlive();
    const volume = this.volume;
    if (volume === null) throw new KindlingError('SNAPSHOTS_UNSUPPORTED', `sandbox ${this.id} keeps its files in memory (tmpfs): nothing to snapshot`, { details: { sandbox: this.id } });
    if (this.capabilities.memorySnapshot) return this.memorySnapshot(volume, snapshotId);
    // Paused while copied, so that the copy is one moment of the files; a paused sandbox stays paused.
    const wasPaused = this.paused;
    if (!wasPaused) await this.pause();
    try {
      return { bytes: await this.deps.snapshotFiles(volume, snapshotId), memory: false };
    } finally {
      if (!wasPaused && !this.ended) await this.resume().catch(() => {});
    }
  }

  /**
   * Files and processes: `runsc checkpoint` stops the sandbox with every process saved (its disk stays mounted), the
   * files are copied as for a files snapshot (nothing runs meanwhile: one moment of both), and the sandbox is restored
   * from that same image, so it goes on where it was (stopped for the checkpoint, the copy and the restore: seconds
   * on a loaded machine, see the bench row gvisor.memory_snapshot). `runsc checkpoint --leave-running` would skip the restore, but hung on this runsc build.
   */
  private async memorySnapshot(volume: Volume, snapshotId: string): Promise<{ bytes: number; memory: boolean }> {
    const taking = this.takeMemorySnapshot(volume, snapshotId);
    this.snapshotting = taking;
    try {
      return await taking;
    } finally {
      this.snapshotting = null;
    }
  }

  /**
   * A process whose stdio are the server's pipes (a command or terminal started through the API, a `runsc exec`) cannot
   * be saved: runsc checkpoints it but its restore fails, and the whole sandbox with it. Commands still running get
   * EXEC_SETTLE_MS to end (short ones racing the request do); then `what` is refused with a clear 409.
   */
  private async settleCommands(what: string): Promise<void> {
    if (this.commands.size === 0) return;
    await Promise.race([Promise.all([...this.commands].map((command) => command.wait())), new Promise((resolve) => setTimeout(resolve, EXEC_SETTLE_MS).unref())]);
    if (this.commands.size === 0) return;
    throw new KindlingError(
      'SANDBOX_COMMANDS_RUNNING',
      `sandbox ${this.id} has ${this.commands.size} command(s) or terminal(s) started through the API still running, and gVisor cannot save a process whose output streams to the server: wait for them to end or kill them (DELETE /v1/sandboxes/${this.id}/commands/ID), then ${what} again; processes they started in the background with their output redirected (e.g. "cmd >/dev/null 2>&1 &") are kept`,
      { details: { sandbox: this.id, commands: this.commands.size } },
    );
  }

  private async takeMemorySnapshot(volume: Volume, snapshotId: string): Promise<{ bytes: number; memory: boolean }> {
    await this.settleCommands('take the snapshot');
    const wasPaused = this.paused;
    if (wasPaused) await this.resume();
    const image = this.deps.memoryImage(snapshotId);
    // Beside the snapshot dir while made (a `.partial` name, removed by the storage's reaper after a crash).
    const partial = `${path.dirname(image)}.${randomBytes(3).toString('hex')}.partial`;
    await fs.promises.mkdir(partial, { recursive: true, mode: 0o700 });
    this.cycling = true;
    let stopped = false;
    let made = false;
    try {
      await this.runsc(['checkpoint', `--image-path=${partial}`, this.id]);
      stopped = true;
      made = true;
      const bytes = await this.deps.snapshotFiles(volume, snapshotId);
      await fs.promises.rename(partial, image);
      await this.deps.executor.runsc.deleteForce(this.id);
      const bundle = this.deps.executor.bundleDir(this.id);
      await runDetached(this.deps.executor, ['restore', '--detach', `--image-path=${image}`, `--bundle=${bundle}`, this.id], path.join(bundle, 'start.log'));
      this.watcher = this.watch();
      return { bytes: bytes + (await sizeOf(image)), memory: true };
    } catch (error) {
      await fs.promises.rm(partial, { recursive: true, force: true });
      // The caller records no snapshot: nothing of it may stay on disk.
      if (made) await this.deps.removeSnapshot(snapshotId).catch(() => {});
      // Stopped and not restored: the sandbox has ended (its files stay on its disk).
      if (stopped) this.endSandbox();
      if (error instanceof KindlingError) throw error;
      throw new KindlingError('EXECUTOR_FAILED', `the memory snapshot failed: ${(error as Error).message}`, { cause: error });
    } finally {
      this.cycling = false;
      if (wasPaused && !this.ended) await this.pause().catch(() => {});
    }
  }

  async hibernate(): Promise<{ bytes: number }> {
    this.assertAlive();
    await this.settleCommands('hibernate it');
    if (this.paused) await this.resume();
    const fresh = `${this.imagePath}.new`;
    await fs.promises.rm(fresh, { recursive: true, force: true });
    await fs.promises.mkdir(fresh, { recursive: true, mode: 0o700 });
    try {
      await this.runsc(['checkpoint', `--image-path=${fresh}`, this.id]);
      await this.disposed;
      // Replaced only once complete: a failed checkpoint leaves an earlier image as it was.
      await fs.promises.rm(this.imagePath, { recursive: true, force: true });
      await fs.promises.rename(fresh, this.imagePath);
    } catch (error) {
      await fs.promises.rm(fresh, { recursive: true, force: true });
      throw error;
    }
    return { bytes: await sizeOf(this.imagePath) };
  }

  async destroy(): Promise<void> {
    this.cycling = false;
    if (!this.ended) await this.deps.executor.runsc.deleteForce(this.id);
    // The cgroup kill catches a sandbox whose runsc state was lost.
    if (!this.ended) await this.cgroup.kill().catch(() => {});
    this.watcher.kill('SIGKILL');
    await this.disposed;
  }
}

class GvisorCommand implements SandboxCommand {
  readonly stdin: Writable | null;
  readonly stdout: Readable;
  readonly stderr: Readable;
  private readonly done: Promise<{ exitCode: number; signal: string | null }>;
  private killed = false;
  private finished = false;
  private nsPid: number | null = null;

  constructor(
    private readonly sandbox: GvisorSandbox,
    private readonly child: ChildProcess,
    private readonly pidFile: string,
  ) {
    this.stdout = child.stdout!;
    this.stderr = child.stderr!;
    this.stdin = child.stdin ?? null;
    this.stdin?.on('error', () => {});
    // 'exit', not 'close': a background child of the command may hold its output open for as long as it lives.
    this.done = new Promise<number>((resolve) => {
      child.once('error', () => resolve(1));
      child.once('exit', (code: number | null) => resolve(code ?? 137));
    }).then(async (code) => {
      await Promise.all([streamEnded(this.stdout, OUTPUT_GRACE_MS), streamEnded(this.stderr, OUTPUT_GRACE_MS)]);
      if (!this.stdout.readableEnded) this.stdout.destroy();
      if (!this.stderr.readableEnded) this.stderr.destroy();
      this.finished = true;
      void fs.promises.rm(this.pidFile, { force: true });
      const exitCode = this.killed ? 137 : code;
      return { exitCode, signal: exitCode === 137 && this.killed ? 'SIGKILL' : signalOfExitCode(exitCode) };
    });
  }

  wait(): Promise<{ exitCode: number; signal: string | null }> {
    return this.done;
  }

  /** The command's pid in the sandbox, from runsc's pid file (written once the process started). */
  async pid(): Promise<number | null> {
    while (this.nsPid === null) {
      try {
        const text = fs.readFileSync(this.pidFile, 'utf8').trim();
        if (/^\d+$/.test(text)) this.nsPid = Number(text);
      } catch {
        // not written yet
      }
      if (this.nsPid !== null || this.finished) break;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    return this.nsPid;
  }

  kill(): void {
    if (this.killed || this.finished) return;
    this.killed = true;
    void (async () => {
      const pid = await this.pid();
      if (pid !== null) await this.sandbox.killTree(pid);
      // runsc exec then sees its process gone and exits; a runsc that never started its process is ended here.
      this.child.kill('SIGKILL');
    })();
  }

  /** The sandbox ended: runsc exec ends with it. */
  sandboxEnded(): void {
    this.child.kill('SIGKILL');
  }
}


/** The line of a runsc log that says what went wrong (not the Go stack trace after it), at most 300 characters. */
export function runscReason(log: string): string {
  const lines = log.split('\n').map((line) => line.trim()).filter((line) => line !== '');
  const reason = lines.find((line) => /error|fail|panic|cannot|invalid|denied/i.test(line) && !/^(goroutine|gvisor\.dev|\S+\.go:\d+|created by|reflect\/)/.test(line)) ?? lines[0] ?? 'no output';
  return reason.length > 300 ? `${reason.slice(0, 300)}…` : reason;
}

async function sizeOf(dir: string): Promise<number> {
  let bytes = 0;
  for (const name of await fs.promises.readdir(dir)) {
    const stat = await fs.promises.lstat(path.join(dir, name));
    bytes += stat.isDirectory() ? await sizeOf(path.join(dir, name)) : stat.size;
  }
  return bytes;
}
