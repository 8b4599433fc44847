/**
 * What an execution hands the launcher, built from the spec alone: bwrap's options, the command, and the one shell
 * line the launcher runs. Pure functions (no I/O, no clock), so the argv of every kind of sandbox is asserted by unit
 * tests (bwrap-args.test.ts) without running one.
 */
import { KindlingError } from '../../core/errors.js';
import type { RunSpec } from '../../core/types.js';
import { AGENT_MOUNT } from '../../../agent/files.js';
import { shellQuote } from '../shared/process.js';
import type { WorkdirPlan } from './rootfs.js';
import { passesThrough, type CommandLookup } from './image-commands.js';

/** Descriptors of the launcher (see launcher.ts): the seccomp program, bwrap's JSON status, the command line. */
export const FD_SECCOMP = 3;
export const FD_STATUS = 4;
export const FD_SCRIPT = 5;
/**
 * bwrap reads its arguments (NUL-separated) from this descriptor (`--args`): they hold the execution's environment
 * values and host paths, and a process's argv is readable by every user of the host (/proc/PID/cmdline, `ps`), environ
 * is not. bwrap's argv is then `bwrap --args 7 -- <command>` (bwrap takes only options from the descriptor), which is
 * also what /proc/1/cmdline shows inside the sandbox (bwrap's init).
 */
export const FD_ARGS = 7;
/**
 * The command is exec'd by the image's sh so that a missing or non-executable command ends as exit 127/126 with the
 * shell's message on stderr, as in Docker, instead of bwrap's exit 1; unless it is an executable of the image found
 * before the sandbox starts (image-commands.ts).
 */
export const EXEC_SHIM = 'exec "$@"';
/** Where native/kindling-supervisor is bound inside a persistent sandbox (read-only; see persistent.ts). */
export const SUPERVISOR_MOUNT = '/.kindling-supervisor';

/** The image's side of the arguments: its read-only binds and its shell (null: the image has none, no shim). */
export interface ImageBinds {
  bindArgs: string[];
  shell: string | null;
  /**
   * The image's root with every mount point a sandbox may need (private-mounts.ts), bound at `/` in one mount instead
   * of `bindArgs`; only when each of the execution's mount targets is there (`mountTargets`, RunDirs.rootHas).
   */
  root?: string;
}

/** Where a sandbox mounts something on the image's root: `source` is a bind's host path (null: a directory is mounted). */
export interface MountTarget {
  target: string;
  source: string | null;
}

/**
 * The mounts an execution makes on the image's root itself (one inside another mount, such as a work dir under /tmp,
 * is made in that mount and is left out): each needs its mount point in a root bound whole.
 */
export function mountTargets(spec: RunSpec, plan: WorkdirPlan): MountTarget[] {
  const targets: MountTarget[] = [
    { target: '/proc', source: null },
    { target: '/dev', source: null },
    { target: '/.kindling', source: null },
    ...(spec.rwBinds ?? []).map((b) => ({ target: b.target, source: b.source })),
    ...(spec.roBinds ?? []).map((b) => ({ target: b.target, source: b.source })),
  ];
  if (!targets.some((t) => t.target === '/tmp')) targets.push({ target: '/tmp', source: null });
  if (plan.kind === 'tmpfs' && !targets.some((t) => t.target === spec.workdir)) targets.push({ target: spec.workdir, source: null });
  if (spec.agentDir !== undefined) targets.push({ target: AGENT_MOUNT, source: null });
  return targets.filter((t) => !targets.some((outer) => outer !== t && t.target.startsWith(`${outer.target}/`)));
}

export interface BwrapArgs {
  /** bwrap's options, sent NUL-separated on FD_ARGS (they name host paths and carry the env values). */
  options: string[];
  /** The command (bwrap's argv after `--`): what the sandbox's processes show in their own argv anyway. */
  command: string[];
}

/** Top-level paths every sandbox mounts over the image (or has nothing of the image at). */
const SANDBOX_MOUNTS = ['/proc', '/dev', '/sys', '/tmp', '/.kindling'];

/**
 * bwrap's options and command for one execution. `runDir` is the host directory bound read-only at /.kindling (null:
 * an empty read-only /.kindling instead). `lookup`: where the command was found in the image (null: not looked up).
 */
export function bwrapArgs(spec: RunSpec, hostname: string, image: ImageBinds, plan: WorkdirPlan, runDir: string | null, lookup: CommandLookup | null = null): BwrapArgs {
  const diskBytes = String(Math.round(spec.limits.diskMb * 1024 * 1024));
  /** A tmpfs of diskMb at `target`, its root directory with mode `perms`. */
  const tmpfs = (perms: string, target: string): string[] => ['--perms', perms, '--size', diskBytes, '--tmpfs', target];
  const a: string[] = [
    '--unshare-all',
    // egress: stay in the per-execution network namespace the launcher joined (veth + filtered NAT).
    ...(spec.network === 'egress' ? ['--share-net'] : []),
    '--unshare-user',
    '--unshare-cgroup',
    '--disable-userns',
    '--die-with-parent',
    '--new-session',
    '--cap-drop',
    'ALL',
    '--hostname',
    hostname,
    ...(image.root === undefined ? image.bindArgs : ['--ro-bind', image.root, '/']),
    '--proc',
    '/proc',
    '--dev',
    '/dev',
    ...tmpfs('01777', '/dev/shm'),
    '--remount-ro',
    '/dev',
  ];
  const binds = spec.rwBinds ?? [];
  const roBinds = spec.roBinds ?? [];
  const bound = (target: string): boolean => binds.some((b) => b.target === target) || roBinds.some((b) => b.target === target);
  if (!bound('/tmp')) a.push(...tmpfs('01777', '/tmp'));
  for (const b of binds) a.push('--bind', b.source, b.target);
  // A function's bundle: shared by every sandbox of its content, never written (bwrap makes the bind read-only).
  for (const b of roBinds) a.push('--ro-bind', b.source, b.target);
  // A bound work dir (a persistent sandbox's disk) needs neither a tmpfs nor a directory made for it.
  if (!bound(spec.workdir)) {
    if (plan.kind === 'tmpfs') a.push(...tmpfs('0755', spec.workdir));
    else if (plan.kind === 'in-tmp' && spec.workdir !== '/tmp') a.push('--dir', spec.workdir);
  }
  if (runDir !== null) a.push('--ro-bind', runDir, '/.kindling');
  else a.push('--perms', '0555', '--dir', '/.kindling');
  if (spec.agentDir !== undefined) a.push('--ro-bind', spec.agentDir, AGENT_MOUNT);
  // A root bound whole is read-only already; bwrap's own root (a tmpfs holding the image's entries) is made so here.
  if (image.root === undefined) a.push('--remount-ro', '/');
  a.push('--chdir', spec.workdir, '--clearenv');
  for (const [k, v] of Object.entries(spec.env)) a.push('--setenv', k, v);
  // A command that is the image's shell itself, or the supervisor the executor bound in, exists: no shim, one exec less.
  const known = spec.command[0] === image.shell || (spec.command[0] === SUPERVISOR_MOUNT && roBinds.some((b) => b.target === SUPERVISOR_MOUNT));
  const mounts = [...SANDBOX_MOUNTS, ...binds.map((b) => b.target), ...roBinds.map((b) => b.target), ...(plan.kind === 'root' ? [] : [spec.workdir])];
  if (spec.agentDir !== undefined) mounts.push(AGENT_MOUNT);
  const found = lookup !== null && lookup.direct && !passesThrough(lookup, mounts);
  const shim = known || found ? null : image.shell;
  // The shim's sh exports PWD, the work dir (a PWD of the caller's that names another directory it replaces): a
  // command exec'd without it gets the same environment.
  if (image.shell !== null && found && !known) a.push('--setenv', 'PWD', spec.workdir);
  a.push('--seccomp', String(FD_SECCOMP), '--json-status-fd', String(FD_STATUS));
  const command: string[] = [];
  if (shim !== null) command.push(shim, '-c', EXEC_SHIM, spec.command[0]!);
  command.push(...spec.command);
  return { options: a, command };
}

/** bwrap's options as its `--args` descriptor wants them: each followed by a NUL. */
export function encodeArgs(options: readonly string[]): Buffer {
  return Buffer.from(options.map((a) => `${a}\0`).join(''), 'utf8');
}

/**
 * The line the launcher's unprivileged shell runs: RLIMIT_NOFILE (soft and hard: the sandbox cannot raise it again)
 * set by the shell and inherited through bwrap's execs into every process of the sandbox, then bwrap with its
 * arguments on FD_ARGS; stdin is the caller's (fd 6) or /dev/null.
 */
export function launchLine(bwrapPath: string, command: readonly string[], openFiles: number, stdin: boolean): string {
  return `ulimit -n ${Math.floor(openFiles)} || exit 125\nexec ${shellQuote(bwrapPath)} --args ${FD_ARGS} -- ${command.map(shellQuote).join(' ')} ${stdin ? '0<&6' : '0</dev/null'} 6<&-\n`;
}

/**
 * The same for the native launcher (native/kindling-launch.c), which reads fields instead of a shell line:
 * `OPEN_FILES\0STDIN(0|1)\0ARGC\0ARG0\0...ARGN\0`, ARG0 bwrap with its arguments on FD_ARGS. The spec's checks
 * (validateSpec) keep NULs out of every argument.
 */
export function launchRecord(bwrapPath: string, command: readonly string[], openFiles: number, stdin: boolean): string {
  const argv = [bwrapPath, '--args', String(FD_ARGS), '--', ...command];
  return [String(Math.floor(openFiles)), stdin ? '1' : '0', String(argv.length), ...argv].map((field) => `${field}\0`).join('');
}

/** The checks the arguments above rely on (no NUL in argv or env, plain file names, positive limits). */
export function validateSpec(spec: RunSpec): void {
  const fail = (field: string, message: string): never => {
    throw new KindlingError('VALIDATION_FAILED', message, { details: { field, executor: 'sandbox' } });
  };
  if (spec.command.length === 0) fail('command', 'command must not be empty');
  for (const arg of spec.command) if (arg.includes('\0')) fail('command', 'command arguments must not contain NUL');
  for (const [k, v] of Object.entries(spec.env)) {
    if (k === '' || k.includes('=') || k.includes('\0') || v.includes('\0')) {
      fail('env', `env name "${k}" must be non-empty without "=" or NUL, and values without NUL`);
    }
  }
  const seen = new Set<string>();
  for (const f of spec.files) {
    if (!/^[A-Za-z0-9_.-]+$/.test(f.name) || f.name === '.' || f.name === '..' || seen.has(f.name)) {
      fail('files', `file name "${f.name}" must be unique, without slashes, made of [A-Za-z0-9_.-]`);
    }
    seen.add(f.name);
  }
  const l = spec.limits;
  if (!(l.memoryMb > 0 && l.cpus > 0 && l.pids > 0 && l.diskMb > 0 && l.timeoutMs > 0 && Number.isInteger(l.openFiles) && l.openFiles >= 16)) {
    fail('limits', 'memoryMb, cpus, pids, diskMb and timeoutMs must be positive, openFiles a whole number >= 16');
  }
}
