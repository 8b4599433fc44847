/**
 * Per-execution network namespaces for `network: "egress"` on the sandbox executor: a named netns with a veth pair to
 * the host (host side `kn<owner6><slot>`, sandbox side `eth0`), a /30 out of the owner's /24, IPv6 off on both ends.
 * Routing out of the host, the NAT and the policy filter are the EgressFirewall's job (one per owner).
 *
 * Names carry the owner so the reaper of a restarted server finds what a crashed one left:
 *   netns `kindling-<owner16>-<slot>`, host veth `kn<owner6><slot>` (slot 0..63).
 */
import * as fs from 'node:fs';
import { KindlingError } from '../core/errors.js';
import { runCommand, type CommandRunner } from './firewall.js';
import { formatAddress, parseCidr } from './policy.js';

export const SLOTS_PER_OWNER = 64;

export interface NetnsPoolOptions {
  ownerId: string;
  /** A /16 to carve owners' /24s from. Default 10.213.0.0/16. Must not be used by anything else on the host. */
  supernet?: string;
  run?: CommandRunner;
}

export interface EgressNetns {
  readonly name: string;
  /** Path to give nsenter --net=. */
  readonly path: string;
  readonly hostIface: string;
  readonly address: string;
  readonly gateway: string;
  destroy(): Promise<void>;
}

export class NetnsPool {
  private readonly owner: string;
  private readonly run: CommandRunner;
  private readonly supernet: bigint;
  private subnet: bigint | null = null;
  private readonly used = new Set<number>();

  constructor(options: NetnsPoolOptions) {
    if (!/^[A-Za-z0-9]{6,}$/.test(options.ownerId)) throw new Error(`owner id "${options.ownerId}" must be alphanumeric`);
    this.owner = options.ownerId.toLowerCase();
    this.run = options.run ?? runCommand;
    const cidr = parseCidr(options.supernet ?? '10.213.0.0/16');
    if (cidr.family !== 4 || cidr.prefix !== 16) throw new Error('the egress supernet must be an IPv4 /16');
    this.supernet = cidr.value;
  }

  /** `kn<owner6>+`: every host veth of this owner (an iptables interface wildcard). */
  get ifacePattern(): string {
    return `kn${this.owner.slice(0, 6)}+`;
  }

  get nsPrefix(): string {
    return `kindling-${this.owner.slice(0, 16)}-`;
  }

  /** The owner's /24 (picked on first use: its hash, or the next one no interface of the host uses yet). */
  async subnetCidr(): Promise<string> {
    if (this.subnet === null) {
      const taken = new Set<bigint>();
      const listing = await this.run('ip', ['-j', '-4', 'addr', 'show']);
      const mine = this.ifacePattern.slice(0, -1);
      for (const link of JSON.parse(listing) as { ifname: string; addr_info?: { local: string }[] }[]) {
        if (link.ifname.startsWith(mine)) continue;
        for (const a of link.addr_info ?? []) {
          const v = parseCidr(a.local).value;
          if ((v & 0xffff0000n) === this.supernet) taken.add(v & 0xffffff00n);
        }
      }
      const start = parseInt(this.owner.slice(0, 4), 16) % 256;
      for (let i = 0; i < 256 && this.subnet === null; i++) {
        const candidate = this.supernet | (BigInt((start + i) % 256) << 8n);
        if (!taken.has(candidate)) this.subnet = candidate;
      }
      if (this.subnet === null) throw new KindlingError('EXECUTOR_UNAVAILABLE', 'no free /24 for egress sandboxes in the egress supernet');
    }
    return `${formatAddress({ family: 4, value: this.subnet })}/24`;
  }

  /** Makes a netns ready for one sandbox; removes what it made when a step fails. */
  async create(): Promise<EgressNetns> {
    await this.subnetCidr();
    let slot = -1;
    for (let i = 0; i < SLOTS_PER_OWNER; i++) {
      if (!this.used.has(i)) {
        slot = i;
        break;
      }
    }
    if (slot < 0) throw new KindlingError('TOO_MANY_REQUESTS', `at most ${SLOTS_PER_OWNER} egress sandboxes run at once on this server`, { retryAfterSeconds: 1 });
    this.used.add(slot);
    const name = `${this.nsPrefix}${slot}`;
    const hostIface = `kn${this.owner.slice(0, 6)}${slot}`;
    const base = this.subnet! + BigInt(slot * 4);
    const gateway = formatAddress({ family: 4, value: base + 1n });
    const address = formatAddress({ family: 4, value: base + 2n });
    const destroy = async (): Promise<void> => {
      try {
        await this.remove(name, hostIface);
      } finally {
        this.used.delete(slot);
      }
    };
    try {
      await this.remove(name, hostIface); // a leftover of a crashed run with the same slot
      await this.run('ip', ['netns', 'add', name]);
      await this.run('ip', ['link', 'add', hostIface, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', name]);
      writeSysctl(`/proc/sys/net/ipv6/conf/${hostIface}/disable_ipv6`, '1');
      await this.run('ip', ['addr', 'add', `${gateway}/30`, 'dev', hostIface]);
      await this.run('ip', ['link', 'set', hostIface, 'up']);
      await this.run('ip', [
        'netns', 'exec', name, '/bin/sh', '-ec',
        'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; ' +
          `ip link set lo up; ip addr add ${address}/30 dev eth0; ip link set eth0 up; ip route add default via ${gateway}`,
      ]);
    } catch (error) {
      await destroy().catch(() => undefined);
      throw new KindlingError('EXECUTOR_FAILED', `could not set up the egress network: ${(error as Error).message}`, { cause: error, retryAfterSeconds: 1 });
    }
    return { name, path: `/run/netns/${name}`, hostIface, address, gateway, destroy };
  }

  private async remove(name: string, hostIface: string): Promise<void> {
    // Deleting the netns destroys its eth0 and so the veth pair; the link delete covers a pair whose peer never moved.
    await this.run('ip', ['link', 'del', hostIface]).catch(() => undefined);
    if (fs.existsSync(`/run/netns/${name}`)) await this.run('ip', ['netns', 'delete', name]);
  }

  /** Removes every netns and host veth of this owner not in use here now (the reaper). */
  async reap(): Promise<number> {
    let removed = 0;
    let names: string[] = [];
    try {
      names = fs.readdirSync('/run/netns');
    } catch {
      // no netns at all
    }
    for (const name of names) {
      if (!name.startsWith(this.nsPrefix)) continue;
      const slot = Number(name.slice(this.nsPrefix.length));
      if (this.used.has(slot)) continue;
      await this.remove(name, `kn${this.owner.slice(0, 6)}${slot}`).then(
        () => removed++,
        () => undefined,
      );
    }
    return removed;
  }

  get inUse(): number {
    return this.used.size;
  }
}

function writeSysctl(file: string, value: string): void {
  try {
    fs.writeFileSync(file, value);
  } catch {
    // IPv6 disabled host-wide: nothing to turn off
  }
}
