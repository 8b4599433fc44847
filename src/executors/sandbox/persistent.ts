/**
 * Persistent sandboxes on the sandbox executor (bubblewrap): one long-lived bwrap sandbox per persistent sandbox,
 * made by the executor's own `start()` (so the same fresh cgroup with memory/cpu/pids limits, seccomp filter, dropped
 * uid and capabilities, `network: none`, tmpfs /tmp and work dir bounded by `diskMb`, labels and reaping), whose main
 * process is a tiny supervisor instead of a user command.
 *
 * How commands get inside: the supervisor (POSIX sh, the image's own shell) reads one line per command from its stdin
 * (a pipe held by the server) and sources `<dir>/run` in a background subshell with stdin/stdout/stderr redirected to named
 * pipes in the command's directory; it reports the command's pid and, later, its exit status on its stdout. The
 * directory lives under the sandbox's agent dir, bound read-only at /.kindling-agent (FIFOs need no write access;
 * the run script is written by the server, root:sandbox-gid 0440). Every command is thus a descendant of the
 * supervisor: it inherits the sandbox's namespaces, cgroup, seccomp filter, no-new-privs and uid by construction,
 * where `nsenter` would have to rebuild each of them (and could not apply the seccomp filter at all). Processes a
 * command leaves in the background keep running in the sandbox, and files stay in its tmpfs, between commands.
 *
 * Killing one command: the supervisor reports the command's pid in the sandbox's pid namespace; the server maps it to
 * a host pid through /proc/PID/status (NSpid) among the sandbox cgroup's pids and SIGKILLs that process and its
 * descendants (by parent pid), repeating until none is left. The sandbox and its other processes keep running.
 *
 * Where native/kindling-supervisor is built (the default), the supervisor is that program instead (bound read-only at
 * SUPERVISOR_MOUNT, statically linked), with the same line protocol: it forks the command itself, puts every signal
 * back to its default first (a background job of sh runs with SIGINT and SIGQUIT ignored, which its program inherits:
 * no KeyboardInterrupt in Python, no `kill -INT`), and reads the command from `<dir>/run` as NUL-separated fields
 * (runRecord) rather than sourcing a script: no sh forked and no script parsed per command.
 *
 * Pause/resume: the cgroup freezer (v1 freezer.state, v2 cgroup.freeze) of the sandbox's cgroup.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { chmod, chown, mkdir, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PassThrough, type Writable } from 'node:stream';
import { KindlingError } from '../../core/errors.js';
import type { RunSpec } from '../../core/types.js';
import type { BodyPump, PersistentSandbox, PersistentSandboxOptions, PortConnectOptions, ResourceUsage, SandboxCapabilities, SandboxCommand, SandboxCommandRequest, StartOptions } from '../executor.js';
import type { Duplex, Readable } from 'node:stream';
import { SUPERVISOR_MOUNT } from './bwrap-args.js';
import { DirectFiles, type HostBind } from './direct-files.js';
import { SandboxPorts } from './ports.js';
import { AGENT_MOUNT } from '../../../agent/files.js';
import { makeFifos, openFifoReader, openFifoWriter, type FifoReader } from '../shared/fifo.js';
import { killUntilGone, processExited, shellQuote } from '../shared/process.js';
import type { Cgroup } from '../shared/cgroups.js';
import type { SandboxExecution } from './execution.js';
import type { Volume } from './storage.js';
import { removeFlatDir } from './run-dirs.js';
import { checkCommandRequest } from '../shared/command-request.js';
import { streamEnded } from '../shared/streams.js';

/**
 * The supervisor: "r" once ready; per command line `ID STDIN(0|1)`: "p ID PID" when started, "x ID STATUS" when the
 * main process exited. The background group's own stdout is the status pipe; the command's are its FIFOs.
 */
const SUPERVISOR = [
  `A=${AGENT_MOUNT}`,
  'echo r',
  'while read -r id si; do',
  '  d="$A/$id"',
  '  if [ "$si" = 1 ]; then i="$d/in"; else i=/dev/null; fi',
  // The run script is sourced in a subshell (a fork), not run by a new shell (a fork and an exec): one exec less per
  // command (about 4.5 ms of a command's 20 here). Its variables are not exported: the command's env is the script's.
  '  { ( . "$d/run" ) <"$i" >"$d/out" 2>"$d/err"; echo "x $id $?"; } &',
  '  echo "p $id $!"',
  'done',
].join('\n');

/** dist/native/kindling-supervisor, built by scripts/build-native.sh (dist/src/executors/sandbox -> dist/native). */
export const DEFAULT_SUPERVISOR_PATH = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'native', 'kindling-supervisor');

/** A command for kindling-supervisor: `WORKDIR ENVC NAME=VALUE... ARGC ARG...`, each field ending with a NUL. */
export function runRecord(workdir: string, env: Record<string, string>, command: readonly string[]): string {
  const entries = Object.entries(env).map(([name, value]) => `${name}=${value}`);
  return [workdir, String(entries.length), ...entries, String(command.length), ...command].map((field) => `${field}\0`).join('');
}

const MAX_STATUS_LINE = 256;
/** After a command's main process exited, output its background children still hold open is not waited for longer. */
const OUTPUT_GRACE_MS = 100;
/** Command dirs made per mkfifo run, and the count below which the next batch is made. */
const SLOTS_BATCH = 8;
const SLOTS_LOW = 3;

export interface PersistentDeps {
  start(spec: RunSpec, options?: StartOptions): Promise<SandboxExecution>;
  openCgroup(name: string): Cgroup;
  /** Per-executor directory for the sandboxes' command dirs (root:gid 0710), searchable by the sandbox uid. */
  agentsDir: string;
  sandboxUid: number;
  sandboxGid: number;
  /** The image's shell (layout.shell); null: the image has none, and cannot host a persistent sandbox. */
  shell: string | null;
  /** native/kindling-supervisor on the host; null: the supervisor is the sh script SUPERVISOR. */
  supervisorPath: string | null;
  readyTimeoutMs?: number;
  /** The sandbox's disk (see storage.ts): mounted before the start, bound at the work dir and /tmp. */
  storage?: {
    attach(sandboxId: string, diskMb: number, fromSnapshot: string | null): Promise<Volume>;
    snapshot(volume: Volume, snapshotId: string): Promise<number>;
  };
}

export async function startPersistentSandbox(deps: PersistentDeps, spec: RunSpec, options: PersistentSandboxOptions = {}): Promise<BwrapPersistentSandbox> {
  if (deps.shell === null) {
    throw new KindlingError('VALIDATION_FAILED', `image ${spec.image} has no shell: a persistent sandbox needs /bin/sh in its image`, { details: { field: 'image', executor: 'sandbox' } });
  }
  const dir = join(deps.agentsDir, spec.id);
  await mkdir(deps.agentsDir, { recursive: true, mode: 0o710 });
  await mkdir(dir, { mode: 0o700 });
  await chown(dir, 0, deps.sandboxGid);
  await chmod(dir, 0o710);
  let execution: SandboxExecution | null = null;
  let volume: Volume | null = null;
  try {
    const { storage: wanted, ...startOptions } = options;
    if (wanted !== undefined && deps.storage !== undefined) {
      volume = await deps.storage.attach(spec.id, spec.limits.diskMb, wanted.fromSnapshot);
    }
    const rwBinds = volume === null ? [] : [{ source: volume.work, target: spec.workdir }, { source: volume.tmp, target: '/tmp' }];
    const supervisor =
      deps.supervisorPath === null
        ? { command: [deps.shell, '-c', SUPERVISOR, deps.shell], roBinds: spec.roBinds ?? [] }
        : { command: [SUPERVISOR_MOUNT, AGENT_MOUNT], roBinds: [...(spec.roBinds ?? []), { source: deps.supervisorPath, target: SUPERVISOR_MOUNT }] };
    execution = await deps.start({ ...spec, ...supervisor, stdin: true, files: [], agentDir: dir, rwBinds }, startOptions);
    const stored = volume === null || deps.storage === undefined ? null : { volume, snapshot: deps.storage.snapshot };
    const sandbox = new BwrapPersistentSandbox(spec.id, execution, deps.openCgroup(execution.id), dir, deps.sandboxGid, stored, deps.supervisorPath !== null);
    if (volume !== null) sandbox.files = { direct: new DirectFiles(hostBinds(spec.workdir, volume), deps.sandboxUid, deps.sandboxGid), workdir: spec.workdir };
    await Promise.all([sandbox.ready(deps.readyTimeoutMs ?? 10_000), sandbox.warm()]);
    // Ports: the network namespace is pinned now, before any of the tenant's code ran (see ports.ts).
    sandbox.ports = SandboxPorts.open(spec.id, deps.openCgroup(execution.id));
    return sandbox;
  } catch (error) {
    // A half-made sandbox goes before the error is rethrown (the original error wins).
    if (execution !== null) {
      execution.kill();
      await execution.disposed.catch(() => {});
    }
    await volume?.detach().catch(() => {});
    await rm(dir, { recursive: true, force: true }).catch(() => {});
    if (error instanceof KindlingError) throw error;
    throw new KindlingError('EXECUTOR_FAILED', `the persistent sandbox did not start: ${(error as Error).message}`, { cause: error });
  }
}

interface PendingCommand {
  pid: (nsPid: number) => void;
  exit: (status: number) => void;
}

export class BwrapPersistentSandbox implements PersistentSandbox {
  readonly capabilities: SandboxCapabilities = { pause: true, memorySnapshot: false, hibernate: false };
  readonly disposed: Promise<void>;
  private ended = false;
  private readonly control: Writable;
  private readonly pending = new Map<string, PendingCommand>();
  private readonly readyLine: Promise<void>;
  private buffered = '';
  private tail = '';
  private seq = 0;
  private readonly slots: string[] = [];
  private refilling: Promise<void> | null = null;
  /** Paused by pause() (a snapshot's own freeze is not counted). */
  private frozen = false;
  /** Set once the supervisor is ready (ports.ts); null: ports are unavailable for this sandbox. */
  ports: SandboxPorts | null = null;
  /** Its files written and read on its disk on the host (direct-files.ts); null: no disk there (tmpfs only). */
  files: { direct: DirectFiles; workdir: string } | null = null;
  /** A pooled sandbox's env (adopt): its supervisor started without one, so every command exports it first. */
  private baseEnv: Record<string, string> = {};

  constructor(
    public id: string,
    private readonly execution: SandboxExecution,
    private readonly cgroup: Cgroup,
    private readonly dir: string,
    private readonly gid: number,
    private stored: { volume: Volume; snapshot: (volume: Volume, snapshotId: string) => Promise<number> } | null = null,
    /** The supervisor is native/kindling-supervisor: a command's run file is a runRecord, not a script. */
    private readonly nativeSupervisor = false,
  ) {
    this.control = execution.stdin!;
    this.control.on('error', () => {});
    let onReady!: () => void;
    this.readyLine = new Promise((resolve) => (onReady = resolve));
    execution.stdout.setEncoding('utf8');
    execution.stdout.on('data', (chunk: string) => {
      this.buffered += chunk;
      let at: number;
      while ((at = this.buffered.indexOf('\n')) >= 0) {
        const line = this.buffered.slice(0, at);
        this.buffered = this.buffered.slice(at + 1);
        if (line === 'r') onReady();
        const [kind, cid, value] = line.split(' ');
        const waiting = cid === undefined ? undefined : this.pending.get(cid);
        if (waiting === undefined) continue;
        if (kind === 'p') waiting.pid(Number(value));
        else if (kind === 'x') waiting.exit(Number(value));
      }
      // The supervisor's lines are short; anything else came from a process of the sandbox writing to the
      // supervisor's stdout (same uid: /proc/PID/fd/1). It can only confuse its own sandbox, and is never buffered.
      if (this.buffered.length > MAX_STATUS_LINE) this.buffered = '';
    });
    execution.stderr.setEncoding('utf8');
    execution.stderr.on('data', (chunk: string) => (this.tail = (this.tail + chunk).slice(-2000)));
    const exited = execution.wait().then(
      () => undefined,
      () => undefined,
    );
    this.disposed = exited.then(async () => {
      this.ended = true;
      // Commands still waiting end as killed: the sandbox is gone.
      for (const waiting of this.pending.values()) waiting.exit(137);
      this.pending.clear();
      this.ports?.close();
      await execution.disposed.catch(() => {});
      // The disk is unmounted, never removed: its files outlive the processes (removed by removeDisk).
      await stored?.volume.detach().catch(() => {});
      await rm(this.dir, { recursive: true, force: true }).catch(() => {});
    });
  }

  /**
   * A sandbox started ahead of demand (persistent-pool.ts), which no tenant's code has run in, becomes `id`'s: its
   * env (exported by every command's script), its disk under its new name, its wall-clock backstop, and its ports
   * pinned again under its id (still before any of the tenant's code runs). Its cgroup limits are the caller's.
   */
  adopt(id: string, env: Record<string, string>, volume: Volume | null, backstopMs: number): void {
    this.assertAlive();
    this.id = id;
    this.baseEnv = { ...env };
    if (volume !== null && this.stored !== null) this.stored = { ...this.stored, volume };
    if (volume !== null) this.files?.direct.rebind(hostBinds(this.files.workdir, volume));
    this.execution.rearm(backstopMs);
    this.ports?.close();
    this.ports = SandboxPorts.open(id, this.cgroup);
  }

  /** The cgroup of the sandbox (a pooled one's limits are set when it is taken). */
  get sandboxCgroup(): Cgroup {
    return this.cgroup;
  }

  /* -- storage: snapshots ------------------------------------------------------------------------------------------ */
  async snapshot(snapshotId: string): Promise<{ bytes: number }> {
    this.assertAlive();
    if (this.stored === null) throw new KindlingError('SNAPSHOTS_UNSUPPORTED', `sandbox ${this.id} keeps its files in memory (tmpfs): nothing to snapshot`, { details: { sandbox: this.id } });
    const { volume, snapshot } = this.stored;
    // Frozen while copied, so that the copy is one moment of the files; a paused sandbox stays paused.
    const wasFrozen = this.frozen;
    if (!wasFrozen) await this.cgroup.freeze(true);
    try {
      return { bytes: await snapshot(volume, snapshotId) };
    } finally {
      if (!wasFrozen && !this.ended) await this.cgroup.freeze(false).catch(() => {});
    }
  }

  get alive(): boolean {
    return !this.ended;
  }

  async ready(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const outcome = await Promise.race([
      this.readyLine.then(() => 'ready' as const),
      this.disposed.then(() => 'ended' as const),
      new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), timeoutMs))),
    ]);
    clearTimeout(timer);
    if (outcome === 'ready') return;
    if (outcome === 'timeout') throw new KindlingError('SANDBOX_START_TIMEOUT', `the persistent sandbox's supervisor did not start within ${timeoutMs} ms; retry`, { retryAfterSeconds: 1 });
    throw new KindlingError('EXECUTOR_FAILED', `the persistent sandbox ended while starting${this.tail ? `: ${this.tail.trim().slice(-500)}` : ''}`);
  }

  /** The first batch of command dirs, made while the sandbox starts. */
  warm(): Promise<void> {
    return this.refill();
  }

  usage(): ResourceUsage | null {
    if (this.ended) return null;
    const usage = this.cgroup.usage();
    return usage.cpuMs === null && usage.memoryPeakBytes === null ? null : usage;
  }

  async pause(): Promise<void> {
    this.assertAlive();
    await this.cgroup.freeze(true);
    this.frozen = true;
  }

  async resume(): Promise<void> {
    this.assertAlive();
    await this.cgroup.freeze(false);
    this.frozen = false;
  }

  async destroy(): Promise<void> {
    this.execution.kill();
    await this.disposed;
  }

  connectPort(port: number, options: PortConnectOptions): Promise<Duplex> {
    this.assertAlive();
    if (this.ports === null) return Promise.reject(new KindlingError('EXECUTOR_FAILED', `the network namespace of sandbox ${this.id} could not be opened: its ports are unreachable`));
    return this.ports.connect(port, options);
  }

  writeFileDirect(path: string, body: Readable | BodyPump, diskMb: number): Promise<{ size: number } | null> {
    this.assertAlive();
    return this.files === null ? Promise.resolve(null) : this.files.direct.write(path, body, diskMb);
  }

  readFileDirect(path: string): Promise<Readable | null> {
    this.assertAlive();
    return this.files === null ? Promise.resolve(null) : this.files.direct.read(path);
  }

  get portConnections(): number {
    return this.ports?.connections ?? 0;
  }

  async exec(request: SandboxCommandRequest): Promise<SandboxCommand> {
    this.assertAlive();
    checkCommandRequest(request);
    const cid = await this.takeSlot();
    const cdir = join(this.dir, cid);
    let out: FifoReader | null = null;
    let err: FifoReader | null = null;
    try {
      const env = { ...this.baseEnv, ...request.env };
      const script = this.nativeSupervisor
        ? runRecord(request.workdir, env, request.command)
        : [
            `cd ${shellQuote(request.workdir)} || exit 126`,
            ...Object.entries(env).map(([name, value]) => `export ${name}=${shellQuote(value)}`),
            `exec ${request.command.map(shellQuote).join(' ')}`,
            '',
          ].join('\n');
      // Synchronous: a few bytes on the run dir's tmpfs (microseconds), where two trips through libuv's thread pool
      // cost a command 1 to 3 ms of its round trip here.
      fs.writeFileSync(join(cdir, 'run'), script, { mode: 0o440 });
      fs.chownSync(join(cdir, 'run'), 0, this.gid);
      out = openFifoReader(join(cdir, 'out'));
      err = openFifoReader(join(cdir, 'err'));
    } catch (error) {
      out?.stream.destroy();
      err?.stream.destroy();
      await rm(cdir, { recursive: true, force: true });
      throw new KindlingError('EXECUTOR_FAILED', `could not prepare the command: ${(error as Error).message}`, { cause: error });
    }
    const command = new BwrapCommand(this, cid, cdir, out, err);
    this.pending.set(cid, { pid: (nsPid) => command.started(nsPid), exit: (status) => command.exited(status) });
    void command.done.finally(() => this.pending.delete(cid));
    this.control.write(`${cid} ${request.stdin ? 1 : 0}\n`);
    if (request.stdin) {
      try {
        command.stdinStream = await openFifoWriter(join(cdir, 'in'), { timeoutMs: 10_000 });
        command.stdinStream.on('error', () => {});
      } catch (error) {
        command.kill();
        throw new KindlingError('EXECUTOR_FAILED', `the command did not open its stdin: ${(error as Error).message}`, { cause: error });
      }
    }
    return command;
  }

  /**
   * SIGKILLs the process `nsPid` (in the sandbox's pid namespace) and all of its descendants; repeats until gone. The
   * tree is read and signalled while the sandbox is frozen: running, a child forked between the read and the kill
   * would be handed to the supervisor when its parent dies, out of the tree, and survive. Every pid signalled is
   * followed until it is gone (a frozen process dies once thawed). A paused sandbox stays paused.
   */
  async killTree(nsPid: number): Promise<void> {
    const wasFrozen = this.frozen;
    const doomed = new Set<number>();
    const signal = (): number[] => {
      for (const pid of this.treeOf(nsPid)) doomed.add(pid);
      // Only pids still in this sandbox's cgroup: a pid that died may be reused by any process of the host.
      const inSandbox = new Set(this.cgroup.pids());
      return [...doomed].filter((pid) => inSandbox.has(pid) && !processExited(pid));
    };
    if (!wasFrozen) await this.cgroup.freeze(true);
    try {
      for (const pid of signal()) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone already
        }
      }
    } finally {
      if (!wasFrozen && !this.ended) await this.cgroup.freeze(false).catch(() => {});
    }
    await killUntilGone(signal);
  }

  /** Host pids of `nsPid` and its descendants that are alive (not zombies), among this sandbox's cgroup. */
  private treeOf(nsPid: number): number[] {
    const parents = new Map<number, number>();
    let root: number | null = null;
    for (const pid of this.cgroup.pids()) {
      try {
        const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
        if (/^State:\s+Z/m.test(status)) continue;
        const ppid = Number(/^PPid:\s+(\d+)/m.exec(status)?.[1]);
        parents.set(pid, ppid);
        const ns = /^NSpid:\s+([\d\s]+)$/m.exec(status)?.[1]?.trim().split(/\s+/);
        if (ns !== undefined && Number(ns[ns.length - 1]) === nsPid && ns.length > 1) root = pid;
      } catch {
        // exited meanwhile
      }
    }
    if (root === null) return [];
    const tree = [root];
    for (let grew = true; grew; ) {
      grew = false;
      for (const [pid, ppid] of parents) {
        if (!tree.includes(pid) && tree.includes(ppid)) {
          tree.push(pid);
          grew = true;
        }
      }
    }
    return tree;
  }

  /**
   * A fresh command dir with its FIFOs (never reused: a background process may still hold an old one open). Made in
   * batches ahead of use, so that the mkfifo process is off the command's path.
   */
  private async takeSlot(): Promise<string> {
    while (this.slots.length === 0) await this.refill();
    const slot = this.slots.shift()!;
    if (this.slots.length < SLOTS_LOW) void this.refill().catch(() => {});
    return slot;
  }

  private refill(): Promise<void> {
    this.refilling ??= (async () => {
      try {
        const ids = Array.from({ length: SLOTS_BATCH }, () => `c${(this.seq++).toString(36)}${randomBytes(3).toString('hex')}`);
        await Promise.all(ids.map((cid) => mkdir(join(this.dir, cid), { mode: 0o700 })));
        await makeFifos(ids.flatMap((cid) => ['in', 'out', 'err'].map((name) => join(this.dir, cid, name))), { mode: 0o660, gid: this.gid });
        await Promise.all(ids.map(async (cid) => {
          await chown(join(this.dir, cid), 0, this.gid);
          await chmod(join(this.dir, cid), 0o710);
        }));
        this.slots.push(...ids);
      } finally {
        this.refilling = null;
      }
    })();
    return this.refilling;
  }

  private assertAlive(): void {
    if (this.ended) throw new KindlingError('SANDBOX_NOT_RUNNING', `sandbox ${this.id} has ended`, { details: { sandbox: this.id } });
  }
}

class BwrapCommand implements SandboxCommand {
  stdinStream: Writable | null = null;
  readonly stdout: PassThrough;
  readonly stderr: PassThrough;
  readonly done: Promise<{ exitCode: number; signal: string | null }>;
  private nsPid: number | null = null;
  private killed = false;
  private finished = false;
  private resolveExit!: (status: number) => void;
  private readonly pidKnown: Promise<number>;
  private resolvePid!: (nsPid: number) => void;

  constructor(
    private readonly sandbox: BwrapPersistentSandbox,
    readonly cid: string,
    private readonly cdir: string,
    private readonly out: FifoReader,
    private readonly err: FifoReader,
  ) {
    // Pass-throughs: the FIFO sockets are closed by this class once the command ended, whatever the consumer does.
    this.stdout = out.stream.pipe(new PassThrough());
    this.stderr = err.stream.pipe(new PassThrough());
    out.stream.on('error', () => {});
    err.stream.on('error', () => {});
    this.pidKnown = new Promise((resolve) => (this.resolvePid = resolve));
    const exited = new Promise<number>((resolve) => (this.resolveExit = resolve));
    this.done = exited.then(async (status) => {
      // The main process has exited: its output is in the pipes. Background children may hold them open for ever, so
      // their end is awaited only briefly.
      this.out.releaseKeeper();
      this.err.releaseKeeper();
      await Promise.all([this.out.stream, this.err.stream].map((stream) => streamEnded(stream, OUTPUT_GRACE_MS)));
      for (const [fifo, through] of [[this.out.stream, this.stdout], [this.err.stream, this.stderr]] as const) {
        fifo.unpipe();
        fifo.destroy();
        if (!through.writableEnded) through.end();
      }
      this.stdinStream?.destroy();
      // Its three FIFOs and run file, synchronously on the run dirs' tmpfs: a recursive rm held the event loop about
      // 1 ms per command through its thread-pool trips, just as a client's next command arrives.
      void removeFlatDir(this.cdir);
      this.finished = true;
      const exitCode = this.killed ? 137 : status;
      return { exitCode, signal: exitCode === 137 && this.killed ? 'SIGKILL' : exitCode > 128 && exitCode < 160 ? signalOf(exitCode - 128) : null };
    });
  }

  get stdin(): Writable | null {
    return this.stdinStream;
  }

  started(nsPid: number): void {
    this.nsPid = nsPid;
    this.resolvePid(nsPid);
    // Killed before it was known to have started (see kill()): a late start is killed at once.
    if (this.killed) void this.sandbox.killTree(nsPid);
  }

  exited(status: number): void {
    this.resolveExit(status);
  }

  pid(): Promise<number | null> {
    return this.nsPid !== null ? Promise.resolve(this.nsPid) : Promise.race([this.pidKnown, this.done.then(() => this.nsPid)]);
  }

  wait(): Promise<{ exitCode: number; signal: string | null }> {
    return this.done;
  }

  kill(): void {
    if (this.killed || this.finished) return;
    this.killed = true;
    void (async () => {
      // The supervisor reports the pid once it forked; one that cannot fork (the sandbox's pids are used up) never
      // does, and a timeout must still end the command: after a bounded wait it counts as killed, and a start that
      // comes later is killed by started().
      const unknown = new Promise<null>((resolve) => setTimeout(resolve, KILL_PID_WAIT_MS, null).unref());
      const nsPid = this.nsPid ?? (await Promise.race([this.pidKnown, this.done.then(() => null), unknown]));
      if (nsPid !== null) await this.sandbox.killTree(nsPid);
      // The background group that would have reported the status is gone too.
      this.resolveExit(137);
    })();
  }
}


/** The host directories bound into the sandbox (its disk's work dir and /tmp), as direct-files.ts maps paths. */
function hostBinds(workdir: string, volume: Volume): HostBind[] {
  // A work dir that overlaps /tmp (one bound over the other): left to commands, which see the mounts as they are.
  if (workdir === '/' || workdir === '/tmp' || workdir.startsWith('/tmp/') || '/tmp'.startsWith(`${workdir}/`)) return [];
  return [{ target: workdir, source: volume.work }, { target: '/tmp', source: volume.tmp }];
}

/** How long a kill waits for the pid of a command whose start was not reported yet. */
const KILL_PID_WAIT_MS = 2000;

function signalOf(n: number): string | null {
  const names: Record<number, string> = { 1: 'SIGHUP', 2: 'SIGINT', 6: 'SIGABRT', 9: 'SIGKILL', 11: 'SIGSEGV', 13: 'SIGPIPE', 15: 'SIGTERM' };
  return names[n] ?? null;
}
