/**
 * The seccomp profile of Kindling's containers: the same syscall policy as the sandbox executor's BPF filter
 * (shared/syscall-policy.ts), in the OCI/Docker JSON form that `HostConfig.SecurityOpt: ["seccomp=<json>"]` takes.
 *
 * Why not Docker's default profile: it lets a process ptrace the other processes of its own container (the kernel
 * checks same uid, and Docker allows ptrace on kernels >= 4.8), so user code could stop the container's init and
 * stall its own run until the timeout; it also allows io_uring on older engines. With every capability dropped
 * (CapDrop ALL), the syscalls Docker's allowlist keeps out for want of a capability fail anyway; this deny list
 * names them explicitly, plus the unprivileged ones that matter (ptrace, unshare/clone of namespaces, keyrings, bpf,
 * userfaultfd, io_uring, process_vm_*).
 */
import {
  AF_NETLINK,
  ALLOWED_PERSONALITIES,
  ALLOWED_SOCKET_FAMILIES,
  CLONE_NAMESPACE_FLAGS,
  DENIED_SYSCALLS_X86_64,
  EAFNOSUPPORT,
  EPERM,
  NETLINK_ROUTE,
  RLIMIT_CORE,
  u32ComplementBlocks,
} from '../shared/syscall-policy.js';

const ENOSYS = 38;

/**
 * One condition of a rule. MASKED_EQ: `(arg & value) === valueTwo`; NE: `arg !== value` (all 64 bits). The rules here
 * mask with 0xffffffff (or less) wherever the kernel reads the argument as a 32-bit int, as the BPF filter does.
 */
export interface SeccompArg {
  index: number;
  value: number;
  valueTwo: number;
  op: 'SCMP_CMP_MASKED_EQ' | 'SCMP_CMP_NE';
}

export interface SeccompRule {
  names: string[];
  action: 'SCMP_ACT_ERRNO';
  errnoRet: number;
  args?: SeccompArg[];
}

export interface SeccompProfile {
  defaultAction: 'SCMP_ACT_ALLOW';
  /** Only native x86_64 syscalls: a syscall of any other ABI (i386 `int 0x80`, x32) fails the arch check. */
  architectures: string[];
  syscalls: SeccompRule[];
}

/** Each namespace flag as its own bit, so "clone with any of them" can be said with MASKED_EQ rules (ORed). */
function namespaceFlagBits(): number[] {
  const bits: number[] = [];
  for (let bit = 0; bit < 32; bit++) {
    const flag = 2 ** bit;
    if ((CLONE_NAMESPACE_FLAGS & flag) !== 0) bits.push(flag);
  }
  return bits;
}

export function buildDockerSeccompProfile(): SeccompProfile {
  return {
    defaultAction: 'SCMP_ACT_ALLOW',
    architectures: ['SCMP_ARCH_X86_64'],
    syscalls: [
      { names: Object.keys(DENIED_SYSCALLS_X86_64).sort(), action: 'SCMP_ACT_ERRNO', errnoRet: EPERM },
      // clone with a namespace flag: one rule per flag (libseccomp ORs rules of the same syscall).
      ...namespaceFlagBits().map(
        (flag): SeccompRule => ({
          names: ['clone'],
          action: 'SCMP_ACT_ERRNO',
          errnoRet: EPERM,
          args: [{ index: 0, value: flag, valueTwo: flag, op: 'SCMP_CMP_MASKED_EQ' }],
        }),
      ),
      // clone3's flags live in user memory, which seccomp cannot read: ENOSYS makes libc fall back to clone.
      { names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS },
      ...argumentRules(),
    ],
  };
}

const low32 = (index: number, value: number): SeccompArg => ({ index, value: 0xffffffff, valueTwo: value >>> 0, op: 'SCMP_CMP_MASKED_EQ' });

/**
 * The argument rules of shared/syscall-policy.ts as deny rules. A rule's conditions are ANDed and the rules of a
 * syscall ORed, and one rule cannot test the same argument twice, so "not one of the allowed values" is a set of
 * aligned blocks of the 32-bit range that covers every other value (u32ComplementBlocks).
 */
function argumentRules(): SeccompRule[] {
  const rules: SeccompRule[] = [];
  const deny = (names: string[], errnoRet: number, args: SeccompArg[]): void => {
    rules.push({ names, action: 'SCMP_ACT_ERRNO', errnoRet, args });
  };
  const sockets = ['socket', 'socketpair'];
  // Families outside the allowed ones and netlink; then netlink with a protocol other than NETLINK_ROUTE.
  for (const b of u32ComplementBlocks([...ALLOWED_SOCKET_FAMILIES, AF_NETLINK])) {
    deny(sockets, EAFNOSUPPORT, [{ index: 0, value: b.mask, valueTwo: b.value, op: 'SCMP_CMP_MASKED_EQ' }]);
  }
  for (const b of u32ComplementBlocks([NETLINK_ROUTE])) {
    deny(sockets, EAFNOSUPPORT, [low32(0, AF_NETLINK), { index: 2, value: b.mask, valueTwo: b.value, op: 'SCMP_CMP_MASKED_EQ' }]);
  }
  for (const b of u32ComplementBlocks(ALLOWED_PERSONALITIES)) {
    deny(['personality'], EPERM, [{ index: 0, value: b.mask, valueTwo: b.value, op: 'SCMP_CMP_MASKED_EQ' }]);
  }
  deny(['setrlimit'], EPERM, [low32(0, RLIMIT_CORE)]);
  // prlimit64(pid, resource, new_limit, old_limit): reading (new_limit NULL) stays allowed.
  deny(['prlimit64'], EPERM, [low32(1, RLIMIT_CORE), { index: 2, value: 0, valueTwo: 0, op: 'SCMP_CMP_NE' }]);
  return rules;
}

/** The `SecurityOpt` entry; computed once (the profile never changes while the server runs). */
export const KINDLING_SECCOMP_OPT = `seccomp=${JSON.stringify(buildDockerSeccompProfile())}`;
