/** Test support: argument vectors that exercise every argument rule of syscall-policy.ts (used by both executors' tests). */
import { ALLOWED_PERSONALITIES, SYSCALL_PERSONALITY, SYSCALL_PRLIMIT64, SYSCALL_SETRLIMIT, SYSCALL_SOCKET, SYSCALL_SOCKETPAIR } from './syscall-policy.js';

/** Argument vectors that exercise every argument rule, high halves included (the kernel ignores them for ints). */
export function argumentRuleSamples(): { nr: number; args: bigint[] }[] {
  const samples: { nr: number; args: bigint[] }[] = [];
  const high = 0x1_0000_0000n;
  for (const nr of [SYSCALL_SOCKET, SYSCALL_SOCKETPAIR]) {
    for (let family = 0n; family < 64n; family++) {
      for (const protocol of [0n, 1n, 9n, 15n, 16n, high, high | 2n]) samples.push({ nr, args: [family, 1n, protocol] });
      samples.push({ nr, args: [family | high, 1n, 0n] });
    }
    for (const family of [0xffffn, 0x7fffffffn, 0xffffffffn, 0xffff_ffff_0000_0010n]) samples.push({ nr, args: [family, 1n, 0n] });
  }
  for (const persona of [...ALLOWED_PERSONALITIES.map(BigInt), 0x0040000n, 0x0040008n, 0x0400000n, 0x4000000n, 0x8000000n, 1n, 7n, 9n, 0x20001n, 0x20009n, 0xfffffffen, 0x7fffffffn, high, high | 0x40000n, 0xffff_ffff_ffff_ffffn]) {
    samples.push({ nr: SYSCALL_PERSONALITY, args: [persona] });
  }
  for (let resource = 0n; resource < 16n; resource++) {
    samples.push({ nr: SYSCALL_SETRLIMIT, args: [resource, 0x7ffc_0000_1000n] });
    samples.push({ nr: SYSCALL_SETRLIMIT, args: [resource | high, 0x7ffc_0000_1000n] });
    for (const newLimit of [0n, 0x1000n, 0x7ffc_0000_0000n, 0x7ffc_0000_1000n]) {
      samples.push({ nr: SYSCALL_PRLIMIT64, args: [0n, resource, newLimit, 0x7ffc_0000_2000n] });
    }
  }
  return samples;
}
