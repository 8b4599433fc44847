/**
 * Ports of a microvm persistent sandbox: how the server reaches a process listening on the VM's loopback. The VM has
 * no NIC at all; the only way in is the agent channel (virtio-serial), shared by every stream of the VM.
 *
 * Per connection, the guest agent runs the port helper (native/kindling-port.c, linked statically, on the read-only
 * agent disk at PORT_HELPER_PATH) as a command of the sandbox (EXEC sandbox: true): as the sandbox's user, in a
 * child cgroup of the sandbox's (its pid and memory limits count it), with `--in-sandbox` as in the gvisor executor.
 * It connects to 127.0.0.1:PORT (then [::1]:PORT) inside the VM, reports "ok" / "refused" / "timeout" on stderr and
 * relays the connection over its stdin/stdout, which are the stream's STDIN and STDOUT frames. Closing the stream
 * kills the command (KILL: its cgroup); the helper ends by itself when both directions ended or after idleTimeoutMs
 * without a byte either way; everything goes with the VM.
 *
 * Memory on every hop stays bounded with a slow or hostile reader or writer (the channel cannot be paused for one
 * stream without stalling the others): the stream runs with credit-based flow control (protocol.ts, EXEC.window):
 * - guest -> client: the agent sends output only within PORT_WINDOW_BYTES of what the server's reader consumed and
 *   pauses the helper's stdout pipe otherwise (the helper then stops reading the socket, and TCP slows the server in
 *   the VM). The server holds at most window + one chunk (MAX_CHUNK_BYTES) per connection, plus the stream buffers of
 *   the relay; a guest that sends past its credit loses the connection.
 * - client -> guest: STDIN frames wait for the agent's acknowledgements: at most a window is in the guest unwritten.
 * Cost: one sandbox command start per connection (two execs in the guest: sh joining the cgroup, setpriv).
 */
import type { Duplex } from 'node:stream';
import { FEATURE_PORTS, FEATURE_WINDOW, PORT_HELPER_PATH } from '../../../agent/vm/protocol.js';
import { KindlingError } from '../../core/errors.js';
import type { PortConnectOptions } from '../executor.js';
import { relayConnection } from '../sandbox/ports.js';
import type { AgentClient, AgentExec } from './agent-client.js';

/** Output (and input) credit per proxied connection: what the server buffers of it at most, plus one chunk. */
export const PORT_WINDOW_BYTES = 256 * 1024;
const NOBODY = 65534;

export interface PortRelayStats {
  /** Proxied connections open now. */
  connections: number;
  /** Bytes received from the guest and not yet read by the connections' readers, now (all connections together). */
  bufferedBytes: number;
  /** The most any one connection held unread so far (bounded by windowBytes + one chunk). */
  peakBufferedBytes: number;
  windowBytes: number;
}

export class MicroVmPorts {
  private readonly relays = new Set<AgentExec>();
  private peak = 0;

  constructor(
    private readonly agent: () => AgentClient,
    private readonly sandboxId: string,
    private readonly windowBytes = PORT_WINDOW_BYTES,
  ) {}

  get connections(): number {
    return this.relays.size;
  }

  stats(): PortRelayStats {
    let bufferedBytes = 0;
    for (const relay of this.relays) {
      const { bufferedBytes: now, peakBufferedBytes } = relay.stats();
      bufferedBytes += now;
      this.peak = Math.max(this.peak, peakBufferedBytes);
    }
    return { connections: this.relays.size, bufferedBytes, peakBufferedBytes: this.peak, windowBytes: this.windowBytes };
  }

  connect(port: number, options: PortConnectOptions): Promise<Duplex> {
    const agent = this.agent();
    if (!agent.supports(FEATURE_WINDOW) || !agent.supports(FEATURE_PORTS)) {
      return Promise.reject(
        new KindlingError('EXECUTOR_UNAVAILABLE', `sandbox ${this.sandboxId} runs a guest agent without the port relay (its VM was started from microvm assets built before it); rebuild them ("kindling images build --microvm") and start a new sandbox`, {
          details: { sandbox: this.sandboxId },
        }),
      );
    }
    const relay = agent.exec({
      argv: [PORT_HELPER_PATH, String(port), String(options.idleTimeoutMs), String(options.connectTimeoutMs), '--in-sandbox'],
      env: {},
      workdir: '/',
      limits: { memoryMb: 0, pids: 0, cpus: 0, diskMb: 0 },
      stdin: true,
      uid: NOBODY,
      gid: NOBODY,
      sandbox: true,
      window: this.windowBytes,
    });
    this.relays.add(relay);
    const ended = relay.exit.then(
      () => undefined,
      (error: unknown) => error as Error,
    );
    void ended.then(() => {
      this.peak = Math.max(this.peak, relay.stats().peakBufferedBytes);
      this.relays.delete(relay);
    });
    return relayConnection({ stdin: relay.stdin!, stdout: relay.stdout, stderr: relay.stderr, kill: () => relay.kill(), onEnd: (listener) => void ended.then(listener) }, this.sandboxId, port, options);
  }
}
