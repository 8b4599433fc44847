/** What code in a sandbox may not ask the kernel for, whichever executor runs it (x86_64 numbers). */

/**
 * Syscalls every Kindling sandbox answers with EPERM (the sandbox executor's BPF filter and the Docker executor's
 * seccomp profile). Beyond the list: the new mount API, pivot_root,
 * chroot, io_uring (a frequent source of kernel bugs, also denied by Docker's default profile), kcmp/pidfd_getfd
 * (ptrace-like), and clock/time/accounting knobs that need capabilities anyway.
 */
export const DENIED_SYSCALLS_X86_64: Readonly<Record<string, number>> = {
  mount: 165,
  umount2: 166,
  unshare: 272,
  setns: 308,
  ptrace: 101,
  keyctl: 250,
  add_key: 248,
  request_key: 249,
  bpf: 321,
  perf_event_open: 298,
  kexec_load: 246,
  kexec_file_load: 320,
  init_module: 175,
  finit_module: 313,
  delete_module: 176,
  reboot: 169,
  swapon: 167,
  swapoff: 168,
  open_by_handle_at: 304,
  name_to_handle_at: 303,
  userfaultfd: 323,
  process_vm_readv: 310,
  process_vm_writev: 311,
  pivot_root: 155,
  chroot: 161,
  open_tree: 428,
  move_mount: 429,
  fsopen: 430,
  fsconfig: 431,
  fsmount: 432,
  fspick: 433,
  mount_setattr: 442,
  open_tree_attr: 467,
  io_uring_setup: 425,
  io_uring_enter: 426,
  io_uring_register: 427,
  kcmp: 312,
  pidfd_getfd: 438,
  acct: 163,
  quotactl: 179,
  quotactl_fd: 443,
  syslog: 103,
  iopl: 172,
  ioperm: 173,
  lookup_dcookie: 212,
  settimeofday: 164,
  clock_settime: 227,
  clock_adjtime: 305,
  adjtimex: 159,
  vhangup: 153,
  uselib: 134,
  _sysctl: 156,
  nfsservctl: 180,
  // Obsolete interfaces Docker's default profile denies too.
  ustat: 136,
  sysfs: 139,
  // Per-process LDT segments: only 16-bit/Wine code needs them, and they have been a source of kernel bugs.
  modify_ldt: 154,
};

export const SYSCALL_CLONE = 56;
export const SYSCALL_CLONE3 = 435;
/** CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME. */
export const CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080;


/* ------------------------------------------------------------------------------------------------------------------ */
/* Argument rules: the same policy, stated once here and compiled by both executors (BPF and the OCI profile).        */
/* Every argument these rules look at is a 32-bit int or unsigned int for the kernel (the upper half of the register */
/* is ignored), so the rules compare the low 32 bits only, except pointers, which are compared whole.                */
/* ------------------------------------------------------------------------------------------------------------------ */

export const SYSCALL_SOCKET = 41;
export const SYSCALL_SOCKETPAIR = 53;
export const SYSCALL_PERSONALITY = 135;
export const SYSCALL_SETRLIMIT = 160;
export const SYSCALL_PRLIMIT64 = 302;

export const EPERM = 1;
export const EAFNOSUPPORT = 97;

export const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const AF_NETLINK = 16;
export const NETLINK_ROUTE = 0;
/**
 * socket() and socketpair() families any function may open. AF_NETLINK is allowed with protocol NETLINK_ROUTE only:
 * glibc's getaddrinfo (AI_ADDRCONFIG), getifaddrs and if_nameindex ask the kernel for the namespace's addresses
 * through it. Every other family (AF_VSOCK ignores network namespaces, AF_ALG, AF_PACKET, AF_KEY, netlink beyond
 * route, ...) is kernel attack surface no function needs: EAFNOSUPPORT, as from a kernel built without it.
 */
export const ALLOWED_SOCKET_FAMILIES: readonly number[] = [AF_UNIX, AF_INET, AF_INET6];

/**
 * personality() values allowed (the rest get EPERM): PER_LINUX, PER_LINUX32, UNAME26 alone and with PER_LINUX32, and
 * 0xffffffff, the query. Docker's default profile allows the same set. ADDR_NO_RANDOMIZE (turns ASLR off for the
 * next exec), READ_IMPLIES_EXEC and the other flags are refused.
 */
export const ALLOWED_PERSONALITIES: readonly number[] = [0x0, 0x8, 0x20000, 0x20008, 0xffffffff];

export const RLIMIT_CORE = 4;
/**
 * RLIMIT_CORE (soft and hard) of every sandboxed process. 1, not 0: a core file needs at least a page, so 1 writes
 * none, and 1 is the value at which the kernel also refuses to start a core_pattern pipe helper (the kernel ignores
 * RLIMIT_CORE for pipes except this value, its guard against recursive crashes of the helper). A crash in a sandbox
 * therefore never runs the host's core-dump program. Changing RLIMIT_CORE is denied (setrlimit/prlimit64 with
 * RLIMIT_CORE and a new value: EPERM), since lowering it to 0 would start the helper again.
 */
export const SANDBOX_CORE_LIMIT = 1;

/** A verdict of the policy for one syscall: allowed, or failed with this errno. */
export type PolicyVerdict = { allow: true } | { allow: false; errno: number };

/**
 * The argument rules as a reference function (args as unsigned 64-bit values). The BPF filter and the OCI profile are
 * both tested against it; it does not cover the plain deny list, clone/clone3 or the architecture checks, which are
 * argument-free or already tested separately.
 */
export function argumentRuleVerdict(nr: number, args: readonly bigint[]): PolicyVerdict | null {
  const low = (i: number): number => Number((args[i] ?? 0n) & 0xffffffffn);
  switch (nr) {
    case SYSCALL_SOCKET:
    case SYSCALL_SOCKETPAIR: {
      const family = low(0);
      if (ALLOWED_SOCKET_FAMILIES.includes(family)) return { allow: true };
      if (family === AF_NETLINK && low(2) === NETLINK_ROUTE) return { allow: true };
      return { allow: false, errno: EAFNOSUPPORT };
    }
    case SYSCALL_PERSONALITY:
      return ALLOWED_PERSONALITIES.includes(low(0)) ? { allow: true } : { allow: false, errno: EPERM };
    case SYSCALL_SETRLIMIT:
      return low(0) === RLIMIT_CORE ? { allow: false, errno: EPERM } : { allow: true };
    case SYSCALL_PRLIMIT64:
      // prlimit64(pid, resource, new_limit, old_limit): reading (new_limit NULL) stays allowed.
      return low(1) === RLIMIT_CORE && (args[2] ?? 0n) !== 0n ? { allow: false, errno: EPERM } : { allow: true };
    default:
      return null;
  }
}

/**
 * Aligned blocks (`x & mask === value`, 32-bit) that together match every u32 not in `allowed`: how "not one of these
 * values" is said in an OCI profile, whose rules can only AND conditions on different arguments and OR whole rules.
 */
export function u32ComplementBlocks(allowed: readonly number[]): { mask: number; value: number }[] {
  const sorted = [...new Set(allowed.map((v) => v >>> 0))].sort((a, b) => a - b);
  const blocks: { mask: number; value: number }[] = [];
  const cover = (from: number, to: number): void => {
    let lo = from;
    while (lo <= to) {
      let size = 1;
      // The largest power of two that lo is aligned to and that still fits in [lo, to].
      while (size < 2 ** 32 && lo % (size * 2) === 0 && lo + size * 2 - 1 <= to) size *= 2;
      blocks.push({ mask: (2 ** 32 - size) >>> 0, value: lo });
      lo += size;
    }
  };
  let next = 0;
  for (const v of sorted) {
    if (v > next) cover(next, v - 1);
    next = v + 1;
  }
  if (next <= 0xffffffff) cover(next, 0xffffffff);
  return blocks;
}
