/**
 * The guest agent of a Kindling microVM. The initramfs's init (see src/executors/microvm/assets.ts) mounts the image's
 * ext4 read-only as /, the agent disk on /run/kindling-agent, tmpfs on /run, /tmp, /work and /.kindling, cgroup2 on
 * /sys/fs/cgroup, then switch_roots into `node guest-agent.js` as PID 1.
 *
 * The agent speaks agent/vm/protocol.ts over a virtio-serial port named `dev.kindling.agent` (QEMU) or, when the
 * kernel command line says `kindling.transport=vsock` (Firecracker), over vsock port 1024 through the guest helper's
 * bridge (node cannot listen on AF_VSOCK). It only answers:
 * the host always speaks first. Each EXEC runs as nobody in a fresh cgroup (memory, pids, cpu limits; cgroup.kill
 * when the main process exits), in new PID and mount namespaces with its own /proc, on a fresh tmpfs working dir.
 *
 * This file runs in the guest under the node on the agent disk: it imports only node: modules and ./protocol.js.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import path from 'node:path';
import {
  FrameDecoder,
  MessageType,
  PROTOCOL_VERSION,
  decodeFileBody,
  decodeJson,
  encodeChunks,
  encodeFileBody,
  encodeFrame,
  encodeJson,
  FEATURE_BINDS,
  FEATURE_PORTS,
  FEATURE_WINDOW,
  PORT_HELPER_PATH,
  type ExecRequest,
  type ExitMessage,
  type Frame,
  type FileHeader,
  type ClockRequest,
  type FreezeRequest,
  type PongMessage,
  type SandboxSetup,
  type SeedReply,
  type WindowMessage,
} from './protocol.js';

/** 1.1.0: EXEC.window and WINDOW (credit-based flow control), the port helper on the disk (see PONG features). */
export const AGENT_VERSION = '1.1.0';
const AGENT_DIR = '/run/kindling-agent';
const BUSYBOX = `${AGENT_DIR}/bin/busybox`;
/** util-linux's setpriv from the image (Debian's util-linux is essential); busybox's cannot change uids. */
const SETPRIV = '/usr/bin/setpriv';
const CGROUP_ROOT = '/sys/fs/cgroup';
/** The persistent sandbox's cgroup (SANDBOX): its limits cover every command, each command a child cgroup of it. */
const SANDBOX_CGROUP = `${CGROUP_ROOT}/sandbox`;
/** Where the persistent sandbox's data disk is mounted; its work/ and tmp/ are bound at the work dir and /tmp. */
const DATA_MOUNT = '/run/kindling-data';
const DATA_LABEL = 'kindling-data';
const FSFREEZE = '/usr/sbin/fsfreeze';
/** After a sandbox command's main process exited, output its background children still hold open is not awaited longer. */
const OUTPUT_GRACE_MS = 100;
const PORT_NAME = 'dev.kindling.agent';
/** The static helper on the agent disk (agent/vm/guest-helper.c): CRNG reseed, vsock listener. */
const HELPER = `${AGENT_DIR}/bin/kindling-guest-helper`;
/** Must match AGENT_VSOCK_PORT in src/executors/microvm/firecracker.ts. */
const VSOCK_PORT = 1024;
const startedAt = Date.now();

function log(message: string): void {
  try {
    fs.writeSync(2, `kindling-agent: ${message}\n`);
  } catch {}
}

/** The /dev node of the virtio-serial port with our name. */
function findPort(): string {
  const dir = '/sys/class/virtio-ports';
  for (;;) {
    try {
      for (const entry of fs.readdirSync(dir)) {
        const name = fs.readFileSync(path.join(dir, entry, 'name'), 'utf8').trim();
        if (name === PORT_NAME) return `/dev/${entry}`;
      }
    } catch {}
    // The port appears shortly after virtio_console loads.
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
  }
}

/** Serialised writes to the port (blocking fd: each write runs on the thread pool, in order). */
class PortWriter {
  private queue: Buffer[] = [];
  private writing = false;
  constructor(private readonly fd: number) {}

  send(frame: Buffer): void {
    this.queue.push(frame);
    if (!this.writing) this.flush();
  }

  private flush(): void {
    const next = this.queue.shift();
    if (!next) {
      this.writing = false;
      return;
    }
    this.writing = true;
    const writeAll = (buffer: Buffer): void => {
      fs.write(this.fd, buffer, 0, buffer.length, null, (error, written) => {
        if (error) {
          // EAGAIN/ENOTCONN while the host is away: retry shortly, frames stay in order.
          setTimeout(() => writeAll(buffer), 20);
          return;
        }
        if (written < buffer.length) writeAll(buffer.subarray(written));
        else this.flush();
      });
    };
    writeAll(next);
  }
}

interface RunningExec {
  child: ChildProcess;
  cgroup: string;
  /** Flow control of an EXEC with `window` (null: output is sent as it comes, stdin written as it comes). */
  flow: Flow | null;
}

/**
 * Credit-based flow control of one stream (protocol.ts, EXEC.window): output is sent while credit lasts, then the
 * process's pipes are paused until the host grants more; stdin bytes are acknowledged once written into the process.
 */
class Flow {
  private credit: number;
  private unacked = 0;
  private readonly pipes: NodeJS.ReadableStream[] = [];

  constructor(
    private readonly window: number,
    private readonly ack: (bytes: number) => void,
  ) {
    this.credit = window;
  }

  /** A pipe of the process whose output counts against the credit. */
  watch(pipe: NodeJS.ReadableStream): void {
    this.pipes.push(pipe);
  }

  /** Called after a chunk of `bytes` was sent: pauses every pipe of the stream when out of credit. */
  spent(bytes: number): void {
    this.credit -= bytes;
    if (this.credit <= 0) for (const each of this.pipes) each.pause();
  }

  granted(bytes: number): void {
    this.credit += bytes;
    if (this.credit > 0) for (const each of this.pipes) each.resume();
  }

  /** `bytes` of stdin reached the process: acknowledged in batches (a quarter window), or at once when none is left. */
  written(bytes: number, pending: number): void {
    this.unacked += bytes;
    if (this.unacked >= this.window / 4 || pending === 0) {
      this.ack(this.unacked);
      this.unacked = 0;
    }
  }
}

/** Reads the virtio-serial port forever. A read of 0 bytes means the host side is not connected (yet, or any more). */
function readPortLoop(fd: number, onData: (chunk: Buffer) => void): void {
  const buffer = Buffer.allocUnsafe(256 * 1024);
  const next = (): void => {
    fs.read(fd, buffer, 0, buffer.length, null, (error, bytesRead) => {
      if (error || bytesRead === 0) {
        setTimeout(next, error ? 50 : 20);
        return;
      }
      onData(Buffer.from(buffer.subarray(0, bytesRead)));
      next();
    });
  };
  next();
}

class Agent {
  private readonly decoder = new FrameDecoder();
  private readonly execs = new Map<number, RunningExec>();
  private sandbox: SandboxSetup | null = null;

  constructor(private readonly send: (frame: Buffer) => void) {}

  /** Bytes from the host, in order. */
  feed(chunk: Buffer): void {
    let frames: Frame[] = [];
    try {
      frames = this.decoder.push(chunk);
    } catch (decodeError) {
      log(`bad input from the host: ${(decodeError as Error).message}`);
    }
    for (const frame of frames) {
      try {
        this.handle(frame);
      } catch (handleError) {
        this.error(frame.id, (handleError as Error).message);
      }
    }
  }

  private error(stream: number, message: string): void {
    this.send(encodeJson(MessageType.ERROR, stream, { message }));
  }

  private handle(frame: Frame): void {
    switch (frame.type) {
      case MessageType.PING:
        this.send(encodeJson(MessageType.PONG, frame.id, this.pong()));
        return;
      case MessageType.EXEC: {
        const request = decodeJson<ExecRequest>(frame);
        if (request.sandbox === true) this.sandboxExec(frame.id, request);
        else this.exec(frame.id, request);
        return;
      }
      case MessageType.SANDBOX:
        this.setUpSandbox(decodeJson<SandboxSetup>(frame));
        this.send(encodeFrame(MessageType.OK, frame.id));
        return;
      case MessageType.CLOCK: {
        // busybox date takes whole seconds; a restored VM is off by hours or days before this, by < 1 s after.
        const seconds = Math.round(decodeJson<ClockRequest>(frame).epochMs / 1000);
        if (spawnSyncQuiet([BUSYBOX, 'date', '-u', '-s', `@${seconds}`]) !== 0) throw new Error('setting the clock failed');
        this.send(encodeFrame(MessageType.OK, frame.id));
        return;
      }
      case MessageType.FREEZE:
        freezeData(this.sandbox?.disk === true, decodeJson<FreezeRequest>(frame).frozen);
        this.send(encodeFrame(MessageType.OK, frame.id));
        return;
      case MessageType.STDIN: {
        const running = this.execs.get(frame.id);
        const stdin = running?.child.stdin;
        if (!stdin || stdin.destroyed) return;
        const flow = running.flow;
        const bytes = frame.payload.length;
        if (flow === null) stdin.write(frame.payload);
        else stdin.write(frame.payload, () => flow.written(bytes, stdin.writableLength));
        return;
      }
      case MessageType.WINDOW:
        // A stream that ended meanwhile: the grant is moot (never an ERROR: the host may still send one).
        this.execs.get(frame.id)?.flow?.granted(decodeJson<WindowMessage>(frame).bytes);
        return;
      case MessageType.STDIN_END:
        this.execs.get(frame.id)?.child.stdin?.end();
        return;
      case MessageType.KILL: {
        const running = this.execs.get(frame.id);
        if (running) killCgroup(running.cgroup, running.child);
        return;
      }
      case MessageType.PUT_FILE: {
        const { header, data } = decodeFileBody(frame.payload);
        fs.mkdirSync(path.dirname(header.path), { recursive: true });
        fs.writeFileSync(header.path, data, { mode: header.mode ?? 0o644 });
        fs.chmodSync(header.path, header.mode ?? 0o644);
        this.send(encodeFrame(MessageType.OK, frame.id));
        return;
      }
      case MessageType.GET_FILE: {
        const header = decodeJson<FileHeader>(frame);
        const data = fs.readFileSync(header.path);
        this.send(encodeFrame(MessageType.FILE, frame.id, encodeFileBody({ path: header.path }, data)));
        return;
      }
      case MessageType.SEED:
        this.send(encodeJson(MessageType.OK, frame.id, reseed(frame.payload)));
        return;
      default:
        this.error(frame.id, `unexpected message type ${frame.type}`);
    }
  }

  private pong(): PongMessage {
    const meminfo = readOr('/proc/meminfo', '');
    const kb = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(meminfo)?.[1] ?? 0) * 1024;
    return {
      version: PROTOCOL_VERSION,
      agentVersion: AGENT_VERSION,
      features: [FEATURE_WINDOW, FEATURE_BINDS, ...(fs.existsSync(PORT_HELPER_PATH) ? [FEATURE_PORTS] : [])],
      uptimeMs: Date.now() - startedAt,
      memory: { totalBytes: kb('MemTotal'), availableBytes: kb('MemAvailable') },
    };
  }

  /**
   * Makes this VM a persistent sandbox: one cgroup with the sandbox's limits (its commands are child cgroups of it),
   * the work dir and /tmp on the data disk (files outlive the VM) or on tmpfs. Once per VM.
   */
  private setUpSandbox(setup: SandboxSetup): void {
    if (this.sandbox !== null) throw new Error('this VM is a persistent sandbox already');
    const { limits } = setup;
    fs.mkdirSync(SANDBOX_CGROUP);
    writeQuiet(path.join(SANDBOX_CGROUP, 'memory.max'), `${limits.memoryMb * 1024 * 1024}`);
    writeQuiet(path.join(SANDBOX_CGROUP, 'memory.swap.max'), '0');
    writeQuiet(path.join(SANDBOX_CGROUP, 'pids.max'), `${limits.pids}`);
    writeQuiet(path.join(SANDBOX_CGROUP, 'cpu.max'), `${Math.max(1000, Math.round(limits.cpus * 100_000))} 100000`);
    // The commands' cgroups report their own CPU time and peak memory.
    writeQuiet(path.join(SANDBOX_CGROUP, 'cgroup.subtree_control'), '+memory +pids +cpu');
    if (!fs.existsSync(setup.workdir)) throw new Error(`working directory ${setup.workdir} does not exist in the image`);
    if (setup.disk) {
      const device = spawnSync(BUSYBOX, ['findfs', `LABEL=${DATA_LABEL}`], { encoding: 'utf8' }).stdout.trim();
      if (!device) throw new Error(`the data disk (label ${DATA_LABEL}) is not attached`);
      fs.mkdirSync(DATA_MOUNT, { recursive: true });
      if (spawnSyncQuiet([BUSYBOX, 'mount', '-t', 'ext4', '-o', 'nosuid,nodev', device, DATA_MOUNT]) !== 0) throw new Error(`cannot mount the data disk ${device}`);
      for (const [dir, target] of [['work', setup.workdir], ['tmp', '/tmp']] as const) {
        spawnSyncQuiet([BUSYBOX, 'umount', '-l', target]);
        if (spawnSyncQuiet([BUSYBOX, 'mount', '--bind', path.join(DATA_MOUNT, dir), target]) !== 0) throw new Error(`cannot bind the data disk's ${dir}/ at ${target}`);
      }
    } else {
      mountTmpfs('/tmp', `mode=1777,size=${limits.diskMb}m`);
      mountTmpfs(setup.workdir, `mode=0755,uid=${setup.uid},gid=${setup.gid},size=${limits.diskMb}m`);
    }
    // Terminals (the server's pty relay runs python3's pty module): the guest's devtmpfs has /dev/ptmx but no devpts
    // behind it. Not fatal: commands work without one, a terminal then fails to open its pty.
    fs.mkdirSync('/dev/pts', { recursive: true });
    spawnSyncQuiet([BUSYBOX, 'mount', '-t', 'devpts', '-o', 'nosuid,noexec,mode=0620,ptmxmode=0666', 'devpts', '/dev/pts']);
    this.sandbox = setup;
  }

  /**
   * A command of the persistent sandbox: in a child cgroup of the sandbox's (KILL = cgroup.kill of that child: the
   * command's whole tree, nothing else), as the sandbox's user, in the work dir it asks for (exit 126 when it cannot
   * go there). EXIT is sent once the main process exited and its output was read (briefly: background children may
   * hold the pipes for ever); what it left running stays, in its cgroup, which goes once empty.
   */
  private sandboxExec(stream: number, request: ExecRequest): void {
    if (this.sandbox === null) throw new Error('no persistent sandbox was set up (SANDBOX) in this VM');
    if (this.execs.has(stream)) throw new Error(`stream ${stream} is already running`);
    // A work dir that is not a directory is the command's failure (126, like `cd` in a shell), not the platform's.
    if (!isDirectory(request.workdir)) {
      this.send(encodeFrame(MessageType.STDERR, stream, `cannot change to ${request.workdir}: no such directory\n`));
      this.send(encodeJson(MessageType.EXIT, stream, { exitCode: 126, signal: null, oomKilled: false, usage: { cpuUsec: null, memoryPeakBytes: null } } satisfies ExitMessage));
      return;
    }
    // A bad window is refused before anything is made (no process runs untracked).
    const flow = this.flowOf(stream, request);
    const cgroup = path.join(SANDBOX_CGROUP, `c${stream}`);
    fs.mkdirSync(cgroup);
    // Two execs before the command (sh joins the cgroup, setpriv drops to the user), each costly under TCG; the work
    // dir is set by spawn (as root: it exists, checked above).
    const argv = [
      '-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup,
      SETPRIV, `--reuid=${this.sandbox.uid}`, `--regid=${this.sandbox.gid}`, '--clear-groups', '--',
      ...request.argv,
    ];
    const child = spawn(BUSYBOX, argv, { argv0: 'sh', cwd: request.workdir, env: request.env, stdio: [request.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
    this.execs.set(stream, { child, cgroup, flow });
    this.pipeOutput(stream, child, flow);
    let done = false;
    child.on('error', (error) => {
      if (done) return;
      done = true;
      this.execs.delete(stream);
      this.error(stream, `spawn failed: ${error.message}`);
    });
    child.on('exit', (code, signal) => {
      const outputs = [child.stdout, child.stderr].map(
        (pipe) =>
          new Promise<void>((resolve) => {
            if (!pipe || pipe.destroyed || pipe.readableEnded) return resolve();
            // With flow control, output waiting for credit is not cut off: the host ends the stream with KILL.
            const timer = flow === null ? setTimeout(resolve, OUTPUT_GRACE_MS) : undefined;
            pipe.once('close', () => {
              clearTimeout(timer);
              resolve();
            });
          }),
      );
      void Promise.all(outputs).then(() => {
        if (done) return;
        done = true;
        child.stdout?.destroy();
        child.stderr?.destroy();
        this.execs.delete(stream);
        const cpuUsec = /^usage_usec (\d+)/m.exec(readOr(path.join(cgroup, 'cpu.stat'), ''))?.[1];
        const peak = readOr(path.join(cgroup, 'memory.peak'), '').trim();
        const exit: ExitMessage = {
          exitCode: code ?? 128 + (signal ? (osConstants.signals[signal] ?? 0) : 0),
          signal: signal ?? null,
          oomKilled: Number(/^oom_kill (\d+)/m.exec(readOr(path.join(cgroup, 'memory.events'), ''))?.[1] ?? 0) > 0,
          usage: { cpuUsec: cpuUsec === undefined ? null : Number(cpuUsec), memoryPeakBytes: peak ? Number(peak) : null },
        };
        this.send(encodeJson(MessageType.EXIT, stream, exit));
        this.removeEmptyCommandCgroups();
      });
    });
  }

  /** The flow control an EXEC asked for (its `window`), acknowledging stdin on its stream; null without. */
  private flowOf(stream: number, request: ExecRequest): Flow | null {
    const window = request.window;
    if (window === undefined) return null;
    if (!Number.isInteger(window) || window < 1) throw new Error(`window must be a positive whole number of bytes, got ${String(window)}`);
    return new Flow(window, (bytes) => this.send(encodeJson(MessageType.WINDOW, stream, { bytes } satisfies WindowMessage)));
  }

  /** The process's stdout and stderr as STDOUT/STDERR frames, within the stream's credit when it has flow control. */
  private pipeOutput(stream: number, child: ChildProcess, flow: Flow | null): void {
    child.stdin?.on('error', () => undefined);
    for (const [pipe, type] of [[child.stdout, MessageType.STDOUT], [child.stderr, MessageType.STDERR]] as const) {
      if (!pipe) continue;
      flow?.watch(pipe);
      pipe.on('data', (chunk: Buffer) => {
        encodeChunks(type, stream, chunk).forEach((f) => this.send(f));
        flow?.spent(chunk.length);
      });
      // A flow-controlled stream's host learns of the end of stdout at once (a relay half-closed by its peer).
      if (flow !== null && type === MessageType.STDOUT) pipe.once('end', () => this.send(encodeFrame(MessageType.STDOUT_END, stream)));
    }
  }

  /** Cgroups of ended commands whose background processes are gone too (rmdir fails on a populated one). */
  private removeEmptyCommandCgroups(): void {
    const live = new Set([...this.execs.values()].map((running) => running.cgroup));
    for (const entry of readdirOr(SANDBOX_CGROUP)) {
      const dir = path.join(SANDBOX_CGROUP, entry);
      if (!/^c\d+$/.test(entry) || live.has(dir)) continue;
      try {
        fs.rmdirSync(dir);
      } catch {}
    }
  }

  private exec(stream: number, request: ExecRequest): void {
    if (this.execs.has(stream)) throw new Error(`stream ${stream} is already running`);
    const { limits } = request;
    const flow = this.flowOf(stream, request);
    const cgroup = path.join(CGROUP_ROOT, `exec-${stream}`);
    fs.mkdirSync(cgroup);
    writeQuiet(path.join(cgroup, 'memory.max'), `${limits.memoryMb * 1024 * 1024}`);
    writeQuiet(path.join(cgroup, 'memory.swap.max'), '0');
    writeQuiet(path.join(cgroup, 'pids.max'), `${limits.pids}`);
    writeQuiet(path.join(cgroup, 'cpu.max'), `${Math.max(1000, Math.round(limits.cpus * 100_000))} 100000`);
    // A fresh scratch space per exec: /tmp and the working directory, each a tmpfs of diskMb.
    mountTmpfs('/tmp', `mode=1777,size=${limits.diskMb}m`);
    if (!fs.existsSync(request.workdir)) throw new Error(`working directory ${request.workdir} does not exist in the image`);
    mountTmpfs(request.workdir, `mode=0755,uid=${request.uid},gid=${request.gid},size=${limits.diskMb}m`);
    for (const bind of [...(request.binds ?? [])].sort((a, b) => a.target.length - b.target.length)) mountBindDisk(bind.label, bind.target);

    if (!fs.existsSync(SETPRIV)) throw new Error(`the image has no ${SETPRIV} (util-linux); the microvm executor needs it`);
    // sh (root) joins the cgroup, unshare gives new PID + mount namespaces and a private /proc, setpriv drops to the
    // user; each step execs the next, so the user's command ends up as PID 1 of its namespace. The env is the user's.
    const argv = [
      // `ulimit -n` (soft and hard, as root before setpriv drops to the user) caps open files for the whole tree.
      '-c', `echo $$ > "$0/cgroup.procs" && ${limits.openFiles === undefined ? '' : `ulimit -n ${Math.floor(limits.openFiles)} && `}exec "$@"`, cgroup,
      BUSYBOX, 'unshare', '--pid', '--fork', '--mount-proc', '--',
      SETPRIV, `--reuid=${request.uid}`, `--regid=${request.gid}`, '--clear-groups', '--',
      ...request.argv,
    ];
    const child = spawn(BUSYBOX, argv, {
      argv0: 'sh',
      cwd: request.workdir,
      env: request.env,
      stdio: [request.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    this.execs.set(stream, { child, cgroup, flow });
    // Without swap, a process at memory.max can crawl for a long time by evicting and re-reading file pages (its own
    // binary) before the kernel's OOM killer acts; under TCG that is tens of seconds. Like systemd-oomd, the agent
    // treats the limit being hit on every check for a second as out-of-memory: it kills the tree and reports OOM.
    let limitHits = 0;
    let lastMaxEvents = -1;
    let oomByAgent = false;
    const watchdog = setInterval(() => {
      const max = Number(/^max (\d+)/m.exec(readOr(path.join(cgroup, 'memory.events'), ''))?.[1] ?? 0);
      limitHits = lastMaxEvents >= 0 && max > lastMaxEvents ? limitHits + 1 : 0;
      lastMaxEvents = max;
      if (limitHits >= 4) {
        oomByAgent = true;
        clearInterval(watchdog);
        killCgroup(cgroup, child);
      }
    }, 250);
    this.pipeOutput(stream, child, flow);
    // The main process gone, nothing of the tree may outlive it (as in a container).
    child.on('exit', () => killCgroup(cgroup, null));
    child.on('error', (error) => {
      clearInterval(watchdog);
      this.execs.delete(stream);
      this.error(stream, `spawn failed: ${error.message}`);
    });
    child.on('close', (code, signal) => {
      clearInterval(watchdog);
      this.execs.delete(stream);
      const events = readOr(path.join(cgroup, 'memory.events'), '');
      const oomKilled = oomByAgent || Number(/^oom_kill (\d+)/m.exec(events)?.[1] ?? 0) > 0;
      const cpuUsec = /^usage_usec (\d+)/m.exec(readOr(path.join(cgroup, 'cpu.stat'), ''))?.[1];
      const peak = readOr(path.join(cgroup, 'memory.peak'), '').trim();
      // unshare --fork re-raises the child's signal or exits 128+n; report both the same way.
      let exitCode = code ?? 128 + (signal ? (osConstants.signals[signal] ?? 0) : 0);
      let signalName: string | null = signal ?? (code !== null && code > 128 ? signalOf(code - 128) : null);
      if (oomKilled) {
        exitCode = 137;
        signalName = 'SIGKILL';
      }
      const exit: ExitMessage = {
        exitCode,
        signal: signalName,
        oomKilled,
        usage: { cpuUsec: cpuUsec === undefined ? null : Number(cpuUsec), memoryPeakBytes: peak ? Number(peak) : null },
      };
      this.send(encodeJson(MessageType.EXIT, stream, exit));
      removeCgroup(cgroup);
    });
  }
}

/** Mixes host-sent random bytes into the kernel RNG; reseeds the CRNG through the helper's ioctls when it can. */
function reseed(bytes: Buffer): SeedReply {
  try {
    fs.writeFileSync('/dev/urandom', bytes);
  } catch (error) {
    log(`cannot write /dev/urandom: ${(error as Error).message}`);
  }
  if (!fs.existsSync(HELPER)) return { reseeded: false };
  const result = spawnSync(HELPER, ['reseed'], { input: bytes, stdio: ['pipe', 'ignore', 'pipe'] });
  if (result.status !== 0) log(`reseed: ${String(result.stderr).trim()}`);
  return { reseeded: result.status === 0 };
}

/** The guest agent is copied alone into the VM (see microvm/assets.ts): it cannot import src/executors/shared/process.ts. */
function signalOf(number: number): string | null {
  return Object.entries(osConstants.signals).find(([, value]) => value === number)?.[0] ?? null;
}

/** FREEZE: fsfreeze of the data disk (writes block until thawed; all written is on the disk), else a sync. */
function freezeData(disk: boolean, frozen: boolean): void {
  if (disk && fs.existsSync(FSFREEZE)) {
    const result = spawnSyncQuiet([FSFREEZE, frozen ? '-f' : '-u', DATA_MOUNT]);
    if (result !== 0 && frozen) throw new Error(`fsfreeze of ${DATA_MOUNT} failed`);
    return;
  }
  if (frozen) spawnSyncQuiet([BUSYBOX, 'sync']);
}

function isDirectory(dir: string): boolean {
  try {
    return fs.statSync(dir).isDirectory();
  } catch {
    return false;
  }
}

function readdirOr(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch {
    return [];
  }
}

function readOr(file: string, fallback: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return fallback;
  }
}

function writeQuiet(file: string, value: string): void {
  try {
    fs.writeFileSync(file, value);
  } catch (error) {
    log(`cannot write ${file}: ${(error as Error).message}`);
  }
}

/**
 * A host directory's disk (bind-disks.ts on the host) read-only at `target`, over whatever is there: a directory of
 * the image, an empty one the host made in an outer bind's disk, or one made here on a tmpfs (/run, /tmp).
 */
function mountBindDisk(label: string, target: string): void {
  const device = spawnSync(BUSYBOX, ['findfs', `LABEL=${label}`], { encoding: 'utf8' }).stdout.trim();
  if (!device) throw new Error(`the disk of ${target} (label ${label}) is not attached`);
  if (!isDirectory(target)) {
    try {
      fs.mkdirSync(target, { recursive: true, mode: 0o755 });
    } catch (error) {
      throw new Error(`cannot mount a disk at ${target}: ${(error as Error).message}`);
    }
  }
  if (spawnSyncQuiet([BUSYBOX, 'mount', '-t', 'ext4', '-o', 'ro,noload,nosuid,nodev', device, target]) !== 0) throw new Error(`cannot mount the disk ${device} at ${target}`);
}

function mountTmpfs(target: string, options: string): void {
  // Lazy-unmount what an earlier exec left there, then mount fresh.
  spawnSyncQuiet([BUSYBOX, 'umount', '-l', target]);
  const result = spawnSyncQuiet([BUSYBOX, 'mount', '-t', 'tmpfs', '-o', options, 'tmpfs', target]);
  if (result !== 0) throw new Error(`cannot mount a tmpfs on ${target}`);
}

function spawnSyncQuiet(argv: string[]): number {
  const result = spawnSync(argv[0] as string, argv.slice(1), { stdio: 'ignore' });
  return result.status ?? 1;
}

function killCgroup(cgroup: string, child: ChildProcess | null): void {
  try {
    fs.writeFileSync(path.join(cgroup, 'cgroup.kill'), '1');
  } catch {
    child?.kill('SIGKILL');
  }
}

function removeCgroup(cgroup: string, attempt = 0): void {
  try {
    fs.rmdirSync(cgroup);
  } catch {
    if (attempt < 50) setTimeout(() => removeCgroup(cgroup, attempt + 1), 20);
  }
}

function main(): void {
  // The agent must survive the guest's OOM killer; user processes live in their own cgroups.
  writeQuiet('/proc/self/oom_score_adj', '-1000');
  writeQuiet(path.join(CGROUP_ROOT, 'cgroup.subtree_control'), '+memory +pids +cpu');
  // Like a container on a big host: allocations succeed and the exec's cgroup limit (memory.max) OOM-kills, rather
  // than a small VM refusing a large malloc outright (which would hide the limit behind a MemoryError).
  writeQuiet('/proc/sys/vm/overcommit_memory', '1');
  process.on('uncaughtException', (error) => log(`uncaught: ${error.stack ?? error.message}`));
  if (/(^|\s)kindling\.transport=vsock(\s|$)/.test(readOr('/proc/cmdline', ''))) {
    // Firecracker: node cannot listen on AF_VSOCK; the helper does and relays one host connection at a time.
    const bridge = spawn(HELPER, ['vsock-bridge', String(VSOCK_PORT)], { stdio: ['pipe', 'pipe', 'inherit'] });
    bridge.on('exit', (code, signal) => {
      log(`the vsock bridge exited (${code ?? signal}); restarting the agent's channel is not possible: powering off`);
      spawnSyncQuiet([BUSYBOX, 'poweroff', '-f']);
    });
    bridge.stdin?.on('error', () => undefined);
    const agent = new Agent((frame) => bridge.stdin?.write(frame));
    bridge.stdout?.on('data', (chunk: Buffer) => agent.feed(chunk));
    log(`ready on vsock port ${VSOCK_PORT} after ${Math.round(process.uptime() * 1000)} ms of node`);
    return;
  }
  const port = findPort();
  const fd = fs.openSync(port, 'r+');
  log(`ready on ${port} after ${Math.round(process.uptime() * 1000)} ms of node`);
  const writer = new PortWriter(fd);
  const agent = new Agent((frame) => writer.send(frame));
  readPortLoop(fd, (chunk) => agent.feed(chunk));
}

if (process.argv[1] && path.basename(process.argv[1]) === 'guest-agent.js') main();
