import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  EAFNOSUPPORT,
  EPERM,
  SYSCALL_PERSONALITY,
  SYSCALL_PRLIMIT64,
  SYSCALL_SETRLIMIT,
  SYSCALL_SOCKET,
  SYSCALL_SOCKETPAIR,
  argumentRuleVerdict,
  u32ComplementBlocks,
} from './syscall-policy.js';

describe('syscall policy: argument rules', () => {
  const v = (nr: number, ...args: bigint[]) => argumentRuleVerdict(nr, args);

  it('allows unix, inet, inet6 and netlink route sockets; every other family gets EAFNOSUPPORT', () => {
    for (const family of [1n, 2n, 10n]) assert.deepEqual(v(SYSCALL_SOCKET, family, 1n, 0n), { allow: true });
    assert.deepEqual(v(SYSCALL_SOCKET, 16n, 3n, 0n), { allow: true });
    const refused = { allow: false, errno: EAFNOSUPPORT };
    // AF_VSOCK 40, AF_ALG 38, AF_PACKET 17, AF_KEY 15, AF_BLUETOOTH 31, AF_XDP 44, NETLINK_AUDIT 9, NETLINK_GENERIC 16.
    for (const family of [0n, 15n, 17n, 31n, 38n, 40n, 44n, 3n]) assert.deepEqual(v(SYSCALL_SOCKET, family, 1n, 0n), refused, `family ${family}`);
    assert.deepEqual(v(SYSCALL_SOCKET, 16n, 3n, 9n), refused);
    assert.deepEqual(v(SYSCALL_SOCKETPAIR, 40n, 1n, 0n), refused);
    // The kernel reads the family as an int: high bits do not turn a refused family into an allowed one or back.
    assert.deepEqual(v(SYSCALL_SOCKET, 0x1_0000_0028n, 1n, 0n), refused);
    assert.deepEqual(v(SYSCALL_SOCKET, 0x1_0000_0002n, 1n, 0n), { allow: true });
  });

  it('personality: only the harmless values; ADDR_NO_RANDOMIZE is refused', () => {
    for (const p of [0n, 8n, 0x20000n, 0x20008n, 0xffffffffn]) assert.deepEqual(v(SYSCALL_PERSONALITY, p), { allow: true });
    for (const p of [0x0040000n, 0x0400000n, 0x0040008n, 1n]) assert.deepEqual(v(SYSCALL_PERSONALITY, p), { allow: false, errno: EPERM });
  });

  it('RLIMIT_CORE cannot be changed, only read; other limits stay the process\'s business', () => {
    assert.deepEqual(v(SYSCALL_SETRLIMIT, 4n, 0x1000n), { allow: false, errno: EPERM });
    assert.deepEqual(v(SYSCALL_SETRLIMIT, 7n, 0x1000n), { allow: true });
    assert.deepEqual(v(SYSCALL_PRLIMIT64, 0n, 4n, 0x1000n, 0n), { allow: false, errno: EPERM });
    assert.deepEqual(v(SYSCALL_PRLIMIT64, 0n, 4n, 0x7ffc_0000_0000n, 0n), { allow: false, errno: EPERM });
    assert.deepEqual(v(SYSCALL_PRLIMIT64, 0n, 4n, 0n, 0x1000n), { allow: true });
    assert.deepEqual(v(SYSCALL_PRLIMIT64, 0n, 7n, 0x1000n, 0n), { allow: true });
  });

  it('complement blocks match exactly the values not allowed', () => {
    const allowed = [0, 8, 0x20000, 0x20008, 0xffffffff];
    const blocks = u32ComplementBlocks(allowed);
    const matches = (x: number): number => blocks.filter((b) => ((x & b.mask) >>> 0) === b.value).length;
    for (const x of allowed) assert.equal(matches(x), 0, `allowed ${x} is matched`);
    for (const x of [1, 7, 9, 0x1ffff, 0x20001, 0x20007, 0x20009, 0x40000, 0x80000000, 0xfffffffe]) assert.equal(matches(x), 1, `0x${x.toString(16)}`);
    // Blocks are disjoint and cover 2^32 - |allowed| values.
    const covered = blocks.reduce((n, b) => n + (2 ** 32 - b.mask), 0);
    assert.equal(covered, 2 ** 32 - allowed.length);
    assert.ok(blocks.length < 100, `${blocks.length} blocks`);
    assert.deepEqual(u32ComplementBlocks([]), [{ mask: 0, value: 0 }]);
  });
});
