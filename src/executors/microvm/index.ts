// Over 400 lines: the drivers' common lifecycle (snapshots, warm pool, VM cgroups, reaping, persistent sandboxes' VMs) shares one state; the drivers themselves are in qemu.ts and firecracker.ts, the sandbox in persistent.ts.
/**
 * The microvm executor: one VM per execution, hardware isolation. Drivers: `qemu` (here: `-M microvm`, TCG without
 * KVM) and `firecracker` (needs /dev/kvm; see firecracker.ts). The VM boots Debian's kernel with the project's
 * initramfs, the image's ext4 (same recipe as the other executors) read-only through a per-VM qcow2 overlay, and the
 * guest agent (agent/vm/) on a read-only agent disk.
 *
 * Start-up, fastest first: a VM from the warm pool (restored ahead of demand), a VM restored from the snapshot of a
 * booted, agent-ready VM of the same shape (QMP migrate to a file, `-incoming`), a cold boot (the first time a shape is
 * seen, which also writes its snapshot).
 *
 * Limits: vCPUs = ceil(cpus); VM memory = the request rounded up to a bucket (so shapes share snapshots) plus the guest
 * overhead; inside the guest the exec's cgroup enforces memoryMb, pids and the cpu quota exactly; /tmp and the working
 * directory are tmpfs of diskMb; the timeout backstop (timeoutMs + grace) and kill() kill the whole VM.
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, statSync, type Dirent } from 'node:fs';
import * as fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { KindlingError } from '../../core/errors.js';
import type { RunSpec } from '../../core/types.js';
import { IMAGE_SHORT_NAMES, findRecipe } from '../../images/recipes.js';
import { noopLogger, type Logger } from '../shared/logger.js';
import { DEFAULT_PREWARM_PER_SHAPE, type ExecutorBaseOptions } from '../shared/options.js';
import type { Execution, Executor, ExecutorStatus, ExitInfo, PersistentSandbox, PersistentSandboxOptions, ReapReport, StartOptions } from '../executor.js';
import { createCgroupDriver, type Cgroup, type CgroupDriver } from '../shared/cgroups.js';
import { PrewarmPool } from '../shared/prewarm-pool.js';
import { outdatedAssets, readAssets, DEFAULT_MICROVM_ASSETS_DIR, type MicroVmAssets } from './assets.js';
import type { AgentClient, DetachedStreams } from './agent-client.js';
import { FirecrackerVm, firecrackerBootArgs, firecrackerUnavailable, snapshotFiles, type FirecrackerConfig } from './firecracker.js';
import { QemuVm, hostTscKhz, kvmUsable, type Accelerator, type QemuConfig, type VmShape } from './qemu.js';
import { reapSnapshots, reapVmDirs, trimSnapshots } from './reap.js';
import { MicroVmPersistentSandbox } from './persistent.js';
import { MicroVmSandboxStorage, type HibernationRecord } from './sandbox-storage.js';
import { BindDisks, type BindDisk } from './bind-disks.js';
import { FEATURE_BINDS } from '../../../agent/vm/protocol.js';

/** What the executor needs of a VM, whichever driver runs it. */
export interface MicroVm {
  readonly alive: boolean;
  readonly agent: AgentClient;
  readonly vmDir: string;
  readyMs: number;
  kill(): void;
  destroy(): Promise<void>;
  /** Writes a snapshot named `file` (Firecracker adds `file.mem`); the VM is left paused. */
  snapshot(file: string): Promise<void>;
}

/**
 * What the base options (shared/options.ts) mean for this executor: stateDir: per-VM directories (overlay, sockets) and
 * snapshots live under `${stateDir}/microvm`. prewarmPerShape: VMs restored ahead of demand per recently used shape
 * (default 1, at most `prewarmMaxVms` in all). No egress: the VMs have no NIC, so `egressPolicy` is not taken and
 * network "egress" is UNSUPPORTED_NETWORK.
 */
export interface MicroVmExecutorOptions extends Omit<ExecutorBaseOptions, 'egressPolicy'> {
  driver?: 'qemu' | 'firecracker';
  imagesDir: string;
  assetsDir?: string;
  /** 'auto' = KVM when /dev/kvm is usable, else TCG. */
  accel?: Accelerator | 'auto';
  qemuBinary?: string;
  qemuImgBinary?: string;
  firecrackerBinary?: string;
  /** Run Firecracker under the jailer (chroot, uid/gid); snapshots are not used then. Default: no jailer. */
  jailer?: FirecrackerConfig['jailer'];
  /**
   * Shape snapshots not restored from and bind disks not asked for in this long are removed: by reap() at start-up,
   * then every quarter of it (at most hourly) while the server runs. Default 24 h.
   */
  snapshotMaxAgeMs?: number;
  /** Shape snapshots kept at most (each one a VM's memory); beyond it the least recently restored go. Default 64. */
  snapshotMaxCount?: number;
  /** Guest memory on top of the (bucketed) request: kernel, agent, page cache. Default 160 MiB. */
  memoryOverheadMb?: number;
  /** Restore from snapshots instead of booting. Default true. */
  snapshots?: boolean;
  /** Prewarmed VMs of all shapes together at most (each holds its guest memory). Default 4. */
  prewarmMaxVms?: number;
  /** Boot (or restore) to agent-ready limit. Default 180 s (TCG on a loaded host is slow). */
  readyTimeoutMs?: number;
  /** Extra time past limits.timeoutMs before the executor kills the VM itself. Default 2 s. */
  timeoutGraceMs?: number;
}

const NOBODY = 65534;

interface Shape extends VmShape {
  image: string;
}

/** VM memory for a request: rounded up to 256 MiB steps so most requests share one snapshot, plus the overhead. */
export function vmMemoryMb(requestMb: number, overheadMb: number): number {
  return Math.max(256, Math.ceil(requestMb / 256) * 256) + overheadMb;
}

/**
 * The name of a shape's snapshot: everything the restored guest depends on. The root image as written (size, mtime),
 * and each bind disk as made (inode, birth, size): one removed by ageOut() and made again is another file system (mkfs
 * picks a new UUID), and a guest restored from a snapshot of the old one has its first blocks cached from the init's
 * findfs.
 */
export function snapshotKey(input: { driver: string; shape: VmShape; accel: string; assetsHash: string }): string {
  const { shape } = input;
  const image = statSync(shape.rootImage);
  const binds = (shape.binds ?? []).map((bind) => {
    const disk = statSync(bind.file);
    return [bind.file, bind.label, bind.target, disk.ino, disk.birthtimeMs, disk.size];
  });
  return createHash('sha256')
    .update(JSON.stringify([input.driver, shape.rootImage, image.size, image.mtimeMs, shape.vcpus, shape.memoryMb, input.accel, input.assetsHash, binds]))
    .digest('hex')
    .slice(0, 16);
}

export class MicroVmExecutor implements Executor {
  readonly name = 'microvm' as const;

  /** A VM booting under emulation (QEMU without KVM) may take minutes on a loaded machine: its own ready timeout bounds it. */
  get maxStartMs(): number {
    return (this.options.readyTimeoutMs ?? 180_000) + 30_000;
  }
  private readonly options: MicroVmExecutorOptions;
  private readonly logger: Logger;
  private readonly baseDir: string;
  private readonly vms = new Set<MicroVm>();
  private readonly creating = new Set<string>();
  private readonly snapshots = new Map<string, Promise<string | null>>();
  private readonly live = new Map<string, { kill(): void; done: Promise<void> }>();
  private readonly pool: PrewarmPool<MicroVm>;
  /** Host cgroups for VM processes (undefined: not set up yet; null: not usable here). */
  private cgroups: CgroupDriver | null | undefined;
  private assets: MicroVmAssets | null = null;
  private images = new Map<string, string>();
  private closed = false;
  private counter = 0;
  private storage: MicroVmSandboxStorage | undefined;
  /** Live persistent sandboxes: close() ends them through destroy(), which writes their files out first. */
  private readonly sandboxes = new Set<MicroVmPersistentSandbox>();
  /**
   * Per hibernated sandbox: the streams of its background commands, taken along to the VM restored from its image
   * (the guest agent runs them on under the same ids). Ended when the restore fails or the image is removed.
   */
  private readonly hibernatedStreams = new Map<string, DetachedStreams>();
  /** Disks of the host directories a run binds (bundles, dependency layers), and those live VMs have attached. */
  private readonly bindDisks: BindDisks;
  private readonly vmBindFiles = new Map<MicroVm, string[]>();
  /** Snapshot files and bind disks a VM is being started from, with how many starts use each (kept from ageOut()). */
  private readonly filesStarting = new Map<string, number>();
  private ageOutTimer: NodeJS.Timeout | undefined;
  private ageOutRunning: Promise<number> | undefined;

  constructor(options: MicroVmExecutorOptions) {
    this.options = options;
    this.logger = options.logger ?? noopLogger;
    this.baseDir = path.join(options.stateDir, 'microvm');
    this.bindDisks = new BindDisks({ dir: path.join(this.baseDir, 'binds') });
    this.pool = new PrewarmPool<MicroVm>({
      create: (key) => this.createVm(JSON.parse(key) as Shape),
      destroy: (vm) => this.destroyVm(vm),
      isAlive: (vm) => vm.alive && !vm.agent.closed,
      sizePerKey: options.prewarmPerShape ?? DEFAULT_PREWARM_PER_SHAPE.microvm,
      maxItems: options.prewarmMaxVms ?? 4,
      idleTtlMs: options.prewarmIdleTtlMs ?? 300_000,
      onError: (error, key) => this.logger.warn({ err: error, shape: key }, 'warming a microVM failed'),
    });
  }

  get accel(): Accelerator {
    const wanted = this.options.accel ?? 'auto';
    return wanted === 'auto' ? (kvmUsable() ? 'kvm' : 'tcg') : wanted;
  }

  private async config(): Promise<QemuConfig> {
    this.assets ??= await readAssets(this.options.assetsDir ?? DEFAULT_MICROVM_ASSETS_DIR);
    if (!this.assets) {
      const dir = this.options.assetsDir ?? DEFAULT_MICROVM_ASSETS_DIR;
      throw new KindlingError('EXECUTOR_UNAVAILABLE', (await outdatedAssets(dir)) ?? 'the microvm kernel/initramfs/agent disk are missing; run "kindling images build --microvm"');
    }
    return {
      qemuBinary: this.options.qemuBinary ?? 'qemu-system-x86_64',
      qemuImgBinary: this.options.qemuImgBinary ?? 'qemu-img',
      assets: this.assets,
      accel: this.accel,
      tscKhz: this.accel === 'tcg' ? hostTscKhz() : null,
    };
  }

  get driver(): 'qemu' | 'firecracker' {
    return this.options.driver ?? 'qemu';
  }

  private async firecrackerConfig(): Promise<FirecrackerConfig> {
    const { assets } = await this.config();
    if (!assets.vmlinux) throw new KindlingError('EXECUTOR_UNAVAILABLE', 'the microvm assets have no vmlinux (Firecracker needs it); run "kindling images build --microvm"');
    return {
      firecrackerBinary: this.options.firecrackerBinary ?? 'firecracker',
      jailer: this.options.jailer ?? null,
      kernel: assets.vmlinux,
      initramfs: assets.initramfs,
      agentDisk: assets.agentDisk,
      bootArgs: firecrackerBootArgs(),
    };
  }

  async probe(): Promise<ExecutorStatus> {
    if (this.driver === 'firecracker') {
      const missing = firecrackerUnavailable(this.options.firecrackerBinary ?? 'firecracker', kvmUsable());
      if (missing) return { name: this.name, ready: false, reason: `the firecracker driver cannot run VMs here: ${missing}; use driver qemu` };
      try {
        const config = await this.firecrackerConfig();
        const images = await this.refreshImages();
        if (images.length === 0) return { name: this.name, ready: false, reason: 'no image has an ext4 file; run "kindling images build --microvm"' };
        return { name: this.name, ready: true, reason: `Firecracker with ${images.length} images`, details: { driver: 'firecracker', kernel: config.kernel, images } };
      } catch (error) {
        return { name: this.name, ready: false, reason: (error as Error).message };
      }
    }
    const qemu = this.options.qemuBinary ?? 'qemu-system-x86_64';
    const found = qemu.includes('/') ? existsSync(qemu) : (process.env.PATH ?? '').split(':').some((dir) => existsSync(path.join(dir, qemu)));
    if (!found) return { name: this.name, ready: false, reason: `${qemu} is not installed (Debian: qemu-system-x86)` };
    try {
      const config = await this.config();
      const images = await this.refreshImages();
      if (images.length === 0) return { name: this.name, ready: false, reason: 'no image has an ext4 file; run "kindling images build --microvm"' };
      return {
        name: this.name,
        ready: true,
        reason: `QEMU microvm (${config.accel}) with kernel ${config.assets.stamp.kernelVersion} and ${images.length} images`,
        details: { driver: 'qemu', accel: config.accel, kernel: config.assets.stamp.kernelVersion, images },
      };
    } catch (error) {
      return { name: this.name, ready: false, reason: (error as Error).message };
    }
  }

  hasImage(image: string): boolean {
    const untagged = image.replace(/:latest$/, '');
    return this.images.has(findRecipe(untagged)?.name ?? untagged);
  }

  async refreshImages(): Promise<string[]> {
    const found = new Map<string, string>();
    for (const short of IMAGE_SHORT_NAMES) {
      const recipe = findRecipe(short);
      const file = path.join(this.options.imagesDir, short, 'rootfs.ext4');
      if (recipe && existsSync(file)) found.set(recipe.name, file);
    }
    // Custom images (images/custom.ts): `u.<tenant>.<name>` and `s.<name>` beside the built-in ones, by their own name.
    let entries: Dirent[] = [];
    try {
      entries = readdirSync(this.options.imagesDir, { withFileTypes: true });
    } catch {
      // No images dir yet: no custom images either.
    }
    for (const short of entries.filter((e) => e.isDirectory() && /^[us]\.[a-z0-9][a-z0-9.-]*$/.test(e.name)).map((e) => e.name)) {
      const file = path.join(this.options.imagesDir, short, 'rootfs.ext4');
      if (existsSync(file)) found.set(`kindling/${short}`, file);
    }
    this.images = found;
    return [...found.keys()].sort();
  }

  private shapeOf(spec: RunSpec): Shape {
    const untagged = spec.image.replace(/:latest$/, '');
    const name = findRecipe(untagged)?.name ?? untagged;
    const rootImage = this.images.get(name);
    if (!rootImage) {
      throw new KindlingError('UNKNOWN_IMAGE', `image ${spec.image} has no ext4 for microVMs; run "kindling images build --microvm"`);
    }
    const vcpus = Math.max(1, Math.min(os.availableParallelism(), Math.ceil(spec.limits.cpus)));
    return { image: name, rootImage, vcpus, memoryMb: vmMemoryMb(spec.limits.memoryMb, this.options.memoryOverheadMb ?? 160) };
  }

  private newVmDir(): string {
    return path.join(this.baseDir, 'vms', `vm-${process.pid}-${(this.counter++).toString(36)}-${Math.random().toString(36).slice(2, 8)}`);
  }

  /** The snapshot of a shape, made once by booting a template VM; null when snapshots are off or failed. */
  private snapshotFor(shape: Shape, config: QemuConfig): Promise<string | null> {
    if (this.options.snapshots === false || (this.driver === 'firecracker' && this.options.jailer)) return Promise.resolve(null);
    const key = snapshotKey({ driver: this.driver, shape, accel: config.accel, assetsHash: config.assets.stamp.inputsHash });
    let pending = this.snapshots.get(key);
    if (!pending) {
      pending = (async () => {
        const file = path.join(this.baseDir, 'snapshots', `${key}.vmstate`);
        if (this.snapshotComplete(file)) return file;
        await fs.mkdir(path.dirname(file), { recursive: true });
        const vm = await this.bootVm(shape);
        try {
          const tmp = `${file}.${process.pid}.tmp`;
          const startedAt = performance.now();
          await vm.snapshot(tmp);
          if (this.driver === 'firecracker') await fs.rename(snapshotFiles(tmp).memory, snapshotFiles(file).memory);
          await fs.rename(tmp, file);
          this.logger.info({ image: shape.image, memoryMb: shape.memoryMb, bootMs: Math.round(vm.readyMs), snapshotMs: Math.round(performance.now() - startedAt) }, 'microVM snapshot written');
          // One more snapshot: keep their number bounded (snapshotMaxCount) now, not at the next hourly pass.
          this.ageOut().catch((error: unknown) => this.logger.warn({ err: error }, 'removing unused microVM snapshots failed'));
          return file;
        } finally {
          await this.destroyVm(vm);
        }
      })().catch((error: unknown) => {
        this.logger.warn({ err: error }, 'making a microVM snapshot failed; booting instead');
        this.snapshots.delete(key);
        return null;
      });
      this.snapshots.set(key, pending);
    }
    return pending;
  }

  private snapshotComplete(file: string): boolean {
    return existsSync(file) && (this.driver !== 'firecracker' || existsSync(snapshotFiles(file).memory));
  }

  /**
   * A host cgroup for one VM process: its vCPUs as the CPU quota, a pids cap, and memory capped at the guest's memory
   * plus QEMU's own overhead (TCG's translation cache can take up to 1 GiB). Left out, with one log line, where cgroups
   * are not usable.
   */
  private vmCgroup(name: string, shape: Shape): { cgroup?: Cgroup } {
    const driver = this.cgroupDriver();
    if (driver === null) return {};
    return { cgroup: driver.create(name, { cpus: shape.vcpus, pidsMax: 256, memoryBytes: (shape.memoryMb + 1024 + 256) * 1024 * 1024 }) };
  }

  private cgroupDriver(): CgroupDriver | null {
    if (this.cgroups === undefined) {
      const driver = createCgroupDriver({ ownerId: this.options.ownerId, parent: 'kindling-vm' });
      const problem = driver.check();
      if (problem !== null) this.logger.warn({ problem }, 'VM processes run without a host cgroup');
      this.cgroups = problem === null ? driver : null;
    }
    return this.cgroups;
  }

  /** Boots a VM, or restores one from `incoming`; a restored VM gets fresh randomness before anything runs in it. */
  private async bootVm(shape: Shape, incoming?: string, extra: { dataDisk?: string; firstStream?: number; adopt?: DetachedStreams } = {}): Promise<MicroVm> {
    const vmDir = this.newVmDir();
    this.creating.add(vmDir);
    // Claimed before the first await: ageOut() leaves them alone from here until the VM is up (then it is in vmBindFiles).
    const files = [...(incoming === undefined || extra.dataDisk !== undefined ? [] : [incoming]), ...(shape.binds ?? []).map((bind) => bind.file)];
    for (const file of files) this.filesStarting.set(file, (this.filesStarting.get(file) ?? 0) + 1);
    try {
      const common = {
        shape,
        vmDir,
        owner: this.options.ownerId,
        name: `kindling-${this.options.instanceId}-${path.basename(vmDir)}`.replace(/[^a-zA-Z0-9-]/g, '-').slice(0, 64),
        readyTimeoutMs: this.options.readyTimeoutMs ?? 180_000,
        ...(incoming ? { incoming } : {}),
        ...extra,
      };
      const vm: MicroVm =
        this.driver === 'firecracker'
          ? await FirecrackerVm.start({ ...common, config: await this.firecrackerConfig() })
          : await QemuVm.start({ ...common, config: await this.config(), ...this.vmCgroup(path.basename(vmDir), shape) });
      this.vms.add(vm);
      if (shape.binds !== undefined) this.vmBindFiles.set(vm, shape.binds.map((bind) => bind.file));
      if (incoming) {
        try {
          // Every clone of a snapshot starts with the same kernel RNG state: reseed it before user code runs.
          const seeded = await vm.agent.seed(randomBytes(64));
          if (!seeded.reseeded) this.logger.warn({ vmDir }, 'the guest CRNG was not reseeded after a restore (bytes mixed in only)');
          const now = new Date();
          if (extra.dataDisk === undefined) await fs.utimes(incoming, now, now).catch(() => undefined); // last use, for reapSnapshots
        } catch (error) {
          await this.destroyVm(vm);
          throw error;
        }
      }
      // The guest has no RTC (rtc=off): booted, its clock starts at 1970; restored, it is the time of the save (hours
      // ago for a shape snapshot, days for a hibernation). User code sees the host's time from the first command on.
      await vm.agent.setClock().catch((error: unknown) => this.logger.warn({ err: error, vmDir }, 'the guest clock was not set (agent too old?)'));
      return vm;
    } finally {
      this.creating.delete(vmDir);
      for (const file of files) {
        const uses = (this.filesStarting.get(file) ?? 1) - 1;
        if (uses > 0) this.filesStarting.set(file, uses);
        else this.filesStarting.delete(file);
      }
    }
  }

  /** What a VM's saved state depends on: the shape's snapshot key (kernel, agent, root image, memory, vcpus, accelerator). */
  private async machineKey(shape: Shape): Promise<string> {
    const config = await this.config();
    return snapshotKey({ driver: this.driver, shape, accel: config.accel, assetsHash: config.assets.stamp.inputsHash });
  }

  /** A fresh agent-ready VM: restored from the shape's snapshot, or booted. */
  private async createVm(shape: Shape): Promise<MicroVm> {
    this.startAgeOut();
    const config = await this.config();
    const snapshot = await this.snapshotFor(shape, config);
    // Checked in the same synchronous step as bootVm's claim on it: a snapshot ageOut() removed since it was cached
    // (a small --microvm-max-snapshots, or the hourly pass) is not restored from; this VM boots, the next makes it again.
    if (snapshot !== null && !this.snapshotComplete(snapshot)) {
      this.snapshots.delete(path.basename(snapshot, '.vmstate'));
      return this.bootVm(shape);
    }
    return this.bootVm(shape, snapshot ?? undefined);
  }

  private async destroyVm(vm: MicroVm): Promise<void> {
    await vm.destroy();
    this.vms.delete(vm);
    this.vmBindFiles.delete(vm);
  }

  async start(spec: RunSpec, options: StartOptions = {}): Promise<Execution> {
    if (this.closed) throw new KindlingError('SHUTTING_DOWN', 'the server is shutting down; retry on another instance');
    if (spec.network !== 'none') throw new KindlingError('UNSUPPORTED_NETWORK', `network "${spec.network}" is not supported by the microvm executor (its VMs have no NIC); use "none", or the sandbox or docker executor for egress`);
    if (this.images.size === 0) await this.refreshImages();
    let shape = this.shapeOf(spec);
    let vm: MicroVm;
    let warm: MicroVm | null = null;
    try {
      // Bound directories (a bundle, its dependencies) are read-only disks of the VM, so part of its shape: VMs and
      // snapshots of one bundle are made for it.
      if (spec.roBinds !== undefined && spec.roBinds.length > 0) shape = { ...shape, binds: await this.bindDisksOf(spec) };
      warm = this.pool.take(JSON.stringify(shape));
      vm = warm ?? (await this.createVm(shape));
      if (shape.binds !== undefined && !vm.agent.supports(FEATURE_BINDS)) {
        await this.destroyVm(vm).catch(() => undefined);
        throw new KindlingError('EXECUTOR_UNAVAILABLE', 'the microVM guest agent cannot mount bundles (older microvm assets); rebuild them with `kindling images build --microvm`');
      }
    } catch (error) {
      throw error instanceof KindlingError ? error : new KindlingError('EXECUTOR_FAILED', `starting a microVM failed: ${(error as Error).message}`, { cause: error, retryAfterSeconds: 1 });
    }
    try {
      options.signal?.throwIfAborted();
      for (const file of spec.files) {
        await vm.agent.putFile(`/.kindling/${file.name}`, Buffer.isBuffer(file.content) ? file.content : Buffer.from(file.content), 0o644);
      }
      const execution = this.launch(vm, spec, shape, options, warm === null);
      // The shape is in use: restore the next VM for it ahead of demand (the pool was never filled before).
      this.pool.replenish(JSON.stringify(shape));
      return execution;
    } catch (error) {
      await this.destroyVm(vm).catch(() => undefined);
      throw error instanceof KindlingError ? error : new KindlingError('EXECUTOR_FAILED', `the microVM agent failed: ${(error as Error).message}`, { cause: error });
    }
  }

  /** The disks of a run's read-only binds; a failure is logged with its cause (host paths, mkfs's words) and answered without them. */
  private async bindDisksOf(spec: RunSpec): Promise<BindDisk[]> {
    try {
      return await this.bindDisks.disksFor(spec.roBinds ?? []);
    } catch (error) {
      this.logger.error({ err: error, executionId: spec.id }, 'making the disk of a bound directory failed');
      throw new KindlingError('EXECUTOR_FAILED', "the function's files could not be attached to a microVM (the server's log has the cause)", { cause: error });
    }
  }

  private launch(vm: MicroVm, spec: RunSpec, shape: Shape, options: StartOptions, coldStart: boolean): Execution {
    const exec = vm.agent.exec({
      ...(shape.binds === undefined ? {} : { binds: shape.binds.map(({ label, target }) => ({ label, target })) }),
      argv: spec.command,
      env: spec.env,
      workdir: spec.workdir,
      limits: { memoryMb: spec.limits.memoryMb, pids: spec.limits.pids, cpus: spec.limits.cpus, diskMb: spec.limits.diskMb, openFiles: spec.limits.openFiles },
      stdin: spec.stdin,
      uid: NOBODY,
      gid: NOBODY,
    });
    let killed = false;
    const kill = (): void => {
      if (killed) return;
      killed = true;
      vm.kill();
    };
    const backstop = setTimeout(kill, spec.limits.timeoutMs + (this.options.timeoutGraceMs ?? 2000));
    const onAbort = (): void => kill();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    exec.stdout.pipe(stdout);
    exec.stderr.pipe(stderr);
    const ended = (stream: PassThrough): Promise<void> =>
      new Promise((resolve) => {
        if (stream.readableEnded || stream.destroyed) resolve();
        else {
          stream.once('end', () => resolve());
          stream.once('close', () => resolve());
        }
      });
    const waitResult: Promise<ExitInfo> = (async () => {
      try {
        const exit = await exec.exit;
        const usage = exit.usage === undefined ? undefined : { cpuMs: exit.usage.cpuUsec === null ? null : exit.usage.cpuUsec / 1000, memoryPeakBytes: exit.usage.memoryPeakBytes };
        return { exitCode: exit.exitCode, signal: exit.signal, oomKilled: exit.oomKilled, ...(usage ? { usage } : {}) };
      } catch (error) {
        if (!killed && vm.alive) throw new KindlingError('EXECUTOR_FAILED', `the microVM agent failed: ${(error as Error).message}`, { cause: error });
        // The VM was killed (kill(), timeout, abort) or died: the process tree is gone with it.
        return { exitCode: 137, signal: 'SIGKILL', oomKilled: false };
      } finally {
        clearTimeout(backstop);
        options.signal?.removeEventListener('abort', onAbort);
        await Promise.all([ended(stdout), ended(stderr)]);
      }
    })();
    const disposed = waitResult
      .catch(() => undefined)
      .then(() => this.destroyVm(vm))
      .catch((error: unknown) => this.logger.warn({ err: error, executionId: spec.id }, 'removing a microVM failed; the reaper will retry'))
      .finally(() => this.live.delete(spec.id));
    this.live.set(spec.id, { kill, done: disposed });
    return { stdin: exec.stdin, stdout, stderr, coldStart, wait: () => waitResult, kill, disposed };
  }

  /** Disks, snapshots and hibernation images of persistent sandboxes (QEMU driver; see sandbox-storage.ts). */
  get sandboxStorage(): MicroVmSandboxStorage | undefined {
    if (this.driver !== 'qemu') return undefined;
    this.storage ??= new MicroVmSandboxStorage({
      dir: path.join(this.baseDir, 'sandboxes', this.options.ownerId),
      qemuImgBinary: this.options.qemuImgBinary ?? 'qemu-img',
      log: this.logger,
      // A sandbox deleted while hibernated: its background commands' streams end with its image (they are not coming back).
      onHibernationDropped: (id) => {
        const streams = this.hibernatedStreams.get(id);
        this.hibernatedStreams.delete(id);
        streams?.fail(new Error('the hibernation image was removed'));
      },
    });
    return this.storage;
  }

  /**
   * A persistent sandbox: one VM booted for it (not from a shape snapshot: its device set has the data disk), made a
   * sandbox by its agent; with `storage`, its files on a data disk that outlives the VM. `restore: 'hibernated'`
   * starts the VM from its hibernation image instead (every process continues). QEMU driver only.
   */
  async createPersistentSandbox(spec: RunSpec, options: PersistentSandboxOptions = {}): Promise<PersistentSandbox> {
    if (this.closed) throw new KindlingError('SHUTTING_DOWN', 'the server is shutting down; retry on another instance');
    if (this.driver !== 'qemu') {
      throw new KindlingError('SANDBOXES_UNSUPPORTED', 'persistent sandboxes on the microvm executor need the qemu driver (the firecracker driver has none yet); use driver qemu or another executor', { details: { executor: 'microvm', driver: this.driver } });
    }
    if (spec.network !== 'none') throw new KindlingError('UNSUPPORTED_NETWORK', `network "${spec.network}" is not supported by the microvm executor (its VMs have no NIC); use "none"`);
    if (this.images.size === 0) await this.refreshImages();
    const storage = options.storage === undefined ? null : this.sandboxStorage!;
    let shape = this.shapeOf(spec);
    let hibernated: HibernationRecord | null = null;
    if (options.restore === 'hibernated') {
      hibernated = storage === null ? null : await storage.hibernation(spec.id);
      if (hibernated === null) throw new KindlingError('SANDBOX_STATE_LOST', `sandbox ${spec.id} has no saved memory image left; start it again (its files are kept)`, { details: { sandbox: spec.id } });
      // The VM must have the shape it was saved with, whatever the spec says now.
      shape = { ...shape, vcpus: hibernated.vcpus, memoryMb: hibernated.memoryMb };
    }
    // A new sandbox from a memory snapshot: the VM of the snapshot's moment, on an overlay of the disk of that moment.
    // A restart of such a sandbox (its disk made already, and moved on since) boots on its files as any restart does.
    const fromSnapshot = options.storage?.fromSnapshot ?? null;
    let fromMemory: HibernationRecord | null = null;
    if (hibernated === null && storage !== null && fromSnapshot !== null && !existsSync(storage.diskPath(spec.id))) {
      fromMemory = await storage.snapshotMemory(fromSnapshot);
      if (fromMemory !== null) {
        checkForkOfMemorySnapshot(spec, shape.image, fromSnapshot, fromMemory);
        shape = { ...shape, vcpus: fromMemory.vcpus, memoryMb: fromMemory.memoryMb };
      }
    }
    const saved = hibernated ?? fromMemory;
    const machine = await this.machineKey(shape);
    if (saved !== null && saved.machine !== undefined && saved.machine !== machine) {
      // Saved by a VM of other assets (kernel, agent or root image rebuilt since, or another accelerator): QEMU would
      // fail to load it, or worse, load it over devices that differ.
      if (hibernated !== null) await storage!.dropHibernation(spec.id);
      this.hibernatedStreams.get(spec.id)?.fail(new Error('the hibernation image cannot be restored'));
      this.hibernatedStreams.delete(spec.id);
      throw new KindlingError('SANDBOX_STATE_LOST', hibernated !== null
        ? `sandbox ${spec.id}'s saved memory was made with other microVM assets (kernel, agent or image rebuilt since): its processes cannot come back; start it again (its files are kept)`
        : `snapshot ${fromSnapshot}'s memory was made with other microVM assets (kernel, agent or image rebuilt since): a sandbox made from it cannot go on with its processes`, {
        details: hibernated !== null ? { sandbox: spec.id } : { snapshot: fromSnapshot },
      });
    }
    const incoming = storage === null ? undefined : hibernated !== null ? storage.memoryPath(spec.id) : fromMemory !== null ? storage.snapshotMemoryPath(fromSnapshot!) : undefined;
    let disk: string | undefined;
    let vm: MicroVm | null = null;
    // Streams of background commands saved with the VM: attached to the restored VM's client before it reads a frame.
    const adopt = this.hibernatedStreams.get(spec.id);
    this.hibernatedStreams.delete(spec.id);
    if (adopt !== undefined && hibernated === null) adopt.fail(new Error('the sandbox was not restored from its hibernation image'));
    // A disk made by this call goes again when the start fails: nothing of the user's is on it yet, and a retry of
    // the same id must not find it and take it for a restart (a memory snapshot's processes would not come back).
    const newDisk = storage !== null && !existsSync(storage.diskPath(spec.id));
    try {
      if (storage !== null) disk = await storage.attach(spec.id, spec.limits.diskMb, options.storage?.fromSnapshot ?? null);
      vm = await this.bootVm(shape, incoming, {
        ...(disk === undefined ? {} : { dataDisk: disk }),
        // Streams the guest may still have running were numbered below streamsUsed; leave a margin for in-flight ones.
        ...(saved === null ? {} : { firstStream: saved.streamsUsed + 1024 }),
        ...(hibernated === null || adopt === undefined ? {} : { adopt }),
      });
      options.signal?.throwIfAborted();
      if (saved === null) {
        await vm.agent.setUpSandbox({
          workdir: spec.workdir,
          limits: { memoryMb: spec.limits.memoryMb, pids: spec.limits.pids, cpus: spec.limits.cpus, diskMb: spec.limits.diskMb },
          disk: disk !== undefined,
          uid: NOBODY,
          gid: NOBODY,
        });
      } else if (hibernated !== null) {
        // The image is in a VM again, and the disk moves on from here: it can never be restored a second time.
        await storage!.dropHibernation(spec.id);
      }
      const sandbox = new MicroVmPersistentSandbox({
        id: spec.id,
        vm: vm as QemuVm,
        env: spec.env,
        storage: disk === undefined ? null : { disk, store: storage! },
        shape: { image: shape.image, vcpus: shape.vcpus, memoryMb: shape.memoryMb, limits: saved?.limits ?? limitsOf(spec) },
        release: (ended) => this.destroyVm(ended),
        keepStreams: (streams) => {
          this.hibernatedStreams.get(spec.id)?.fail(new Error('superseded'));
          this.hibernatedStreams.set(spec.id, streams);
        },
        lifetimeMs: spec.limits.timeoutMs,
        machine,
        log: this.logger,
      });
      this.sandboxes.add(sandbox);
      void sandbox.disposed.finally(() => this.sandboxes.delete(sandbox));
      return sandbox;
    } catch (error) {
      // A half-made sandbox goes before the error is rethrown (the original error wins); its disk stays (it is the
      // sandbox's files, removed with removeDisk) unless this call made it.
      if (vm !== null) await this.destroyVm(vm).catch(() => undefined);
      if (newDisk && disk !== undefined) await fs.rm(disk, { force: true }).catch(() => undefined);
      // Background commands saved with the image end with it (their processes are not coming back).
      adopt?.fail(error as Error);
      if (error instanceof KindlingError) throw error;
      throw new KindlingError('EXECUTOR_FAILED', `the persistent microVM sandbox did not start: ${(error as Error).message}`, { cause: error, retryAfterSeconds: 1 });
    }
  }

  /**
   * Kills VMs and removes VM directories of this owner that no live VM of this process uses, and snapshot files nobody
   * restored from for snapshotMaxAgeMs (their keys change with every kernel, agent, image or shape change).
   */
  async reap(): Promise<ReapReport> {
    const keep = new Set([...[...this.vms].map((vm) => vm.vmDir), ...this.creating]);
    const removed = await reapVmDirs(path.join(this.baseDir, 'vms'), this.options.ownerId, keep);
    // VM cgroups of an earlier run of this server (qemu is gone by now: reapVmDirs killed it).
    const cgroups = this.cgroupDriver();
    let removedCgroups = 0;
    if (cgroups) {
      const live = new Set([...keep].map((dir) => path.basename(dir)));
      for (const name of cgroups.list()) {
        if (live.has(name)) continue;
        await cgroups.open(name).remove().catch(() => undefined);
        removedCgroups++;
      }
    }
    const aged = await this.ageOut();
    if (removed > 0) this.logger.info({ vms: removed }, 'reaped microVMs left by an earlier run');
    this.startAgeOut();
    return { removed: removed + aged + removedCgroups };
  }

  /**
   * From the start-up reap or the first VM on, while the executor lives: a long-running server must not keep every
   * bundle's disk and snapshot forever (ageOut() every quarter of the max age, at most hourly).
   */
  private startAgeOut(): void {
    if (this.ageOutTimer !== undefined || this.closed) return;
    const maxAgeMs = this.options.snapshotMaxAgeMs ?? 86_400_000;
    this.ageOutTimer = setInterval(() => {
      this.ageOut().catch((error: unknown) => this.logger.warn({ err: error }, 'removing unused microVM snapshots and disks failed'));
    }, Math.min(3_600_000, Math.max(1000, maxAgeMs / 4)));
    this.ageOutTimer.unref();
  }

  /**
   * Removes shape snapshots nobody restored from and bind disks nobody asked for in snapshotMaxAgeMs (a function not
   * called for a day, deleted, or a snapshot whose key changed with the kernel, agent or image), and the least recently
   * restored snapshots beyond snapshotMaxCount, except those a live or starting VM uses. Returns how many files went.
   */
  ageOut(): Promise<number> {
    // One at a time: a snapshot written while the timer's pass runs asks again, and gets that pass.
    this.ageOutRunning ??= this.ageOutPass().finally(() => (this.ageOutRunning = undefined));
    return this.ageOutRunning;
  }

  private async ageOutPass(): Promise<number> {
    const maxAgeMs = this.options.snapshotMaxAgeMs ?? 86_400_000;
    const snapshotsDir = path.join(this.baseDir, 'snapshots');
    const snapshotInUse = (file: string): boolean => {
      if (this.filesStarting.has(file)) return true;
      // Going: later starts of its shape must make it anew, not take the cached name of a file that is gone.
      this.snapshots.delete(path.basename(file, '.vmstate'));
      return false;
    };
    const snapshots = [
      ...(await reapSnapshots(snapshotsDir, maxAgeMs, snapshotInUse)),
      ...(await trimSnapshots(snapshotsDir, this.options.snapshotMaxCount ?? 64, snapshotInUse)),
    ];
    const bindDisks = await reapSnapshots(path.join(this.baseDir, 'binds'), maxAgeMs, (file) => this.filesStarting.has(file) || [...this.vmBindFiles.values()].some((files) => files.includes(file)));
    if (snapshots.length > 0 || bindDisks.length > 0) this.logger.info({ snapshotFiles: snapshots.length, bindDisks: bindDisks.length }, 'removed microVM snapshots and disks not used lately');
    return snapshots.length + bindDisks.length;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.ageOutTimer);
    await this.ageOutRunning?.catch(() => undefined);
    await this.pool.close();
    await Promise.allSettled([...this.live.values()].map((entry) => entry.done));
    await Promise.allSettled([...this.snapshots.values()]);
    await Promise.allSettled([...this.sandboxes].map((sandbox) => sandbox.destroy()));
    await Promise.allSettled([...this.vms].map((vm) => this.destroyVm(vm)));
    this.cgroups?.removeOwnerDirs();
  }

  async destroy(): Promise<void> {
    this.closed = true;
    for (const entry of this.live.values()) entry.kill();
    await this.close();
  }
}

const limitsOf = (spec: RunSpec): NonNullable<HibernationRecord['limits']> => ({ memoryMb: spec.limits.memoryMb, cpus: spec.limits.cpus, pids: spec.limits.pids, diskMb: spec.limits.diskMb });

/**
 * A sandbox made from a memory snapshot is the snapshot's VM going on: its image, its memory and its guest's limits
 * were saved with its processes. A spec that asks for others is refused rather than quietly given the snapshot's.
 */
export function checkForkOfMemorySnapshot(spec: RunSpec, image: string, snapshotId: string, saved: HibernationRecord): void {
  const fields: string[] = [];
  if (image !== saved.image) fields.push('image');
  if (saved.limits !== undefined) {
    const asked = limitsOf(spec);
    for (const field of ['memoryMb', 'cpus', 'pids', 'diskMb'] as const) if (asked[field] !== saved.limits[field]) fields.push(field);
  }
  if (fields.length === 0) return;
  throw new KindlingError('CONFLICTING_FIELDS', `snapshot ${snapshotId} keeps the memory and processes of its sandbox, so a sandbox made from it has that sandbox's ${fields.join(', ')}; leave ${fields.length === 1 ? 'it' : 'them'} out of the request`, {
    details: { fields, snapshot: snapshotId },
  });
}
