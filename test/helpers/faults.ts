/**
 * Helpers of the fault tests: a server in a child process (so that it can be SIGKILLed), and an inventory of what a
 * server of one data dir holds on this machine (containers, cgroups, mounts, processes, run dirs).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type Docker from 'dockerode';
import { LABEL_OWNER } from '../../src/executors/executor.js';
import { IMAGES_DIR } from './server.js';

const CLI = new URL('../../../bin/kindling.js', import.meta.url).pathname;

export interface ServerProcess {
  child: ChildProcess;
  url: string;
  /** Parsed JSON log lines of the server so far. */
  logs: Record<string, unknown>[];
}

/** Starts `kindling serve` in a child process on a free port; resolves once it listens. */
export async function startServerProcess(dataDir: string, args: string[]): Promise<ServerProcess> {
  const child = spawn(process.execPath, [CLI, 'serve', '--port', '0', '--data-dir', dataDir, '--images-dir', IMAGES_DIR, '--log-level', 'info', ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const logs: Record<string, unknown>[] = [];
  const url = await new Promise<string>((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    lines.on('line', (line) => {
      let entry: Record<string, unknown>;
      try {
        entry = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      logs.push(entry);
      if (entry.msg === 'Kindling is listening' && typeof entry.url === 'string') resolve(entry.url);
    });
    child.once('exit', (code, signal) => reject(new Error(`the server exited (${code ?? signal}) before listening`)));
  });
  return { child, url, logs };
}

export async function stopProcess(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill(signal);
  await exited;
}

/** Every process of the machine: pid, parent pid, command line, cgroup lines. */
export function processes(): { pid: number; ppid: number; cmdline: string; cgroup: string }[] {
  const out: { pid: number; ppid: number; cmdline: string; cgroup: string }[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // The command name may contain spaces and parentheses: the fields after the last ')' are fixed.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').join(' ').trim();
      const cgroup = readFileSync(`/proc/${entry}/cgroup`, 'utf8');
      out.push({ pid: Number(entry), ppid, cmdline, cgroup });
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

/** Sandbox cgroups of an owner in every hierarchy (v1 controllers and the unified one): `kindling/<owner>/<name>`. */
export function sandboxCgroups(ownerId: string): string[] {
  const found: string[] = [];
  const roots = ['/sys/fs/cgroup', ...readdirSync('/sys/fs/cgroup').map((name) => join('/sys/fs/cgroup', name))];
  for (const root of roots) {
    const dir = join(root, 'kindling', ownerId);
    if (!existsSync(dir)) continue;
    // Not `.freeze-pin`: the driver's always-empty frozen cgroup (src/executors/shared/cgroups.ts), no sandbox's.
    for (const entry of readdirSync(dir, { withFileTypes: true })) if (entry.isDirectory() && !entry.name.startsWith('.')) found.push(join(dir, entry.name));
  }
  return found;
}

export interface Leftovers {
  containers: string[];
  cgroups: string[];
  mounts: string[];
  processes: string[];
  runDirs: string[];
}

/**
 * What belongs to the server of `dataDir` (owner `ownerId`) apart from the server process itself: containers with its
 * owner label, sandbox cgroups, mounts under the data dir, processes in its cgroups or naming its data dir (bwrap,
 * setpriv, agents, qemu), and run dirs (sandbox runs and agents, docker slots and agents, microvm).
 */
export async function leftovers(docker: Docker, ownerId: string, dataDir: string, serverPids: number[] = []): Promise<Leftovers> {
  const containers = (await docker.listContainers({ all: true, filters: JSON.stringify({ label: [`${LABEL_OWNER}=${ownerId}`] }) })).map(
    (info) => `${info.Id.slice(0, 12)} ${info.State} ${info.Labels['dev.kindling.run-dir'] ?? ''}`,
  );
  // A live server's sandbox executor keeps its private mounts (a tmpfs for run dirs, an overlay per image) under
  // run/sandbox/ until it stops; a dead one's are detached by its successor's reaper (checked once no server runs).
  // Likewise the file system of persistent sandboxes on btrfs (run/sandbox-storage/OWNER/fs), unmounted at its stop.
  const privateMounts = [join(dataDir, 'run', 'sandbox') + '/', join(dataDir, 'run', 'sandbox-storage') + '/'];
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter((line) => line.split(' ')[4]?.startsWith(dataDir))
    .filter((line) => serverPids.length === 0 || !privateMounts.some((dir) => line.split(' ')[4]!.startsWith(dir)));
  const all = processes();
  // A live server's own sandboxes (its children and their descendants) are not leftovers.
  const parentOf = new Map(all.map((p) => [p.pid, p.ppid]));
  const descendsFromServer = (pid: number): boolean => {
    for (let at: number | undefined = pid, hops = 0; at !== undefined && at > 1 && hops < 64; at = parentOf.get(at), hops++) {
      if (serverPids.includes(at)) return true;
    }
    return false;
  };
  const ours = (p: { pid: number; cmdline: string; cgroup: string }): boolean => {
    if (descendsFromServer(p.pid) || p.pid === process.pid) return false;
    if (p.cgroup.includes(`/kindling/${ownerId}/`)) return true;
    if (p.cmdline.includes(dataDir)) return true;
    try {
      return readlinkSync(`/proc/${p.pid}/cwd`).startsWith(dataDir);
    } catch {
      return false;
    }
  };
  const procs = all
    .filter(ours)
    .map((p) => `${p.pid} (parent ${p.ppid}) ${p.cmdline.slice(0, 160)}`);
  const runDirs: string[] = [];
  // (microvm/snapshots are kept on purpose: they are reused by the next start of this data dir.)
  // The sandbox executor's run and agent dirs are in a private mount dir per executor instance.
  const sandboxInstances = existsSync(join(dataDir, 'run', 'sandbox')) ? readdirSync(join(dataDir, 'run', 'sandbox')) : [];
  const sandboxSubs = sandboxInstances.flatMap((instance) => [`sandbox/${instance}/runs`, `sandbox/${instance}/agents`]);
  for (const sub of [...sandboxSubs, 'docker', 'docker-agents', 'microvm/vms']) {
    const dir = join(dataDir, 'run', sub);
    if (!existsSync(dir)) continue;
    for (const entry of readdirSync(dir)) runDirs.push(join(sub, entry));
  }
  // A cgroup of a live server holds that server's processes; one of a dead server is empty or holds orphans. With no
  // live server every cgroup counts.
  const cgroups = sandboxCgroups(ownerId).filter((dir) => {
    if (serverPids.length === 0) return true;
    const pids = readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
    return pids.length === 0 || pids.some((pid) => !descendsFromServer(pid));
  });
  return { containers, cgroups, mounts, processes: procs, runDirs };
}

export const nothingLeft = (l: Leftovers): boolean => Object.values(l).every((list: string[]) => list.length === 0);
