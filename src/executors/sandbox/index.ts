/**
 * The native sandbox executor (`--executor sandbox`): bubblewrap + a fresh cgroup + a seccomp filter per execution.
 *
 * The parts, each in its own module:
 *   launcher.ts    a root shell that joins a fresh cgroup, drops privileges and waits for one command; the pool of
 *                  launchers kept ready (`prewarmPerShape`, default 2; 0 spawns each on demand, `coldStart: true`)
 *   bwrap-args.ts  bubblewrap's arguments and the launcher's command line, pure functions of the spec
 *   execution.ts   one execution in a launcher, to its exit status, usage and release
 *   probe.ts       the readiness checks
 * This file holds the executor: images and run dirs, starting executions, warm sandboxes, reaping, close/destroy.
 * Every execution gets its own fresh cgroup and a fresh sandbox, never a reused one.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KindlingError } from '../../core/errors.js';
import type { RunSpec } from '../../core/types.js';
import type { Executor, ExecutorStatus, PersistentSandbox, PersistentSandboxOptions, ReapReport, SandboxStorageOps, StartOptions, WarmSandbox } from '../executor.js';
import { startAgentSandbox } from '../shared/agent-sandbox.js';
import { noopLogger, type Logger } from '../shared/logger.js';
import { DEFAULT_PREWARM_PER_SHAPE, type ExecutorBaseOptions } from '../shared/options.js';
import { assertSafeName, LazyCgroupDriver, type CgroupDriver, type CgroupLimits } from '../shared/cgroups.js';
import { RootfsCatalog } from './rootfs.js';
import { RunDirs, removeFlatDir } from './run-dirs.js';
import { bwrapArgs, encodeArgs, launchLine, launchRecord, mountTargets, validateSpec } from './bwrap-args.js';
import { DEFAULT_SUPERVISOR_PATH, startPersistentSandbox, type BwrapPersistentSandbox } from './persistent.js';
import { PersistentPool, type PoolShape } from './persistent-pool.js';
import { SandboxStorage, type Volume } from './storage.js';
import { BtrfsSandboxStorage, btrfsStorageProblem, exists } from './storage-btrfs.js';
import { DEFAULT_BTRFS_HELPER_PATH } from './btrfs-helper.js';
import { ExecutionImpl, type SandboxExecution, type SandboxExitInfo } from './execution.js';
import { DEFAULT_LAUNCH_HELPER_PATH, Launchers, type Launcher } from './launcher.js';
import { ImageCommands } from './image-commands.js';
import { bwrapVersion, hostProblem, smokeTest, unreachableBy, usernsProblem } from './probe.js';
import { buildSandboxFilter } from './seccomp.js';
import { EgressFirewall, ownerChainPrefix, removeChains } from '../../network/firewall.js';
import { NetnsPool, type EgressNetns } from '../../network/netns.js';

/** Kept for importers of the old name: the executors' one logger type (shared/logger.ts). */
export type SandboxLogger = Logger;

/**
 * What the base options (shared/options.ts) mean for this executor: stateDir: `sandbox/` under it holds the private
 * mounts with the run dir of each execution (its /.kindling files, bound read-only) and the agent dirs; every ancestor
 * must be searchable (o+x) by the sandbox uid; all writable space inside sandboxes is tmpfs. ownerId: cgroups live
 * under `kindling/<ownerId>/`. prewarmPerShape: launchers (a fresh cgroup, privileges dropped, waiting for a command)
 * kept ready; a launcher takes its shape when it is taken, so every shape shares this many (default 2). egressPolicy:
 * each egress execution gets its own network namespace with a veth pair to the host, NAT out, and this filter.
 */
export interface SandboxExecutorOptions extends ExecutorBaseOptions {
  /** Holds `${short}/rootfs` (+ `recipe.json`) per runtime image, e.g. /var/lib/kindling/images. */
  imagesDir: string;
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
  /**
   * The executor's own wall-clock backstop fires at `limits.timeoutMs` plus this. The caller (the orchestrator) is
   * expected to kill() at `timeoutMs` itself and report `timedOut`; the backstop only guarantees the limit holds for
   * any caller, without racing the caller's timer. Default 1000.
   */
  timeoutGraceMs?: number;
  /** Egress only: the range the per-execution veth subnets are taken from (see network/netns.ts). */
  egressSupernet?: string;
  /** util-linux nsenter, which joins a launcher to its network namespace (egress only). Default /usr/bin/nsenter. */
  nsenterPath?: string;
  /**
   * native/kindling-launch (launcher.ts): the launcher in one exec instead of sh, prlimit, setpriv and sh. Default:
   * dist/native/kindling-launch when it is built; null, or a path that does not exist: the shell chain.
   */
  launchHelperPath?: string | null;
  /**
   * native/kindling-supervisor (persistent.ts): a persistent sandbox's supervisor. Default:
   * dist/native/kindling-supervisor when it is built; null, or a path that does not exist: a supervisor in sh.
   */
  supervisorPath?: string | null;
  /**
   * Where persistent sandboxes keep their files: `btrfs` (a subvolume each, snapshots and forks without copying; see
   * storage-btrfs.ts) or `ext4` (a loop disk each, snapshots copied; storage.ts). Default: btrfs when the host has it
   * (kernel, mkfs.btrfs, the native helper kindling-btrfs), else ext4.
   */
  diskBackend?: 'btrfs' | 'ext4';
}

export type { SandboxExecution, SandboxExitInfo };

/**
 * bwrap's monitor lives in the cgroup too (outside the sandbox's pid namespace). Its pid-1 init counts against
 * `limits.pids`, so the sandbox never shows more than `pids` processes in its /proc.
 */
const PIDS_OVERHEAD = 1;
/**
 * Persistent sandboxes started at once (creates, forks, the pool's fills); more wait their turn. Started all together,
 * 100 on two busy cores each took the time of 100 and every one missed its ready timeout; in turn, each is ready in
 * the time of a few and the ready timeout counts from its own start.
 */
const PERSISTENT_STARTS_AT_ONCE = 4;
/** Shapes (image + work dir) the pool of persistent sandboxes keeps ready sandboxes for (persistent-pool.ts). */
const PERSISTENT_POOL_SHAPES = 4;

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
  private readonly log: Logger;
  private readonly seccomp: Buffer;
  private readonly timeoutGraceMs: number;
  private readonly cgroups: LazyCgroupDriver;
  private readonly images: RootfsCatalog;
  /** Commands found in the images before a sandbox starts: those need no shell to exec them (image-commands.ts). */
  private readonly commands = new ImageCommands();
  private readonly active = new Map<string, ExecutionImpl>();
  /** Names of cgroups this instance owns right now (launchers in the pool or running executions). */
  private readonly reserved = new Set<string>();
  private readonly launchers: Launchers;
  private readonly dirs: RunDirs;
  private closing = false;
  private smokeOk = false;
  private egressNet: { pool: NetnsPool; firewall: EgressFirewall } | null = null;
  /** Persistent sandboxes' disks and snapshots: `<stateDir>/sandbox-storage/<ownerId>/` (see storage.ts). */
  private readonly storage: SandboxStorage | BtrfsSandboxStorage;
  /** Ready persistent sandboxes (btrfs storage and prewarm > 0 only; see persistent-pool.ts). */
  private readonly persistentPool: PersistentPool | null;
  /** native/kindling-supervisor when built (persistent.ts); null: the sh supervisor. */
  private readonly supervisorPath: string | null;
  /** Its copy in the run dirs (see supervisor()), made once. */
  private supervisorCopy: Promise<string | null> | null = null;
  private persistentStarting = 0;
  private readonly persistentWaiting: (() => void)[] = [];
  readonly sandboxStorage: SandboxStorageOps;

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
    const supervisorPath = options.supervisorPath === undefined ? DEFAULT_SUPERVISOR_PATH : options.supervisorPath;
    this.supervisorPath = supervisorPath !== null && fs.existsSync(supervisorPath) ? supervisorPath : null;
    this.setpriv = options.setprivPath ?? '/usr/bin/setpriv';
    this.prlimit = options.prlimitPath ?? '/usr/bin/prlimit';
    this.sh = options.shPath ?? '/bin/sh';
    this.hostname = options.hostname ?? 'kindling';
    this.cgroupMount = options.cgroupMount ?? '/sys/fs/cgroup';
    this.cgroupParent = options.cgroupParent ?? 'kindling';
    this.cgroups = new LazyCgroupDriver({ mount: this.cgroupMount, parent: this.cgroupParent, ownerId: this.ownerId }, 'sandbox');
    this.log = options.logger ?? noopLogger;
    this.timeoutGraceMs = options.timeoutGraceMs ?? 1000;
    this.seccomp = buildSandboxFilter().program;
    this.dirs = new RunDirs({ baseDir: path.join(options.stateDir, 'sandbox'), ownerId: options.ownerId }, this.gid, this.log);
    this.images = new RootfsCatalog(options.imagesDir, this.log);
    const storageDir = path.join(options.stateDir, 'sandbox-storage', options.ownerId);
    const btrfsProblem = options.diskBackend === 'ext4' ? 'ext4 asked for' : btrfsStorageProblem({ helperPath: DEFAULT_BTRFS_HELPER_PATH });
    if (btrfsProblem !== null && options.diskBackend === 'btrfs') throw new Error(`persistent sandboxes on btrfs: ${btrfsProblem}`);
    this.storage =
      btrfsProblem === null
        ? new BtrfsSandboxStorage({ dir: storageDir, uid: this.uid, gid: this.gid, log: this.log })
        : new SandboxStorage({ dir: storageDir, uid: this.uid, gid: this.gid, log: this.log });
    const storage = this.storage;
    const prewarm = options.prewarmPerShape ?? DEFAULT_PREWARM_PER_SHAPE.sandbox;
    this.persistentPool =
      storage instanceof BtrfsSandboxStorage && prewarm > 0
        ? new PersistentPool({
            perShape: prewarm,
            maxShapes: PERSISTENT_POOL_SHAPES,
            start: (shape, poolId) => this.startPooled(shape, poolId, options.prewarmIdleTtlMs ?? 10 * 60_000),
            removeDisk: (poolId) => storage.removeDisk(poolId),
            log: this.log,
          })
        : null;
    this.sandboxStorage = {
      removeDisk: (id) => this.storage.removeDisk(id),
      removeSnapshot: (id) => this.storage.removeSnapshot(id),
      reap: (keepSandboxes, keepSnapshots) => this.storage.reap(keepSandboxes, keepSnapshots),
    };
    this.launchers = new Launchers({
      shPath: this.sh,
      setprivPath: this.setpriv,
      prlimitPath: this.prlimit,
      nsenterPath: options.nsenterPath ?? '/usr/bin/nsenter',
      launchHelperPath: options.launchHelperPath === undefined ? DEFAULT_LAUNCH_HELPER_PATH : options.launchHelperPath,
      launchSocketPath: this.dirs.launchSocketPath,
      prepareLaunchSocketDir: () => this.dirs.ensure(),
      uid: this.uid,
      gid: this.gid,
      cgroups: () => this.cgroups.getOrUnavailable(),
      reserved: this.reserved,
      prewarm: options.prewarmPerShape ?? DEFAULT_PREWARM_PER_SHAPE.sandbox,
      idleTtlMs: options.prewarmIdleTtlMs ?? 10 * 60_000,
      release: (launcher) => this.release(launcher, null),
      log: this.log,
    });
    this.images.refresh();
  }

  /* -------------------------------------------------------------------------------------------------------------- */

  async probe(): Promise<ExecutorStatus> {
    const details: Record<string, unknown> = { sandboxUid: this.uid, imagesDir: this.imagesDir };
    const notReady = (reason: string): ExecutorStatus => ({ name: this.name, ready: false, reason, details });
    const host = hostProblem({ bwrapPath: this.bwrap, setprivPath: this.setpriv, prlimitPath: this.prlimit, shPath: this.sh });
    if (host !== null) return notReady(host);
    const bwrap = await bwrapVersion(this.bwrap);
    if ('problem' in bwrap) return notReady(bwrap.problem);
    const version = bwrap.version;
    details.bwrap = version;
    const userns = usernsProblem();
    if (userns !== null) return notReady(userns);
    let driver: CgroupDriver;
    try {
      driver = this.cgroups.get();
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
      await this.dirs.ensure();
    } catch (err) {
      return notReady(`cannot create ${this.dirs.runsDir}: ${(err as Error).message}`);
    }
    details.privateMounts = this.dirs.privateMountsFailed ?? true;
    for (const dir of [this.imagesDir, this.dirs.runsDir]) {
      const unreachable = unreachableBy(dir, this.uid, this.gid);
      if (unreachable !== null) {
        return notReady(`${unreachable} is not searchable by the sandbox uid ${this.uid}: chmod o+x it (bwrap binds ${dir} as that uid)`);
      }
    }
    if (!this.smokeOk) {
      const smoke = await smokeTest((spec) => this.start(spec), images[0]!, this.images.layoutFor(images[0]!).rootfs);
      if (smoke !== null) return notReady(smoke);
      this.smokeOk = true;
    }
    details.prewarm = this.launchers.stats();
    return {
      name: this.name,
      ready: true,
      reason: `bubblewrap ${version.replace(/^bubblewrap\s*/, '')}, cgroup v${driver.version}, seccomp on, images: ${images.join(', ')}`,
      details,
    };
  }

  hasImage(image: string): boolean {
    return this.images.has(image);
  }

  async refreshImages(): Promise<string[]> {
    this.images.refresh();
    this.launchers.scanLeakedFds();
    return this.images.names();
  }

  async start(spec: RunSpec, options: StartOptions = {}): Promise<SandboxExecution> {
    if (this.closing) throw new KindlingError('SHUTTING_DOWN', 'the sandbox executor is shutting down');
    if (spec.network === 'egress' && this.options.egressPolicy === undefined) {
      throw new KindlingError('UNSUPPORTED_NETWORK', 'network "egress" is not enabled on this server\'s sandbox executor: use network "none"', {
        details: { executor: this.name, network: spec.network },
      });
    }
    options.signal?.throwIfAborted();
    const layout = this.images.layoutFor(spec.image);
    const plan = this.images.workdirPlan(layout, spec.workdir);
    validateSpec(spec);
    const imageBinds = await this.dirs.imageBinds(layout).catch((err: unknown) => {
      throw new KindlingError('EXECUTOR_FAILED', `could not prepare the sandbox's run dirs: ${(err as Error).message}`, { cause: err });
    });
    this.cgroups.getOrUnavailable();
    const limits: CgroupLimits = {
      memoryBytes: Math.round(spec.limits.memoryMb * 1024 * 1024),
      cpus: spec.limits.cpus,
      pidsMax: spec.limits.pids + PIDS_OVERHEAD,
    };

    // An egress sandbox joins its own network namespace before dropping privileges: never a prewarmed launcher.
    let launcher = spec.network === 'egress' ? null : this.launchers.take();
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
      if (launcher === null) launcher = await this.launchers.spawn(netns?.path);
      launcher.cgroup.applyLimits(limits);
      if (spec.files.length > 0) runDir = await this.dirs.writeFiles(launcher.name, spec);
      const lookup = layout.shell === null ? null : this.commands.lookup(layout, spec.command[0]!, spec.env.PATH);
      // The image's root in one bind where it has every mount point this execution needs, else entry by entry.
      const binds = imageBinds.root !== undefined && this.dirs.rootHas(imageBinds.root, mountTargets(spec, plan)) ? imageBinds : { bindArgs: imageBinds.bindArgs, shell: imageBinds.shell };
      const { options: bwrapOptions, command } = bwrapArgs(spec, this.hostname, binds, plan, runDir, lookup);
      const execution = new ExecutionImpl(
        launcher,
        spec,
        (launcher.native ? launchRecord : launchLine)(this.bwrap, command, spec.limits.openFiles, spec.stdin),
        encodeArgs(bwrapOptions),
        this.seccomp,
        coldStart,
        spec.limits.timeoutMs + this.timeoutGraceMs,
        options.signal,
        this.log,
        () => this.release(launcher!, runDir, releaseNet),
      );
      this.active.set(launcher.name, execution);
      this.launchers.replenish();
      this.log.debug(
        { executionId: spec.id, sandbox: launcher.name, pid: launcher.process.pid, image: layout.short, coldStart, instance: this.instanceId },
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
    await this.dirs.ensure();
    return startAgentSandbox((s, o) => this.start(s, o), spec, { agentsDir: this.dirs.agentsDir, sandboxGid: this.gid }, options);
  }

  /** A long-lived sandbox that runs many commands (see persistent.ts); same isolation as `start`. */
  async createPersistentSandbox(spec: RunSpec, options: PersistentSandboxOptions = {}): Promise<PersistentSandbox> {
    await this.dirs.ensure();
    const pooled = await this.takePooled(spec, options);
    if (pooled !== null) return pooled;
    return this.startPersistent(spec, options);
  }

  /** The pool of ready persistent sandboxes: creates it served, creates that found none, sandboxes ready; null: off. */
  get persistentPoolStats(): { hits: number; misses: number; ready: number } | null {
    return this.persistentPool === null ? null : { ...this.persistentPool.stats, ready: this.persistentPool.ready };
  }

  /**
   * The native supervisor where bwrap, running as the sandbox uid, can bind it from: a copy in the run dirs (root
   * 0755 in a 0711 dir). The build's own file may sit below a directory that uid cannot search (a checkout in /root,
   * a 0700 temp dir). Null: not built, or the copy failed (the sh supervisor then).
   */
  private supervisor(): Promise<string | null> {
    const source = this.supervisorPath;
    if (source === null) return Promise.resolve(null);
    this.supervisorCopy ??= (async () => {
      await this.dirs.ensure();
      const target = path.join(this.dirs.binDir, 'kindling-supervisor');
      try {
        await fs.promises.copyFile(source, `${target}.tmp`);
        await fs.promises.chmod(`${target}.tmp`, 0o755);
        await fs.promises.rename(`${target}.tmp`, target);
        return target;
      } catch (err) {
        this.log.warn({ err }, 'could not copy kindling-supervisor into the run dirs: persistent sandboxes use the sh supervisor');
        return null;
      }
    })();
    return this.supervisorCopy;
  }

  /** Starts a persistent sandbox (bwrap, the supervisor), PERSISTENT_STARTS_AT_ONCE at a time. */
  private async startPersistent(spec: RunSpec, options: PersistentSandboxOptions): Promise<BwrapPersistentSandbox> {
    if (this.persistentStarting >= PERSISTENT_STARTS_AT_ONCE) await new Promise<void>((resolve) => this.persistentWaiting.push(resolve));
    this.persistentStarting++;
    try {
      const storage = {
        attach: (id: string, diskMb: number, fromSnapshot: string | null) => this.storage.attach(id, diskMb, fromSnapshot, this.dirs.volumesDir),
        snapshot: (volume: Volume, snapshotId: string) => this.storage.snapshot(volume, snapshotId),
      };
      const deps = { start: (s: RunSpec, o?: StartOptions) => this.start(s, o), openCgroup: (name: string) => this.cgroups.get().open(name), agentsDir: this.dirs.agentsDir, sandboxUid: this.uid, sandboxGid: this.gid, storage };
      return await startPersistentSandbox({ ...deps, shell: this.images.layoutFor(spec.image).shell, supervisorPath: await this.supervisor() }, spec, options);
    } finally {
      this.persistentStarting--;
      this.persistentWaiting.shift()?.();
    }
  }

  /**
   * A ready sandbox from the pool made `spec`'s (its id, env, limits, disk size, lifetime), or null: the pool is off,
   * has none of this shape ready, or the create is not a fresh one (a restart on kept files, a fork, egress).
   */
  private async takePooled(spec: RunSpec, options: PersistentSandboxOptions): Promise<PersistentSandbox | null> {
    const storage = this.storage;
    const fresh = options.restore === undefined && options.storage !== undefined && options.storage.fromSnapshot === null;
    if (this.persistentPool === null || !(storage instanceof BtrfsSandboxStorage) || !fresh || spec.network !== 'none' || this.closing) return null;
    if (await exists(storage.diskPath(spec.id))) return null;
    // The spec's checks are those of a cold start (the supervisor is the command).
    validateSpec({ ...spec, command: ['sh'] });
    const taken = this.persistentPool.take({ image: spec.image, workdir: spec.workdir, limits: spec.limits });
    if (taken === null) return null;
    const { poolId, sandbox } = taken;
    try {
      sandbox.sandboxCgroup.applyLimits({ memoryBytes: Math.round(spec.limits.memoryMb * 1024 * 1024), cpus: spec.limits.cpus, pidsMax: spec.limits.pids + PIDS_OVERHEAD });
      const volume = await storage.adopt(poolId, spec.id, spec.limits.diskMb);
      sandbox.adopt(spec.id, spec.env, volume, spec.limits.timeoutMs + this.timeoutGraceMs);
      return sandbox;
    } catch (err) {
      this.log.warn({ err, sandbox: spec.id }, 'could not take a pooled persistent sandbox; starting one');
      await sandbox.destroy().catch(() => {});
      await storage.removeDisk(poolId).catch(() => {});
      await storage.removeDisk(spec.id).catch(() => {});
      return null;
    }
  }

  /** A pooled sandbox of `shape` (persistent-pool.ts): no env, the shape's last limits, its idle TTL as its lifetime. */
  private startPooled(shape: PoolShape, poolId: string, idleTtlMs: number): Promise<BwrapPersistentSandbox> {
    const spec: RunSpec = {
      id: poolId,
      image: shape.image,
      command: [],
      env: {},
      workdir: shape.workdir,
      limits: { ...shape.limits, timeoutMs: idleTtlMs },
      network: 'none',
      stdin: false,
      files: [],
      labels: { 'dev.kindling.sandbox': poolId },
    };
    return this.startPersistent(spec, { storage: { fromSnapshot: null } });
  }

  async reap(): Promise<ReapReport> {
    const driver = this.cgroups.tryGet();
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
    await this.dirs.reap(this.reserved, new Set([...this.active.values()].map((e) => e.specId)), this.ownerId);
    if (this.options.egressPolicy !== undefined) {
      const net = this.egress();
      removed += await net.pool.reap();
      if (!net.firewall.inUse && net.pool.inUse === 0) removed += await removeChains(`${ownerChainPrefix(this.ownerId)}-S`);
    }
    return { removed };
  }

  /** The egress plumbing of this owner, made on first use. */
  private egress(): { pool: NetnsPool; firewall: EgressFirewall } {
    if (this.egressNet === null) {
      const { egressPolicy, egressSupernet } = this.options;
      const pool = new NetnsPool({ ownerId: this.ownerId, ...(egressSupernet === undefined ? {} : { supernet: egressSupernet }) });
      const firewall = new EgressFirewall(
        { name: `${ownerChainPrefix(this.ownerId)}-S`, iface: pool.ifacePattern, policy: egressPolicy! },
        undefined,
        () => pool.subnetCidr(),
      );
      this.egressNet = { pool, firewall };
    }
    return this.egressNet;
  }

  async close(): Promise<void> {
    this.closing = true;
    await this.persistentPool?.close();
    await this.launchers.close();
    await Promise.all([...this.active.values()].map((e) => e.disposed.catch(() => {})));
    await this.launchers.closeService();
    await this.storage.closePool().catch(() => {}); // pre-formatted disks (sbx-parity)
    this.releaseAll();
  }

  async destroy(): Promise<void> {
    this.closing = true;
    await this.persistentPool?.close();
    for (const e of this.active.values()) e.abandon();
    await this.launchers.close();
    await Promise.all([...this.active.values()].map((e) => e.disposed.catch(() => {})));
    await this.launchers.closeService();
    await this.storage.closePool().catch(() => {}); // pre-formatted disks (sbx-parity)
    this.releaseAll();
  }

  /* -------------------------------------------------------------------------------------------------------------- */

  /** Removes an execution's (or launcher's) cgroup and run dir. */
  private async release(launcher: Launcher, runDir: string | null, releaseNet?: () => Promise<void>): Promise<void> {
    try {
      await launcher.cgroup.remove();
      if (runDir !== null) await removeFlatDir(runDir);
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




  private releaseAll(): void {
    if (this.active.size > 0 || this.reserved.size > 0) return;
    this.cgroups.current?.removeOwnerDirs();
    this.dirs.closeSync();
    this.launchers.closeDevNull();
  }
}
