/**
 * The gVisor executor (`--executor gvisor`): every execution and every persistent sandbox is a runsc container (an
 * OCI bundle run by runsc, Debian's build, on the ptrace platform: no KVM needed). The user's code talks to gVisor's
 * kernel (the sentry, a user-space process), never to the host's: a syscall the sentry does not implement fails
 * inside the sandbox instead of reaching the host kernel.
 *
 * The parts: oci-spec.ts (the bundle's config.json), runsc.ts (runsc's command line for this executor's state root),
 * execution.ts (one-off executions), persistent.ts (persistent sandboxes, hibernation). This file holds the executor:
 * images, the cgroup and bundle of each sandbox, reaping, close/destroy.
 *
 * Resources: each sandbox gets a cgroup made beforehand by the shared driver under `kindling-gvisor/<ownerId>/`
 * (runsc then uses it as it is: it neither changes nor removes a cgroup it did not make), a bundle dir
 * `<stateDir>/gvisor/<ownerId>/bundles/<id>`, and its container in the state root `<stateDir>/gvisor/<ownerId>/runsc`.
 * All three are named by the owner, so `reap()` finds what a crashed server of the same owner left.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KindlingError } from '../../core/errors.js';
import type { RunSpec } from '../../core/types.js';
import { LABEL_INSTANCE, LABEL_MANAGED, LABEL_OWNER, type Executor, type ExecutorStatus, type PersistentSandbox, type PersistentSandboxOptions, type ReapReport, type SandboxStorageOps, type StartOptions } from '../executor.js';
import { noopLogger, type Logger } from '../shared/logger.js';
import type { ExecutorBaseOptions } from '../shared/options.js';
import { assertSafeName, LazyCgroupDriver, type Cgroup, type CgroupDriver } from '../shared/cgroups.js';
import { RootfsCatalog } from '../sandbox/rootfs.js';
import { SandboxStorage } from '../sandbox/storage.js';
import { mountsUnder } from '../sandbox/private-mounts.js';
import { GvisorExecution } from './execution.js';
import { bindMount, ociSpec, tmpfsMount, type OciMount } from './oci-spec.js';
import { Runsc } from './runsc.js';
import { startGvisorSandbox, type GvisorSandboxDeps } from './persistent.js';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export interface GvisorExecutorOptions extends ExecutorBaseOptions {
  /** Holds `${short}/rootfs` (+ `recipe.json`) per runtime image, e.g. /var/lib/kindling/images (as the sandbox executor). */
  imagesDir: string;
  /** Default /usr/bin/runsc. */
  runscPath?: string;
  /** runsc's platform: `ptrace` (default, works without /dev/kvm) or `kvm`. */
  platform?: string;
  /** The uid/gid user code runs as inside the sandbox. Default 65534. Never 0. */
  sandboxUid?: number;
  sandboxGid?: number;
  cgroupMount?: string;
  /** Directory under each cgroup hierarchy root. Default `kindling-gvisor`. */
  cgroupParent?: string;
  hostname?: string;
  /** The backstop kills an execution at `limits.timeoutMs` plus this (the orchestrator kills at the limit). Default 1000. */
  timeoutGraceMs?: number;
}

/**
 * Memory of gVisor itself (the sentry's Go runtime, the gofer, page tables of the ptrace stubs; measured ~30 MiB for
 * a shell with 200 children) counts in the sandbox's cgroup: it gets `memoryMb` plus this, so that user code can use
 * about `memoryMb` before the host's OOM killer ends the sandbox.
 */
export const SENTRY_MEMORY_MB = 64;

/**
 * On the ptrace platform every guest thread is a host thread of the sentry and every guest process adds a stub; the
 * sentry has its own ~40 threads. The host's pids.max is therefore a backstop of `pids * 4 + 256` tasks against a
 * fork bomb exhausting the host, not an exact count of the sandbox's processes (runsc of 2022 keeps no count of its own).
 */
export function hostPidsMax(pids: number): number {
  return pids * 4 + 256;
}

export class GvisorExecutor implements Executor {
  readonly name = 'gvisor' as const;
  readonly runsc: Runsc;
  readonly sandboxStorage: SandboxStorageOps;
  private readonly log: Logger;
  private readonly images: RootfsCatalog;
  private readonly uid: number;
  private readonly gid: number;
  private readonly hostname: string;
  private readonly timeoutGraceMs: number;
  private readonly baseDir: string;
  private readonly bundlesDir: string;
  private readonly volumesDir: string;
  private readonly storage: SandboxStorage;
  /** Saved processes of hibernated sandboxes: `<stateDir>/gvisor-storage/<ownerId>/hibernated/<sandbox id>`. */
  readonly hibernatedDir: string;
  private readonly cgroups: LazyCgroupDriver;
  private closing = false;
  private readonly active = new Map<string, GvisorExecution>();
  /** Persistent sandboxes alive in this process (reap() leaves them alone). */
  private readonly sandboxes = new Map<string, PersistentSandbox>();

  constructor(private readonly options: GvisorExecutorOptions) {
    assertSafeName('ownerId', options.ownerId);
    this.log = options.logger ?? noopLogger;
    this.uid = options.sandboxUid ?? 65534;
    this.gid = options.sandboxGid ?? this.uid;
    if (this.uid === 0 || this.gid === 0) throw new Error('the sandbox uid/gid must not be 0 (root)');
    this.hostname = options.hostname ?? 'kindling';
    this.timeoutGraceMs = options.timeoutGraceMs ?? 1000;
    this.baseDir = path.join(options.stateDir, 'gvisor', options.ownerId);
    this.bundlesDir = path.join(this.baseDir, 'bundles');
    this.volumesDir = path.join(this.baseDir, 'volumes');
    this.cgroups = new LazyCgroupDriver({ mount: options.cgroupMount ?? '/sys/fs/cgroup', parent: options.cgroupParent ?? 'kindling-gvisor', ownerId: options.ownerId }, 'gvisor');
    this.runsc = new Runsc({ path: options.runscPath ?? '/usr/bin/runsc', root: path.join(this.baseDir, 'runsc'), platform: options.platform ?? 'ptrace' });
    this.images = new RootfsCatalog(options.imagesDir, this.log);
    const storageDir = path.join(options.stateDir, 'gvisor-storage', options.ownerId);
    this.hibernatedDir = path.join(storageDir, 'hibernated');
    this.storage = new SandboxStorage({ dir: storageDir, uid: this.uid, gid: this.gid, log: this.log });
    this.sandboxStorage = {
      removeDisk: async (id) => {
        await this.storage.removeDisk(id);
        await fs.promises.rm(this.hibernatedPath(id), { recursive: true, force: true });
      },
      removeSnapshot: (id) => this.storage.removeSnapshot(id),
      reap: async (keepSandboxes, keepSnapshots) => {
        let removed = await this.storage.reap(keepSandboxes, keepSnapshots);
        for (const id of await fs.promises.readdir(this.hibernatedDir).catch(() => [] as string[])) {
          if (keepSandboxes.has(id)) continue;
          await fs.promises.rm(path.join(this.hibernatedDir, id), { recursive: true, force: true });
          removed++;
        }
        return removed;
      },
    };
    this.images.refresh();
  }

  hibernatedPath(sandboxId: string): string {
    assertSafeName('sandbox id', sandboxId);
    return path.join(this.hibernatedDir, sandboxId);
  }

  async probe(): Promise<ExecutorStatus> {
    const details: Record<string, unknown> = { runsc: this.runsc.options.path, platform: this.runsc.options.platform, imagesDir: this.options.imagesDir };
    const notReady = (reason: string): ExecutorStatus => ({ name: this.name, ready: false, reason, details });
    if (!fs.existsSync(this.runsc.options.path)) return notReady(`runsc is not installed at ${this.runsc.options.path}: apt-get install runsc`);
    const version = await this.runsc.call(['--version']);
    if (version.code !== 0) return notReady(`runsc --version failed: ${version.stderr.trim()}`);
    details.version = version.stdout.split('\n')[0]?.trim();
    try {
      details.cgroupVersion = this.cgroups.get().version;
    } catch (err) {
      return notReady((err as Error).message);
    }
    const images = await this.refreshImages();
    details.images = images;
    if (images.length === 0) return notReady(`no runtime image rootfs in ${this.options.imagesDir}: build them with \`kindling images build\``);
    return { name: this.name, ready: true, reason: `${String(details.version)}, platform ${this.runsc.options.platform}, images: ${images.join(', ')}`, details };
  }

  hasImage(image: string): boolean {
    return this.images.has(image);
  }

  async refreshImages(): Promise<string[]> {
    this.images.refresh();
    return this.images.names();
  }

  /** Refuses what this executor cannot do before anything is made. */
  private check(spec: RunSpec): string {
    if (this.closing) throw new KindlingError('SHUTTING_DOWN', 'the gvisor executor is shutting down');
    if (spec.network === 'egress') {
      throw new KindlingError('UNSUPPORTED_NETWORK', 'network "egress" is not available on the gvisor executor (runsc runs with --network=none here): use network "none" or another executor', {
        details: { executor: this.name, network: spec.network },
      });
    }
    assertSafeName('execution id', spec.id);
    return this.images.layoutFor(spec.image).rootfs;
  }

  async start(spec: RunSpec, options: StartOptions = {}): Promise<GvisorExecution> {
    const rootfs = this.check(spec);
    options.signal?.throwIfAborted();
    const runDir = path.join(this.baseDir, 'runs', spec.id);
    const roBinds = spec.roBinds ?? [];
    const mounts: OciMount[] = [tmpfsMount('/tmp', spec.limits.diskMb)];
    // A bound work dir (a function's bundle) needs no tmpfs of its own.
    if (spec.workdir !== '/tmp' && !spec.workdir.startsWith('/tmp/') && !roBinds.some((bind) => bind.target === spec.workdir)) mounts.push(tmpfsMount(spec.workdir, spec.limits.diskMb));
    // A function's bundle, its dependency layer, its compiled program: read-only, shared by every sandbox of the same
    // content (the gofer serves them from the host; nothing is copied). Outer directories first, nested ones after.
    for (const bind of [...roBinds].sort((a, b) => a.target.length - b.target.length)) mounts.push(bindMount(bind.source, bind.target, true));
    let cgroup: Cgroup | null = null;
    try {
      if (spec.files.length > 0) {
        await fs.promises.mkdir(runDir, { recursive: true, mode: 0o755 });
        for (const file of spec.files) {
          if (file.name.includes('/') || file.name.startsWith('.')) throw new KindlingError('VALIDATION_FAILED', `file name "${file.name}" must be a plain name`, { details: { field: 'files' } });
          await fs.promises.writeFile(path.join(runDir, file.name), file.content, { mode: 0o444 });
        }
        mounts.push(bindMount(runDir, '/.kindling', true));
      }
      cgroup = await this.prepare(spec, rootfs, launchArgs(this.images.layoutFor(spec.image).shell, spec), spec.workdir, mounts);
      const child = this.runsc.spawn(['run', `--bundle=${this.bundleDir(spec.id)}`, spec.id], [spec.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe']);
      const made = cgroup;
      const execution = new GvisorExecution(spec.id, child, made, true, spec.limits.timeoutMs + this.timeoutGraceMs, options.signal, async () => {
        await this.release(spec.id, made);
        await fs.promises.rm(runDir, { recursive: true, force: true });
        this.active.delete(spec.id);
      }, () => this.runsc.deleteForce(spec.id));
      this.active.set(spec.id, execution);
      return execution;
    } catch (error) {
      if (cgroup !== null) await this.release(spec.id, cgroup);
      await fs.promises.rm(runDir, { recursive: true, force: true });
      if (error instanceof KindlingError) throw error;
      throw new KindlingError('EXECUTOR_FAILED', `the gvisor sandbox did not start: ${(error as Error).message}`, { cause: error });
    }
  }

  /** Makes the sandbox's cgroup (limits applied) and writes its bundle; what it made is gone again when it throws. */
  async prepare(spec: RunSpec, rootfs: string, args: string[], cwd: string, mounts: OciMount[]): Promise<Cgroup> {
    const driver = this.cgroups.getOrUnavailable();
    const cgroup = driver.create(spec.id, {
      memoryBytes: (spec.limits.memoryMb + SENTRY_MEMORY_MB) * 1024 * 1024,
      cpus: spec.limits.cpus,
      pidsMax: hostPidsMax(spec.limits.pids),
    });
    try {
      const config = ociSpec({
        rootfs,
        args,
        env: spec.env,
        cwd,
        uid: this.uid,
        gid: this.gid,
        hostname: this.hostname,
        limits: spec.limits,
        mounts,
        cgroupsPath: cgroupsPath(driver, cgroup),
        annotations: { ...spec.labels, [LABEL_MANAGED]: 'true', [LABEL_OWNER]: this.options.ownerId, [LABEL_INSTANCE]: this.options.instanceId },
      });
      await fs.promises.mkdir(this.bundleDir(spec.id), { recursive: true, mode: 0o700 });
      await fs.promises.writeFile(path.join(this.bundleDir(spec.id), 'config.json'), JSON.stringify(config));
      return cgroup;
    } catch (error) {
      await cgroup.remove().catch(() => {});
      throw error;
    }
  }

  bundleDir(id: string): string {
    return path.join(this.bundlesDir, id);
  }

  /** Removes the container's state (runsc), its cgroup and its bundle. */
  async release(id: string, cgroup: Cgroup): Promise<void> {
    await this.runsc.deleteForce(id);
    await cgroup.remove().catch((err: unknown) => this.log.warn({ sandbox: id, err }, 'gvisor cgroup not removed; reap() will retry'));
    // runsc's own dirs of this sandbox on v1 (blkio, cpuset, ...), left when runsc was killed while making them.
    this.rmdirs(path.join(this.options.ownerId, id));
    await fs.promises.rm(this.bundleDir(id), { recursive: true, force: true });
  }

  async createPersistentSandbox(spec: RunSpec, options: PersistentSandboxOptions = {}): Promise<PersistentSandbox> {
    const rootfs = this.check(spec);
    const layout = this.images.layoutFor(spec.image);
    const deps: GvisorSandboxDeps = {
      executor: this,
      rootfs,
      shell: layout.shell,
      uid: this.uid,
      gid: this.gid,
      attach: (id, diskMb, fromSnapshot) => this.storage.attach(id, diskMb, fromSnapshot, this.volumesDir),
      hasDisk: (id) => fs.existsSync(this.storage.diskPath(id)),
      removeDisk: (id) => this.storage.removeDisk(id),
      snapshotFiles: (volume, snapshotId) => this.storage.snapshot(volume, snapshotId),
      memoryImage: (snapshotId) => path.join(path.dirname(this.storage.layerPath(snapshotId)), 'memory'),
      removeSnapshot: (snapshotId) => this.storage.removeSnapshot(snapshotId),
      track: (sandbox) => {
        this.sandboxes.set(sandbox.id, sandbox);
        void sandbox.disposed.finally(() => {
          if (this.sandboxes.get(sandbox.id) === sandbox) this.sandboxes.delete(sandbox.id);
        });
      },
      log: this.log,
    };
    return startGvisorSandbox(deps, spec, options);
  }

  async reap(): Promise<ReapReport> {
    const driver = this.cgroups.tryGet();
    let removed = 0;
    const inUse = new Set([...this.active.keys(), ...this.sandboxes.keys()]);
    for (const container of await this.runsc.list()) {
      if (inUse.has(container.id)) continue;
      await this.runsc.deleteForce(container.id);
      removed++;
      this.log.info({ container: container.id, owner: this.options.ownerId }, 'reaped leftover gvisor container');
    }
    // A sandbox whose runsc state is gone (or never written) is still found by its cgroup: its processes die with it.
    for (const name of driver?.list() ?? []) {
      if (inUse.has(name)) continue;
      try {
        await driver!.open(name).remove();
        this.rmdirs(path.join(this.options.ownerId, name));
        removed++;
      } catch (err) {
        this.log.warn({ sandbox: name, err }, 'could not reap gvisor cgroup');
      }
    }
    for (const name of await fs.promises.readdir(this.bundlesDir).catch(() => [] as string[])) {
      if (!inUse.has(name)) await fs.promises.rm(path.join(this.bundlesDir, name), { recursive: true, force: true });
    }
    for (const name of await fs.promises.readdir(path.join(this.baseDir, 'runs')).catch(() => [] as string[])) {
      if (!inUse.has(name)) await fs.promises.rm(path.join(this.baseDir, 'runs', name), { recursive: true, force: true });
    }
    // Disks of crashed sandboxes stay mounted (the kernel keeps them): detach every mount no live sandbox uses.
    const live = new Set([...this.sandboxes.keys()]);
    for (const point of mountsUnder(this.volumesDir).sort().reverse()) {
      const owner = path.basename(path.dirname(point)).replace(/-[0-9a-f]{4}$/, '');
      if (live.has(owner)) continue;
      await execFileAsync('/usr/bin/umount', ['-l', point], { env: {} }).catch(() => {});
    }
    for (const name of await fs.promises.readdir(this.volumesDir).catch(() => [] as string[])) {
      const owner = name.replace(/-[0-9a-f]{4}$/, '');
      if (live.has(owner)) continue;
      if (mountsUnder(path.join(this.volumesDir, name)).length === 0) await fs.promises.rm(path.join(this.volumesDir, name), { recursive: true, force: true });
    }
    return { removed };
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all([...this.active.values()].map((e) => e.disposed));
    await this.storage.closePool().catch(() => {});
    this.removeOwnerDirs();
  }

  async destroy(): Promise<void> {
    this.closing = true;
    for (const e of this.active.values()) e.abandon();
    await Promise.all([...this.sandboxes.values()].map((s) => s.destroy().catch(() => {})));
    await Promise.all([...this.active.values()].map((e) => e.disposed));
    await this.storage.closePool().catch(() => {});
    this.removeOwnerDirs();
  }

  /**
   * The owner's cgroup dirs, once empty: the driver's controllers, and those runsc adds itself on cgroup v1 (blkio,
   * cpuset, devices, ...: it makes and removes the sandbox's own dir there, never the parents).
   */
  private removeOwnerDirs(): void {
    if (this.active.size > 0 || this.sandboxes.size > 0) return;
    this.cgroups.current?.removeOwnerDirs();
    this.rmdirs(this.options.ownerId);
    this.rmdirs('');
  }

  /** Removes `<parent>/<relative>` under every cgroup hierarchy when it is empty; never fails. */
  private rmdirs(relative: string): void {
    const mount = this.options.cgroupMount ?? '/sys/fs/cgroup';
    const parent = this.options.cgroupParent ?? 'kindling-gvisor';
    let roots: string[];
    try {
      roots = fs.existsSync(path.join(mount, 'cgroup.controllers')) ? [mount] : fs.readdirSync(mount).map((c) => path.join(mount, c));
    } catch {
      return;
    }
    for (const root of roots) {
      try {
        fs.rmdirSync(path.join(root, parent, relative));
      } catch {
        // not empty (sandboxes of this or another owner), or never made
      }
    }
  }



}

/**
 * The process runsc starts for a one-off: through the image's shell, so that a missing command is exit 127 with the
 * shell's message (runsc itself fails with 128), and without the HOME gVisor adds from /etc/passwd when the request
 * set none (exactly the requested environment). An image without a shell runs the command as it is.
 */
function launchArgs(shell: string | null, spec: RunSpec): string[] {
  if (shell === null) return spec.command;
  const script = spec.env.HOME === undefined ? 'unset HOME; exec "$@"' : 'exec "$@"';
  return [shell, '-c', script, shell, ...spec.command];
}

/** The cgroup's path relative to the hierarchy root, as the OCI spec names it (the same on v1 and v2). */
function cgroupsPath(driver: CgroupDriver, cgroup: Cgroup): string {
  const ownerDir = driver.ownerDirs[0]!;
  // ownerDirs: v1 `<mount>/<controller>/<parent>/<owner>`, v2 `<mount>/<parent>/<owner>`: keep `<parent>/<owner>`.
  const relative = ownerDir.split('/').slice(-2).join('/');
  return `/${relative}/${cgroup.name}`;
}
