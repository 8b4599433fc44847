// Over 400 lines: the slot lifecycle (create, launch, destroy), the engine watchdog and the reaper all work on the same set of slots.
import { chmod, chown, mkdir, readdir, rm, rmdir, writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { basename, dirname, join } from 'node:path';
import { PassThrough } from 'node:stream';
import Docker from 'dockerode';
import type { Container } from 'dockerode';
import { KindlingError } from '../../core/errors.js';
import type { RunSpec } from '../../core/types.js';
import type { Execution, Executor, ExecutorStatus, ExitInfo, PersistentSandbox, PersistentSandboxOptions, ReapReport, SandboxStorageOps, StartOptions, WarmSandbox } from '../executor.js';
import { LABEL_INSTANCE, LABEL_MANAGED, LABEL_OWNER } from '../executor.js';
import { makeFifos, openFifoReader, openFifoWriter, type FifoReader } from '../shared/fifo.js';
import { startAgentSandbox } from '../shared/agent-sandbox.js';
import { buildLaunchScript } from '../shared/launch-script.js';
import { signalOfExitCode } from '../shared/process.js';
import { noopLogger, type Logger } from '../shared/logger.js';
import { DEFAULT_PREWARM_PER_SHAPE, type ExecutorBaseOptions } from '../shared/options.js';
import { SlotCgroup, listSlotCgroups, removeOwnerDirs, type DockerCgroupLayout } from './cgroup-usage.js';
import { PrewarmPool, type PrewarmPoolStats } from '../shared/prewarm-pool.js';
import { DockerEgressNetwork } from './egress-network.js';
import { startDockerPersistentSandbox } from './persistent.js';
import { isEngineUnreachable, toKindlingError } from './engine-errors.js';
import { SandboxStorage, type Volume } from '../sandbox/storage.js';
import { mountsUnder } from '../sandbox/private-mounts.js';
import { CONTAINER_GID, CONTAINER_UID, GUEST_IO_DIR, containerCreateOptions, normalizeImageRef, shapeKeyOf, shapeOf, type SlotShape } from './container-options.js';

const execFileAsync = promisify(execFile);

/** Kept for importers of the old place: the executors' one logger type lives in shared/logger.ts. */
export type { Logger } from '../shared/logger.js';

/**
 * What the base options (shared/options.ts) mean for this executor: stateDir: per-execution run dirs (code files,
 * FIFOs), which must be visible to the engine. ownerId/instanceId: labels on every container and network; reaping
 * touches only containers of the same owner. prewarmPerShape: fresh containers kept started per recently used shape
 * (default 6, at most `prewarmMaxContainers` in all). egressPolicy: egress containers join a dedicated bridge network
 * of this owner (labelled, no inter-container traffic) whose traffic DOCKER-USER/INPUT rules built from it filter; the
 * network and the rules exist while an egress container runs.
 */
export interface DockerExecutorOptions extends ExecutorBaseOptions {
  /** Engine socket path; default /var/run/docker.sock. */
  socketPath?: string;
  docker?: Docker;
  /** Prewarmed containers of all shapes together at most. Default 16. */
  prewarmMaxContainers?: number;
  /** A prewarmed container not created and started after this long (a stuck engine) is given up and replaced. Default 60000. */
  prewarmCreateTimeoutMs?: number;
  /**
   * Creating and starting one container (the engine's work for a cold start) may take this long; past it the start
   * fails with a retryable EXECUTOR_UNAVAILABLE (a frozen or overloaded engine must not hold requests forever) and the
   * container, if it still appears, is removed. Default 60000.
   */
  createTimeoutMs?: number;
  /** How long a started container may take to pick up its launch script. */
  launchTimeoutMs?: number;
  /** How often the engine is pinged while containers exist, to notice that it died (see watchEngine). Default 1000. */
  engineCheckIntervalMs?: number;
  /** cgroupfs mount point on this host, where containers' CPU and memory counters are read. Default /sys/fs/cgroup. */
  cgroupMount?: string;
}

/** A started container whose shell waits on the launch FIFO: everything but the command is ready. */
interface Slot {
  readonly container: Container;
  readonly runDir: string;
  readonly stdout: FifoReader;
  readonly stderr: FifoReader;
  /** The container's CPU and memory counters, read on the host (see cgroup-usage.ts). */
  readonly cgroup: SlotCgroup;
  readonly shapeKey: string;
  /** Resolves with the engine's wait result once the container stops; rejects when the engine is lost. */
  readonly exited: Promise<{ StatusCode: number }>;
  /** Rejects `exited`: the engine went away, so the container's end will never be reported. */
  lose(error: KindlingError): void;
  dead: boolean;
  /** When the container was created (the start of its engine events). */
  readonly createdAtMs: number;
  /** Holds the egress network (released once when the slot is destroyed). */
  egress: boolean;
}

/** How long an exit by SIGKILL that Kindling did not send waits for the engine's late "oom" event. */
const OOM_EVENT_GRACE_MS = 250;
/** pastEvents' answer when the engine did not answer. */
const ENGINE_UNREACHABLE = 'engine-unreachable';

export class DockerExecutor implements Executor {
  readonly name = 'docker' as const;
  private readonly docker: Docker;
  private readonly options: DockerExecutorOptions;
  private readonly logger: Logger;
  private readonly pool: PrewarmPool<Slot>;
  private readonly live = new Map<string, { slot: Slot; kill: () => void; done: Promise<void> }>();
  /** Every slot that exists (idle in the pool or running), for the reaper. */
  private readonly slots = new Set<Slot>();
  /** Run dirs of slots being created (their container may exist before the slot joins `slots`). */
  private readonly creatingDirs = new Set<string>();
  private images = new Set<string>();
  private closed = false;
  private readonly egress: DockerEgressNetwork;
  /** Pings the engine while containers exist (see watchEngine). */
  private watchdog: NodeJS.Timeout | null = null;
  private engineLost = false;
  private pinging = false;
  /** How this host's engine lays out cgroups, asked once (`docker info`), on the first container. */
  private cgroupLayout: Promise<DockerCgroupLayout> | null = null;
  /**
   * Persistent sandboxes' disks and snapshots: `<stateDir>/docker-sandbox-storage/<ownerId>/` (the bwrap executor's
   * storage module, sandbox/storage.ts: an ext4 image per sandbox, snapshots as read-only lower layers). A disk is
   * mounted under `volumesDir` while its sandbox runs and bound into the container at its work dir and /tmp.
   */
  private readonly storage: SandboxStorage;
  readonly sandboxStorage: SandboxStorageOps;
  /** Mounted disks of live persistent sandboxes (the dir of each volume), kept by the reaper. */
  private readonly volumes = new Set<string>();
  /** Disks being mounted now: the reaper leaves the volumes dir alone meanwhile (their dir is not known yet). */
  private attaching = 0;

  constructor(options: DockerExecutorOptions) {
    this.options = options;
    this.logger = options.logger ?? noopLogger;
    this.docker = options.docker ?? new Docker({ socketPath: options.socketPath ?? '/var/run/docker.sock' });
    this.pool = new PrewarmPool<Slot>({
      create: (key) => this.createSlot(JSON.parse(key) as SlotShape, key),
      destroy: (slot) => this.destroySlot(slot),
      isAlive: (slot) => !slot.dead,
      sizePerKey: options.prewarmPerShape ?? DEFAULT_PREWARM_PER_SHAPE.docker,
      maxItems: options.prewarmMaxContainers ?? 16,
      idleTtlMs: options.prewarmIdleTtlMs ?? 300_000,
      createTimeoutMs: options.prewarmCreateTimeoutMs ?? 60_000,
      onError: (error, key) => this.logger.warn({ err: error, shape: key }, 'prewarming a container failed'),
    });
    this.egress = new DockerEgressNetwork(this.docker, options.ownerId, options.egressPolicy, () => this.labels());
    this.storage = new SandboxStorage({ dir: join(options.stateDir, 'docker-sandbox-storage', options.ownerId), uid: CONTAINER_UID, gid: CONTAINER_GID, log: this.logger });
    this.sandboxStorage = {
      removeDisk: (id) => this.storage.removeDisk(id),
      removeSnapshot: (id) => this.storage.removeSnapshot(id),
      reap: (keepSandboxes, keepSnapshots) => this.storage.reap(keepSandboxes, keepSnapshots),
    };
  }

  /** `<stateDir>/docker-volumes/<ownerId>`: where this owner's sandbox disks are mounted while their container runs. */
  private get volumesDir(): string {
    return join(this.options.stateDir, 'docker-volumes', this.options.ownerId);
  }

  get prewarmStats(): PrewarmPoolStats {
    return this.pool.stats();
  }

  async probe(): Promise<ExecutorStatus> {
    try {
      const version = await this.docker.version();
      const images = await this.refreshImages();
      if (images.length === 0) {
        return { name: this.name, ready: false, reason: 'the Docker engine has no kindling images; run "kindling images build"', details: { engineVersion: version.Version } };
      }
      return { name: this.name, ready: true, reason: `Docker engine ${version.Version} reachable with ${images.length} kindling images`, details: { engineVersion: version.Version, apiVersion: version.ApiVersion, images } };
    } catch (error) {
      return { name: this.name, ready: false, reason: `the Docker engine is not reachable (${(error as Error).message}); start dockerd` };
    }
  }

  hasImage(image: string): boolean {
    return this.images.has(normalizeImageRef(image));
  }

  async refreshImages(): Promise<string[]> {
    const list = await this.docker.listImages({ filters: JSON.stringify({ reference: ['kindling/*'] }) });
    this.images = new Set(list.flatMap((image) => image.RepoTags ?? []));
    return [...this.images].sort();
  }

  private labels(extra: Record<string, string> = {}): Record<string, string> {
    return {
      ...extra,
      [LABEL_MANAGED]: 'true',
      [LABEL_OWNER]: this.options.ownerId,
      [LABEL_INSTANCE]: this.options.instanceId,
    };
  }

  private layout(): Promise<DockerCgroupLayout> {
    this.cgroupLayout ??= this.docker.info().then(
      (info: { CgroupDriver?: string; CgroupVersion?: string }) => ({
        mount: this.options.cgroupMount ?? '/sys/fs/cgroup',
        version: info.CgroupVersion === '2' ? 2 : 1,
        driver: info.CgroupDriver === 'systemd' ? 'systemd' : 'cgroupfs',
      }),
      (error: unknown) => {
        this.cgroupLayout = null;
        throw error;
      },
    );
    return this.cgroupLayout;
  }

  private async createSlot(shape: SlotShape, shapeKey: string, agentDir?: string, egress = false, rwBinds?: RunSpec['rwBinds'], roBinds?: RunSpec['roBinds']): Promise<Slot> {
    const runDir = join(this.options.stateDir, 'docker', `slot-${Math.random().toString(36).slice(2, 12)}${Date.now().toString(36)}`);
    const ioDir = join(runDir, '.io');
    let stdout: FifoReader | null = null;
    let stderr: FifoReader | null = null;
    let cgroup: SlotCgroup | null = null;
    let container: Container | null = null;
    this.creatingDirs.add(runDir);
    let egressHeld = false;
    try {
      if (egress) {
        await this.egress.acquire();
        egressHeld = true;
      }
      // Only root (the server, the engine) and the container's gid may enter: the run dir holds the code, the payloads
      // and the stdio FIFOs. The engine binds it as root, so its parent stays closed to everyone else.
      await mkdir(join(this.options.stateDir, 'docker'), { recursive: true, mode: 0o700 });
      await chmod(join(this.options.stateDir, 'docker'), 0o700);
      await mkdir(ioDir, { recursive: true, mode: 0o700 });
      for (const dir of [runDir, ioDir]) {
        await chown(dir, 0, CONTAINER_GID);
        await chmod(dir, 0o750);
      }
      // No usage FIFO: a pipe the container can open is a pipe its user can write (forged usage, or an endless stream
      // into the server's memory). Usage is read from the host's cgroupfs instead.
      await makeFifos(['launch', 'in', 'out', 'err'].map((name) => join(ioDir, name)), { mode: 0o660, gid: CONTAINER_GID });
      stdout = openFifoReader(join(ioDir, 'out'));
      stderr = openFifoReader(join(ioDir, 'err'));
      cgroup = new SlotCgroup(await this.layout(), this.options.ownerId, basename(runDir));
      const createOptions = containerCreateOptions({
        shape,
        hostRunDir: runDir,
        ...(cgroup.parent === undefined ? {} : { cgroupParent: cgroup.parent }),
        labels: this.labels({ 'dev.kindling.run-dir': runDir }),
        ...(agentDir === undefined ? {} : { agentDir }),
        ...(egress ? { network: this.egress.name } : {}),
        ...(rwBinds === undefined ? {} : { rwBinds }),
        ...(roBinds === undefined ? {} : { roBinds }),
      });
      container = await this.createAndStart(createOptions);
      cgroup.attach(container.id);
      const started = container;
      let lose: (error: KindlingError) => void = () => undefined;
      const lost = new Promise<never>((_resolve, reject) => {
        lose = reject;
      });
      lost.catch(() => undefined);
      const slot: Slot = {
        container: started,
        runDir,
        stdout,
        stderr,
        cgroup,
        shapeKey,
        // Asked after start: "not-running" answers at once if the container already stopped, so no exit is missed.
        // The engine's wait request never settles when the engine dies mid-request: the watchdog rejects it then.
        exited: Promise.race([started.wait({ condition: 'not-running' }) as Promise<{ StatusCode: number }>, lost]),
        lose: (error) => lose(error),
        dead: false,
        createdAtMs: Date.now(),
        egress,
      };
      slot.exited.then(
        () => (slot.dead = true),
        () => (slot.dead = true),
      );
      this.slots.add(slot);
      this.creatingDirs.delete(runDir);
      this.watchEngine();
      return slot;
    } catch (error) {
      // Undo in reverse order; the original error wins.
      stdout?.stream.destroy();
      stdout?.releaseKeeper();
      stderr?.stream.destroy();
      stderr?.releaseKeeper();
      if (container) await container.remove({ force: true }).catch(() => undefined);
      // An engine that died half-way leaves its `runc init` in the slot: killed here, not left for a later reap.
      await cgroup?.killAndRemove();
      await rm(runDir, { recursive: true, force: true }).catch(() => undefined);
      this.creatingDirs.delete(runDir);
      if (egressHeld) await this.egress.release().catch(() => undefined);
      throw toKindlingError(error, shape.image);
    }
  }

  /**
   * Creates and starts a container within `createTimeoutMs`. Past the deadline the caller gets a retryable error at
   * once; the engine's late answer is not awaited (a frozen engine would hold the request), but a container it still
   * makes is removed when it appears.
   */
  private async createAndStart(createOptions: Docker.ContainerCreateOptions): Promise<Container> {
    let created: Container | null = null;
    const work = (async () => {
      created = await this.docker.createContainer(createOptions);
      await created.start();
      return created;
    })();
    const timeoutMs = this.options.createTimeoutMs ?? 60_000;
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new KindlingError('EXECUTOR_UNAVAILABLE', `the Docker engine did not create and start a container within ${timeoutMs} ms (a stuck or overloaded engine); retry`, { retryAfterSeconds: 5 })), timeoutMs);
    });
    try {
      return await Promise.race([work, deadline]);
    } catch (error) {
      const late = (container: Container | null): void => void container?.remove({ force: true }).catch(() => undefined);
      // Whatever the engine made (now or when it wakes up) goes; not awaited.
      work.then(late, () => late(created));
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  private async destroySlot(slot: Slot): Promise<void> {
    slot.dead = true;
    slot.stdout.stream.destroy();
    slot.stdout.releaseKeeper();
    slot.stderr.stream.destroy();
    slot.stderr.releaseKeeper();
    await slot.container.remove({ force: true }).catch((error: unknown) => {
      if ((error as { statusCode?: number }).statusCode !== 404) throw error;
    });
    await slot.cgroup.killAndRemove();
    await rm(slot.runDir, { recursive: true, force: true });
    this.slots.delete(slot);
    if (slot.egress) {
      slot.egress = false;
      await this.egress.release();
    }
  }

  async start(spec: RunSpec, options: StartOptions = {}): Promise<Execution> {
    return (await this.startSlot(spec, options)).execution;
  }

  /** `start`, also giving the container the execution runs in (persistent sandboxes exec into it). */
  private async startSlot(spec: RunSpec, options: StartOptions = {}): Promise<{ execution: Execution; slot: Slot }> {
    if (this.closed) throw new KindlingError('SHUTTING_DOWN', 'the server is shutting down; retry on another instance');
    const egress = spec.network === 'egress';
    if (egress && this.options.egressPolicy === undefined) {
      throw new KindlingError('UNSUPPORTED_NETWORK', 'network "egress" is not enabled on this server\'s docker executor; use "none"');
    }
    const shape = shapeOf(spec);
    const shapeKey = shapeKeyOf(shape);
    // A warm sandbox needs its agent dir bound at creation, an egress one its network, a persistent sandbox with a
    // disk its binds: never a prewarmed container.
    const generic = spec.agentDir === undefined && !egress && spec.rwBinds === undefined && spec.roBinds === undefined;
    const prewarmed = generic ? this.pool.take(shapeKey) : null;
    const slot = prewarmed ?? (await this.createSlot(shape, shapeKey, spec.agentDir, egress, spec.rwBinds, spec.roBinds));
    try {
      // A client gone while the container was being made: the slot is destroyed below, not left running.
      options.signal?.throwIfAborted();
      const execution = await this.launch(slot, spec, options, prewarmed === null);
      // Only a shape that just started successfully is worth keeping warm.
      if (generic) this.pool.replenish(shapeKey);
      return { execution, slot };
    } catch (error) {
      await this.destroySlot(slot).catch(() => undefined);
      throw toKindlingError(error, spec.image);
    }
  }

  private async launch(slot: Slot, spec: RunSpec, options: StartOptions, coldStart: boolean): Promise<Execution> {
    const ioDir = join(slot.runDir, '.io');
    await Promise.all(
      spec.files.map(async (file) => {
        const target = join(slot.runDir, file.name);
        await writeFile(target, file.content, { mode: 0o600 });
        await chown(target, 0, CONTAINER_GID);
        await chmod(target, 0o640);
      }),
    );
    const script = buildLaunchScript({
      command: spec.command,
      env: spec.env,
      workdir: spec.workdir,
      stdinPath: spec.stdin ? `${GUEST_IO_DIR}/in` : null,
      stdoutPath: `${GUEST_IO_DIR}/out`,
      stderrPath: `${GUEST_IO_DIR}/err`,
    });
    const launchTimeoutMs = this.options.launchTimeoutMs ?? 30_000;
    const launchAbort = new AbortController();
    void slot.exited.then(() => launchAbort.abort(), () => launchAbort.abort());
    const launchWriter = await openFifoWriter(join(ioDir, 'launch'), { timeoutMs: launchTimeoutMs, signal: launchAbort.signal });
    // The execution's books open when its command is handed over (a prewarmed container's idle shell is not its).
    slot.cgroup.begin();
    await new Promise<void>((resolve, reject) => {
      launchWriter.once('error', reject);
      launchWriter.end(script, () => resolve());
    });
    launchWriter.destroy();

    let killed = false;
    const kill = (): void => {
      if (killed || slot.dead) return;
      killed = true;
      slot.container.kill({ signal: 'SIGKILL' }).catch(() => undefined);
    };
    const onAbort = (): void => kill();
    options.signal?.addEventListener('abort', onAbort, { once: true });

    let stdin: PassThrough | null = null;
    if (spec.stdin) {
      const input = new PassThrough();
      stdin = input;
      openFifoWriter(join(ioDir, 'in'), { timeoutMs: launchTimeoutMs, signal: launchAbort.signal }).then(
        (writer) => {
          writer.on('error', () => input.destroy());
          input.pipe(writer);
          // The process may exit without reading everything; stop feeding it then.
          void slot.exited.then(() => writer.destroy());
        },
        () => input.resume(),
      );
    }

    const streamsEnded = Promise.all([
      new Promise<void>((resolve) => slot.stdout.stream.once('close', () => resolve())),
      new Promise<void>((resolve) => slot.stderr.stream.once('close', () => resolve())),
    ]);
    const waitResult: Promise<ExitInfo> = (async () => {
      const { StatusCode: exitCode } = await slot.exited;
      // The process tree is gone: let the readers see end-of-file after the last bytes.
      slot.stdout.releaseKeeper();
      slot.stderr.releaseKeeper();
      options.signal?.removeEventListener('abort', onAbort);
      let oomKilled = false;
      if (exitCode === 137) {
        const info = await slot.container.inspect().catch(() => null);
        oomKilled = info?.State.OOMKilled === true;
        // containerd's exit and OOM events race: the engine may record the exit first and then never set OOMKilled.
        // Its "oom" event is logged whenever it comes, so a SIGKILL Kindling did not send is checked against it.
        if (!oomKilled && !killed) oomKilled = (await this.pastEvents(slot, ['oom'], Date.now() + OOM_EVENT_GRACE_MS)).has('oom');
      }
      // Killed by a signal that Kindling did not send: a stopping engine (systemctl restart docker) or an operator's
      // `docker stop` ended the run, not the user's code. That is the platform failing, with a retryable error.
      if (exitCode > 128 && !killed && !oomKilled && (await this.stoppedByEngine(slot))) {
        throw new KindlingError('EXECUTOR_UNAVAILABLE', 'the Docker engine stopped the container during the execution (an engine restart or "docker stop"), which is lost; retry', { retryAfterSeconds: 5 });
      }
      await streamsEnded;
      // The container's parent cgroup keeps the counters after the container's own is gone: the whole run, whatever
      // ended it (exit, timeout, OOM, kill), read on the host.
      const usage = slot.cgroup.usage() ?? { cpuMs: null, memoryPeakBytes: null };
      return { exitCode, signal: killed || oomKilled ? 'SIGKILL' : signalOfExitCode(exitCode), oomKilled, usage };
    })();

    const disposed = waitResult
      .catch(() => undefined)
      .then(() => this.destroySlot(slot))
      .catch((error: unknown) => this.logger.warn({ err: error, executionId: spec.id }, 'removing a container failed; the reaper will retry'))
      .finally(() => this.live.delete(spec.id));
    this.live.set(spec.id, { slot, kill, done: disposed });

    return {
      stdin,
      stdout: slot.stdout.stream,
      stderr: slot.stderr.stream,
      coldStart,
      wait: () => waitResult,
      kill,
      usageNow: () => slot.cgroup.usage(),
      disposed,
    };
  }

  /**
   * A long-lived container whose main process is a resident agent (see shared/agent-sandbox.ts): the agent's socket
   * dir is bound at /.kindling-agent; calls go over the socket, never through `docker exec`.
   */
  async createWarmSandbox(spec: RunSpec, options: StartOptions = {}): Promise<WarmSandbox> {
    return startAgentSandbox((s, o) => this.start(s, o), spec, { agentsDir: this.agentsDir, sandboxGid: CONTAINER_GID }, options);
  }

  /**
   * A long-lived container that runs many commands through the engine's exec (see persistent.ts); same hardening,
   * limits, labels and metering as `start`.
   */
  async createPersistentSandbox(spec: RunSpec, options: PersistentSandboxOptions = {}): Promise<PersistentSandbox> {
    if (this.closed) throw new KindlingError('SHUTTING_DOWN', 'the server is shutting down; retry on another instance');
    const start = async (s: RunSpec, o: StartOptions): Promise<{ execution: Execution; container: Container; cgroup: SlotCgroup }> => {
      const { execution, slot } = await this.startSlot(s, o);
      return { execution, container: slot.container, cgroup: slot.cgroup };
    };
    const storage = {
      attach: async (id: string, diskMb: number, fromSnapshot: string | null): Promise<Volume> => {
        this.attaching++;
        try {
          await mkdir(this.volumesDir, { recursive: true, mode: 0o700 });
          const volume = await this.storage.attach(id, diskMb, fromSnapshot, this.volumesDir);
          const dir = dirname(volume.work);
          this.volumes.add(dir);
          const detach = volume.detach;
          return { ...volume, detach: () => detach().finally(() => this.volumes.delete(dir)) };
        } finally {
          this.attaching--;
        }
      },
      snapshot: (volume: Volume, snapshotId: string) => this.storage.snapshot(volume, snapshotId),
    };
    return startDockerPersistentSandbox({ docker: this.docker, start, storage }, spec, options);
  }

  private get agentsDir(): string {
    return join(this.options.stateDir, 'docker-agents');
  }

  /**
   * While containers exist, the engine is pinged every `engineCheckIntervalMs`. A dead engine (connection refused, socket
   * gone) never answers the wait requests it had open, so without this an execution in flight would hang forever: each
   * slot is marked dead and its wait rejected with a retryable EXECUTOR_UNAVAILABLE, and idle prewarmed containers are
   * dropped. When the engine answers again, what the lost slots left (their stopped containers, run dirs) is removed.
   * A slow answer (a loaded machine) is not a loss: only a refused or missing socket is.
   */
  private watchEngine(): void {
    if (this.watchdog !== null || this.closed) return;
    this.watchdog = setInterval(() => void this.checkEngine(), this.options.engineCheckIntervalMs ?? 1000);
    this.watchdog.unref();
  }

  private async checkEngine(): Promise<void> {
    if (this.pinging) return;
    this.pinging = true;
    try {
      await this.docker.ping();
      if (this.engineLost) {
        this.engineLost = false;
        this.logger.info({}, 'the Docker engine is back; removing what the lost containers left');
        await this.removeLostSlots();
        await this.reap().catch((error: unknown) => this.logger.warn({ err: error }, 'reaping after the engine came back failed'));
      }
      if (this.slots.size === 0 && this.live.size === 0 && this.watchdog !== null) {
        clearInterval(this.watchdog);
        this.watchdog = null;
      }
    } catch (error) {
      // Only a definite absence (nobody listens, the socket is gone) is a loss: a reset connection on a loaded machine
      // must not fail every execution in flight; the next ping of a dead engine is refused anyway.
      const code = (error as NodeJS.ErrnoException | undefined)?.code;
      if ((code !== 'ECONNREFUSED' && code !== 'ENOENT') || this.engineLost) return;
      this.engineLost = true;
      this.logger.warn({ err: error, containers: this.slots.size }, 'the Docker engine is gone; failing the executions in flight');
      const lostError = new KindlingError('EXECUTOR_UNAVAILABLE', 'the Docker engine went away during the execution, which is lost; retry once the engine is back', { cause: error, retryAfterSeconds: 5 });
      for (const slot of this.slots) {
        slot.dead = true;
        slot.lose(lostError);
      }
      this.pool.dropDead();
    } finally {
      this.pinging = false;
    }
  }

  /**
   * Whether the engine sent the container a `kill` (Kindling only ever kills with SIGKILL itself, and marks that): the
   * container's past events are read once (since its creation, until now). An engine that stops answering meanwhile is
   * shutting down: that counts too.
   */
  private async stoppedByEngine(slot: Slot): Promise<boolean> {
    const seen = await this.pastEvents(slot, ['kill']);
    return seen.has('kill') || seen.has(ENGINE_UNREACHABLE);
  }

  /**
   * Which of `events` the engine logged for the slot's container since its creation, read once up to `untilMs` (now by
   * default; a time ahead holds the answer until then, for an event that may still come). An engine that does not
   * answer is reported as ENGINE_UNREACHABLE.
   */
  private async pastEvents(slot: Slot, events: string[], untilMs = Date.now()): Promise<Set<string>> {
    try {
      const stream = await this.docker.getEvents({
        since: Math.floor(slot.createdAtMs / 1000) - 1,
        // To the nanosecond (the engine accepts fractions): a whole second ahead would hold the answer back until then.
        until: (untilMs / 1000).toFixed(9) as unknown as number,
        filters: JSON.stringify({ container: [slot.container.id], event: events }),
      });
      const chunks: Buffer[] = [];
      for await (const chunk of stream) chunks.push(Buffer.from(chunk as Buffer));
      const text = Buffer.concat(chunks).toString('utf8');
      return new Set(events.filter((event) => text.includes(`"${event}"`)));
    } catch (error) {
      return new Set(isEngineUnreachable(error) ? [ENGINE_UNREACHABLE] : []);
    }
  }

  /** Slots of the lost engine whose removal failed while it was down (not those still finishing an execution). */
  private async removeLostSlots(): Promise<void> {
    const running = new Set([...this.live.values()].map((entry) => entry.slot));
    const lost = [...this.slots].filter((slot) => slot.dead && !running.has(slot));
    await Promise.allSettled(lost.map((slot) => this.destroySlot(slot)));
  }

  async reap(): Promise<ReapReport> {
    const containers = await this.docker.listContainers({
      all: true,
      filters: JSON.stringify({ label: [`${LABEL_MANAGED}=true`, `${LABEL_OWNER}=${this.options.ownerId}`] }),
    });
    const ourContainers = new Set([...this.slots].map((slot) => slot.container.id));
    const orphans = containers.filter(
      (info) => !ourContainers.has(info.Id) && !this.creatingDirs.has(info.Labels['dev.kindling.run-dir'] ?? ''),
    );
    await Promise.allSettled(orphans.map((info) => this.docker.getContainer(info.Id).remove({ force: true })));
    const ourDirs = new Set([...this.slots].map((slot) => slot.runDir));
    const base = join(this.options.stateDir, 'docker');
    const entries = await readdir(base).catch(() => [] as string[]);
    let removedDirs = 0;
    for (const entry of entries) {
      const dir = join(base, entry);
      if (ourDirs.has(dir) || this.creatingDirs.has(dir)) continue;
      await rm(dir, { recursive: true, force: true });
      removedDirs++;
    }
    // Agent socket dirs are named after the warm sandbox's spec id; those of containers not alive here are leftovers.
    const liveAgents = new Set(this.live.keys());
    for (const entry of await readdir(this.agentsDir).catch(() => [] as string[])) {
      if (liveAgents.has(entry)) continue;
      await rm(join(this.agentsDir, entry), { recursive: true, force: true });
      removedDirs++;
    }
    // Parent cgroups of containers that are gone (removed above, or by an earlier run).
    {
      const layout = await this.layout().catch(() => null);
      const ourSlots = new Set([...[...this.slots].map((slot) => slot.runDir), ...this.creatingDirs].map((dir) => basename(dir)));
      for (const name of layout === null ? [] : listSlotCgroups(layout, this.options.ownerId)) {
        if (ourSlots.has(name)) continue;
        // The slot's container is gone (removed above or earlier): whatever still runs in it is an orphan.
        await new SlotCgroup(layout!, this.options.ownerId, name).killAndRemove();
        removedDirs++;
      }
    }
    removedDirs += await this.egress.reap();
    removedDirs += await this.reapVolumes();
    if (orphans.length > 0 || removedDirs > 0) {
      this.logger.info({ containers: orphans.length, runDirs: removedDirs }, 'reaped resources left by an earlier run');
    }
    return { removed: orphans.length + removedDirs };
  }

  /**
   * Disks of persistent sandboxes still mounted by an earlier run (a server killed with -9: its containers were
   * removed above): unmounted (lazily: a container still using one keeps it until it is gone), never deleted (the
   * files are the sandbox's; its disk image stays until `sandboxStorage.removeDisk`). Only empty dirs are removed
   * (rmdir), so a mount that did not go never has its files deleted.
   */
  private async reapVolumes(): Promise<number> {
    if (this.attaching > 0) return 0;
    let removed = 0;
    for (const entry of await readdir(this.volumesDir).catch(() => [] as string[])) {
      const dir = join(this.volumesDir, entry);
      // A disk being mounted meanwhile may be this one: left for the next reap.
      if (this.attaching > 0) break;
      if (this.volumes.has(dir)) continue;
      // Deepest first: the overlay (work) before the disk it lives on.
      for (const point of mountsUnder(dir).sort((a, b) => b.length - a.length)) {
        await execFileAsync('/usr/bin/umount', ['-l', point], { env: {} }).catch(() => {});
      }
      for (const sub of ['work', 'disk', '']) await rmdir(join(dir, sub)).catch(() => {});
      removed++;
    }
    return removed;
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.storage.closePool().catch(() => {});
    await this.pool.close();
    // The watchdog keeps running meanwhile: an engine that dies now must not leave these waits hanging.
    await Promise.allSettled([...this.live.values()].map((entry) => entry.done));
    // Whatever is left (a slot whose launch failed half-way) goes too: close() leaves no container behind.
    await Promise.allSettled([...this.slots].map((slot) => this.destroySlot(slot)));
    // And a container this instance lost track of: an engine restart can break an execution's wait before the
    // watchdog sees the engine gone, so nothing else would remove what the engine kept of it.
    await this.reap().catch((error: unknown) => this.logger.warn({ err: error }, 'the last reap before closing failed'));
    const layout = this.cgroupLayout === null ? null : await this.cgroupLayout.catch(() => null);
    if (layout !== null) removeOwnerDirs(layout, this.options.ownerId);
    if (this.watchdog !== null) clearInterval(this.watchdog);
    this.watchdog = null;
  }

  async destroy(): Promise<void> {
    this.closed = true;
    for (const entry of this.live.values()) entry.kill();
    await this.close();
  }
}

