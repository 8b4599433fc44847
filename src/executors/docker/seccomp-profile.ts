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
import { CLONE_NAMESPACE_FLAGS, DENIED_SYSCALLS_X86_64 } from '../shared/syscall-policy.js';

const EPERM = 1;
const ENOSYS = 38;

interface SeccompArg {
  index: number;
  value: number;
  valueTwo: number;
  op: 'SCMP_CMP_MASKED_EQ';
}

interface SeccompRule {
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
    ],
  };
}

/** The `SecurityOpt` entry; computed once (the profile never changes while the server runs). */
export const KINDLING_SECCOMP_OPT = `seccomp=${JSON.stringify(buildDockerSeccompProfile())}`;
