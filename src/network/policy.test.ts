import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { EgressPolicy, cidrContains, embeddedIPv4, formatAddress, parseAddress, parseAllowList, parseCidr, type PolicyRule } from './policy.js';

const policy = new EgressPolicy({ hostAddresses: ['192.0.2.2', 'fd00::2', 'fe80::fc:ff:fe00:1%eth0', '203.0.114.7', '2a00:1450::99'] });

function expectDenied(p: EgressPolicy, address: string, reason: string): void {
  assert.deepEqual(p.decide(address), { allowed: false, reason }, address);
}
function expectAllowed(p: EgressPolicy, address: string, reason = 'public'): void {
  assert.deepEqual(p.decide(address), { allowed: true, reason }, address);
}

/** Evaluates the rule list the way a packet filter does (first match, default accept). */
function filterVerdict(rules: PolicyRule[], address: string): boolean {
  const parsed = parseAddress(address)!;
  for (const rule of rules) if (cidrContains(rule.cidr, parsed)) return rule.action === 'allow';
  return true;
}

describe('address parsing', () => {
  it('parses IPv4 and IPv6 (compressed, full, with an IPv4 tail) and formats canonically', () => {
    assert.deepEqual(parseAddress('10.1.2.3'), { family: 4, value: 0x0a010203n });
    assert.deepEqual(parseAddress('::'), { family: 6, value: 0n });
    assert.deepEqual(parseAddress('::1'), { family: 6, value: 1n });
    assert.deepEqual(parseAddress('2001:db8::1'), parseAddress('2001:0db8:0000:0000:0000:0000:0000:0001'));
    assert.deepEqual(parseAddress('::ffff:10.0.0.1'), { family: 6, value: 0xffff0a000001n });
    assert.deepEqual(parseAddress('::FFFF:A00:1'), { family: 6, value: 0xffff0a000001n });
    assert.equal(formatAddress(parseAddress('2001:0db8:0:0:1:0:0:1')!), '2001:db8::1:0:0:1');
    assert.equal(formatAddress(parseAddress('fe80:0:0:0:0:0:0:0')!), 'fe80::');
    assert.equal(formatAddress(parseAddress('1:2:3:4:5:6:7:8')!), '1:2:3:4:5:6:7:8');
    assert.equal(formatAddress(parseAddress('1:0:3:4:5:6:7:8')!), '1:0:3:4:5:6:7:8');
  });

  it('rejects what is not an address', () => {
    for (const bad of ['', '1.2.3', '1.2.3.4.5', '256.1.1.1', '01.2.3.4', 'a.b.c.d', '1::2::3', ':::', 'fe80::1%eth0', 'localhost', ' 1.2.3.4', '1.2.3.4/32']) {
      assert.equal(parseAddress(bad), null, bad);
      assert.deepEqual(policy.decide(bad), { allowed: false, reason: 'invalid' }, bad);
    }
  });

  it('parses CIDRs, clearing host bits; rejects bad prefixes', () => {
    assert.equal(parseCidr('10.1.2.3/8').text, '10.0.0.0/8');
    assert.equal(parseCidr('10.1.2.3').text, '10.1.2.3/32');
    assert.equal(parseCidr('0.0.0.0/0').text, '0.0.0.0/0');
    assert.equal(parseCidr('fd12:3456::1/48').text, 'fd12:3456::/48');
    assert.equal(parseCidr('::/0').text, '::/0');
    for (const bad of ['10.0.0.0/33', '10.0.0.0/-1', '10.0.0.0/', '::/129', 'x/8', '10.0.0.0/8/8', '10.0.0.0/ 8']) {
      // A string second argument is only the failure message: any error passed. Check it is parseCidr's own refusal.
      assert.throws(() => parseCidr(bad), /is not an IPv4\/IPv6 address or CIDR|the prefix length must be/, bad);
    }
    assert.deepEqual(parseAllowList(' 10.1.0.0/16 , fd12::/48'), ['10.1.0.0/16', 'fd12::/48']);
    assert.deepEqual(parseAllowList(''), []);
    assert.throws(() => parseAllowList('10.0.0.0/8,nope'), /nope/);
  });

  it('finds the IPv4 address in mapped, compatible and NAT64 forms only', () => {
    assert.equal(formatAddress(embeddedIPv4(parseAddress('::ffff:127.0.0.1')!)!), '127.0.0.1');
    assert.equal(formatAddress(embeddedIPv4(parseAddress('::10.0.0.1')!)!), '10.0.0.1');
    assert.equal(formatAddress(embeddedIPv4(parseAddress('64:ff9b::169.254.169.254')!)!), '169.254.169.254');
    assert.equal(embeddedIPv4(parseAddress('::1')!), null);
    assert.equal(embeddedIPv4(parseAddress('::')!), null);
    assert.equal(embeddedIPv4(parseAddress('2001:db8::ffff:1.2.3.4')!), null);
    assert.equal(embeddedIPv4(parseAddress('1.2.3.4')!), null);
  });
});

describe('egress policy: IPv4', () => {
  it('denies loopback, unspecified, link-local and metadata, multicast, broadcast, reserved', () => {
    for (const a of ['127.0.0.1', '127.255.255.255', '127.1.2.3']) expectDenied(policy, a, 'loopback');
    for (const a of ['0.0.0.0', '0.255.255.255']) expectDenied(policy, a, 'unspecified');
    for (const a of ['169.254.0.0', '169.254.1.1', '169.254.255.255', '169.254.169.253']) expectDenied(policy, a, 'link-local');
    expectDenied(policy, '169.254.169.254', 'metadata');
    for (const a of ['224.0.0.1', '239.255.255.250', '232.1.1.1']) expectDenied(policy, a, 'multicast');
    expectDenied(policy, '255.255.255.255', 'broadcast');
    for (const a of ['240.0.0.1', '250.1.1.1', '255.255.255.254']) expectDenied(policy, a, 'reserved');
  });

  it('denies private, shared and special-purpose ranges at their exact edges', () => {
    const cases: [string, string][] = [
      ['10.0.0.0', 'private'],
      ['10.255.255.255', 'private'],
      ['172.16.0.0', 'private'],
      ['172.31.255.255', 'private'],
      ['192.168.0.0', 'private'],
      ['192.168.255.255', 'private'],
      ['100.64.0.0', 'shared'],
      ['100.127.255.255', 'shared'],
      ['192.0.0.8', 'reserved'],
      ['192.0.2.1', 'documentation'],
      ['198.51.100.2', 'documentation'],
      ['203.0.113.255', 'documentation'],
      ['198.18.0.0', 'benchmarking'],
      ['198.19.255.255', 'benchmarking'],
      ['192.88.99.1', 'reserved'],
    ];
    for (const [a, reason] of cases) expectDenied(policy, a, reason);
  });

  it('allows the public addresses right next to every denied range', () => {
    for (const a of [
      '9.255.255.255',
      '11.0.0.0',
      '172.15.255.255',
      '172.32.0.0',
      '192.167.255.255',
      '192.169.0.0',
      '100.63.255.255',
      '100.128.0.0',
      '169.253.255.255',
      '169.255.0.0',
      '126.255.255.255',
      '128.0.0.0',
      '223.255.255.255',
      '1.0.0.0',
      '192.0.1.255',
      '192.0.3.0',
      '198.17.255.255',
      '198.20.0.0',
      '198.51.99.255',
      '198.51.101.0',
      '203.0.112.255',
      '203.0.114.0',
      '8.8.8.8',
      '93.184.216.34',
    ]) {
      expectAllowed(policy, a);
    }
  });

  it("denies the host's own addresses, even public ones", () => {
    expectDenied(policy, '203.0.114.7', 'host-address');
    expectAllowed(policy, '203.0.114.8');
  });
});

describe('egress policy: IPv6', () => {
  it('denies ::, ::1, link-local, site-local, multicast, ULA, documentation, translation prefixes', () => {
    expectDenied(policy, '::', 'unspecified');
    expectDenied(policy, '::1', 'loopback');
    for (const a of ['fe80::', 'fe80::1', 'febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff']) expectDenied(policy, a, 'link-local');
    expectDenied(policy, 'fd00:ec2::254', 'metadata');
    expectDenied(policy, 'fec0::1', 'reserved');
    for (const a of ['ff02::1', 'ff05::2', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff']) expectDenied(policy, a, 'multicast');
    for (const a of ['fc00::', 'fd12:3456::1', 'fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff']) expectDenied(policy, a, 'private');
    expectDenied(policy, '2001:db8::1', 'documentation');
    expectDenied(policy, '2001:2::1', 'benchmarking');
    expectDenied(policy, '2002:a00:1::', 'reserved');
    expectDenied(policy, '2001:0:4136:e378::1', 'reserved');
    expectDenied(policy, '100::1', 'reserved');
  });

  it('judges IPv4-mapped, compatible and NAT64 addresses by their IPv4 address', () => {
    expectDenied(policy, '::ffff:127.0.0.1', 'loopback');
    expectDenied(policy, '::ffff:7f00:1', 'loopback');
    expectDenied(policy, '::ffff:169.254.169.254', 'metadata');
    expectDenied(policy, '::ffff:10.0.0.1', 'private');
    expectDenied(policy, '::ffff:192.168.1.1', 'private');
    expectDenied(policy, '::10.0.0.1', 'private');
    expectDenied(policy, '64:ff9b::10.1.1.1', 'private');
    expectDenied(policy, '64:ff9b::7f00:1', 'loopback');
    expectDenied(policy, '::ffff:192.0.2.2', 'host-address');
    expectAllowed(policy, '::ffff:8.8.8.8');
    expectAllowed(policy, '64:ff9b::8.8.8.8');
  });

  it("denies the host's IPv6 addresses and allows public IPv6 next to the denied ranges", () => {
    expectDenied(policy, 'fd00::2', 'host-address');
    expectDenied(policy, 'fd00::3', 'private');
    expectDenied(policy, '2a00:1450::99', 'host-address');
    for (const a of ['2a00:1450::98', '2606:4700::1111', '2001:4860:4860::8888', 'fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'fe00::', '2001:db7:ffff:ffff:ffff:ffff:ffff:ffff', '2001:db9::']) {
      expectAllowed(policy, a);
    }
  });
});

describe('egress policy: operator allow list', () => {
  const open = new EgressPolicy({ allow: ['10.99.0.0/16', '198.51.100.0/24', 'fd12::/16', '127.0.0.0/8', '169.254.0.0/16', '0.0.0.0/0'], hostAddresses: ['10.99.0.1'] });

  it('opens private and documentation ranges it names, and only those', () => {
    expectAllowed(open, '10.99.0.2', 'operator-allowed');
    expectAllowed(open, '::ffff:10.99.0.2', 'operator-allowed');
    expectAllowed(open, '198.51.100.2', 'operator-allowed');
    expectAllowed(open, 'fd12::1', 'operator-allowed');
    expectDenied(new EgressPolicy({ allow: ['10.99.0.0/16'] }), '10.98.0.1', 'private');
    expectDenied(new EgressPolicy({ allow: ['10.99.0.0/16'] }), 'fd13::1', 'private');
  });

  it('never opens loopback, link-local, metadata or the host itself', () => {
    expectDenied(open, '127.0.0.1', 'loopback');
    expectDenied(open, '169.254.169.254', 'metadata');
    expectDenied(open, '169.254.1.1', 'link-local');
    expectDenied(open, '10.99.0.1', 'host-address');
    expectDenied(open, '::ffff:127.0.0.1', 'loopback');
    expectDenied(open, '224.0.0.1', 'multicast');
  });

  it('keeps the canonical allow list', () => {
    assert.deepEqual(new EgressPolicy({ allow: ['10.99.1.2/16'] }).allowList, ['10.99.0.0/16']);
  });
});

describe('egress policy: the filter rules agree with decide()', () => {
  it('for every edge address, in both policies', () => {
    const policies = [policy, new EgressPolicy({ allow: ['10.99.0.0/16', '198.51.100.0/24'], hostAddresses: ['192.0.2.2'] })];
    const samples = [
      '0.0.0.0', '1.1.1.1', '9.255.255.255', '10.0.0.0', '10.99.0.2', '10.255.255.255', '11.0.0.0', '100.64.0.1', '127.0.0.1',
      '169.254.169.254', '172.16.0.1', '172.32.0.1', '192.0.2.2', '192.168.1.1', '198.51.100.2', '203.0.113.9', '224.0.0.1',
      '240.0.0.1', '255.255.255.255', '8.8.8.8', '::', '::1', 'fe80::1', 'fd00::1', 'fc00::1', 'ff02::1', '2001:db8::1',
      '2606:4700::1111', '::ffff:10.0.0.1', '64:ff9b::a00:1', '2002::1',
    ];
    for (const p of policies) {
      for (const s of samples) {
        const parsed = parseAddress(s)!;
        // A filter sees the raw destination; mapped/translated forms are dropped by their own rule.
        const expected = embeddedIPv4(parsed) !== null ? false : p.decide(s).allowed;
        assert.equal(filterVerdict(p.rules(parsed.family), s), expected, s);
      }
    }
  });
});
