/**
 * Reads what a bench server's sandboxes cost the machine, from outside: the cgroups the server made for them
 * (`<mount>[/memory]/kindling/<ownerId>/<name>`, v1 or v2), the processes in each (PSS/USS from smaps_rollup), the
 * cgroup's own memory and CPU counters, and machine-wide counts (pids, fds). Read-only; nothing here changes a cgroup.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const MOUNT = '/sys/fs/cgroup';
const isV2 = (): boolean => existsSync(join(MOUNT, 'cgroup.controllers'));

/** The directory of one of the owner's cgroups for a controller (v1) or the unified one (v2). */
function dirOf(ownerId: string, controller: 'memory' | 'cpuacct', name = ''): string {
  return isV2() ? join(MOUNT, 'kindling', ownerId, name) : join(MOUNT, controller, 'kindling', ownerId, name);
}

function readText(file: string): string | null {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return null;
  }
}

/** Names of the owner's cgroups that exist now. */
export function ownerCgroups(ownerId: string): string[] {
  try {
    return readdirSync(dirOf(ownerId, 'memory'), { withFileTypes: true }).filter((entry) => entry.isDirectory()).map((entry) => entry.name);
  } catch {
    return [];
  }
}

export function cgroupPids(ownerId: string, name: string): number[] {
  return (readText(join(dirOf(ownerId, 'memory', name), 'cgroup.procs')) ?? '').split('\n').filter(Boolean).map(Number);
}

/** Charged memory now: v2 memory.current, v1 memory.usage_in_bytes (null: the cgroup is gone). */
export function cgroupMemoryBytes(ownerId: string, name: string): number | null {
  const text = readText(join(dirOf(ownerId, 'memory', name), isV2() ? 'memory.current' : 'memory.usage_in_bytes'));
  return text === null ? null : Number(text.trim());
}

/** CPU time used so far in microseconds: v2 cpu.stat usage_usec, v1 cpuacct.usage / 1000. */
export function cgroupCpuUsec(ownerId: string, name: string): number | null {
  if (isV2()) {
    const match = /^usage_usec (\d+)$/m.exec(readText(join(dirOf(ownerId, 'memory', name), 'cpu.stat')) ?? '');
    return match ? Number(match[1]) : null;
  }
  const text = readText(join(dirOf(ownerId, 'cpuacct', name), 'cpuacct.usage'));
  return text === null ? null : Number(text.trim()) / 1000;
}

/** One process's command line, NULs as spaces ('' when it has exited). */
export function cmdline(pid: number): string {
  return (readText(`/proc/${pid}/cmdline`) ?? '').replace(/\0/g, ' ').trim();
}

export interface ProcMemory {
  pssKiB: number;
  /** Unique set size: pages only this process maps (Private_Clean + Private_Dirty). */
  ussKiB: number;
  rssKiB: number;
}

/** smaps_rollup of one process (zeros when it has exited). */
export function smapsRollup(pid: number): ProcMemory {
  const text = readText(`/proc/${pid}/smaps_rollup`) ?? '';
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0);
  return { pssKiB: field('Pss'), ussKiB: field('Private_Clean') + field('Private_Dirty'), rssKiB: field('Rss') };
}

/** The sum over every process in the cgroup (bwrap's monitor, the sandbox's init, the runtime). */
export function cgroupProcMemory(ownerId: string, name: string): ProcMemory & { pids: number } {
  const pids = cgroupPids(ownerId, name);
  const sum = { pssKiB: 0, ussKiB: 0, rssKiB: 0, pids: pids.length };
  for (const pid of pids) {
    const memory = smapsRollup(pid);
    sum.pssKiB += memory.pssKiB;
    sum.ussKiB += memory.ussKiB;
    sum.rssKiB += memory.rssKiB;
  }
  return sum;
}

/** A field of /proc/PID/status in KiB (VmRSS, VmHWM); NaN when the process is gone. */
export function statusKiB(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  return Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readText(`/proc/${pid}/status`) ?? '')?.[1] ?? Number.NaN);
}

export interface MachineCounts {
  /** Processes on the machine (all of /proc's numeric entries: the other users of this host included). */
  pids: number;
  /** Open file handles machine-wide (first field of /proc/sys/fs/file-nr). */
  fileHandles: number;
  /** File descriptors the server holds. */
  serverFds: number;
  /** The server's own cgroups (sandboxes and prewarmed launchers). */
  cgroups: number;
  memAvailableMiB: number;
}

export function machineCounts(serverPid: number, ownerId: string): MachineCounts {
  const count = (dir: string, filter: (name: string) => boolean = () => true): number => {
    try {
      return readdirSync(dir).filter(filter).length;
    } catch {
      return Number.NaN;
    }
  };
  const meminfo = readText('/proc/meminfo') ?? '';
  return {
    pids: count('/proc', (name) => /^\d+$/.test(name)),
    fileHandles: Number((readText('/proc/sys/fs/file-nr') ?? 'NaN').split(/\s+/)[0]),
    serverFds: count(`/proc/${serverPid}/fd`),
    cgroups: ownerCgroups(ownerId).length,
    memAvailableMiB: Math.round(Number(/^MemAvailable:\s+(\d+) kB/m.exec(meminfo)?.[1] ?? Number.NaN) / 1024),
  };
}

/** Samples the server's VmRSS every `everyMs` until stopped; VmHWM too (the kernel's own peak). */
export function rssSampler(pid: number, everyMs = 50): { stop(): { peakRssMiB: number; vmHwmMiB: number } } {
  let peak = statusKiB(pid, 'VmRSS');
  const timer = setInterval(() => {
    const now = statusKiB(pid, 'VmRSS');
    if (now > peak) peak = now;
  }, everyMs);
  return {
    stop: () => {
      clearInterval(timer);
      return { peakRssMiB: peak / 1024, vmHwmMiB: statusKiB(pid, 'VmHWM') / 1024 };
    },
  };
}
