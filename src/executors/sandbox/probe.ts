/**
 * The sandbox executor's readiness checks, each answering null (fine) or what is wrong and how to fix it: platform and
 * privileges, the host tools, bubblewrap's version, user namespaces, directory permissions, and a real sandbox run.
 * probe() in index.ts runs them in this order and stops at the first problem.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';
import type { RunSpec } from '../../core/types.js';
import type { Execution } from '../executor.js';

const execFileAsync = promisify(execFile);
/** --disable-userns came with bubblewrap 0.8, --size with 0.7. */
export const MIN_BWRAP: readonly [number, number] = [0, 8];

export interface SandboxTools {
  bwrapPath: string;
  setprivPath: string;
  prlimitPath: string;
  shPath: string;
}

/** Linux on x86_64, run as root, the tools installed. */
export function hostProblem(tools: SandboxTools): string | null {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    return `the sandbox executor needs Linux on x86_64 (this is ${process.platform}/${process.arch})`;
  }
  if (process.getuid?.() !== 0) return 'the sandbox executor needs the server to run as root (it creates cgroups and drops to the sandbox uid)';
  for (const [tool, file, pkg] of [
    ['bubblewrap', tools.bwrapPath, 'bubblewrap'],
    ['setpriv', tools.setprivPath, 'util-linux'],
    ['prlimit', tools.prlimitPath, 'util-linux'],
    ['sh', tools.shPath, 'dash'],
  ] as const) {
    try {
      fs.accessSync(file, fs.constants.X_OK);
    } catch {
      return `${tool} not found at ${file}: install it (apt-get install ${pkg})`;
    }
  }
  return null;
}

/** bubblewrap's `--version` line, or why it cannot be used. */
export async function bwrapVersion(bwrapPath: string): Promise<{ version: string } | { problem: string }> {
  let version: string;
  try {
    version = (await execFileAsync(bwrapPath, ['--version'], { env: {} })).stdout.trim();
  } catch (err) {
    return { problem: `${bwrapPath} --version failed: ${(err as Error).message}` };
  }
  const m = /(\d+)\.(\d+)/.exec(version);
  if (m === null || Number(m[1]) < MIN_BWRAP[0] || (Number(m[1]) === MIN_BWRAP[0] && Number(m[2]) < MIN_BWRAP[1])) {
    return { problem: `${version} is too old: the sandbox needs bubblewrap >= ${MIN_BWRAP.join('.')} (--disable-userns, --size)` };
  }
  return { version };
}

/** Whether unprivileged user namespaces (which bwrap needs) are allowed on this host. */
export function usernsProblem(read: (file: string) => string | null = readTrimmed): string | null {
  if (read('/proc/sys/user/max_user_namespaces') === '0') {
    return 'user namespaces are disabled (user.max_user_namespaces = 0): sysctl -w user.max_user_namespaces=10000';
  }
  if (read('/proc/sys/kernel/unprivileged_userns_clone') === '0') {
    return 'unprivileged user namespaces are disabled: sysctl -w kernel.unprivileged_userns_clone=1';
  }
  if (read('/proc/sys/kernel/apparmor_restrict_unprivileged_userns') === '1') {
    return 'AppArmor restricts unprivileged user namespaces: add an AppArmor profile for bwrap allowing userns, or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0';
  }
  return null;
}

function readTrimmed(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return null;
  }
}

/** The first ancestor of `dir` (or `dir` itself) that the sandbox uid/gid cannot search, or null. */
export function unreachableBy(dir: string, uid: number, gid: number): string | null {
  let cur = path.resolve(dir);
  for (;;) {
    try {
      const st = fs.statSync(cur);
      const others = (st.mode & 0o001) !== 0;
      const owner = st.uid === uid && (st.mode & 0o100) !== 0;
      const group = st.gid === gid && (st.mode & 0o010) !== 0;
      if (!others && !owner && !group) return cur;
    } catch {
      return cur;
    }
    const up = path.dirname(cur);
    if (up === cur) return null;
    cur = up;
  }
}

/**
 * Runs `true` from `image` in a real sandbox: the only check that proves the whole chain works. Null when it exited 0
 * (or the image has no `true` to run).
 */
export async function smokeTest(
  start: (spec: RunSpec) => Promise<Execution>,
  image: string,
  rootfs: string,
): Promise<string | null> {
  const trueBin = ['/usr/bin/true', '/bin/true'].find((c) => fs.existsSync(path.join(rootfs, c)));
  if (trueBin === undefined) return null;
  const spec: RunSpec = {
    id: `probe-${randomBytes(3).toString('hex')}`,
    image,
    command: [trueBin],
    env: {},
    workdir: '/tmp',
    limits: { timeoutMs: 10_000, memoryMb: 64, cpus: 1, pids: 16, outputBytes: 65536, diskMb: 1, openFiles: 64 },
    network: 'none',
    stdin: false,
    files: [],
    labels: {},
  };
  try {
    const ex = await start(spec);
    const chunks: Buffer[] = [];
    ex.stdout.resume();
    ex.stderr.on('data', (c: Buffer) => chunks.push(c));
    const info = await ex.wait();
    await ex.disposed;
    if (info.exitCode !== 0) {
      const stderr = Buffer.concat(chunks).toString('utf8').trim().slice(0, 500);
      return `a test sandbox (${image}: ${trueBin}) exited with ${info.exitCode}${stderr ? `: ${stderr}` : ''}`;
    }
    return null;
  } catch (err) {
    return `a test sandbox (${image}: ${trueBin}) failed: ${(err as Error).message}`;
  }
}
