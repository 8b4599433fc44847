import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import {
  AUDIT_ARCH_X86_64,
  BPF_ABS,
  BPF_JEQ,
  BPF_JMP,
  BPF_K,
  BPF_LD,
  BPF_RET,
  BPF_W,
  BpfAssembler,
  CLONE_NAMESPACE_FLAGS,
  DENIED_IOCTLS,
  DENIED_SYSCALLS_X86_64,
  ENOSYS,
  EPERM,
  SECCOMP_RET_ALLOW,
  SECCOMP_RET_ERRNO,
  SECCOMP_RET_KILL_PROCESS,
  SYSCALL_CLONE,
  SYSCALL_CLONE3,
  X32_SYSCALL_BIT,
  buildSandboxFilter,
  decode,
  encode,
  simulate,
} from './seccomp.js';
import { argumentRuleVerdict } from '../shared/syscall-policy.js';
import { argumentRuleSamples } from '../shared/syscall-policy-samples.js';
import { skipOrFail } from '../test-support.js';

const AUDIT_ARCH_I386 = 0x40000003;
const AUDIT_ARCH_AARCH64 = 0xc00000b7;

describe('BPF assembler and encoder', () => {
  it('encodes struct sock_filter little-endian, 8 bytes per instruction', () => {
    const insns = new BpfAssembler().ldAbs(4).jeq(0xc000003e, 'ok').ret(0).label('ok').ret(0x7fff0000).assemble();
    assert.deepEqual(insns, [
      { code: BPF_LD | BPF_W | BPF_ABS, jt: 0, jf: 0, k: 4 },
      { code: BPF_JMP | BPF_JEQ | BPF_K, jt: 1, jf: 0, k: 0xc000003e },
      { code: BPF_RET | BPF_K, jt: 0, jf: 0, k: 0 },
      { code: BPF_RET | BPF_K, jt: 0, jf: 0, k: 0x7fff0000 },
    ]);
    assert.equal(
      encode(insns).toString('hex'),
      // code u16 LE, jt, jf, k u32 LE
      ['2000000004000000', '150001003e0000c0', '0600000000000000', '060000000000ff7f'].join(''),
    );
    assert.deepEqual(decode(encode(insns)), insns);
  });

  it('resolves jump offsets relative to the next instruction, for both branches', () => {
    const insns = new BpfAssembler()
      .ldAbs(0)
      .jeq(1, 'a', 'b') // pc 1: a at 4 -> jt 2; b at 5 -> jf 3
      .ret(10)
      .ret(11)
      .label('a')
      .ret(12)
      .label('b')
      .ret(13)
      .assemble();
    assert.equal(insns[1]!.jt, 2);
    assert.equal(insns[1]!.jf, 3);
    assert.equal(simulate(insns, { nr: 1, arch: 0 }), 12);
    assert.equal(simulate(insns, { nr: 2, arch: 0 }), 13);
  });

  it('encodes JA with a 32-bit offset in k', () => {
    const insns = new BpfAssembler().ja('end').ret(1).ret(2).label('end').ret(3).assemble();
    assert.deepEqual(insns[0], { code: BPF_JMP, jt: 0, jf: 0, k: 2 });
    assert.equal(simulate(insns, { nr: 0, arch: 0 }), 3);
  });

  it('refuses conditional jumps further than 255 instructions', () => {
    const asm = new BpfAssembler().ldAbs(0).jeq(1, 'far');
    for (let i = 0; i < 256; i++) asm.ret(i);
    asm.label('far').ret(999);
    assert.throws(() => asm.assemble(), /is 256 > 255/);
    const ok = new BpfAssembler().ldAbs(0).jeq(1, 'far');
    for (let i = 0; i < 255; i++) ok.ret(i);
    ok.label('far').ret(999);
    assert.equal(ok.assemble()[1]!.jt, 255);
  });

  it('refuses undefined, duplicate and backward labels, and programs not ending in a return', () => {
    assert.throws(() => new BpfAssembler().jeq(1, 'nowhere').ret(0).assemble(), /not defined/);
    assert.throws(() => new BpfAssembler().label('x').label('x').ret(0).assemble(), /defined twice/);
    assert.throws(() => new BpfAssembler().label('top').ret(0).ja('top').ret(1).assemble(), /backwards/);
    assert.throws(() => new BpfAssembler().ldAbs(0).assemble(), /must end with a return/);
    assert.throws(() => new BpfAssembler().assemble(), /empty/);
  });

  it('decode rejects a length that is not a multiple of 8', () => {
    assert.throws(() => decode(Buffer.alloc(12)), /multiple of 8/);
  });
});

describe('sandbox seccomp filter', () => {
  const { insns, program } = buildSandboxFilter();

  it('is a valid program the kernel would accept (size, last instruction, every jump in range)', () => {
    assert.equal(program.length, insns.length * 8);
    assert.ok(insns.length < 4096);
    assert.deepEqual(decode(program), insns);
    insns.forEach((insn, pc) => {
      if ((insn.code & 0x07) === BPF_JMP && insn.code !== BPF_JMP) {
        assert.ok(pc + 1 + insn.jt < insns.length && pc + 1 + insn.jf < insns.length, `jump at ${pc} out of program`);
      }
    });
  });

  it('kills the process for another architecture and for the x32 ABI', () => {
    assert.equal(simulate(insns, { nr: 0, arch: AUDIT_ARCH_I386 }), SECCOMP_RET_KILL_PROCESS);
    assert.equal(simulate(insns, { nr: 0, arch: AUDIT_ARCH_AARCH64 }), SECCOMP_RET_KILL_PROCESS);
    assert.equal(simulate(insns, { nr: X32_SYSCALL_BIT | 0, arch: AUDIT_ARCH_X86_64 }), SECCOMP_RET_KILL_PROCESS);
    assert.equal(simulate(insns, { nr: X32_SYSCALL_BIT | 165, arch: AUDIT_ARCH_X86_64 }), SECCOMP_RET_KILL_PROCESS);
  });

  it('answers EPERM for every denied syscall, including the ones the issue names', () => {
    const required = [
      'mount', 'umount2', 'unshare', 'setns', 'ptrace', 'keyctl', 'add_key', 'request_key', 'bpf', 'perf_event_open',
      'kexec_load', 'kexec_file_load', 'init_module', 'finit_module', 'delete_module', 'reboot', 'swapon', 'swapoff',
      'open_by_handle_at', 'userfaultfd', 'process_vm_readv', 'process_vm_writev',
    ];
    for (const name of required) assert.ok(name in DENIED_SYSCALLS_X86_64, `${name} is not denied`);
    for (const [name, nr] of Object.entries(DENIED_SYSCALLS_X86_64)) {
      assert.equal(simulate(insns, { nr, arch: AUDIT_ARCH_X86_64 }), SECCOMP_RET_ERRNO | EPERM, name);
    }
  });

  it('allows ordinary syscalls', () => {
    // read, write, openat, execve, exit_group, mmap, socket, connect, wait4, fork, vfork
    for (const nr of [0, 1, 257, 59, 231, 9, 42, 61, 57, 58]) {
      assert.equal(simulate(insns, { nr, arch: AUDIT_ARCH_X86_64 }), SECCOMP_RET_ALLOW, `syscall ${nr}`);
    }
    assert.equal(simulate(insns, { nr: 41, arch: AUDIT_ARCH_X86_64, args: [2, 1, 0] }), SECCOMP_RET_ALLOW, 'socket(AF_INET)');
  });

  it('allows clone for threads and processes, denies clone with namespace flags, answers clone3 with ENOSYS', () => {
    const CLONE_THREAD_FLAGS = 0x003d0f00; // glibc pthread_create
    const SIGCHLD = 17;
    assert.equal(simulate(insns, { nr: SYSCALL_CLONE, arch: AUDIT_ARCH_X86_64, args: [CLONE_THREAD_FLAGS] }), SECCOMP_RET_ALLOW);
    assert.equal(simulate(insns, { nr: SYSCALL_CLONE, arch: AUDIT_ARCH_X86_64, args: [SIGCHLD] }), SECCOMP_RET_ALLOW);
    for (const flag of [0x10000000 /* NEWUSER */, 0x00020000 /* NEWNS */, 0x20000000 /* NEWPID */, 0x40000000 /* NEWNET */, 0x00000080 /* NEWTIME */]) {
      assert.ok((CLONE_NAMESPACE_FLAGS & flag) !== 0);
      assert.equal(
        simulate(insns, { nr: SYSCALL_CLONE, arch: AUDIT_ARCH_X86_64, args: [SIGCHLD | flag] }),
        SECCOMP_RET_ERRNO | EPERM,
        `clone flag 0x${flag.toString(16)}`,
      );
    }
    assert.equal(simulate(insns, { nr: SYSCALL_CLONE3, arch: AUDIT_ARCH_X86_64 }), SECCOMP_RET_ERRNO | ENOSYS);
  });

  it('denies the btrfs ioctls that make subvolumes and snapshots, allows other ioctls (a disk limit must hold)', () => {
    const SYSCALL_IOCTL = 16;
    // BTRFS_IOC_SUBVOL_CREATE, _V2, BTRFS_IOC_SNAP_CREATE, _V2 (linux/btrfs.h)
    assert.deepEqual([...DENIED_IOCTLS].sort(), [0x5000940e, 0x50009418, 0x50009401, 0x50009417].sort());
    for (const request of DENIED_IOCTLS) {
      assert.equal(simulate(insns, { nr: SYSCALL_IOCTL, arch: AUDIT_ARCH_X86_64, args: [3, request] }), SECCOMP_RET_ERRNO | EPERM, `ioctl 0x${request.toString(16)}`);
      // The request is an unsigned int: high bits of the register do not change it.
      assert.equal(simulate(insns, { nr: SYSCALL_IOCTL, arch: AUDIT_ARCH_X86_64, args: [3, request], argsHigh: [0, 0xffffffff] }), SECCOMP_RET_ERRNO | EPERM);
    }
    // TCGETS, FIONREAD, FICLONE (a reflink inside one's own files), BTRFS_IOC_SNAP_DESTROY (root only without user_subvol_rm_allowed)
    for (const request of [0x5401, 0x541b, 0x40049409, 0x5000940f]) {
      assert.equal(simulate(insns, { nr: SYSCALL_IOCTL, arch: AUDIT_ARCH_X86_64, args: [3, request] }), SECCOMP_RET_ALLOW, `ioctl 0x${request.toString(16)}`);
    }
  });

  it('applies the argument rules of the shared policy (socket families, personality, RLIMIT_CORE) exactly', () => {
    let checked = 0;
    for (const { nr, args } of argumentRuleSamples()) {
      const expected = argumentRuleVerdict(nr, args);
      assert.ok(expected !== null);
      const got = simulate(insns, {
        nr,
        arch: AUDIT_ARCH_X86_64,
        args: args.map((a) => Number(a & 0xffffffffn)),
        argsHigh: args.map((a) => Number(a >> 32n)),
      });
      const want = expected.allow ? SECCOMP_RET_ALLOW : SECCOMP_RET_ERRNO | expected.errno;
      assert.equal(got, want, `syscall ${nr} args ${args.map((a) => `0x${a.toString(16)}`).join(',')}`);
      checked++;
    }
    assert.ok(checked > 500);
    assert.equal(DENIED_SYSCALLS_X86_64.modify_ldt, 154);
  });

  it('uses the kernel headers\' syscall numbers (when the headers are installed)', (t) => {
    let header: string;
    try {
      header = readFileSync('/usr/include/x86_64-linux-gnu/asm/unistd_64.h', 'utf8');
    } catch {
      t.skip(skipOrFail('sandbox', 'no /usr/include/x86_64-linux-gnu/asm/unistd_64.h (install linux-libc-dev) to cross-check numbers'));
      return;
    }
    const numbers = new Map<string, number>();
    for (const m of header.matchAll(/#define __NR_(\w+) (\d+)/g)) numbers.set(m[1]!, Number(m[2]));
    let checked = 0;
    for (const [name, nr] of [...Object.entries(DENIED_SYSCALLS_X86_64), ['clone', SYSCALL_CLONE], ['clone3', SYSCALL_CLONE3]] as const) {
      const expected = numbers.get(name);
      if (expected === undefined) continue; // newer than these headers (e.g. open_tree_attr)
      assert.equal(nr, expected, name);
      checked++;
    }
    assert.ok(checked >= 40, `only ${checked} numbers found in the header`);
  });
});
