/**
 * The native sandbox executor (`--executor sandbox`): bubblewrap + a fresh cgroup + a seccomp filter per execution.
 *
 * A "launcher" is prepared first, one process image after another in the same pid:
 *   node --spawn--> /bin/sh (root: writes its pid into a fresh cgroup's cgroup.procs files, says "R" on fd 4)
 *        --exec--> setpriv (drops to the sandbox uid/gid, no groups, no caps, no-new-privs, parent-death SIGKILL)
 *        --exec--> /bin/sh -s (unprivileged, reads one command line from fd 5)
 * and an execution then sends it `exec bwrap ...` (new user/pid/mount/ipc/uts/cgroup/net namespaces, caps dropped,
 * nested user namespaces disabled, seccomp from fd 3, status JSON on fd 4) with the limits written to its cgroup.
 *
 * Why launchers: moving a process into a cgroup waits for an RCU grace period whenever no migration happened in the
 * last few ms (measured here: 0.05 ms back-to-back, 5-15 ms after 20 ms idle), which alone would double a cold start.
 * A small pool of launchers (`prewarm`, default 2) takes that, the node fork and two execs off the request path;
 * every execution still gets its own fresh cgroup and a fresh sandbox, never a reused one. With the pool empty the
 * same launcher is spawned on demand (`coldStart: true`).
 *
 * Descriptors the server inherited without close-on-exec are replaced by /dev/null in launchers, so nothing of the
 * server leaks into sandboxes; the environment is exactly `spec.env`.
 */
import { execFile, spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import * as path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { promisify } from 'node:util';
import { KindlingError } from '../../core/errors.js';
import type { RunSpec } from '../../core/types.js';
import type {
  Execution,
  Executor,
  ExecutorStatus,
  ExitInfo,
  PersistentSandbox,
  ResourceUsage,
  ReapReport,
  StartOptions,
  WarmSandbox,
} from '../executor.js';
import { AGENT_MOUNT } from '../../../agent/files.js';
import { startAgentSandbox } from '../shared/agent-sandbox.js';
import { startPersistentSandbox } from './persistent.js';
import { shellQuote } from '../shared/launch-script.js';
import { PrewarmPool } from '../shared/prewarm-pool.js';
import { assertSafeName, createCgroupDriver, type Cgroup, type CgroupDriver, type CgroupLimits } from './cgroups.js';
import { listBuilt, planWorkdir, readLayout, shortImageName, type RootfsLayout, type WorkdirPlan } from './rootfs.js';
import { buildSandboxFilter } from './seccomp.js';
import { PrivateMounts } from './private-mounts.js';
import { SANDBOX_CORE_LIMIT } from '../shared/syscall-policy.js';
import { EgressFirewall, ownerChainPrefix, removeChains } from '../../network/firewall.js';
import { NetnsPool, type EgressNetns } from '../../network/netns.js';
import type { EgressPolicy } from '../../network/policy.js';

const execFileAsync = promisify(execFile);

/** The subset of pino this executor uses. */
export interface SandboxLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface SandboxExecutorOptions {
  /** Holds `${short}/rootfs` (+ `recipe.json`) per runtime image, e.g. /var/lib/kindling/images. */
  imagesDir: string;
  /**
   * Per-server scratch directory: `sandbox/runs/<execution>/` holds the /.kindling files of each execution while it
   * runs (bound read-only). Every ancestor must be searchable (o+x) by the sandbox uid. All writable space inside
   * sandboxes is tmpfs; nothing else is written here.
   */
  stateDir: string;
  /** Names this server's data dir; cgroups live under `kindling/<ownerId>/` and `reap()` only touches those. */
  ownerId: string;
  instanceId: string;
  /** Host uid/gid the sandboxed process runs as. Default 65534 (nobody/nogroup). Never 0. */
  sandboxUid?: number;
  sandboxGid?: number;
  bwrapPath?: string;
  setprivPath?: string;
  /** util-linux prlimit: sets RLIMIT_CORE of the launcher (see SANDBOX_CORE_LIMIT). Default /usr/bin/prlimit. */
  prlimitPath?: string;
  shPath?: string;
  /** cgroupfs mount point. Default /sys/fs/cgroup; v1 or v2 is detected there. */
  cgroupMount?: string;
  /** Directory under each cgroup hierarchy root. Default `kindling`. */
  cgroupParent?: string;
  /** Hostname inside sandboxes. Default `kindling`. */
  hostname?: string;
  /** Launchers (fresh cgroup, privileges dropped, waiting for a command) kept ready. Default 2; 0 disables. */
  prewarm?: number;
  /** Idle launchers are dropped after this long without a start. Default 10 min. */
  prewarmIdleTtlMs?: number;
  /**
   * The executor's own wall-clock backstop fires at `limits.timeoutMs` plus this. The caller (the orchestrator) is
   * expected to kill() at `timeoutMs` itself and report `timedOut`; the backstop only guarantees the limit holds for
   * any caller, without racing the caller's timer. Default 1000.
   */
  timeoutGraceMs?: number;
  logger?: SandboxLogger;
  /**
   * Enables `network: "egress"`: each such execution gets its own network namespace with a veth pair to the host,
   * NAT out, and an iptables filter built from `policy` (see src/network/). Without it egress is UNSUPPORTED_NETWORK.
   */
  egress?: { policy: EgressPolicy; supernet?: string; nsenterPath?: string };
}

/** `ExitInfo` plus whether the executor's own wall-clock backstop (limits.timeoutMs + grace) killed the tree. */
export interface SandboxExitInfo extends ExitInfo {
  timedOut: boolean;
}

export interface SandboxExecution extends Execution {
  readonly id: string;
  /** Host pid of the launcher/bwrap monitor process. */
  readonly pid: number | undefined;
  wait(): Promise<SandboxExitInfo>;
}

/**
 * Run by /bin/sh as root: join every cgroup given, report readiness on the status fd, then become the unprivileged
 * shell that reads the command line from fd 5 (the caller's stdin kept on fd 6).
 */
const PREPARE = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; echo R >&4; exec "$@" 6<&0 0<&5 5<&-';
const LAUNCHER_CGROUP_FAILED = 125;
/**
 * bwrap's monitor lives in the cgroup too (outside the sandbox's pid namespace). Its pid-1 init counts against
 * `limits.pids`, so the sandbox never shows more than `pids` processes in its /proc.
 */
const PIDS_OVERHEAD = 1;
/**
 * The command is exec'd by the image's sh so that a missing or non-executable command ends as exit 127/126 with the
 * shell's message on stderr, as in Docker, instead of bwrap's exit 1.
 */
const EXEC_SHIM = 'exec "$@"';
const FD_SECCOMP = 3;
const FD_STATUS = 4;
const FD_SCRIPT = 5;
/**
 * bwrap reads its arguments (NUL-separated) from this descriptor (`--args`): they hold the execution's environment
 * values and host paths, and a process's argv is readable by every user of the host (/proc/PID/cmdline, `ps`), environ
 * is not. bwrap's argv is then `bwrap --args 7 -- <command>` (bwrap takes only options from the descriptor), which is
 * also what /proc/1/cmdline shows inside the sandbox (bwrap's init).
 */
const FD_ARGS = 7;
const MIN_BWRAP: [number, number] = [0, 8]; // --disable-userns (0.8), --size (0.7)
const POOL_KEY = 'launcher';
const LAUNCHER_READY_TIMEOUT_MS = 10_000;

/** A prepared launcher: in its fresh cgroup, unprivileged, waiting for one command line on fd 5. */
interface Launcher {
  readonly name: string;
  readonly cgroup: Cgroup;
  readonly child: ChildProcess;
  /** Everything bwrap (and the launcher's "R") wrote on the status fd so far. */
  readonly status: Buffer[];
  /** Resolves when the launcher has joined its cgroup; rejects when it died first. */
  readonly ready: Promise<void>;
  /** The process ended (rejects when it could not be spawned). */
  readonly exited: Promise<{ code: number | null; sig: NodeJS.Signals | null }>;
  /** The process ended and all of its pipes closed (node's 'close'). */
  readonly closed: Promise<void>;
}

const noopLogger: SandboxLogger = { debug() {}, info() {}, warn() {}, error() {} };

export class SandboxExecutor implements Executor {
  readonly name = 'sandbox' as const;
  private readonly imagesDir: string;
  private readonly ownerId: string;
  private readonly instanceId: string;
  private readonly uid: number;
  private readonly gid: number;
  private readonly bwrap: string;
  private readonly setpriv: string;
  private readonly prlimit: string;
  private readonly sh: string;
  private readonly hostname: string;
  private readonly cgroupMount: string;
  private readonly cgroupParent: string;
  private readonly log: SandboxLogger;
  private readonly seccomp: Buffer;
  private readonly timeoutGraceMs: number;
  private cgroups: CgroupDriver | null = null;
  private readonly layouts = new Map<string, RootfsLayout>();
  private readonly workdirPlans = new Map<string, WorkdirPlan | string>();
  private readonly active = new Map<string, ExecutionImpl>();
  /** Names of cgroups this instance owns right now (launchers in the pool or running executions). */
  private readonly reserved = new Set<string>();
  private readonly pool: PrewarmPool<Launcher> | null;
  private readonly runsDir: string;
  private readonly agentsDir: string;
  private runsDirReady: Promise<void> | null = null;
  /** tmpfs for run/agent dirs and an overlay per image, so that mountinfo inside names no host path (see the module). */
  private readonly mounts: PrivateMounts;
  private privateMountsFailed: string | null = null;
  private readonly imageRootFailed = new Set<string>();
  private closing = false;
  private leakedFds: number[] = [];
  private devNull = -1;
  private smokeOk = false;
  private egressNet: { pool: NetnsPool; firewall: EgressFirewall } | null = null;

  private readonly options: SandboxExecutorOptions;

  constructor(options: SandboxExecutorOptions) {
    this.options = options;
    assertSafeName('ownerId', options.ownerId);
    this.imagesDir = options.imagesDir;
    this.ownerId = options.ownerId;
    this.instanceId = options.instanceId;
    this.uid = options.sandboxUid ?? 65534;
    this.gid = options.sandboxGid ?? this.uid;
    if (this.uid === 0 || this.gid === 0) throw new Error('the sandbox uid/gid must not be 0 (root)');
    this.bwrap = options.bwrapPath ?? '/usr/bin/bwrap';
    this.setpriv = options.setprivPath ?? '/usr/bin/setpriv';
    this.prlimit = options.prlimitPath ?? '/usr/bin/prlimit';
    this.sh = options.shPath ?? '/bin/sh';
    this.hostname = options.hostname ?? 'kindling';
    this.cgroupMount = options.cgroupMount ?? '/sys/fs/cgroup';
    this.cgroupParent = options.cgroupParent ?? 'kindling';
    this.log = options.logger ?? noopLogger;
    this.timeoutGraceMs = options.timeoutGraceMs ?? 1000;
    this.seccomp = buildSandboxFilter().program;
    this.mounts = new PrivateMounts({ baseDir: path.join(options.stateDir, 'sandbox'), ownerId: options.ownerId }, randomBytes(3).toString('hex'));
    this.runsDir = path.join(this.mounts.root, 'runs');
    this.agentsDir = path.join(this.mounts.root, 'agents');
    const prewarm = options.prewarm ?? 2;
    this.pool =
      prewarm > 0
        ? new PrewarmPool<Launcher>({
            create: () => this.prepareLauncher(),
            destroy: (l) => this.discard(l),
            isAlive: (l) => l.child.exitCode === null && l.child.signalCode === null,
            sizePerKey: prewarm,
            maxItems: prewarm,
            idleTtlMs: options.prewarmIdleTtlMs ?? 10 * 60_000,
            onError: (err) => this.log.warn({ err }, 'could not prepare a sandbox launcher'),
          })
        : null;
    this.scanLeakedFds();
    this.refreshLayouts();
  }

  /* -------------------------------------------------------------------------------------------------------------- */

  async probe(): Promise<ExecutorStatus> {
    const details: Record<string, unknown> = { sandboxUid: this.uid, imagesDir: this.imagesDir };
    const notReady = (reason: string): ExecutorStatus => ({ name: this.name, ready: false, reason, details });
    if (process.platform !== 'linux' || process.arch !== 'x64') {
      return notReady(`the sandbox executor needs Linux on x86_64 (this is ${process.platform}/${process.arch})`);
    }
    if (process.getuid?.() !== 0) return notReady('the sandbox executor needs the server to run as root (it creates cgroups and drops to the sandbox uid)');
    for (const [tool, file, pkg] of [
      ['bubblewrap', this.bwrap, 'bubblewrap'],
      ['setpriv', this.setpriv, 'util-linux'],
      ['prlimit', this.prlimit, 'util-linux'],
      ['sh', this.sh, 'dash'],
    ] as const) {
      try {
        fs.accessSync(file, fs.constants.X_OK);
      } catch {
        return notReady(`${tool} not found at ${file}: install it (apt-get install ${pkg})`);
      }
    }
    let version: string;
    try {
      version = (await execFileAsync(this.bwrap, ['--version'], { env: {} })).stdout.trim();
    } catch (err) {
      return notReady(`${this.bwrap} --version failed: ${(err as Error).message}`);
    }
    details.bwrap = version;
    const m = /(\d+)\.(\d+)/.exec(version);
    if (m === null || Number(m[1]) < MIN_BWRAP[0] || (Number(m[1]) === MIN_BWRAP[0] && Number(m[2]) < MIN_BWRAP[1])) {
      return notReady(`${version} is too old: the sandbox needs bubblewrap >= ${MIN_BWRAP.join('.')} (--disable-userns, --size)`);
    }
    const userns = this.checkUserns();
    if (userns !== null) return notReady(userns);
    let driver: CgroupDriver;
    try {
      driver = this.driver();
    } catch (err) {
      return notReady((err as Error).message);
    }
    details.cgroupVersion = driver.version;
    details.cgroupDirs = driver.ownerDirs;
    const images = await this.refreshImages();
    details.images = images;
    if (images.length === 0) {
      return notReady(`no runtime image rootfs in ${this.imagesDir} (expected <name>/rootfs and <name>/recipe.json): build them with \`kindling images build\``);
    }
    try {
      await this.ensureRunsDir();
    } catch (err) {
      return notReady(`cannot create ${this.runsDir}: ${(err as Error).message}`);
    }
    details.privateMounts = this.privateMountsFailed ?? true;
    for (const dir of [this.imagesDir, this.runsDir]) {
      const unreachable = this.unreachableBy(dir);
      if (unreachable !== null) {
        return notReady(`${unreachable} is not searchable by the sandbox uid ${this.uid}: chmod o+x it (bwrap binds ${dir} as that uid)`);
      }
    }
    if (!this.smokeOk) {
      const smoke = await this.smoke(images);
      if (smoke !== null) return notReady(smoke);
      this.smokeOk = true;
    }
    details.prewarm = this.pool?.stats() ?? null;
    return {
      name: this.name,
      ready: true,
      reason: `bubblewrap ${version.replace(/^bubblewrap\s*/, '')}, cgroup v${driver.version}, seccomp on, images: ${images.join(', ')}`,
      details,
    };
  }

  hasImage(image: string): boolean {
    const short = shortImageName(image);
    return short !== null && this.layouts.has(short);
  }

  async refreshImages(): Promise<string[]> {
    this.refreshLayouts();
    this.scanLeakedFds();
    return [...this.layouts.keys()].map((s) => `kindling/${s}`);
  }

  async start(spec: RunSpec, options: StartOptions = {}): Promise<SandboxExecution> {
    if (this.closing) throw new KindlingError('SHUTTING_DOWN', 'the sandbox executor is shutting down');
    if (spec.network === 'egress' && this.options.egress === undefined) {
      throw new KindlingError('UNSUPPORTED_NETWORK', 'network "egress" is not enabled on this server\'s sandbox executor: use network "none"', {
        details: { executor: this.name, network: spec.network },
      });
    }
    options.signal?.throwIfAborted();
    const layout = this.layoutFor(spec.image);
    const plan = this.workdirPlan(layout, spec.workdir);
    validateSpec(spec);
    const imageBinds = await this.imageBindArgs(layout).catch((err: unknown) => {
      throw new KindlingError('EXECUTOR_FAILED', `could not prepare the sandbox's run dirs: ${(err as Error).message}`, { cause: err });
    });
    this.driverOrUnavailable();
    const limits: CgroupLimits = {
      memoryBytes: Math.round(spec.limits.memoryMb * 1024 * 1024),
      cpus: spec.limits.cpus,
      pidsMax: spec.limits.pids + PIDS_OVERHEAD,
    };

    // An egress sandbox joins its own network namespace before dropping privileges: never a prewarmed launcher.
    let launcher = spec.network === 'egress' ? null : (this.pool?.take(POOL_KEY) ?? null);
    const coldStart = launcher === null;
    let runDir: string | null = null;
    let netns: EgressNetns | null = null;
    const net = spec.network === 'egress' ? this.egress() : null;
    let firewallHeld = false;
    const releaseNet = async (): Promise<void> => {
      try {
        await netns?.destroy();
      } finally {
        netns = null;
        if (firewallHeld) {
          firewallHeld = false;
          await net?.firewall.release();
        }
      }
    };
    try {
      if (net !== null) {
        await net.firewall.acquire().catch((err: unknown) => {
          throw new KindlingError('EXECUTOR_UNAVAILABLE', `network "egress" needs iptables on the host: ${(err as Error).message}`, { cause: err });
        });
        firewallHeld = true;
        netns = await net.pool.create();
      }
      if (launcher === null) launcher = this.spawnLauncher(netns?.path);
      launcher.cgroup.applyLimits(limits);
      if (spec.files.length > 0) runDir = await this.writeFiles(launcher.name, spec);
      const { options: bwrapOptions, command } = this.bwrapArgs(spec, imageBinds, plan, runDir);
      // RLIMIT_NOFILE (soft and hard: the sandbox cannot raise it again) is set by the launcher's shell and inherited
      // through bwrap's execs into every process of the sandbox. bwrap's arguments come from FD_ARGS, not argv.
      const script = `ulimit -n ${Math.floor(spec.limits.openFiles)} || exit 125\nexec ${shellQuote(this.bwrap)} --args ${FD_ARGS} -- ${command.map(shellQuote).join(' ')} ${spec.stdin ? '0<&6' : '0</dev/null'} 6<&-\n`;
      const execution = new ExecutionImpl(
        launcher,
        spec,
        script,
        Buffer.from(bwrapOptions.map((a) => `${a}\0`).join(''), 'utf8'),
        this.seccomp,
        coldStart,
        spec.limits.timeoutMs + this.timeoutGraceMs,
        options.signal,
        this.log,
        () => this.release(launcher!, runDir, releaseNet),
      );
      this.active.set(launcher.name, execution);
      this.pool?.replenish(POOL_KEY);
      this.log.debug(
        { executionId: spec.id, sandbox: launcher.name, pid: launcher.child.pid, image: layout.short, coldStart, instance: this.instanceId },
        'sandbox started',
      );
      return execution;
    } catch (err) {
      if (launcher !== null) await this.release(launcher, runDir).catch(() => {});
      await releaseNet().catch(() => {});
      if (err instanceof KindlingError) throw err;
      throw new KindlingError('EXECUTOR_FAILED', `could not start the sandbox: ${(err as Error).message}`, { cause: err });
    }
  }

  /** A long-lived sandbox running a resident agent (see shared/agent-sandbox.ts); same isolation as `start`. */
  async createWarmSandbox(spec: RunSpec, options: StartOptions = {}): Promise<WarmSandbox> {
    await this.ensureRunsDir();
    return startAgentSandbox((s, o) => this.start(s, o), spec, { agentsDir: this.agentsDir, sandboxGid: this.gid }, options);
  }

  /** A long-lived sandbox that runs many commands (see persistent.ts); same isolation as `start`. */
  async createPersistentSandbox(spec: RunSpec, options: StartOptions = {}): Promise<PersistentSandbox> {
    await this.ensureRunsDir();
    const deps = { start: (s: RunSpec, o?: StartOptions) => this.start(s, o), openCgroup: (name: string) => this.driver().open(name), agentsDir: this.agentsDir, sandboxGid: this.gid };
    return startPersistentSandbox({ ...deps, shell: this.layoutFor(spec.image).shell }, spec, options);
  }

  async reap(): Promise<ReapReport> {
    const driver = this.cgroups ?? this.tryDriver();
    if (driver === null) return { removed: 0 };
    let removed = 0;
    for (const name of driver.list()) {
      if (this.reserved.has(name)) continue;
      const cg = driver.open(name);
      const pids = cg.pids();
      try {
        await cg.remove();
        removed++;
        this.log.info({ sandbox: name, killed: pids.length, owner: this.ownerId }, 'reaped leftover sandbox cgroup');
      } catch (err) {
        this.log.warn({ sandbox: name, err }, 'could not reap sandbox cgroup');
      }
    }
    // Run dirs, agent dirs and private mounts of a crashed predecessor of this owner (its sandboxes are counted above).
    const staleMounts = await this.mounts.reapStale();
    if (staleMounts > 0) this.log.info({ owner: this.ownerId, dirs: staleMounts }, 'reaped leftover sandbox mounts');
    let runs: string[] = [];
    try {
      runs = await fs.promises.readdir(this.runsDir);
    } catch {
      // nothing ran yet
    }
    for (const name of runs) {
      if (this.reserved.has(name)) continue;
      await fs.promises.rm(path.join(this.runsDir, name), { recursive: true, force: true });
      this.log.info({ sandbox: name, owner: this.ownerId }, 'reaped leftover sandbox run dir');
    }
    // Agent socket dirs of warm sandboxes are named after their spec id; none survive their server.
    let agents: string[] = [];
    try {
      agents = await fs.promises.readdir(this.agentsDir);
    } catch {
      // no warm sandbox ran yet
    }
    const live = new Set([...this.active.values()].map((e) => e.specId));
    for (const name of agents) {
      if (live.has(name)) continue;
      await fs.promises.rm(path.join(this.agentsDir, name), { recursive: true, force: true });
    }
    if (this.options.egress !== undefined) {
      const net = this.egress();
      removed += await net.pool.reap();
      if (!net.firewall.inUse && net.pool.inUse === 0) removed += await removeChains(`${ownerChainPrefix(this.ownerId)}-S`);
    }
    return { removed };
  }

  /** The egress plumbing of this owner, made on first use. */
  private egress(): { pool: NetnsPool; firewall: EgressFirewall } {
    if (this.egressNet === null) {
      const egress = this.options.egress!;
      const pool = new NetnsPool({ ownerId: this.ownerId, ...(egress.supernet === undefined ? {} : { supernet: egress.supernet }) });
      const firewall = new EgressFirewall(
        { name: `${ownerChainPrefix(this.ownerId)}-S`, iface: pool.ifacePattern, policy: egress.policy },
        undefined,
        () => pool.subnetCidr(),
      );
      this.egressNet = { pool, firewall };
    }
    return this.egressNet;
  }

  async close(): Promise<void> {
    this.closing = true;
    await this.pool?.close();
    await Promise.all([...this.active.values()].map((e) => e.disposed.catch(() => {})));
    this.releaseAll();
  }

  async destroy(): Promise<void> {
    this.closing = true;
    for (const e of this.active.values()) e.abandon();
    await this.pool?.close();
    await Promise.all([...this.active.values()].map((e) => e.disposed.catch(() => {})));
    this.releaseAll();
  }

  /* -------------------------------------------------------------------------------------------------------------- */

  /** Spawns a launcher; it joins its cgroup on its own (readiness: `ready`). */
  private spawnLauncher(netnsPath?: string): Launcher {
    const driver = this.driverOrUnavailable();
    const name = `sbx-${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
    const cgroup = driver.create(name);
    this.reserved.add(name);
    let child: ChildProcess;
    try {
      // fd 6 is where PREPARE keeps the caller's stdin; FD_ARGS carries bwrap's arguments.
      const stdio: StdioOptions = ['pipe', 'pipe', 'pipe', 'pipe', 'pipe', 'pipe', 'ignore', 'pipe'];
      for (const fd of this.leakedFds) {
        while (stdio.length < fd) stdio.push('ignore');
        if (stdio.length === fd) stdio.push(this.devNullFd());
      }
      child = spawn(
        this.sh,
        [
          '-c',
          PREPARE,
          'kindling-launch',
          String(cgroup.procsFiles.length),
          ...cgroup.procsFiles,
          // RLIMIT_CORE for the whole tree, soft and hard (the seccomp filter stops any change inside the sandbox).
          this.prlimit,
          `--core=${SANDBOX_CORE_LIMIT}:${SANDBOX_CORE_LIMIT}`,
          '--',
          // As root, before privileges are dropped: join the execution's network namespace (egress only).
          ...(netnsPath === undefined ? [] : [this.options.egress?.nsenterPath ?? '/usr/bin/nsenter', `--net=${netnsPath}`]),
          this.setpriv,
          `--reuid=${this.uid}`,
          `--regid=${this.gid}`,
          '--clear-groups',
          '--no-new-privs',
          '--inh-caps=-all',
          '--bounding-set=-all',
          '--pdeathsig=KILL',
          this.sh,
          '-s',
        ],
        // detached: a terminal's Ctrl-C (SIGINT to the server's process group) must not kill sandboxes that a
        // graceful shutdown wants to drain.
        // cwd '/': the server's working directory must not show through /proc/1 of the sandbox (PWD, cwd link).
        { stdio, env: {}, detached: true, cwd: '/' },
      );
    } catch (err) {
      this.reserved.delete(name);
      void cgroup.remove().catch(() => {});
      throw err;
    }
    child.on('error', () => {}); // reported through `ready` / the execution's wait()
    const status: Buffer[] = [];
    const statusPipe = child.stdio[FD_STATUS] as Readable;
    statusPipe.on('error', () => {});
    const ready = new Promise<void>((resolve, reject) => {
      const onData = (chunk: Buffer): void => {
        status.push(chunk);
        if (chunk.includes(0x52 /* R */)) resolve();
      };
      statusPipe.on('data', onData);
      child.once('exit', (code, sig) => reject(new Error(`sandbox launcher exited (${code ?? sig}) before it was ready`)));
      child.once('error', reject);
    });
    ready.catch(() => {});
    // Listened to from the start: a pooled launcher may die (e.g. killed by an admin) before anyone takes it.
    const exited = new Promise<{ code: number | null; sig: NodeJS.Signals | null }>((resolve, reject) => {
      child.once('exit', (code, sig) => resolve({ code, sig }));
      child.once('error', reject);
    });
    exited.catch(() => {});
    const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
    return { name, cgroup, child, status, ready, exited, closed };
  }

  /** For the pool: a launcher that has joined its cgroup (so no RCU wait is left on the request path). */
  private async prepareLauncher(): Promise<Launcher> {
    // Let the execution that triggered the refill get going first.
    await new Promise((resolve) => setTimeout(resolve, 1));
    if (this.closing) throw new Error('shutting down');
    const launcher = this.spawnLauncher();
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        launcher.ready,
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error('sandbox launcher not ready in time')), LAUNCHER_READY_TIMEOUT_MS);
        }),
      ]);
      return launcher;
    } catch (err) {
      await this.discard(launcher);
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  private async discard(launcher: Launcher): Promise<void> {
    try {
      launcher.child.kill('SIGKILL');
    } catch {
      // gone
    }
    for (const s of launcher.child.stdio) s?.destroy();
    await this.release(launcher, null);
  }

  /** Removes an execution's (or launcher's) cgroup and run dir. */
  private async release(launcher: Launcher, runDir: string | null, releaseNet?: () => Promise<void>): Promise<void> {
    try {
      await launcher.cgroup.remove();
      if (runDir !== null) await fs.promises.rm(runDir, { recursive: true, force: true });
    } finally {
      try {
        // Still listed as active meanwhile: close() waits for the network namespace and the filter to go too.
        await releaseNet?.();
      } finally {
        this.reserved.delete(launcher.name);
        this.active.delete(launcher.name);
      }
    }
  }

  /**
   * The run and agent dirs belong to root and the sandbox gid: bwrap (as the sandbox uid) can reach them, other users
   * of the host cannot list, read or connect to anything under them (code, payloads, agent sockets).
   */
  private ensureRunsDir(): Promise<void> {
    this.runsDirReady ??= (async () => {
      try {
        await this.mounts.prepare();
      } catch (err) {
        // Plain directories then: everything works, but mountinfo inside names the data dir (reported by probe()).
        this.privateMountsFailed = `no private tmpfs for run dirs: ${(err as Error).message}`;
        this.log.warn({ err }, 'sandbox run dirs are plain directories: mountinfo inside sandboxes shows their host path');
      }
      const base = this.mounts.root;
      fs.mkdirSync(base, { recursive: true, mode: 0o711 });
      fs.chmodSync(base, 0o711);
      for (const dir of [this.runsDir, this.agentsDir]) {
        fs.mkdirSync(dir, { recursive: true, mode: 0o710 });
        fs.chownSync(dir, 0, this.gid);
        fs.chmodSync(dir, 0o710);
      }
    })();
    this.runsDirReady.catch(() => (this.runsDirReady = null));
    return this.runsDirReady;
  }

  /** The image's bind arguments with sources in its private overlay (the rootfs itself when that cannot be mounted). */
  private async imageBindArgs(layout: RootfsLayout): Promise<{ bindArgs: string[]; shell: string | null }> {
    await this.ensureRunsDir();
    if (this.privateMountsFailed !== null || this.imageRootFailed.has(layout.rootfs)) return layout;
    let root: string;
    try {
      root = await this.mounts.imageRoot(layout.short, layout.rootfs);
    } catch (err) {
      this.imageRootFailed.add(layout.rootfs);
      this.log.warn({ err, image: layout.short }, 'no private overlay for the image: mountinfo inside sandboxes shows the images dir');
      return layout;
    }
    const prefix = `${layout.rootfs}/`;
    const bindArgs = layout.bindArgs.map((arg, i) =>
      layout.bindArgs[i - 1] === '--ro-bind' && arg.startsWith(prefix) ? path.join(root, arg.slice(prefix.length)) : arg,
    );
    return { bindArgs, shell: layout.shell };
  }

  /** /.kindling content: a per-execution directory bound read-only (root:sandbox gid, files 0440, the dir 0550). */
  private async writeFiles(name: string, spec: RunSpec): Promise<string> {
    await this.ensureRunsDir();
    const dir = path.join(this.runsDir, name);
    await fs.promises.mkdir(dir, { mode: 0o700 });
    await Promise.all(
      spec.files.map(async (f) => {
        const file = path.join(dir, f.name);
        await fs.promises.writeFile(file, f.content, { mode: 0o400 });
        await fs.promises.chown(file, 0, this.gid);
        await fs.promises.chmod(file, 0o440);
      }),
    );
    await fs.promises.chown(dir, 0, this.gid);
    await fs.promises.chmod(dir, 0o550);
    return dir;
  }

  /* -------------------------------------------------------------------------------------------------------------- */

  /**
   * bwrap's options (sent on FD_ARGS: they name host paths and carry the env values) and the command (argv: bwrap
   * reads only options from `--args`; the command is what the sandbox's processes show in their own argv anyway).
   */
  private bwrapArgs(spec: RunSpec, layout: { bindArgs: string[]; shell: string | null }, plan: WorkdirPlan, runDir: string | null): { options: string[]; command: string[] } {
    const diskBytes = String(Math.round(spec.limits.diskMb * 1024 * 1024));
    const a: string[] = [
      '--unshare-all',
      // egress: stay in the per-execution network namespace the launcher joined (veth + filtered NAT).
      ...(spec.network === 'egress' ? ['--share-net'] : []),
      '--unshare-user',
      '--unshare-cgroup',
      '--disable-userns',
      '--die-with-parent',
      '--new-session',
      '--cap-drop',
      'ALL',
      '--hostname',
      this.hostname,
      ...layout.bindArgs,
      '--proc',
      '/proc',
      '--dev',
      '/dev',
      '--perms',
      '01777',
      '--size',
      diskBytes,
      '--tmpfs',
      '/dev/shm',
      '--remount-ro',
      '/dev',
      '--perms',
      '01777',
      '--size',
      diskBytes,
      '--tmpfs',
      '/tmp',
    ];
    if (plan.kind === 'tmpfs') a.push('--perms', '0755', '--size', diskBytes, '--tmpfs', spec.workdir);
    else if (plan.kind === 'in-tmp' && spec.workdir !== '/tmp') a.push('--dir', spec.workdir);
    if (runDir !== null) a.push('--ro-bind', runDir, '/.kindling');
    else a.push('--perms', '0555', '--dir', '/.kindling');
    if (spec.agentDir !== undefined) a.push('--ro-bind', spec.agentDir, AGENT_MOUNT);
    a.push('--remount-ro', '/', '--chdir', spec.workdir, '--clearenv');
    for (const [k, v] of Object.entries(spec.env)) a.push('--setenv', k, v);
    a.push('--seccomp', String(FD_SECCOMP), '--json-status-fd', String(FD_STATUS));
    const command: string[] = [];
    if (layout.shell !== null) command.push(layout.shell, '-c', EXEC_SHIM, spec.command[0]!);
    command.push(...spec.command);
    return { options: a, command };
  }

  private layoutFor(image: string): RootfsLayout {
    const short = shortImageName(image);
    let layout = short === null ? undefined : this.layouts.get(short);
    if (layout === undefined && short !== null) {
      // Built after start-up: pick it up without waiting for a refresh.
      const fresh = readLayout(this.imagesDir, short);
      if (fresh !== null) this.layouts.set(short, (layout = fresh));
    }
    if (layout === undefined) {
      throw new KindlingError(
        'UNKNOWN_IMAGE',
        `image "${image}" has no sandbox rootfs (${path.join(this.imagesDir, short ?? '?', 'rootfs')}): build it with \`kindling images build\``,
        { details: { image, executor: this.name } },
      );
    }
    return layout;
  }

  private workdirPlan(layout: RootfsLayout, workdir: string): WorkdirPlan {
    const key = `${layout.short}\0${workdir}`;
    let plan = this.workdirPlans.get(key);
    if (plan === undefined) {
      plan = planWorkdir(layout, workdir);
      if (this.workdirPlans.size > 1000) this.workdirPlans.clear();
      this.workdirPlans.set(key, plan);
    }
    if (typeof plan === 'string') {
      throw new KindlingError('VALIDATION_FAILED', plan, { details: { field: 'workdir', executor: this.name } });
    }
    return plan;
  }

  private refreshLayouts(): void {
    const built = new Set(listBuilt(this.imagesDir));
    for (const short of this.layouts.keys()) if (!built.has(short)) this.layouts.delete(short);
    for (const short of built) {
      try {
        const layout = readLayout(this.imagesDir, short);
        if (layout !== null) this.layouts.set(short, layout);
      } catch (err) {
        this.log.warn({ image: short, err }, 'cannot read sandbox rootfs');
      }
    }
    this.workdirPlans.clear();
  }

  private driver(): CgroupDriver {
    if (this.cgroups !== null) return this.cgroups;
    const driver = createCgroupDriver({ mount: this.cgroupMount, parent: this.cgroupParent, ownerId: this.ownerId });
    const problem = driver.check();
    if (problem !== null) throw new Error(problem);
    this.cgroups = driver;
    return driver;
  }

  private tryDriver(): CgroupDriver | null {
    try {
      return this.driver();
    } catch {
      return null;
    }
  }

  private driverOrUnavailable(): CgroupDriver {
    try {
      return this.driver();
    } catch (err) {
      throw new KindlingError('EXECUTOR_UNAVAILABLE', `sandbox executor unavailable: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  private checkUserns(): string | null {
    const read = (f: string): string | null => {
      try {
        return fs.readFileSync(f, 'utf8').trim();
      } catch {
        return null;
      }
    };
    if (read('/proc/sys/user/max_user_namespaces') === '0') {
      return 'user namespaces are disabled (user.max_user_namespaces = 0): sysctl -w user.max_user_namespaces=10000';
    }
    if (read('/proc/sys/kernel/unprivileged_userns_clone') === '0') {
      return 'unprivileged user namespaces are disabled: sysctl -w kernel.unprivileged_userns_clone=1';
    }
    if (read('/proc/sys/kernel/apparmor_restrict_unprivileged_userns') === '1') {
      return 'AppArmor restricts unprivileged user namespaces: add an AppArmor profile for bwrap allowing userns, or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0';
    }
    return null;
  }

  /** The first ancestor of `dir` (or `dir` itself) that others cannot search, or null. */
  private unreachableBy(dir: string): string | null {
    let cur = path.resolve(dir);
    for (;;) {
      try {
        const st = fs.statSync(cur);
        const others = (st.mode & 0o001) !== 0;
        const owner = st.uid === this.uid && (st.mode & 0o100) !== 0;
        const group = st.gid === this.gid && (st.mode & 0o010) !== 0;
        if (!others && !owner && !group) return cur;
      } catch {
        return cur;
      }
      const up = path.dirname(cur);
      if (up === cur) return null;
      cur = up;
    }
  }

  /** Runs `true` from the first image in a real sandbox: the only check that proves the whole chain works. */
  private async smoke(images: string[]): Promise<string | null> {
    const image = images[0]!;
    const layout = this.layoutFor(image);
    const candidates = ['/usr/bin/true', '/bin/true'];
    const trueBin = candidates.find((c) => fs.existsSync(path.join(layout.rootfs, c)));
    if (trueBin === undefined) return null;
    const spec: RunSpec = {
      id: `probe-${randomBytes(3).toString('hex')}`,
      image,
      command: [trueBin],
      env: {},
      workdir: '/tmp',
      limits: { timeoutMs: 10_000, memoryMb: 64, cpus: 1, pids: 16, outputBytes: 65536, diskMb: 1, openFiles: 64 },
      network: 'none',
      stdin: false,
      files: [],
      labels: {},
    };
    try {
      const ex = await this.start(spec);
      const chunks: Buffer[] = [];
      ex.stdout.resume();
      ex.stderr.on('data', (c: Buffer) => chunks.push(c));
      const info = await ex.wait();
      await ex.disposed;
      if (info.exitCode !== 0) {
        const stderr = Buffer.concat(chunks).toString('utf8').trim().slice(0, 500);
        return `a test sandbox (${image}: ${trueBin}) exited with ${info.exitCode}${stderr ? `: ${stderr}` : ''}`;
      }
      return null;
    } catch (err) {
      return `a test sandbox (${image}: ${trueBin}) failed: ${(err as Error).message}`;
    }
  }

  /**
   * Descriptors this process inherited without close-on-exec (e.g. from a supervisor) would pass into every sandbox:
   * remember them so the launcher gets /dev/null there instead. Node and libuv open everything close-on-exec, so the
   * set is fixed at start-up; it is re-read by refreshImages().
   */
  private scanLeakedFds(): void {
    const leaked: number[] = [];
    try {
      for (const name of fs.readdirSync('/proc/self/fd')) {
        const fd = Number(name);
        if (!(fd > 2)) continue;
        try {
          const info = fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
          const flags = /^flags:\s*([0-7]+)/m.exec(info);
          if (flags !== null && (parseInt(flags[1]!, 8) & 0o2000000) === 0) leaked.push(fd);
        } catch {
          // closed meanwhile (readdir's own fd)
        }
      }
    } catch {
      // no /proc: nothing we can do here; probe() reports the platform
    }
    this.leakedFds = leaked.filter((fd) => fd !== this.devNull && fd < 4096).sort((a, b) => a - b);
  }

  private devNullFd(): number {
    if (this.devNull < 0) this.devNull = fs.openSync('/dev/null', 'r+');
    return this.devNull;
  }

  private releaseAll(): void {
    if (this.active.size > 0 || this.reserved.size > 0) return;
    this.cgroups?.removeOwnerDirs();
    if (this.runsDirReady) {
      this.mounts.closeSync();
      try {
        fs.rmdirSync(path.dirname(this.mounts.root));
      } catch {
        // not empty (another instance) or gone
      }
      this.runsDirReady = null;
    }
    if (this.devNull >= 0) {
      fs.closeSync(this.devNull);
      this.devNull = -1;
    }
  }
}

/* ------------------------------------------------------------------------------------------------------------------ */

class ExecutionImpl implements SandboxExecution {
  readonly id: string;
  readonly specId: string;
  readonly stdin: Writable | null;
  readonly stdout: Readable;
  readonly stderr: Readable;
  readonly disposed: Promise<void>;
  readonly pid: number | undefined;
  private readonly child: ChildProcess;
  private readonly cgroup: Cgroup;
  private readonly result: Promise<SandboxExitInfo>;
  private exited = false;
  private killed = false;
  private timedOut = false;
  private readonly timer: NodeJS.Timeout;

  constructor(
    launcher: Launcher,
    spec: RunSpec,
    script: string,
    bwrapArgs: Buffer,
    seccomp: Buffer,
    readonly coldStart: boolean,
    backstopMs: number,
    signal: AbortSignal | undefined,
    private readonly log: SandboxLogger,
    release: () => Promise<void>,
  ) {
    const { child, cgroup, name } = launcher;
    this.id = name;
    this.specId = spec.id;
    this.child = child;
    this.cgroup = cgroup;
    this.pid = child.pid;
    this.stdout = child.stdout!;
    this.stderr = child.stderr!;
    // A process that exits without reading its stdin makes writes fail with EPIPE: that is the user's business, and
    // must never become an unhandled 'error' that takes the server down.
    child.stdin!.on('error', () => {});
    if (spec.stdin) {
      this.stdin = child.stdin;
    } else {
      this.stdin = null;
      child.stdin!.destroy();
    }

    const pipes = child.stdio as unknown as (Writable | null)[];
    for (const fd of [FD_SECCOMP, FD_SCRIPT, FD_ARGS]) pipes[fd]!.on('error', () => {});
    pipes[FD_SECCOMP]!.end(seccomp);
    pipes[FD_ARGS]!.end(bwrapArgs);
    pipes[FD_SCRIPT]!.end(script);

    const { exited, closed } = launcher;

    this.timer = setTimeout(() => {
      this.timedOut = true;
      this.kill();
    }, backstopMs);
    const onAbort = (): void => this.kill();
    signal?.addEventListener('abort', onAbort, { once: true });
    const settle = (): void => {
      this.exited = true;
      clearTimeout(this.timer);
      signal?.removeEventListener('abort', onAbort);
    };

    const exitInfo = exited.then(async ({ code, sig }) => {
      settle();
      // Anything still in the cgroup (a detached grandchild that outlived the pid namespace's teardown) dies now, so
      // that the output pipes can close.
      await cgroup.kill();
      const oomKilled = cgroup.oomKills() > 0;
      // The kernel's accounting of the whole tree, read while the cgroup still exists (it is removed on release).
      const usage = cgroup.usage();
      await closed;
      const started = Buffer.concat(launcher.status).toString('utf8').includes('"child-pid"');
      return { code, sig, oomKilled, started, usage };
    });

    this.result = exitInfo.then(({ code, sig, oomKilled, started, usage }) => {
      if (!started && !this.killed) {
        const why =
          code === LAUNCHER_CGROUP_FAILED
            ? 'the launcher could not join its cgroup'
            : `the launcher or bwrap exited with ${code ?? sig} before creating the sandbox`;
        this.log.error({ sandbox: name, executionId: spec.id, code, sig }, `sandbox failed to start: ${why}`);
        throw new KindlingError('EXECUTOR_FAILED', `the sandbox did not start: ${why}`, {
          details: { executor: 'sandbox' },
        });
      }
      return { ...exitInfoFrom(code, sig, oomKilled, this.timedOut), usage };
    });
    this.result.catch(() => {});

    this.disposed = exitInfo
      .catch((err: unknown) => {
        // spawn itself failed (e.g. /bin/sh missing): nothing ran.
        settle();
        this.log.error({ sandbox: name, err }, 'sandbox spawn failed');
      })
      .then(release)
      .catch((err: unknown) => {
        this.log.error({ sandbox: name, err }, 'sandbox cleanup failed; reap() will retry');
      });
    if (signal?.aborted) this.kill();
  }

  wait(): Promise<SandboxExitInfo> {
    return this.result.catch((err: unknown) => {
      if (err instanceof KindlingError) throw err;
      throw new KindlingError('EXECUTOR_FAILED', `the sandbox failed: ${(err as Error).message}`, { cause: err });
    });
  }

  kill(): void {
    if (this.exited || this.killed) return;
    this.killed = true;
    // The monitor first: its pid-1 child has PDEATHSIG=SIGKILL, and the kernel then kills the pid namespace. The
    // cgroup kill catches everything else.
    try {
      this.child.kill('SIGKILL');
    } catch {
      // already gone
    }
    this.cgroup.kill().catch((err: unknown) => this.log.warn({ sandbox: this.id, err }, 'sandbox kill incomplete'));
  }

  usageNow(): ResourceUsage | null {
    // The sandbox's own cgroup, read by the server: nothing inside the sandbox can write these counters.
    const usage = this.cgroup.usage();
    return usage.cpuMs === null ? null : usage;
  }

  /** destroy(): kill, and stop waiting for a consumer that may never drain the output. */
  abandon(): void {
    this.kill();
    this.stdin?.destroy();
    this.stdout.destroy();
    this.stderr.destroy();
  }
}

function exitInfoFrom(
  code: number | null,
  sig: NodeJS.Signals | null,
  oomKilled: boolean,
  timedOut: boolean,
): SandboxExitInfo {
  if (sig !== null) {
    const n = osConstants.signals[sig] ?? 9;
    return { exitCode: 128 + n, signal: sig, oomKilled, timedOut };
  }
  const exitCode = code ?? 1;
  let signal: string | null = null;
  if (exitCode > 128 && exitCode < 128 + 65) signal = signalName(exitCode - 128);
  return { exitCode, signal, oomKilled, timedOut };
}

function signalName(n: number): string | null {
  for (const [name, num] of Object.entries(osConstants.signals)) if (num === n) return name;
  return null;
}

function validateSpec(spec: RunSpec): void {
  const fail = (field: string, message: string): never => {
    throw new KindlingError('VALIDATION_FAILED', message, { details: { field, executor: 'sandbox' } });
  };
  if (spec.command.length === 0) fail('command', 'command must not be empty');
  for (const arg of spec.command) if (arg.includes('\0')) fail('command', 'command arguments must not contain NUL');
  for (const [k, v] of Object.entries(spec.env)) {
    if (k === '' || k.includes('=') || k.includes('\0') || v.includes('\0')) {
      fail('env', `env name "${k}" must be non-empty without "=" or NUL, and values without NUL`);
    }
  }
  const seen = new Set<string>();
  for (const f of spec.files) {
    if (!/^[A-Za-z0-9_.-]+$/.test(f.name) || f.name === '.' || f.name === '..' || seen.has(f.name)) {
      fail('files', `file name "${f.name}" must be unique, without slashes, made of [A-Za-z0-9_.-]`);
    }
    seen.add(f.name);
  }
  const l = spec.limits;
  if (!(l.memoryMb > 0 && l.cpus > 0 && l.pids > 0 && l.diskMb > 0 && l.timeoutMs > 0 && Number.isInteger(l.openFiles) && l.openFiles >= 16)) {
    fail('limits', 'memoryMb, cpus, pids, diskMb and timeoutMs must be positive, openFiles a whole number >= 16');
  }
}
