/**
 * Persistent sandboxes on the microvm executor (QEMU driver): one long-lived VM per sandbox. Its guest agent was made
 * a sandbox once (SANDBOX: one cgroup with the limits, the work dir and /tmp on the data disk); every command is an
 * EXEC of the agent in a child cgroup of it, as nobody, many at once over the one channel. Processes a command leaves
 * running and files stay between commands; killing a command kills its cgroup (its whole tree, nothing else).
 *
 * Pause/resume: QMP `stop`/`cont` (the vCPUs stop: the qemu process uses no CPU while stopped). usage(): the qemu
 * process's host cgroup (what the VM costs the host, guest kernel and agent included).
 *
 * Snapshot (a memory snapshot): the VM stopped (QEMU drains and flushes its block layer, so the disk holds every write
 * the guest's memory believes done), the disk copied into an immutable qcow2 and the VM's whole state (memory, devices,
 * every process, the guest's page cache) migrated into a file beside it (see sandbox-storage.ts), then continued. A
 * sandbox made from it starts with `-incoming` from that file on an overlay of that disk: its processes go on where
 * they were, as after a hibernation. No fsfreeze: a frozen file system would be saved frozen.
 *
 * Hibernate: the VM stopped and its whole state (memory, devices) migrated into a file, then qemu ends (its RAM is
 * released); a later start with `-incoming` from that file and the same disk continues every process where it was.
 */
import { rename, rm, stat } from 'node:fs/promises';
import type { Duplex, Readable, Writable } from 'node:stream';
import { KindlingError } from '../../core/errors.js';
import type { PersistentSandbox, PortConnectOptions, ResourceUsage, SandboxCapabilities, SandboxCommand, SandboxCommandRequest } from '../executor.js';
import { checkCommandRequest } from '../shared/command-request.js';
import type { AgentExec, DetachedStreams } from './agent-client.js';
import { MicroVmPorts, type PortRelayStats } from './ports.js';
import type { QemuVm } from './qemu.js';
import type { HibernationRecord, MicroVmSandboxStorage } from './sandbox-storage.js';
import type { Logger } from '../shared/logger.js';

/** How long destroy() lets the guest write its file system out before the VM is killed. */
const FLUSH_TIMEOUT_MS = 10_000;
const NOBODY = 65534;

export interface MicroVmSandboxParts {
  id: string;
  vm: QemuVm;
  /** The environment every command starts with (the spec's); a command's own env is added to it. */
  env: Record<string, string>;
  /** The data disk and where to keep snapshots and hibernation images; null: files on tmpfs, gone with the VM. */
  storage: { disk: string; store: MicroVmSandboxStorage } | null;
  /** What a hibernation record says besides the stream ids. */
  shape: Omit<HibernationRecord, 'streamsUsed' | 'savedAt' | 'machine'>;
  /** Ends the VM's life on the executor's side (its directory, cgroup, registry entry). */
  release(vm: QemuVm): Promise<void>;
  /** Keeps the streams of background commands saved by hibernate() for the VM restored from the image. */
  keepStreams(streams: DetachedStreams): void;
  /** The lifetime backstop (spec.limits.timeoutMs): the sandbox is destroyed then. */
  lifetimeMs: number;
  /** What the saved memory depends on (kernel, agent, image, shape; see machineKey()): a restore elsewhere is refused. */
  machine: string;
  log?: Logger;
}

/** How long saving a VM's memory may take: a minute or two, longer for a large VM (TCG writes ~100 MB/s or more here). */
export function migrationTimeoutMs(memoryMb: number): number {
  return Math.max(120_000, memoryMb * 30);
}

export class MicroVmPersistentSandbox implements PersistentSandbox {
  readonly capabilities: SandboxCapabilities;
  readonly id: string;
  readonly disposed: Promise<void>;
  private readonly vm: QemuVm;
  private ended = false;
  private paused = false;
  private destroying: Promise<void> | null = null;
  /** A snapshot under way (the VM stopped for it): commands wait for it. */
  private snapshotting: Promise<void> | null = null;
  private readonly backstop: NodeJS.Timeout;
  private readonly ports: MicroVmPorts;

  constructor(private readonly parts: MicroVmSandboxParts) {
    this.id = parts.id;
    this.vm = parts.vm;
    // Memory snapshots need a disk to pair the memory with (tmpfs files live in the memory, but a snapshot is files).
    this.capabilities = { pause: true, memorySnapshot: parts.storage !== null, hibernate: true };
    this.ports = new MicroVmPorts(() => this.vm.agent, parts.id);
    this.backstop = setTimeout(() => void this.destroy(), parts.lifetimeMs);
    this.backstop.unref();
    this.disposed = this.vm.exited.then(async () => {
      this.ended = true;
      clearTimeout(this.backstop);
      // Commands still running end with the VM (their exit promises reject when the agent channel closes).
      await parts.release(this.vm).catch(() => {});
    });
  }

  get alive(): boolean {
    return !this.ended && this.vm.alive;
  }

  async exec(request: SandboxCommandRequest): Promise<SandboxCommand> {
    this.assertAlive();
    checkCommandRequest(request);
    // A command sent while a snapshot stops the VM would be saved with its memory and run in every fork of it.
    while (this.snapshotting !== null) await this.snapshotting;
    this.assertAlive();
    let handle: AgentExec;
    try {
      handle = this.vm.agent.exec({
        argv: request.command,
        env: { ...this.parts.env, ...request.env },
        workdir: request.workdir,
        limits: { memoryMb: 0, pids: 0, cpus: 0, diskMb: 0 },
        stdin: request.stdin,
        uid: NOBODY,
        gid: NOBODY,
        sandbox: true,
      }, { keepAcrossRestore: request.background === true });
    } catch (error) {
      throw new KindlingError('SANDBOX_NOT_RUNNING', `sandbox ${this.id} has ended: ${(error as Error).message}`, { details: { sandbox: this.id } });
    }
    return new MicroVmCommand(handle, () => this.ended || this.destroying !== null || !this.vm.alive || this.vm.agent.closed);
  }

  /** A connection to `port` on the VM's loopback through the guest's port helper (see ports.ts). */
  async connectPort(port: number, options: PortConnectOptions): Promise<Duplex> {
    this.assertAlive();
    return this.ports.connect(port, options);
  }

  get portConnections(): number {
    return this.ports.connections;
  }

  /** The proxied connections' buffers on this side (bounded by the flow-control window; see ports.ts). */
  portStats(): PortRelayStats {
    return this.ports.stats();
  }

  async pause(): Promise<void> {
    this.assertAlive();
    await this.vm.qmp.execute('stop');
    this.paused = true;
  }

  async resume(): Promise<void> {
    this.assertAlive();
    await this.vm.qmp.execute('cont');
    this.paused = false;
    // The guest has no RTC and its clock stood still while stopped: it is the host's again before the next command.
    await this.vm.agent.setClock().catch(() => {});
  }

  usage(): ResourceUsage | null {
    if (!this.alive) return null;
    const usage = this.vm.usage();
    return usage.cpuMs === null && usage.memoryPeakBytes === null ? null : usage;
  }

  /**
   * The data disk and the VM's memory at one moment, into an immutable memory snapshot; a paused sandbox stays paused.
   * Resolves with the bytes of both files.
   */
  snapshot(snapshotId: string): Promise<{ bytes: number; memory: boolean }> {
    this.assertAlive();
    const storage = this.parts.storage;
    if (storage === null) throw new KindlingError('SNAPSHOTS_UNSUPPORTED', `sandbox ${this.id} keeps its files in memory (tmpfs): nothing to snapshot`, { details: { sandbox: this.id } });
    const taking = this.takeSnapshot(storage, snapshotId);
    // Settles either way and never rejects: a failed snapshot is the caller's error, not an unhandled rejection here.
    const marker: Promise<void> = taking.then(
      () => undefined,
      () => undefined,
    ).finally(() => {
      if (this.snapshotting === marker) this.snapshotting = null;
    });
    this.snapshotting = marker;
    return taking;
  }

  private async takeSnapshot(storage: NonNullable<MicroVmSandboxParts['storage']>, snapshotId: string): Promise<{ bytes: number; memory: boolean }> {
    const wasPaused = this.paused;
    if (!wasPaused) await this.vm.qmp.execute('stop');
    try {
      const diskBytes = await storage.store.snapshot(storage.disk, snapshotId);
      try {
        const record = { ...this.parts.shape, machine: this.parts.machine, streamsUsed: this.vm.agent.streamsUsed };
        const memoryBytes = await storage.store.saveSnapshotMemory(snapshotId, record, (file) => this.vm.snapshot(file, migrationTimeoutMs(this.parts.shape.memoryMb)));
        return { bytes: diskBytes + memoryBytes, memory: true };
      } catch (error) {
        await storage.store.removeSnapshot(snapshotId).catch(() => {});
        throw new KindlingError('EXECUTOR_FAILED', `saving the memory of sandbox ${this.id} failed: ${(error as Error).message}`, { cause: error });
      }
    } finally {
      await this.continueAfterSnapshot(wasPaused);
    }
  }

  /**
   * After a migration the VM waits in "postmigrate" with its disks handed over: `cont` takes them back. A paused
   * sandbox is stopped again at once (its guest runs for that moment, as for a snapshot of the files before). A VM
   * that does not run again is destroyed (its commands would hang): it ends as a sandbox that died.
   */
  private async continueAfterSnapshot(wasPaused: boolean): Promise<void> {
    if (!this.vm.alive) return;
    try {
      await this.vm.qmp.execute('cont');
      const { status } = await this.vm.qmp.execute<{ status: string }>('query-status');
      if (status !== 'running') throw new Error(`the VM is "${status}" after cont`);
      if (wasPaused) {
        await this.vm.qmp.execute('stop');
      } else {
        // Its clock stood still while it was stopped.
        await this.vm.agent.setClock().catch(() => {});
      }
    } catch (error) {
      this.parts.log?.warn({ err: error, sandbox: this.id }, 'the microVM did not run again after a snapshot; the sandbox is destroyed');
      void this.destroy();
    }
  }

  /**
   * Saves the VM (memory, devices, every process) beside its disk and ends it: RAM released, `disposed` resolves.
   * The image is consumed by the next `createPersistentSandbox(spec, { restore: 'hibernated' })`.
   */
  async hibernate(): Promise<{ bytes: number }> {
    this.assertAlive();
    const storage = this.parts.storage;
    if (storage === null) throw new KindlingError('SNAPSHOTS_UNSUPPORTED', `sandbox ${this.id} keeps its files in memory (tmpfs): it cannot be hibernated`, { details: { sandbox: this.id } });
    const file = storage.store.memoryPath(this.id);
    const partial = `${file}.partial`;
    try {
      await this.vm.saveMemory(partial, migrationTimeoutMs(this.parts.shape.memoryMb));
      await rename(partial, file);
      await storage.store.saveHibernation(this.id, { ...this.parts.shape, machine: this.parts.machine, streamsUsed: this.vm.agent.streamsUsed, savedAt: new Date().toISOString() });
      // Background commands run on in the saved guest under their stream ids: their streams wait for the restored VM
      // (output, exit and kill go on there) instead of ending with this one.
      this.parts.keepStreams(this.vm.agent.detach());
    } catch (error) {
      // Still the running sandbox: continue it as it was.
      if (this.vm.alive && !this.paused) await this.vm.qmp.execute('cont').catch(() => {});
      await rm(partial, { force: true }).catch(() => {});
      throw new KindlingError('EXECUTOR_FAILED', `hibernating sandbox ${this.id} failed: ${(error as Error).message}`, { cause: error });
    }
    this.vm.kill();
    await this.disposed;
    return { bytes: (await stat(file)).size };
  }

  /**
   * Kills the VM. Its data disk stays (removeDisk removes it): the guest's file system is frozen first (written out)
   * and the VM stopped (QEMU's block layer flushed), so a restart finds every file as the last command left it.
   */
  destroy(): Promise<void> {
    this.destroying ??= (async () => {
      clearTimeout(this.backstop);
      if (this.alive && this.parts.storage !== null) {
        const flush = (async () => {
          if (this.paused) await this.vm.qmp.execute('cont');
          await this.vm.agent.freeze(true, FLUSH_TIMEOUT_MS);
          await this.vm.qmp.execute('stop');
        })();
        await Promise.race([flush.catch(() => {}), new Promise((resolve) => setTimeout(resolve, FLUSH_TIMEOUT_MS).unref())]);
      }
      this.vm.kill();
      await this.disposed;
    })();
    return this.destroying;
  }

  private assertAlive(): void {
    if (!this.alive) throw new KindlingError('SANDBOX_NOT_RUNNING', `sandbox ${this.id} has ended`, { details: { sandbox: this.id } });
  }
}

class MicroVmCommand implements SandboxCommand {
  readonly stdin: Writable | null;
  readonly stdout: Readable;
  readonly stderr: Readable;
  private readonly done: Promise<{ exitCode: number; signal: string | null }>;
  private killed = false;
  private finished = false;

  constructor(
    private readonly handle: AgentExec,
    vmGone: () => boolean,
  ) {
    this.stdin = handle.stdin;
    this.stdin?.on('error', () => {});
    this.stdout = handle.stdout;
    this.stderr = handle.stderr;
    this.done = handle.exit.then(
      (exit) => {
        this.finished = true;
        return this.killed ? { exitCode: 137, signal: 'SIGKILL' } : { exitCode: exit.exitCode, signal: exit.signal };
      },
      (error: unknown) => {
        this.finished = true;
        // The VM ended (destroyed, hibernated, died): the command's processes went with it.
        if (this.killed || vmGone()) return { exitCode: 137, signal: 'SIGKILL' };
        throw new KindlingError('EXECUTOR_FAILED', `the microVM agent failed: ${(error as Error).message}`, { cause: error });
      },
    );
  }

  wait(): Promise<{ exitCode: number; signal: string | null }> {
    return this.done;
  }

  kill(): void {
    if (this.killed || this.finished) return;
    this.killed = true;
    this.handle.kill();
  }
}
