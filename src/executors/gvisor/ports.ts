/**
 * Ports of a gvisor persistent sandbox: how the server reaches a process listening on the sandbox's loopback.
 *
 * With `network: none` the sandbox's sockets live in gVisor's own network stack, inside its sentry: the host network
 * namespace runsc made for the container holds none of them, so the bwrap executor's way (a helper joining that
 * namespace) would connect to nothing. Instead the same helper, kindling-port (native/kindling-port.c, linked
 * statically so it runs on any image), is bound read-only into the sandbox at /.kindling-port and started per
 * connection by `runsc exec --user=<sandbox uid>` with `--in-sandbox`: it connects to 127.0.0.1:PORT from inside and
 * relays between that socket and its stdin/stdout, which runsc hands over as the server's own pipes. The sandbox
 * still has no interface but loopback and no route out; the relay is a process of the sandbox's user (the tenant
 * could run the same), counted by the sandbox's pid limit, and gone when the server closes its pipes, when it is idle
 * for `idleTimeoutMs`, or with the sandbox. Cost: one `runsc exec` start per connection, 150-360 ms from connect to
 * the first byte on a shared 2-core host (p50 ~200 ms, 20 connections), against ~1 ms for the bwrap executor's helper.
 */
import type { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import type { Duplex } from 'node:stream';
import { KindlingError } from '../../core/errors.js';
import type { PortConnectOptions } from '../executor.js';
import { DEFAULT_PORT_HELPER_PATH, helperConnection } from '../sandbox/ports.js';
import { bindMount, type OciMount } from './oci-spec.js';
import type { Runsc } from './runsc.js';

/** Where the helper is inside every gvisor persistent sandbox. */
export const IN_SANDBOX_HELPER = '/.kindling-port';

/** The helper's read-only bind into the sandbox, or null when it is not built (then ports are unavailable). */
export function portHelperMount(helperPath = DEFAULT_PORT_HELPER_PATH): OciMount | null {
  return fs.existsSync(helperPath) ? bindMount(helperPath, IN_SANDBOX_HELPER, true) : null;
}

export class GvisorPorts {
  private readonly relays = new Set<ChildProcess>();
  private closed = false;

  constructor(
    private readonly runsc: Runsc,
    private readonly sandboxId: string,
    private readonly user: string,
    private readonly mounted: boolean,
  ) {}

  /** Open proxied connections (relays alive). */
  get connections(): number {
    return this.relays.size;
  }

  connect(port: number, options: PortConnectOptions): Promise<Duplex> {
    if (this.closed) return Promise.reject(new KindlingError('SANDBOX_NOT_RUNNING', `sandbox ${this.sandboxId} has ended`, { details: { sandbox: this.sandboxId } }));
    if (!this.mounted) {
      return Promise.reject(new KindlingError('EXECUTOR_UNAVAILABLE', 'sandbox ports need the native helper kindling-port (scripts/build-native.sh, which needs a C compiler); it was not built when this sandbox started'));
    }
    const child = this.runsc.spawn(
      ['exec', `--user=${this.user}`, this.sandboxId, IN_SANDBOX_HELPER, String(port), String(options.idleTimeoutMs), String(options.connectTimeoutMs), '--in-sandbox'],
      ['pipe', 'pipe', 'pipe'],
    );
    this.relays.add(child);
    child.once('exit', () => this.relays.delete(child));
    child.once('error', () => this.relays.delete(child));
    return helperConnection(child, this.sandboxId, port, options);
  }

  /** Ends every proxied connection (the sandbox ended). Idempotent. */
  close(): void {
    this.closed = true;
    for (const child of this.relays) child.kill('SIGKILL');
  }
}
