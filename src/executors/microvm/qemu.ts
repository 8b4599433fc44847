/**
 * The QEMU driver: one `qemu-system-x86_64 -M microvm` process per VM, KVM when usable and TCG otherwise, the agent
 * over a virtio-serial port on a unix-socket chardev, control over QMP on another unix socket.
 *
 * Everything of a VM lives in its own directory (`vmDir`): the copy-on-write overlay of the image (qcow2 whose backing
 * file is the image's ext4, so the image is never written), the sockets, the console log, and `vm.json` naming the
 * owner and the qemu pid so that a reaper can find and kill it after a crash.
 */
import type { Cgroup } from '../shared/cgroups.js';
import { shellQuote } from '../shared/process.js';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AgentClient, type DetachedStreams } from './agent-client.js';
import { VmProcess, type VmExit } from './vm-process.js';
import type { MicroVmAssets } from './assets.js';
import type { BindDisk } from './bind-disks.js';

export type Accelerator = 'kvm' | 'tcg';

export interface QemuConfig {
  qemuBinary: string;
  qemuImgBinary: string;
  assets: MicroVmAssets;
  accel: Accelerator;
  /** Kernel TSC frequency hint (TCG boots hang ~1 in 6 without it); null leaves it out. */
  tscKhz: number | null;
}

export interface VmShape {
  /** The image's ext4 (backing file of the overlay). */
  rootImage: string;
  vcpus: number;
  memoryMb: number;
  /** Read-only disks of host directories (bind-disks.ts), attached after the others; part of the shape (snapshots). */
  binds?: readonly BindDisk[];
}

/** The kernel argument naming the bind disks' labels (the init tells the image's disk from them), or ''. */
export function bindsArgument(shape: Pick<VmShape, 'binds'>): string {
  return shape.binds === undefined || shape.binds.length === 0 ? '' : ` kindling.binds=${shape.binds.map((bind) => bind.label).join(',')}`;
}

export interface VmRecord {
  owner: string;
  pid: number;
  createdAt: string;
}

/** Whether KVM can be used: /dev/kvm opens read-write and the CPU advertises vmx/svm (a bare node without them hangs). */
export function kvmUsable(): boolean {
  try {
    if (!existsSync('/dev/kvm')) return false;
    const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
    return /^flags\s*:.*\b(vmx|svm)\b/m.test(cpuinfo);
  } catch {
    return false;
  }
}

/** The host's TSC frequency in kHz from /proc/cpuinfo (`cpu MHz`), or null. */
export function hostTscKhz(): number | null {
  try {
    const mhz = /^cpu MHz\s*:\s*([\d.]+)/m.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1];
    return mhz ? Math.round(Number(mhz) * 1000) : null;
  } catch {
    return null;
  }
}

export function kernelCommandLine(config: Pick<QemuConfig, 'tscKhz'>): string {
  const parts = ['console=ttyS0', 'quiet', 'panic=-1', 'reboot=t', 'rootwait'];
  if (config.tscKhz) parts.push(`tsc_early_khz=${config.tscKhz}`, 'tsc=reliable', 'no_timer_check');
  return parts.join(' ');
}

/** The qemu argv for a VM (a pure function, unit-tested). `incoming` restores from a migration file instead of booting. */
export function qemuArgs(config: QemuConfig, shape: VmShape, vmDir: string, options: { incoming?: string; name: string; dataDisk?: string }): string[] {
  const accel = config.accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg,thread=multi', '-cpu', 'max'];
  const args = [
    '-name', options.name,
    '-M', 'microvm,pit=off,pic=off,rtc=off,isa-serial=on',
    ...accel,
    '-m', `${shape.memoryMb}M`,
    '-smp', String(shape.vcpus),
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    '-serial', `file:${path.join(vmDir, 'console.log')}`,
    '-kernel', config.assets.kernel,
    '-initrd', config.assets.initramfs,
    '-append', kernelCommandLine(config) + (options.dataDisk ? ' kindling.data=1' : '') + bindsArgument(shape),
    '-drive', `id=root,file=${path.join(vmDir, 'root.qcow2')},format=qcow2,if=none,cache=unsafe`,
    '-device', 'virtio-blk-device,drive=root',
    '-drive', `id=agent,file=${config.assets.agentDisk},format=raw,if=none,readonly=on`,
    '-device', 'virtio-blk-device,drive=agent',
    '-device', 'virtio-serial-device,max_ports=2',
    '-chardev', `socket,id=agentport,path=${path.join(vmDir, 'agent.sock')},server=on,wait=off`,
    '-device', 'virtserialport,chardev=agentport,name=dev.kindling.agent',
    '-qmp', `unix:${path.join(vmDir, 'qmp.sock')},server=on,wait=off`,
  ];
  // A persistent sandbox's data disk (its files outlive the VM): qcow2, written through QEMU's cache like the root.
  if (options.dataDisk) args.push('-drive', `id=data,file=${options.dataDisk},format=qcow2,if=none,cache=unsafe,discard=unmap`, '-device', 'virtio-blk-device,drive=data');
  (shape.binds ?? []).forEach((bind, i) => args.push('-drive', `id=bind${i},file=${bind.file},format=raw,if=none,readonly=on`, '-device', `virtio-blk-device,drive=bind${i}`));
  if (options.incoming) args.push('-incoming', `exec:cat ${shellQuote(options.incoming)}`);
  return args;
}

/** A minimal QMP client: greeting, qmp_capabilities, one command at a time. */
export class QmpClient {
  private buffer = '';
  private waiters: Array<{ resolve(value: unknown): void; reject(error: Error): void }> = [];
  private readonly events: Array<{ event: string; data?: unknown }> = [];

  private constructor(private readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      let newline: number;
      while ((newline = this.buffer.indexOf('\n')) >= 0) {
        const line = this.buffer.slice(0, newline).trim();
        this.buffer = this.buffer.slice(newline + 1);
        if (!line) continue;
        const message = JSON.parse(line) as { return?: unknown; error?: { desc: string }; event?: string; QMP?: unknown; data?: unknown };
        if (message.event) {
          this.events.push({ event: message.event, data: message.data });
          continue;
        }
        const waiter = this.waiters.shift();
        if (!waiter) continue;
        if (message.error) waiter.reject(new Error(`QMP: ${message.error.desc}`));
        else waiter.resolve(message.QMP ?? message.return);
      }
    });
    const failAll = (): void => {
      for (const waiter of this.waiters.splice(0)) waiter.reject(new Error('QMP connection closed'));
    };
    socket.on('close', failAll);
    socket.on('error', failAll);
  }

  static async connect(socketPath: string, deadline: number): Promise<QmpClient> {
    const socket = await connectUnix(socketPath, deadline);
    const client = new QmpClient(socket);
    await client.next(); // greeting
    await client.execute('qmp_capabilities');
    return client;
  }

  private next(): Promise<unknown> {
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    const reply = this.next();
    this.socket.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
    return reply as Promise<T>;
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Connects to a unix socket the VM creates, retrying until it exists or the deadline passes. */
export async function connectUnix(socketPath: string, deadline: number, alive: () => boolean = () => true): Promise<net.Socket> {
  for (;;) {
    try {
      return await new Promise<net.Socket>((resolve, reject) => {
        const socket = net.connect(socketPath);
        socket.once('connect', () => {
          socket.removeAllListeners('error');
          resolve(socket);
        });
        socket.once('error', reject);
      });
    } catch (error) {
      if (Date.now() > deadline || !alive()) throw error;
      await sleep(10);
    }
  }
}

export interface QemuVmOptions {
  config: QemuConfig;
  shape: VmShape;
  vmDir: string;
  owner: string;
  name: string;
  /** Restore from this migration file instead of booting. */
  incoming?: string;
  /** A persistent sandbox's data disk (qcow2 with an ext4 labelled kindling-data), attached as a third virtio-blk. */
  dataDisk?: string;
  /** The agent client's first stream id (after a hibernation, above every id the guest may still have running). */
  firstStream?: number;
  /** After a hibernation: the exec streams of the saved VM's client that go on in this one (see AgentClient). */
  adopt?: DetachedStreams;
  /** Limit for booting (or restoring) until the agent answers. */
  readyTimeoutMs: number;
  /** A fresh host cgroup the qemu process is moved into right after spawn (CPU, pids, memory cap); removed with the VM. */
  cgroup?: Cgroup;
}

/** One running VM. `destroy()` kills qemu and removes its directory; safe to call twice. */
export class QemuVm {
  private destroyed: Promise<void> | null = null;
  agent!: AgentClient;
  qmp!: QmpClient;
  /** Milliseconds from spawn to the first PONG. */
  readyMs = 0;

  private constructor(
    readonly options: QemuVmOptions,
    readonly vmProcess: VmProcess,
  ) {}

  get exited(): Promise<VmExit> {
    return this.vmProcess.exited;
  }

  get alive(): boolean {
    return this.vmProcess.alive;
  }

  get vmDir(): string {
    return this.options.vmDir;
  }

  /** Boots (or restores) a VM and waits for its agent. On failure everything made is removed and the error rethrown. */
  static async start(options: QemuVmOptions): Promise<QemuVm> {
    const startedAt = performance.now();
    const { config, shape, vmDir } = options;
    await fs.mkdir(vmDir, { recursive: true, mode: 0o700 });
    let vm: QemuVm | null = null;
    try {
      await run(config.qemuImgBinary, ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', shape.rootImage, path.join(vmDir, 'root.qcow2')]);
      const args = qemuArgs(config, shape, vmDir, { name: options.name, ...(options.incoming ? { incoming: options.incoming } : {}), ...(options.dataDisk ? { dataDisk: options.dataDisk } : {}) });
      const child = spawn(config.qemuBinary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
      // Writing the pid moves every thread qemu has so far; the ones it makes later are born inside.
      if (options.cgroup && child.pid !== undefined) {
        for (const file of options.cgroup.procsFiles) await fs.writeFile(file, String(child.pid));
      }
      const vmProcess = new VmProcess('qemu', child, vmDir);
      vm = new QemuVm(options, vmProcess);
      const record: VmRecord = { owner: options.owner, pid: await vmProcess.pid(), createdAt: new Date().toISOString() };
      await fs.writeFile(path.join(vmDir, 'vm.json'), JSON.stringify(record));
      await vmProcess.untilReady(vm.connect(Date.now() + options.readyTimeoutMs));
      vm.readyMs = performance.now() - startedAt;
      return vm;
    } catch (error) {
      if (vm) await vm.destroy().catch(() => undefined);
      else {
        await options.cgroup?.remove().catch(() => undefined);
        await fs.rm(vmDir, { recursive: true, force: true }).catch(() => undefined);
      }
      throw error;
    }
  }

  private async connect(deadline: number): Promise<void> {
    const alive = (): boolean => this.alive;
    this.qmp = await QmpClient.connect(path.join(this.vmDir, 'qmp.sock'), deadline);
    if (this.options.incoming) {
      // Wait for the incoming migration to finish and the VM to run again.
      for (;;) {
        const status = await this.qmp.execute<{ status: string }>('query-status');
        if (status.status === 'running') break;
        if (status.status !== 'inmigrate' && status.status !== 'paused' && status.status !== 'postmigrate') {
          throw new Error(`restore ended in state ${status.status}`);
        }
        if (status.status === 'paused') await this.qmp.execute('cont');
        if (Date.now() > deadline) throw new Error('restore did not finish in time');
        await sleep(5);
      }
    }
    const socket = await connectUnix(path.join(this.vmDir, 'agent.sock'), deadline, alive);
    this.agent = new AgentClient(socket, this.options.firstStream, this.options.adopt);
    await this.vmProcess.handshake(this.agent, deadline, this.options.incoming ? 2000 : 1000);
  }

  diagnostics(): string {
    return this.vmProcess.diagnostics();
  }

  /**
   * Saves the VM's state into `file` (QMP migrate to a file); the VM is left stopped ("postmigrate": `cont` takes its
   * disks back). A migration that fails or outlasts `timeoutMs` is cancelled and waited for before this rejects, so
   * that a VM continued afterwards is not stopped later by a migration still under way.
   */
  async snapshot(file: string, timeoutMs = 60_000): Promise<void> {
    await this.qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'zero-blocks', state: false }] }).catch(() => undefined);
    await this.qmp.execute('migrate', { uri: `exec:cat > ${shellQuote(file)}` });
    const deadline = Date.now() + timeoutMs;
    let problem: string;
    for (;;) {
      const info = await this.qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
      if (info.status === 'completed') return;
      if (info.status === 'failed' || info.status === 'cancelled') {
        problem = `snapshot failed: ${info['error-desc'] ?? info.status}`;
        break;
      }
      if (Date.now() > deadline) {
        problem = `snapshot did not finish in ${Math.round(timeoutMs / 1000)} s`;
        break;
      }
      await sleep(10);
    }
    await this.qmp.execute('migrate_cancel').catch(() => undefined);
    const settleBy = Date.now() + 10_000;
    while (Date.now() < settleBy) {
      const info = await this.qmp.execute<{ status?: string }>('query-migrate').catch(() => ({ status: 'failed' }));
      if (info.status === 'cancelled' || info.status === 'failed' || info.status === 'completed' || info.status === undefined) break;
      await sleep(10);
    }
    throw new Error(problem);
  }

  /** Hibernation: stops the VM and saves its whole state into `file` (QMP migrate). Kill the VM afterwards. */
  async saveMemory(file: string, timeoutMs = 120_000): Promise<void> {
    await this.qmp.execute('stop');
    await this.snapshot(file, timeoutMs);
  }

  kill(): void {
    this.vmProcess.kill();
  }

  /**
   * CPU time of the qemu process (every vCPU and QEMU's own threads: what the VM costs the host) and its peak memory,
   * from its host cgroup, else from /proc (CPU only, in clock ticks).
   */
  usage(): { cpuMs: number | null; memoryPeakBytes: number | null } {
    if (this.options.cgroup) return this.options.cgroup.usage();
    try {
      const fields = readFileSync(`/proc/${this.vmProcess.child.pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
      // utime and stime are fields 14 and 15 of stat (11 and 12 after the command name), in USER_HZ (100) ticks.
      return { cpuMs: (Number(fields[11]) + Number(fields[12])) * 10, memoryPeakBytes: null };
    } catch {
      return { cpuMs: null, memoryPeakBytes: null };
    }
  }

  destroy(): Promise<void> {
    this.destroyed ??= (async () => {
      this.agent?.close();
      this.qmp?.close();
      this.kill();
      await this.exited;
      await this.options.cgroup?.remove();
      await fs.rm(this.vmDir, { recursive: true, force: true });
    })();
    return this.destroyed;
  }
}

function run(command: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const err: Buffer[] = [];
    child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${command} exited ${code}: ${Buffer.concat(err).toString().trim()}`))));
  });
}
