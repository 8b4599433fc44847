/**
 * A small classic-BPF assembler and the seccomp filter of the sandbox executor.
 *
 * bwrap loads a filter from a file descriptor (`--seccomp FD`): an array of `struct sock_filter`
 * (u16 code, u8 jt, u8 jf, u32 k; host byte order, little-endian on x86_64), 8 bytes each. This module builds that
 * array without libseccomp: an assembler with named labels (jump offsets are resolved and range-checked), an encoder,
 * a decoder and a tiny interpreter (`simulate`) the tests use to check the program's meaning, not only its bytes.
 */

/* Instruction classes and fields (linux/filter.h, linux/bpf_common.h). */
export const BPF_LD = 0x00;
export const BPF_JMP = 0x05;
export const BPF_RET = 0x06;
export const BPF_W = 0x00;
export const BPF_ABS = 0x20;
export const BPF_K = 0x00;
export const BPF_JA = 0x00;
export const BPF_JEQ = 0x10;
export const BPF_JGT = 0x20;
export const BPF_JGE = 0x30;
export const BPF_JSET = 0x40;
/** The kernel refuses longer programs (BPF_MAXINSNS). */
export const BPF_MAXINSNS = 4096;

/* seccomp return actions (linux/seccomp.h). */
export const SECCOMP_RET_KILL_PROCESS = 0x80000000;
export const SECCOMP_RET_KILL_THREAD = 0x00000000;
export const SECCOMP_RET_TRAP = 0x00030000;
export const SECCOMP_RET_ERRNO = 0x00050000;
export const SECCOMP_RET_ALLOW = 0x7fff0000;
export const SECCOMP_RET_ACTION_FULL = 0xffff0000;
export const SECCOMP_RET_DATA = 0x0000ffff;

/* struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; } */
export const SECCOMP_DATA_NR = 0;
export const SECCOMP_DATA_ARCH = 4;
export const SECCOMP_DATA_IP = 8;
/** Offset of the low 32 bits of args[i] (little-endian). */
export const seccompDataArgLow = (i: number): number => 16 + 8 * i;
/** Offset of the high 32 bits of args[i]. */
export const seccompDataArgHigh = (i: number): number => 20 + 8 * i;

export const AUDIT_ARCH_X86_64 = 0xc000003e;
/** x32 ABI syscalls arrive on x86_64 with this bit set in `nr`. */
export const X32_SYSCALL_BIT = 0x40000000;

export const EPERM = 1;
export const ENOSYS = 38;

/** One `struct sock_filter`. */
export interface Insn {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

/** A jump target: a label name, or `null` for "the next instruction" (offset 0). */
export type Target = string | null;

type Item =
  | { kind: 'label'; name: string }
  | { kind: 'insn'; code: number; k: number; jt?: Target; jf?: Target; ja?: string };

/**
 * Classic BPF assembler with forward labels. Conditional jumps take a true and a false target; each resolves to an
 * offset relative to the next instruction, which must fit in 8 bits (0..255), else `assemble()` throws rather than
 * emitting a wrong program. Labels may only be jumped to forwards (classic BPF has no backward jumps).
 */
export class BpfAssembler {
  private readonly items: Item[] = [];

  label(name: string): this {
    this.items.push({ kind: 'label', name });
    return this;
  }

  /** A <- u32 at `offset` of seccomp_data. */
  ldAbs(offset: number): this {
    return this.insn(BPF_LD | BPF_W | BPF_ABS, offset);
  }

  jeq(k: number, jt: Target, jf: Target = null): this {
    return this.jump(BPF_JEQ, k, jt, jf);
  }

  jgt(k: number, jt: Target, jf: Target = null): this {
    return this.jump(BPF_JGT, k, jt, jf);
  }

  jge(k: number, jt: Target, jf: Target = null): this {
    return this.jump(BPF_JGE, k, jt, jf);
  }

  /** Jumps to `jt` when `A & k` is non-zero. */
  jset(k: number, jt: Target, jf: Target = null): this {
    return this.jump(BPF_JSET, k, jt, jf);
  }

  /** Unconditional jump (32-bit offset). */
  ja(target: string): this {
    this.items.push({ kind: 'insn', code: BPF_JMP | BPF_JA, k: 0, ja: target });
    return this;
  }

  ret(k: number): this {
    return this.insn(BPF_RET | BPF_K, k);
  }

  assemble(): Insn[] {
    const labels = new Map<string, number>();
    let pc = 0;
    for (const item of this.items) {
      if (item.kind === 'label') {
        if (labels.has(item.name)) throw new Error(`BPF label "${item.name}" defined twice`);
        labels.set(item.name, pc);
      } else {
        pc++;
      }
    }
    if (pc === 0) throw new Error('BPF program is empty');
    if (pc > BPF_MAXINSNS) throw new Error(`BPF program has ${pc} instructions, the kernel allows ${BPF_MAXINSNS}`);

    const out: Insn[] = [];
    for (const item of this.items) {
      if (item.kind === 'label') continue;
      const at = out.length;
      const resolve = (target: Target | undefined, max: number): number => {
        if (target === null || target === undefined) return 0;
        const dest = labels.get(target);
        if (dest === undefined) throw new Error(`BPF label "${target}" is not defined`);
        const offset = dest - (at + 1);
        if (offset < 0) throw new Error(`BPF jump from ${at} to "${target}" (${dest}) goes backwards`);
        if (offset > max) throw new Error(`BPF jump from ${at} to "${target}" is ${offset} > ${max} instructions`);
        return offset;
      };
      if (item.ja !== undefined) {
        out.push({ code: item.code, jt: 0, jf: 0, k: resolve(item.ja, 0xffffffff) });
      } else {
        out.push({ code: item.code, jt: resolve(item.jt, 255), jf: resolve(item.jf, 255), k: item.k >>> 0 });
      }
    }
    const last = out[out.length - 1];
    if (last === undefined || (last.code & 0x07) !== BPF_RET) throw new Error('BPF program must end with a return');
    return out;
  }

  private insn(code: number, k: number): this {
    this.items.push({ kind: 'insn', code, k });
    return this;
  }

  private jump(op: number, k: number, jt: Target, jf: Target): this {
    this.items.push({ kind: 'insn', code: BPF_JMP | op | BPF_K, k, jt, jf });
    return this;
  }
}

/** Encodes instructions as the kernel's `struct sock_filter` array (little-endian). */
export function encode(insns: readonly Insn[]): Buffer {
  const buf = Buffer.alloc(insns.length * 8);
  insns.forEach((insn, i) => {
    buf.writeUInt16LE(insn.code, i * 8);
    buf.writeUInt8(insn.jt, i * 8 + 2);
    buf.writeUInt8(insn.jf, i * 8 + 3);
    buf.writeUInt32LE(insn.k >>> 0, i * 8 + 4);
  });
  return buf;
}

export function decode(buf: Buffer): Insn[] {
  if (buf.length % 8 !== 0) throw new Error(`a BPF program is a multiple of 8 bytes, got ${buf.length}`);
  const out: Insn[] = [];
  for (let off = 0; off < buf.length; off += 8) {
    out.push({
      code: buf.readUInt16LE(off),
      jt: buf.readUInt8(off + 2),
      jf: buf.readUInt8(off + 3),
      k: buf.readUInt32LE(off + 4),
    });
  }
  return out;
}

/** What a syscall looks like to a filter. `args` are the low 32 bits of each argument, `argsHigh` the high ones. */
export interface SeccompData {
  nr: number;
  arch: number;
  args?: number[];
  argsHigh?: number[];
}

/**
 * Runs a program the way the kernel would for one syscall and returns the action value. Supports the subset this
 * module emits (LD W ABS, JEQ/JGT/JGE/JSET K, JA, RET K) and throws on anything else or on falling off the end.
 */
export function simulate(insns: readonly Insn[], data: SeccompData): number {
  const word = (offset: number): number => {
    if (offset === SECCOMP_DATA_NR) return data.nr >>> 0;
    if (offset === SECCOMP_DATA_ARCH) return data.arch >>> 0;
    if (offset >= 16 && offset < 64 && (offset - 16) % 8 === 0) return (data.args?.[(offset - 16) / 8] ?? 0) >>> 0;
    if (offset >= 16 && offset < 64 && (offset - 20) % 8 === 0) return (data.argsHigh?.[(offset - 20) / 8] ?? 0) >>> 0;
    if (offset >= 8 && offset < 64 && offset % 4 === 0) return 0;
    throw new Error(`load from offset ${offset} outside seccomp_data`);
  };
  let a = 0;
  let pc = 0;
  for (let steps = 0; steps <= insns.length; steps++) {
    const insn = insns[pc];
    if (insn === undefined) throw new Error(`BPF program fell off the end at ${pc}`);
    switch (insn.code) {
      case BPF_LD | BPF_W | BPF_ABS:
        a = word(insn.k);
        pc++;
        break;
      case BPF_JMP | BPF_JA:
        pc += 1 + insn.k;
        break;
      case BPF_JMP | BPF_JEQ | BPF_K:
        pc += 1 + (a === insn.k >>> 0 ? insn.jt : insn.jf);
        break;
      case BPF_JMP | BPF_JGT | BPF_K:
        pc += 1 + (a > insn.k >>> 0 ? insn.jt : insn.jf);
        break;
      case BPF_JMP | BPF_JGE | BPF_K:
        pc += 1 + (a >= insn.k >>> 0 ? insn.jt : insn.jf);
        break;
      case BPF_JMP | BPF_JSET | BPF_K:
        pc += 1 + ((a & insn.k) >>> 0 !== 0 ? insn.jt : insn.jf);
        break;
      case BPF_RET | BPF_K:
        return insn.k >>> 0;
      default:
        throw new Error(`unsupported BPF opcode 0x${insn.code.toString(16)} at ${pc}`);
    }
  }
  throw new Error('BPF program did not terminate');
}

// The syscall policy is shared with the Docker executor's seccomp profile (docker/seccomp-profile.ts).
import {
  AF_NETLINK,
  ALLOWED_PERSONALITIES,
  ALLOWED_SOCKET_FAMILIES,
  CLONE_NAMESPACE_FLAGS,
  DENIED_SYSCALLS_X86_64,
  EAFNOSUPPORT,
  NETLINK_ROUTE,
  RLIMIT_CORE,
  SYSCALL_CLONE,
  SYSCALL_CLONE3,
  SYSCALL_PERSONALITY,
  SYSCALL_PRLIMIT64,
  SYSCALL_SETRLIMIT,
  SYSCALL_SOCKET,
  SYSCALL_SOCKETPAIR,
} from '../shared/syscall-policy.js';
export { CLONE_NAMESPACE_FLAGS, DENIED_SYSCALLS_X86_64, SYSCALL_CLONE, SYSCALL_CLONE3 };

export const SYSCALL_IOCTL = 16;
/**
 * btrfs ioctls that make a subvolume or a snapshot (BTRFS_IOC_SUBVOL_CREATE(_V2), BTRFS_IOC_SNAP_CREATE(_V2)), which
 * an unprivileged process may call in a directory it can write: a subvolume made inside a persistent sandbox's own
 * would not count against that sandbox's qgroup limit (storage-btrfs.ts), so its disk limit would not hold.
 */
export const DENIED_IOCTLS: readonly number[] = [0x5000940e, 0x50009418, 0x50009401, 0x50009417];

export interface SandboxFilterOptions {
  /** Extra syscall numbers to deny with EPERM. */
  extraDenied?: readonly number[];
}

/**
 * The sandbox filter:
 *  1. arch != x86_64 -> kill the process (no i386 or other-ABI entry points);
 *  2. nr has the x32 bit -> kill the process;
 *  3. each denied syscall -> EPERM; clone with any namespace flag -> EPERM; clone3 -> ENOSYS (its flags live in
 *     user memory, which BPF cannot read; libc then falls back to clone, which is checked);
 *  4. the argument rules of shared/syscall-policy.ts: socket/socketpair of a family not allowed -> EAFNOSUPPORT;
 *     personality other than the harmless values -> EPERM; setting RLIMIT_CORE (setrlimit, prlimit64 with a new
 *     limit) -> EPERM;
 *  5. ioctl with a request of DENIED_IOCTLS -> EPERM (the request is an unsigned int: the low 32 bits of args[1]);
 *  6. everything else -> allow.
 */
export function buildSandboxFilter(options: SandboxFilterOptions = {}): { insns: Insn[]; program: Buffer } {
  const denied = [...new Set([...Object.values(DENIED_SYSCALLS_X86_64), ...(options.extraDenied ?? [])])].sort(
    (a, b) => a - b,
  );
  const asm = new BpfAssembler();
  asm.ldAbs(SECCOMP_DATA_ARCH).jeq(AUDIT_ARCH_X86_64, 'arch_ok').ret(SECCOMP_RET_KILL_PROCESS).label('arch_ok');
  asm.ldAbs(SECCOMP_DATA_NR).jge(X32_SYSCALL_BIT, null, 'abi_ok').ret(SECCOMP_RET_KILL_PROCESS).label('abi_ok');
  // Denied syscalls jump to a shared EPERM return; kept in chunks so no jump exceeds 255 instructions.
  const chunk = 200;
  for (let i = 0; i < denied.length; i += chunk) {
    const label = `eperm${i}`;
    for (const nr of denied.slice(i, i + chunk)) asm.jeq(nr, label);
    asm.ja(`after${i}`).label(label).ret(SECCOMP_RET_ERRNO | EPERM).label(`after${i}`);
  }
  asm.jeq(SYSCALL_SOCKET, 'socket').jeq(SYSCALL_SOCKETPAIR, 'socket');
  asm.jeq(SYSCALL_PERSONALITY, 'personality');
  asm.jeq(SYSCALL_SETRLIMIT, 'setrlimit').jeq(SYSCALL_PRLIMIT64, 'prlimit64');
  asm.jeq(SYSCALL_IOCTL, 'ioctl');
  asm.jeq(SYSCALL_CLONE3, 'enosys');
  asm.jeq(SYSCALL_CLONE, null, 'allow');
  asm.ldAbs(seccompDataArgLow(0)).jset(CLONE_NAMESPACE_FLAGS, 'eperm', 'allow');

  // socket(domain, type, protocol) / socketpair(domain, type, protocol, sv)
  asm.label('socket').ldAbs(seccompDataArgLow(0));
  for (const family of ALLOWED_SOCKET_FAMILIES) asm.jeq(family, 'allow');
  asm.jeq(AF_NETLINK, null, 'eafnosupport');
  asm.ldAbs(seccompDataArgLow(2)).jeq(NETLINK_ROUTE, 'allow', 'eafnosupport');
  // personality(persona)
  asm.label('personality').ldAbs(seccompDataArgLow(0));
  for (const persona of ALLOWED_PERSONALITIES) asm.jeq(persona, 'allow');
  asm.ja('eperm');
  // setrlimit(resource, rlim)
  asm.label('setrlimit').ldAbs(seccompDataArgLow(0)).jeq(RLIMIT_CORE, 'eperm', 'allow');
  // prlimit64(pid, resource, new_limit, old_limit): only a non-NULL new_limit (both halves of the pointer) changes it.
  asm.label('prlimit64').ldAbs(seccompDataArgLow(1)).jeq(RLIMIT_CORE, null, 'allow');
  asm.ldAbs(seccompDataArgLow(2)).jeq(0, null, 'eperm');
  asm.ldAbs(seccompDataArgHigh(2)).jeq(0, 'allow', 'eperm');

  // ioctl(fd, request, arg)
  asm.label('ioctl').ldAbs(seccompDataArgLow(1));
  for (const request of DENIED_IOCTLS) asm.jeq(request, 'eperm');
  asm.ja('allow');

  asm.label('allow').ret(SECCOMP_RET_ALLOW);
  asm.label('eperm').ret(SECCOMP_RET_ERRNO | EPERM);
  asm.label('eafnosupport').ret(SECCOMP_RET_ERRNO | EAFNOSUPPORT);
  asm.label('enosys').ret(SECCOMP_RET_ERRNO | ENOSYS);
  const insns = asm.assemble();
  return { insns, program: encode(insns) };
}
