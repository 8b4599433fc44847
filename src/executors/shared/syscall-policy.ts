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
};

export const SYSCALL_CLONE = 56;
export const SYSCALL_CLONE3 = 435;
/** CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME. */
export const CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00000080;

