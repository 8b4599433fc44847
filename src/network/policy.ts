/**
 * The egress policy of `network: "egress"`: which destination addresses a sandbox may reach. Pure (no I/O): the
 * executors turn `rules()` into packet-filter rules, and `decide()` answers for one address with the same first-match
 * semantics, so the unit tests of this module are the tests of every filter built from it.
 *
 * Order of evaluation (first match wins):
 *   1. never reachable, whatever the operator says: unspecified, loopback, link-local (incl. the 169.254.169.254 /
 *      fd00:ec2::254 metadata addresses), multicast, broadcast, "this network", reserved (240/4), the host's own
 *      addresses, IPv6 site-local (fec0::/10) and the discard prefix;
 *   2. operator-allowed CIDRs (`--egress-allow`): open private, shared, documentation and benchmarking ranges;
 *   3. denied by default: private (10/8, 172.16/12, 192.168/16, fc00::/7), shared address space (100.64/10), IETF
 *      protocol assignments (192.0.0/24), documentation (192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32),
 *      benchmarking (198.18/15, 2001:2::/48), 6to4 relay anycast (192.88.99/24), ORCHIDv2 and Teredo;
 *   4. everything else (the public internet): allowed.
 * IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible and NAT64 (64:ff9b::/96) IPv6 addresses are judged as the IPv4 address
 * they carry, so a mapped form never slips past an IPv4 rule.
 */
import { isIPv4, isIPv6 } from 'node:net';

export type Family = 4 | 6;

/** An address as a number (IPv4: 32 bits, IPv6: 128 bits). */
export interface ParsedAddress {
  family: Family;
  value: bigint;
}

export interface Cidr {
  family: Family;
  /** The network address (host bits cleared). */
  value: bigint;
  prefix: number;
  /** Canonical text, e.g. `10.0.0.0/8`. */
  text: string;
}

export type DenyReason =
  | 'unspecified'
  | 'loopback'
  | 'link-local'
  | 'metadata'
  | 'multicast'
  | 'broadcast'
  | 'reserved'
  | 'host-address'
  | 'private'
  | 'shared'
  | 'documentation'
  | 'benchmarking';

export type Decision = { allowed: true; reason: 'public' | 'operator-allowed' } | { allowed: false; reason: DenyReason | 'invalid' };

export interface PolicyRule {
  cidr: Cidr;
  action: 'allow' | 'deny';
  reason: DenyReason | 'operator-allowed';
}

export interface EgressPolicyOptions {
  /** Operator-allowed CIDRs (`--egress-allow`). Cannot open what step 1 denies. */
  allow?: readonly string[];
  /** The host's own addresses (every interface), always denied. */
  hostAddresses?: readonly string[];
}

const BITS: Record<Family, number> = { 4: 32, 6: 128 };

/** Parses a textual IPv4/IPv6 address (zone ids like `%eth0` are not accepted). Returns null when it is not one. */
export function parseAddress(text: string): ParsedAddress | null {
  if (isIPv4(text)) {
    let value = 0n;
    for (const part of text.split('.')) value = (value << 8n) | BigInt(Number(part));
    return { family: 4, value };
  }
  if (!isIPv6(text) || text.includes('%')) return null;
  let head = text;
  let tailV4: bigint | null = null;
  const lastColon = text.lastIndexOf(':');
  const maybeV4 = text.slice(lastColon + 1);
  if (maybeV4.includes('.')) {
    const v4 = parseAddress(maybeV4);
    if (v4 === null || v4.family !== 4) return null;
    tailV4 = v4.value;
    head = `${text.slice(0, lastColon + 1)}0:0`;
  }
  const [left, right] = head.includes('::') ? (head.split('::') as [string, string]) : [head, null];
  const leftGroups = left === '' ? [] : left.split(':');
  const rightGroups = right === null || right === '' ? [] : right.split(':');
  const missing = 8 - leftGroups.length - rightGroups.length;
  const groups = right === null ? leftGroups : [...leftGroups, ...Array<string>(missing).fill('0'), ...rightGroups];
  if (groups.length !== 8) return null;
  let value = 0n;
  for (const g of groups) value = (value << 16n) | BigInt(parseInt(g, 16));
  if (tailV4 !== null) value = (value & ~0xffffffffn) | tailV4;
  return { family: 6, value };
}

export function formatAddress(address: ParsedAddress): string {
  if (address.family === 4) {
    const v = address.value;
    return [24n, 16n, 8n, 0n].map((s) => String((v >> s) & 0xffn)).join('.');
  }
  const groups: string[] = [];
  for (let i = 7; i >= 0; i--) groups.push(((address.value >> BigInt(i * 16)) & 0xffffn).toString(16));
  // Compress the longest run of zero groups (RFC 5952).
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen && j - i > 1) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (bestStart < 0) return groups.join(':');
  return `${groups.slice(0, bestStart).join(':')}::${groups.slice(bestStart + bestLen).join(':')}`;
}

function mask(family: Family, prefix: number): bigint {
  const bits = BITS[family];
  return prefix === 0 ? 0n : ((1n << BigInt(prefix)) - 1n) << BigInt(bits - prefix);
}

/** Parses `a.b.c.d/n`, `x::/n` or a bare address (a host route). Throws on anything else, saying why. */
export function parseCidr(text: string): Cidr {
  const trimmed = text.trim();
  const slash = trimmed.indexOf('/');
  const addrText = slash < 0 ? trimmed : trimmed.slice(0, slash);
  const address = parseAddress(addrText);
  if (address === null) throw new Error(`"${text}" is not an IPv4/IPv6 address or CIDR`);
  const bits = BITS[address.family];
  let prefix = bits;
  if (slash >= 0) {
    const p = trimmed.slice(slash + 1);
    if (!/^\d{1,3}$/.test(p) || Number(p) > bits) throw new Error(`"${text}": the prefix length must be 0..${bits}`);
    prefix = Number(p);
  }
  const value = address.value & mask(address.family, prefix);
  return { family: address.family, value, prefix, text: `${formatAddress({ family: address.family, value })}/${prefix}` };
}

export function cidrContains(cidr: Cidr, address: ParsedAddress): boolean {
  return cidr.family === address.family && (address.value & mask(cidr.family, cidr.prefix)) === cidr.value;
}

/** The IPv4 address an IPv6 address stands for (mapped ::ffff:0:0/96, compatible ::/96, NAT64 64:ff9b::/96). */
export function embeddedIPv4(address: ParsedAddress): ParsedAddress | null {
  if (address.family !== 6) return null;
  const high = address.value >> 32n;
  const low = address.value & 0xffffffffn;
  if (high === 0xffffn) return { family: 4, value: low }; // ::ffff:a.b.c.d
  if (high === 0n && low > 1n) return { family: 4, value: low }; // ::a.b.c.d (deprecated "compatible"); not :: or ::1
  if (high === 0x0064ff9b0000000000000000n) return { family: 4, value: low }; // 64:ff9b::a.b.c.d
  return null;
}

const HARD_DENY: readonly [string, DenyReason][] = [
  ['0.0.0.0/8', 'unspecified'],
  ['127.0.0.0/8', 'loopback'],
  ['169.254.169.254/32', 'metadata'],
  ['169.254.0.0/16', 'link-local'],
  ['224.0.0.0/4', 'multicast'],
  ['255.255.255.255/32', 'broadcast'],
  ['240.0.0.0/4', 'reserved'],
  ['::/128', 'unspecified'],
  ['::1/128', 'loopback'],
  ['fd00:ec2::254/128', 'metadata'],
  ['fe80::/10', 'link-local'],
  ['fec0::/10', 'reserved'],
  ['ff00::/8', 'multicast'],
  ['100::/64', 'reserved'],
  // IPv4-compatible/mapped/translated forms are judged by their IPv4 address in decide(); filters, which see only
  // the raw IPv6 destination, drop them outright.
  ['::/96', 'reserved'],
  ['::ffff:0:0/96', 'reserved'],
  ['64:ff9b::/96', 'reserved'],
  ['64:ff9b:1::/48', 'reserved'],
];

const SOFT_DENY: readonly [string, DenyReason][] = [
  ['10.0.0.0/8', 'private'],
  ['172.16.0.0/12', 'private'],
  ['192.168.0.0/16', 'private'],
  ['100.64.0.0/10', 'shared'],
  ['192.0.0.0/24', 'reserved'],
  ['192.0.2.0/24', 'documentation'],
  ['198.51.100.0/24', 'documentation'],
  ['203.0.113.0/24', 'documentation'],
  ['198.18.0.0/15', 'benchmarking'],
  ['192.88.99.0/24', 'reserved'],
  ['fc00::/7', 'private'],
  ['2001:db8::/32', 'documentation'],
  ['2001:2::/48', 'benchmarking'],
  ['2001::/32', 'reserved'], // Teredo
  ['2001:20::/28', 'reserved'], // ORCHIDv2
  ['2002::/16', 'reserved'], // 6to4: carries arbitrary IPv4 destinations
];

export class EgressPolicy {
  private readonly hard: PolicyRule[];
  private readonly allowed: PolicyRule[];
  private readonly soft: PolicyRule[];

  constructor(options: EgressPolicyOptions = {}) {
    this.hard = HARD_DENY.map(([c, reason]) => ({ cidr: parseCidr(c), action: 'deny' as const, reason }));
    for (const host of options.hostAddresses ?? []) {
      const parsed = parseAddress(host.replace(/%.*$/, ''));
      if (parsed === null) continue;
      const cidr = parseCidr(formatAddress(parsed));
      this.hard.push({ cidr, action: 'deny', reason: 'host-address' });
      const v4 = embeddedIPv4(parsed);
      if (v4 !== null) this.hard.push({ cidr: parseCidr(formatAddress(v4)), action: 'deny', reason: 'host-address' });
    }
    this.allowed = (options.allow ?? []).map((c) => ({ cidr: parseCidr(c), action: 'allow' as const, reason: 'operator-allowed' as const }));
    this.soft = SOFT_DENY.map(([c, reason]) => ({ cidr: parseCidr(c), action: 'deny' as const, reason }));
  }

  /** Ordered, first match wins; anything unmatched is allowed. Filters are built from this list. */
  rules(family?: Family): PolicyRule[] {
    const all = [...this.hard, ...this.allowed, ...this.soft];
    return family === undefined ? all : all.filter((r) => r.cidr.family === family);
  }

  /** The operator's allow list, canonical. */
  get allowList(): string[] {
    return this.allowed.map((r) => r.cidr.text);
  }

  decide(destination: string): Decision {
    const parsed = parseAddress(destination);
    if (parsed === null) return { allowed: false, reason: 'invalid' };
    const v4 = embeddedIPv4(parsed);
    // A mapped address is judged as the IPv4 address it carries (after the IPv6 hard rules for :: and ::1).
    if (v4 !== null) return this.decideParsed(v4);
    return this.decideParsed(parsed);
  }

  private decideParsed(address: ParsedAddress): Decision {
    for (const rule of this.rules(address.family)) {
      if (!cidrContains(rule.cidr, address)) continue;
      if (rule.action === 'allow') return { allowed: true, reason: 'operator-allowed' };
      return { allowed: false, reason: rule.reason as DenyReason };
    }
    return { allowed: true, reason: 'public' };
  }
}

/** Parses `--egress-allow 10.1.0.0/16,fd12::/48`, throwing a message that names the bad entry. */
export function parseAllowList(text: string | undefined): string[] {
  if (text === undefined || text.trim() === '') return [];
  return text.split(',').map((entry) => parseCidr(entry).text);
}
