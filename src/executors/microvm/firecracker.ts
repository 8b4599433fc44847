/**
 * The Firecracker driver: one `firecracker` process per VM (optionally under the `jailer`), configured over its HTTP
 * API on a unix socket, the agent reached over vsock: Firecracker's vsock device is backed by a unix socket on the
 * host (`uds_path`); a host-initiated connection is a connect() to that socket followed by `CONNECT <port>\n`, which
 * Firecracker answers with `OK <host port>\n` once the guest accepted it. Everything after that line is the guest's
 * byte stream (agent/vm/protocol.ts). Inside the guest the agent listens through the guest helper's vsock bridge
 * (agent/vm/guest-helper.c) because node cannot listen on AF_VSOCK.
 *
 * Disks: Firecracker has no qcow2, so there is no per-VM overlay file: the image's ext4 and the agent disk are attached
 * read-only (`is_read_only`, enforced by the VMM) and the guest mounts them read-only with tmpfs for every writable
 * place (see INIT_SCRIPT), so the base image is never written and nothing per VM needs copying.
 *
 * Paths inside the VM's directory (vsock socket, snapshot files) are relative to the process's working directory
 * (the VM directory), so a snapshot restored in another directory gets its own vsock socket.
 *
 * Real boots need a usable /dev/kvm; the code is tested against Firecracker's published API schema and a stand-in
 * binary (test/fixtures/fake-firecracker.mjs) wherever KVM is missing.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, closeSync } from 'node:fs';
import * as fs from 'node:fs/promises';
import http from 'node:http';
import type net from 'node:net';
import path from 'node:path';
import { AgentClient } from './agent-client.js';
import { VmProcess, type VmExit } from './vm-process.js';
import { bindsArgument, connectUnix, type VmRecord, type VmShape } from './qemu.js';

/** The guest vsock port the agent's bridge listens on. */
export const AGENT_VSOCK_PORT = 1024;
/** Guest CID (3 is the lowest a guest may have; each VM has its own vsock device, so they may all use it). */
export const GUEST_CID = 3;
const VSOCK_UDS = 'vsock.sock';
const API_SOCK = 'api.sock';

export interface FirecrackerConfig {
  firecrackerBinary: string;
  /** When set and present, VMs run under the jailer (chroot, uid/gid, cgroup, new namespaces). */
  jailer?: { binary: string; uid: number; gid: number; chrootBaseDir: string } | null;
  /** Uncompressed kernel (ELF), see vmlinux.ts. */
  kernel: string;
  initramfs: string;
  agentDisk: string;
  bootArgs: string;
}

export function firecrackerBootArgs(): string {
  // pci=off: Firecracker has no PCI; virtio-mmio devices come from virtio_mmio.device= it appends (the init passes them
  // to the virtio_mmio module, which is not built in on Debian). kindling.transport=vsock tells the agent its channel.
  return ['console=ttyS0', 'quiet', 'reboot=k', 'panic=-1', 'pci=off', 'rootwait', 'kindling.transport=vsock'].join(' ');
}

export interface ApiRequest {
  method: 'GET' | 'PUT' | 'PATCH';
  path: string;
  body?: Record<string, unknown>;
}

/** The requests that configure and boot a VM, in order (a pure function: the tests validate every body). */
export function bootRequests(config: Pick<FirecrackerConfig, 'kernel' | 'initramfs' | 'agentDisk' | 'bootArgs'>, shape: VmShape): ApiRequest[] {
  return [
    { method: 'PUT', path: '/machine-config', body: { vcpu_count: shape.vcpus, mem_size_mib: shape.memoryMb, smt: false } },
    { method: 'PUT', path: '/boot-source', body: { kernel_image_path: config.kernel, initrd_path: config.initramfs, boot_args: config.bootArgs + bindsArgument(shape) } },
    { method: 'PUT', path: '/drives/root', body: { drive_id: 'root', path_on_host: shape.rootImage, is_root_device: false, is_read_only: true } },
    { method: 'PUT', path: '/drives/agent', body: { drive_id: 'agent', path_on_host: config.agentDisk, is_root_device: false, is_read_only: true } },
    ...(shape.binds ?? []).map((bind, i): ApiRequest => ({ method: 'PUT', path: `/drives/bind${i}`, body: { drive_id: `bind${i}`, path_on_host: bind.file, is_root_device: false, is_read_only: true } })),
    { method: 'PUT', path: '/vsock', body: { guest_cid: GUEST_CID, uds_path: VSOCK_UDS } },
    { method: 'PUT', path: '/actions', body: { action_type: 'InstanceStart' } },
  ];
}

/** Snapshot files of a snapshot named `base`: the VM state and the guest memory. */
export function snapshotFiles(base: string): { state: string; memory: string } {
  return { state: base, memory: `${base}.mem` };
}

export function snapshotCreateRequests(base: string): ApiRequest[] {
  const files = snapshotFiles(base);
  return [
    { method: 'PATCH', path: '/vm', body: { state: 'Paused' } },
    { method: 'PUT', path: '/snapshot/create', body: { snapshot_type: 'Full', snapshot_path: files.state, mem_file_path: files.memory } },
  ];
}

export function snapshotLoadRequests(base: string): ApiRequest[] {
  const files = snapshotFiles(base);
  return [
    {
      method: 'PUT',
      path: '/snapshot/load',
      body: { snapshot_path: files.state, mem_backend: { backend_type: 'File', backend_path: files.memory }, resume_vm: true },
    },
  ];
}

export const resumeRequest: ApiRequest = { method: 'PATCH', path: '/vm', body: { state: 'Resumed' } };

export class FirecrackerApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = 'FirecrackerApiError';
  }
}

/** HTTP over the API unix socket. Firecracker answers 204 (or 200 with JSON); errors carry `fault_message`. */
export class FirecrackerApi {
  constructor(
    readonly socketPath: string,
    private readonly timeoutMs = 30_000,
  ) {}

  request<T = unknown>(req: ApiRequest): Promise<T | null> {
    const payload = req.body === undefined ? null : Buffer.from(JSON.stringify(req.body));
    return new Promise((resolve, reject) => {
      const call = http.request(
        {
          socketPath: this.socketPath,
          method: req.method,
          path: req.path,
          agent: false,
          timeout: this.timeoutMs,
          headers: { Accept: 'application/json', ...(payload ? { 'Content-Type': 'application/json', 'Content-Length': payload.length } : {}) },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            const status = res.statusCode ?? 0;
            let json: unknown = null;
            try {
              json = text ? JSON.parse(text) : null;
            } catch {}
            if (status >= 200 && status < 300) resolve(json as T | null);
            else {
              const fault = (json as { fault_message?: string } | null)?.fault_message ?? (text.trim() || `HTTP ${status}`);
              reject(new FirecrackerApiError(status, `firecracker ${req.method} ${req.path}: ${fault}`));
            }
          });
        },
      );
      call.on('timeout', () => call.destroy(new Error(`firecracker ${req.method} ${req.path}: no answer within ${this.timeoutMs} ms`)));
      call.on('error', reject);
      call.end(payload ?? undefined);
    });
  }

  async run(requests: ApiRequest[]): Promise<void> {
    for (const req of requests) await this.request(req);
  }
}

/**
 * Opens a host-initiated vsock connection through Firecracker's unix socket: `CONNECT <port>\n`, then waits for
 * `OK <n>\n`. Bytes that arrive after the OK line are pushed back so the caller reads them first. Retries (the socket
 * appears only once the VM runs; the guest's listener only once the agent started) until the deadline.
 */
export async function connectVsock(udsPath: string, port: number, deadline: number, alive: () => boolean = () => true): Promise<net.Socket> {
  let lastError: Error = new Error('not tried');
  while (Date.now() <= deadline && alive()) {
    let socket: net.Socket | null = null;
    try {
      socket = await connectUnix(udsPath, deadline, alive);
      await handshake(socket, port, Math.max(50, Math.min(2000, deadline - Date.now())));
      return socket;
    } catch (error) {
      lastError = error as Error;
      socket?.destroy();
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
  throw new Error(`vsock port ${port} via ${udsPath} did not accept: ${lastError.message}`);
}

function handshake(socket: net.Socket, port: number, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let buffer = Buffer.alloc(0);
    const finish = (error: Error | null): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('close', onClose);
      socket.off('error', onError);
      if (error) reject(error);
      else resolve();
    };
    const onData = (chunk: Buffer): void => {
      buffer = Buffer.concat([buffer, chunk]);
      const newline = buffer.indexOf(0x0a);
      if (newline < 0) {
        if (buffer.length > 64) finish(new Error(`bad vsock handshake reply ${JSON.stringify(buffer.toString('latin1').slice(0, 64))}`));
        return;
      }
      const line = buffer.subarray(0, newline).toString('latin1').trim();
      const rest = buffer.subarray(newline + 1);
      if (!/^OK \d+$/.test(line)) {
        finish(new Error(`vsock handshake refused: ${JSON.stringify(line)}`));
        return;
      }
      socket.pause();
      if (rest.length > 0) socket.unshift(rest);
      finish(null);
    };
    const onClose = (): void => finish(new Error('the vsock connection closed during the handshake (nothing listens on the guest port yet?)'));
    const onError = (error: Error): void => finish(error);
    const timer = setTimeout(() => finish(new Error(`no vsock handshake reply within ${timeoutMs} ms`)), timeoutMs);
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.once('error', onError);
    socket.write(`CONNECT ${port}\n`);
  });
}

/** The jailer's argv for a VM (pure; the jailer then execs firecracker inside `<chrootBaseDir>/firecracker/<id>/root`). */
export function jailerArgs(config: FirecrackerConfig, id: string): string[] {
  if (!config.jailer) throw new Error('no jailer configured');
  return [
    '--id', id,
    '--exec-file', config.firecrackerBinary,
    '--uid', String(config.jailer.uid),
    '--gid', String(config.jailer.gid),
    '--chroot-base-dir', config.jailer.chrootBaseDir,
    '--',
    '--api-sock', `/${API_SOCK}`,
  ];
}

export interface FirecrackerVmOptions {
  config: FirecrackerConfig;
  shape: VmShape;
  vmDir: string;
  owner: string;
  /** A VM id: [a-zA-Z0-9-]{1,64} (the jailer's rule). */
  name: string;
  /** Restore from this snapshot (base name, see snapshotFiles) instead of booting. */
  incoming?: string;
  readyTimeoutMs: number;
}

export class FirecrackerVm {
  private destroyed: Promise<void> | null = null;
  agent!: AgentClient;
  readonly api: FirecrackerApi;
  readyMs = 0;

  private constructor(
    readonly options: FirecrackerVmOptions,
    readonly vmProcess: VmProcess,
    /** Where the API socket and the relative paths live (the VM dir, or the jail's root). */
    readonly rootDir: string,
  ) {
    this.api = new FirecrackerApi(path.join(rootDir, API_SOCK));
  }

  get exited(): Promise<VmExit> {
    return this.vmProcess.exited;
  }

  get alive(): boolean {
    return this.vmProcess.alive;
  }

  get vmDir(): string {
    return this.options.vmDir;
  }

  static async start(options: FirecrackerVmOptions): Promise<FirecrackerVm> {
    const startedAt = performance.now();
    const { config, vmDir } = options;
    if (!/^[a-zA-Z0-9-]{1,64}$/.test(options.name)) throw new Error(`bad VM id ${JSON.stringify(options.name)}`);
    await fs.mkdir(vmDir, { recursive: true, mode: 0o700 });
    let vm: FirecrackerVm | null = null;
    try {
      let command: string;
      let args: string[];
      let rootDir = vmDir;
      if (config.jailer) {
        command = config.jailer.binary;
        args = jailerArgs(config, options.name);
        rootDir = path.join(config.jailer.chrootBaseDir, path.basename(config.firecrackerBinary), options.name, 'root');
      } else {
        command = config.firecrackerBinary;
        args = ['--api-sock', path.join(vmDir, API_SOCK), '--id', options.name];
      }
      const consoleFd = openSync(path.join(vmDir, 'console.log'), 'a');
      let child: ChildProcess;
      try {
        child = spawn(command, args, { cwd: rootDir === vmDir ? vmDir : '/', stdio: ['ignore', consoleFd, 'pipe'] });
      } finally {
        closeSync(consoleFd);
      }
      const vmProcess = new VmProcess('firecracker', child, vmDir);
      vm = new FirecrackerVm(options, vmProcess, rootDir);
      const record: VmRecord & { driver: string; rootDir: string } = {
        owner: options.owner,
        pid: await vmProcess.pid(),
        createdAt: new Date().toISOString(),
        driver: 'firecracker',
        rootDir,
      };
      await fs.writeFile(path.join(vmDir, 'vm.json'), JSON.stringify(record));
      await vmProcess.untilReady(vm.bootOrRestore(Date.now() + options.readyTimeoutMs));
      vm.readyMs = performance.now() - startedAt;
      return vm;
    } catch (error) {
      if (vm) await vm.destroy().catch(() => undefined);
      else await fs.rm(vmDir, { recursive: true, force: true }).catch(() => undefined);
      throw error;
    }
  }

  private async bootOrRestore(deadline: number): Promise<void> {
    const alive = (): boolean => this.alive;
    // The API socket exists once firecracker is up.
    (await connectUnix(this.api.socketPath, deadline, alive)).destroy();
    const { config, shape, incoming } = this.options;
    if (config.jailer) await this.stageJail();
    if (incoming) await this.api.run(snapshotLoadRequests(incoming));
    else await this.api.run(bootRequests(config, shape));
    const socket = await connectVsock(path.join(this.rootDir, VSOCK_UDS), AGENT_VSOCK_PORT, deadline, alive);
    this.agent = new AgentClient(socket);
    socket.resume();
    await this.vmProcess.handshake(this.agent, deadline, 2000);
  }

  /** With the jailer, the files the API names must be inside the chroot: hard-link them (same filesystem expected). */
  private async stageJail(): Promise<void> {
    const { config, shape } = this.options;
    for (const file of [config.kernel, config.initramfs, config.agentDisk, shape.rootImage, ...(shape.binds ?? []).map((bind) => bind.file)]) {
      const target = path.join(this.rootDir, file);
      await fs.mkdir(path.dirname(target), { recursive: true });
      await fs.link(file, target).catch(async (error: NodeJS.ErrnoException) => {
        if (error.code === 'EXDEV') await fs.copyFile(file, target);
        else if (error.code !== 'EEXIST') throw error;
      });
    }
  }

  diagnostics(): string {
    return this.vmProcess.diagnostics();
  }

  /** Pauses the VM and writes a full snapshot (`base` and `base.mem`). The VM stays paused; destroy it afterwards. */
  async snapshot(base: string): Promise<void> {
    await this.api.run(snapshotCreateRequests(base));
  }

  async pause(): Promise<void> {
    await this.api.request({ method: 'PATCH', path: '/vm', body: { state: 'Paused' } });
  }

  async resume(): Promise<void> {
    await this.api.request(resumeRequest);
  }

  kill(): void {
    this.vmProcess.kill();
  }

  destroy(): Promise<void> {
    this.destroyed ??= (async () => {
      this.agent?.close();
      this.kill();
      await this.exited;
      if (this.rootDir !== this.vmDir) await fs.rm(path.dirname(this.rootDir), { recursive: true, force: true });
      await fs.rm(this.vmDir, { recursive: true, force: true });
    })();
    return this.destroyed;
  }
}

/** Why real Firecracker VMs cannot run here, or null when they can. */
export function firecrackerUnavailable(binary: string, kvmUsable: boolean): string | null {
  const found = binary.includes('/') ? existsSync(binary) : (process.env.PATH ?? '').split(':').some((dir) => existsSync(path.join(dir, binary)));
  const missing: string[] = [];
  if (!kvmUsable) missing.push('KVM is not usable (/dev/kvm missing, or the CPU exposes no vmx/svm)');
  if (!found) missing.push(`no ${binary} binary on PATH`);
  return missing.length ? missing.join('; ') : null;
}
