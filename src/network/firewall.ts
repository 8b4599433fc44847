/**
 * Host packet filter for `network: "egress"`, built from an EgressPolicy with iptables (iptables-nft or legacy: the
 * same tables Docker uses, so a verdict here and Docker's FORWARD policy never disagree silently).
 *
 * One owner (server data dir) and one interface pattern (e.g. the sandbox veths `kn<owner>+`, or a Docker bridge) get:
 *   filter  <name>-F  jumped from `forwardParent` (FORWARD, or DOCKER-USER for Docker bridges):
 *             replies to the sandbox: accept; anything else *to* a sandbox: reject (nothing connects in);
 *             from a sandbox: the policy's rules in order (reject denied, accept operator-allowed), then accept.
 *           IPv6 from a sandbox: rejected (sandboxes get no IPv6; this is the backstop).
 *   filter  <name>-I  jumped from INPUT: everything from a sandbox to the host itself is rejected (the host's own
 *           addresses on every interface, the gateway address, docker0 ...).
 *   nat     <name>-N  jumped from POSTROUTING (optional): masquerade the sandbox subnet out of the host.
 * Rejects (icmp admin-prohibited) fail fast instead of hanging until a timeout.
 * Every chain name starts with `KND-<owner>`: `removeOwnerChains` (the reaper) finds what a crashed server left.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { EgressPolicy } from './policy.js';

const execFileAsync = promisify(execFile);

export type CommandRunner = (file: string, args: string[]) => Promise<string>;

export const runCommand: CommandRunner = async (file, args) => (await execFileAsync(file, args, { env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' }, timeout: 30_000 })).stdout;

export interface FirewallSpec {
  /** Chain name prefix, `KND-<owner>-<tag>`: at most 26 characters. */
  name: string;
  /** Interface name or iptables wildcard (`kn1a2b3c+`, `kd1a2b3c4d`). */
  iface: string;
  policy: EgressPolicy;
  /** FORWARD (default) or DOCKER-USER. */
  forwardParent?: string;
  /** A subnet to masquerade out of the host (the sandbox executor's veth addresses); none for Docker networks. */
  masqueradeSubnet?: string;
}

/** Chain name prefix for an owner: `KND-` + 12 characters of the owner id. */
export function ownerChainPrefix(ownerId: string): string {
  return `KND-${ownerId.slice(0, 12)}`;
}

const IPT_WAIT = ['-w', '10'];

/** The iptables commands (argument lists) that install a spec: pure, unit-testable. */
export function installCommands(spec: FirewallSpec): { v4: string[][]; v6: string[][] } {
  const F = `${spec.name}-F`;
  const I = `${spec.name}-I`;
  const N = `${spec.name}-N`;
  const parent = spec.forwardParent ?? 'FORWARD';
  const rejectIcmp = ['-j', 'REJECT', '--reject-with', 'icmp-admin-prohibited'];
  const v4: string[][] = [
    ['-N', F],
    ['-A', F, '-o', spec.iface, '-m', 'conntrack', '--ctstate', 'RELATED,ESTABLISHED', '-j', 'ACCEPT'],
    ['-A', F, '-o', spec.iface, ...rejectIcmp],
  ];
  for (const rule of spec.policy.rules(4)) {
    const target = rule.action === 'allow' ? ['-j', 'ACCEPT'] : rejectIcmp;
    v4.push(['-A', F, '-i', spec.iface, '-d', rule.cidr.text, ...target]);
  }
  v4.push(['-A', F, '-i', spec.iface, '-j', 'ACCEPT']);
  v4.push(['-N', I], ['-A', I, '-i', spec.iface, ...rejectIcmp]);
  v4.push(['-I', parent, '1', '-j', F], ['-I', 'INPUT', '1', '-j', I]);
  if (spec.masqueradeSubnet !== undefined) {
    v4.push(
      ['-t', 'nat', '-N', N],
      ['-t', 'nat', '-A', N, '-s', spec.masqueradeSubnet, '!', '-o', spec.iface, '-j', 'MASQUERADE'],
      ['-t', 'nat', '-I', 'POSTROUTING', '1', '-j', N],
    );
  }
  const rejectIcmp6 = ['-j', 'REJECT', '--reject-with', 'icmp6-adm-prohibited'];
  const v6: string[][] = [
    ['-N', F],
    ['-A', F, '-i', spec.iface, ...rejectIcmp6],
    ['-A', F, '-o', spec.iface, ...rejectIcmp6],
    ['-N', I],
    ['-A', I, '-i', spec.iface, ...rejectIcmp6],
    // Docker has no IPv6 DOCKER-USER chain unless IPv6 is on: FORWARD itself is the parent here.
    ['-I', 'FORWARD', '1', '-j', F],
    ['-I', 'INPUT', '1', '-j', I],
  ];
  return { v4, v6 };
}

/**
 * Removes every chain whose name starts with `prefix` from the filter and nat tables (v4 and v6), with the jumps to
 * them. Idempotent; returns how many chains it removed.
 */
export async function removeChains(prefix: string, run: CommandRunner = runCommand): Promise<number> {
  let removed = 0;
  for (const tool of ['iptables', 'ip6tables']) {
    for (const table of ['filter', 'nat']) {
      let listing: string;
      try {
        listing = await run(tool, [...IPT_WAIT, '-t', table, '-S']);
      } catch {
        continue; // tool or table missing: nothing of ours there
      }
      const lines = listing.split('\n');
      const ours = new Set(lines.filter((l) => l.startsWith(`-N ${prefix}`)).map((l) => l.slice(3).trim()));
      if (ours.size === 0) continue;
      // Jumps into our chains from other chains first, then flush and delete.
      for (const line of lines) {
        const m = /^-A (\S+) (.*)-j (\S+)\s*$/.exec(line);
        if (m === null || !ours.has(m[3]!) || ours.has(m[1]!)) continue;
        await run(tool, [...IPT_WAIT, '-t', table, ...splitRule(line).map((a, i) => (i === 0 ? '-D' : a))]).catch(() => undefined);
      }
      for (const chain of ours) await run(tool, [...IPT_WAIT, '-t', table, '-F', chain]).catch(() => undefined);
      for (const chain of ours) {
        await run(tool, [...IPT_WAIT, '-t', table, '-X', chain]).then(
          () => removed++,
          () => undefined,
        );
      }
    }
  }
  return removed;
}

/** Splits an `iptables -S` line into arguments (its quoting is only around comments, which we never write). */
function splitRule(line: string): string[] {
  return line.trim().split(/\s+/);
}

/**
 * A firewall installed while at least one user holds it: `acquire()` installs on first use, the last `release()`
 * removes it, so nothing stays on the host between egress executions. Operations are serialized.
 */
export class EgressFirewall {
  private users = 0;
  private installed = false;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly spec: FirewallSpec,
    private readonly run: CommandRunner = runCommand,
    /** Resolves the subnet to masquerade (when it is known only at first use). */
    private readonly masqueradeSubnet?: () => Promise<string>,
  ) {}

  private serial<T>(work: () => Promise<T>): Promise<T> {
    const next = this.queue.then(work, work);
    this.queue = next.catch(() => undefined);
    return next;
  }

  acquire(): Promise<void> {
    return this.serial(async () => {
      if (!this.installed) {
        await removeChains(this.spec.name, this.run);
        try {
          const spec = this.masqueradeSubnet === undefined ? this.spec : { ...this.spec, masqueradeSubnet: await this.masqueradeSubnet() };
          const { v4, v6 } = installCommands(spec);
          for (const args of v4) await this.run('iptables', [...IPT_WAIT, ...args]);
          for (const args of v6) await this.run('ip6tables', [...IPT_WAIT, ...args]).catch(() => undefined);
        } catch (error) {
          await removeChains(this.spec.name, this.run).catch(() => undefined);
          throw error;
        }
        this.installed = true;
      }
      this.users++;
    });
  }

  release(): Promise<void> {
    return this.serial(async () => {
      this.users = Math.max(0, this.users - 1);
      if (this.users === 0 && this.installed) {
        this.installed = false;
        await removeChains(this.spec.name, this.run);
      }
    });
  }

  get inUse(): boolean {
    return this.users > 0;
  }
}
