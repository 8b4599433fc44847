/**
 * Ports of a persistent sandbox (bubblewrap): how the server reaches a process listening inside the sandbox's own
 * network namespace (loopback only, `network: none`) without giving the sandbox any route out.
 *
 * The choice: a tiny native helper per proxied connection (native/kindling-port.c), spawned by the server with the
 * sandbox's network namespace as fd 3. It joins that namespace (setns), drops to uid 65534 with no-new-privs, connects
 * to 127.0.0.1:PORT (then [::1]:PORT) and relays between its stdin/stdout and the socket. The sandbox gains nothing:
 * no interface, no route, no socket of the host; the connection is made from inside its namespace like a local client.
 *
 * Why the namespace cannot be the wrong one: the server opens /proc/PID/ns/net ONCE, when the sandbox's supervisor
 * has just said it is ready and before any command (the tenant's code) ran, from a process of the sandbox's cgroup
 * whose namespace is not the host's; it checks after the open that the process is still in that cgroup (a recycled
 * pid fails this) and that the namespace opened is not the host's. The open descriptor pins that namespace for the
 * sandbox's life. Nothing a sandbox process does later (exiting, forking, reusing pids, unsharing, which
 * --disable-userns forbids anyway) changes which namespace a helper joins: never the host's, never another sandbox's.
 *
 * Why a process per connection rather than fd passing or a relay inside the sandbox: the helper's lifetime is the
 * connection's (the server kills it to end one; a count of children is the count of connections), it runs outside the
 * sandbox's pid namespace and cgroup (so a frozen or hostile sandbox cannot stop or signal it), and the supervisor
 * protocol stays untouched. The cost is a fork+exec per connection (~1 ms; see the bench's `sandboxes` group).
 */
import * as fs from 'node:fs';
import { spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { Duplex, type Readable, type Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { KindlingError } from '../../core/errors.js';
import type { PortConnectOptions } from '../executor.js';
import type { Cgroup } from '../shared/cgroups.js';

/** dist/native/kindling-port, built by scripts/build-native.sh (dist/src/executors/sandbox -> dist/native). */
export const DEFAULT_PORT_HELPER_PATH = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'native', 'kindling-port');

/** The sandbox's network namespace, pinned by an open descriptor, and the helpers relaying into it. */
export class SandboxPorts {
  private readonly helpers = new Set<ChildProcess>();
  private closed = false;

  private constructor(
    private readonly nsFd: number,
    private readonly helperPath: string,
    private readonly sandboxId: string,
  ) {}

  /**
   * Opens the namespace of the sandbox's cgroup. Call before the tenant's code ran (right after the supervisor's
   * ready line). Returns null when it cannot be opened (no process with its own namespace: then ports are unavailable).
   */
  static open(sandboxId: string, cgroup: Pick<Cgroup, 'pids'>, helperPath = DEFAULT_PORT_HELPER_PATH): SandboxPorts | null {
    const host = fs.statSync('/proc/self/ns/net').ino;
    for (const pid of cgroup.pids()) {
      let fd: number | null = null;
      try {
        fd = fs.openSync(`/proc/${pid}/ns/net`, 'r');
        const ino = fs.fstatSync(fd).ino;
        // Still the sandbox's process after the open (a pid recycled meanwhile would be in another cgroup), and a
        // namespace of its own: the bwrap monitor is in the cgroup too but in the host's namespace.
        if (ino !== host && cgroup.pids().includes(pid)) return new SandboxPorts(fd, helperPath, sandboxId);
      } catch {
        // gone meanwhile
      }
      if (fd !== null) fs.closeSync(fd);
    }
    return null;
  }

  /** Open proxied connections (helper processes alive). */
  get connections(): number {
    return this.helpers.size;
  }

  /**
   * Connects to `port` on the sandbox's loopback. Resolves with the connection as a byte stream once connected;
   * rejects with SANDBOX_PORT_UNREACHABLE when nothing listens there (or it does not accept in time).
   */
  connect(port: number, options: PortConnectOptions): Promise<Duplex> {
    if (this.closed) return Promise.reject(new KindlingError('SANDBOX_NOT_RUNNING', `sandbox ${this.sandboxId} has ended`, { details: { sandbox: this.sandboxId } }));
    if (!fs.existsSync(this.helperPath)) {
      return Promise.reject(new KindlingError('EXECUTOR_UNAVAILABLE', 'sandbox ports need the native helper kindling-port (scripts/build-native.sh, which needs a C compiler); it is not built on this server'));
    }
    const child = spawn(this.helperPath, [String(port), String(options.idleTimeoutMs), String(options.connectTimeoutMs)], { stdio: ['pipe', 'pipe', 'pipe', this.nsFd] });
    this.helpers.add(child);
    child.once('exit', () => this.helpers.delete(child));
    child.once('error', () => this.helpers.delete(child));
    return helperConnection(child, this.sandboxId, port, options);
  }

  /** Ends every proxied connection and releases the namespace. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const child of this.helpers) child.kill('SIGKILL');
    fs.closeSync(this.nsFd);
  }
}

/**
 * A started kindling-port helper, wherever it runs (a host child process; a command inside a microVM): its stdio
 * and how to end it. `onEnd` calls its listener once when the helper ended (with the error when it did not start).
 */
export interface RelayProcess {
  stdin: Writable;
  stdout: Readable;
  stderr: Readable;
  kill(): void;
  onEnd(listener: (error?: Error) => void): void;
}

/**
 * The connection a started kindling-port helper (stdio all pipes) makes: resolves with its stdin/stdout as one byte
 * stream once its report line says "ok"; rejects with SANDBOX_PORT_UNREACHABLE (refused, timeout) or EXECUTOR_FAILED.
 * Closing the stream kills the helper. Shared by the executors that run the helper (bwrap: on the host in the
 * sandbox's namespace; gvisor: inside the sandbox through `runsc exec`).
 */
export function helperConnection(child: ChildProcess, sandboxId: string, port: number, options: PortConnectOptions): Promise<Duplex> {
  return relayConnection(
    {
      stdin: child.stdin!,
      stdout: child.stdout!,
      stderr: child.stderr!,
      kill: () => child.kill('SIGKILL'),
      onEnd: (listener) => {
        child.once('exit', () => listener());
        child.once('error', (error) => listener(error));
      },
    },
    sandboxId,
    port,
    options,
  );
}

/** helperConnection for any RelayProcess (the microvm executor runs the helper as a command of the guest agent). */
export function relayConnection(relay: RelayProcess, sandboxId: string, port: number, options: PortConnectOptions): Promise<Duplex> {
  relay.stdin.on('error', () => {});
  return new Promise((resolve, reject) => {
    let line = '';
    let settled = false;
    let connected: Duplex | null = null;
    const settle = (answer: string | null): void => {
      if (settled) return;
      settled = true;
      relay.stderr.removeAllListeners('data');
      relay.stderr.resume();
      if (answer === 'ok') {
        const stream = Duplex.from({ readable: relay.stdout, writable: relay.stdin });
        stream.on('close', () => relay.kill());
        connected = stream;
        resolve(stream);
        return;
      }
      relay.kill();
      const details = { sandbox: sandboxId, port };
      if (answer === 'refused' || answer === 'timeout') {
        const why = answer === 'refused' ? 'nothing listens on it' : `it did not accept within ${options.connectTimeoutMs} ms`;
        reject(new KindlingError('SANDBOX_PORT_UNREACHABLE', `port ${port} of sandbox ${sandboxId} is not reachable: ${why} (a server must listen on 127.0.0.1, ::1 or 0.0.0.0 inside the sandbox)`, { details: { ...details, reason: answer } }));
      } else {
        reject(new KindlingError('EXECUTOR_FAILED', `could not connect to port ${port} of sandbox ${sandboxId}: ${(answer ?? 'the helper ended').slice(0, 300)}`, { details }));
      }
    };
    relay.stderr.setEncoding('utf8');
    relay.stderr.on('data', (chunk: string) => {
      line += chunk;
      const at = line.indexOf('\n');
      if (at >= 0) settle(line.slice(0, at));
    });
    relay.onEnd((error) => {
      if (connected !== null) {
        // The helper is gone: the connection closes once what it relayed was read (output still buffered is not cut).
        const stream: Duplex = connected;
        if (stream.readableEnded) stream.destroy();
        else stream.once('end', () => stream.destroy());
        return;
      }
      // A child's exit can be reported before its stderr is read: the report line may still be on its way, so the
      // answer waits for stderr's end (bounded, for a relay whose stderr never ends).
      const answer = (): void => settle(error === undefined ? line.trim() || null : `error ${error.message}`);
      if (error !== undefined || relay.stderr.readableEnded || relay.stderr.destroyed) {
        answer();
        return;
      }
      const fallback = setTimeout(answer, 1000);
      relay.stderr.once('close', () => { clearTimeout(fallback); answer(); });
      relay.stderr.once('end', () => { clearTimeout(fallback); answer(); });
    });
  });
}
