/**
 * The Docker executor's egress network: one bridge network per owner (`kindling-egress-<owner>` on the bridge
 * `kd<owner>`, labelled, no inter-container traffic, masquerading out) whose traffic DOCKER-USER/INPUT rules built from
 * the egress policy filter (chains `KND-<owner>-D-*`). It exists while an egress container runs: the first user makes
 * it, the last one removes it. Every change is serialised, so a make and a removal never interleave.
 */
import type Docker from 'dockerode';
import { KindlingError } from '../../core/errors.js';
import { EgressFirewall, ownerChainPrefix, removeChains } from '../../network/firewall.js';
import type { EgressPolicy } from '../../network/policy.js';
import { LABEL_MANAGED, LABEL_OWNER } from '../executor.js';

export class DockerEgressNetwork {
  private users = 0;
  private queue: Promise<unknown> = Promise.resolve();
  private firewall: EgressFirewall | null = null;

  constructor(
    private readonly docker: Docker,
    private readonly ownerId: string,
    /** Undefined: egress is not enabled (acquire() is never called then). */
    private readonly policy: EgressPolicy | undefined,
    /** The labels every resource of this executor carries. */
    private readonly labels: () => Record<string, string>,
  ) {}

  /** The network egress containers join. */
  get name(): string {
    return `kindling-egress-${this.ownerId}`;
  }

  private get chains(): string {
    return `${ownerChainPrefix(this.ownerId)}-D`;
  }

  /** Makes the network and its filter on first use. */
  acquire(): Promise<void> {
    return this.serial(async () => {
      if (this.users === 0) {
        const bridge = `kd${this.ownerId.slice(0, 12)}`;
        await this.removeNetworks();
        try {
          await this.docker.createNetwork({
            Name: this.name,
            Driver: 'bridge',
            CheckDuplicate: true,
            EnableIPv6: false,
            Internal: false,
            Labels: this.labels(),
            Options: {
              'com.docker.network.bridge.name': bridge,
              'com.docker.network.bridge.enable_icc': 'false',
              'com.docker.network.bridge.enable_ip_masquerade': 'true',
            },
          });
          this.firewall = new EgressFirewall({ name: this.chains, iface: bridge, policy: this.policy!, forwardParent: 'DOCKER-USER' });
          await this.firewall.acquire();
        } catch (error) {
          await this.removeNetworks().catch(() => undefined);
          await removeChains(this.chains).catch(() => undefined);
          this.firewall = null;
          if (error instanceof KindlingError) throw error;
          throw new KindlingError('EXECUTOR_FAILED', `could not set up the egress network: ${(error as Error).message}`, { cause: error, retryAfterSeconds: 1 });
        }
      }
      this.users++;
    });
  }

  /** The last user gone: the filter and the network go. */
  release(): Promise<void> {
    return this.serial(async () => {
      this.users = Math.max(0, this.users - 1);
      if (this.users > 0) return;
      await this.firewall?.release();
      this.firewall = null;
      await this.removeNetworks();
    });
  }

  /** For the reaper: while nobody uses egress, removes networks and chains of this owner left by an earlier run. */
  async reap(): Promise<number> {
    if (this.users > 0) return 0;
    return this.serial(async () => (this.users === 0 ? (await this.removeNetworks()) + (await removeChains(this.chains)) : 0));
  }

  private async removeNetworks(): Promise<number> {
    const networks = await this.docker.listNetworks({
      filters: JSON.stringify({ label: [`${LABEL_MANAGED}=true`, `${LABEL_OWNER}=${this.ownerId}`] }),
    });
    for (const info of networks) await this.docker.getNetwork(info.Id).remove();
    return networks.length;
  }

  private serial<T>(work: () => Promise<T>): Promise<T> {
    const next = this.queue.then(work, work);
    this.queue = next.catch(() => undefined);
    return next;
  }
}
