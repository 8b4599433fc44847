/**
 * Reading and removing cgroupfs files, the same way for every executor that keeps cgroups (the sandbox's per-execution
 * cgroups, the microVM processes' cgroups, Docker's slot parents). These files are in-kernel, so the calls are
 * synchronous: each takes microseconds.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** CPU time and peak memory the kernel accounted to one cgroup (null: not available here). */
export interface CgroupUsage {
  cpuMs: number | null;
  memoryPeakBytes: number | null;
}

/** A file holding one number (cpuacct.usage, memory.peak); null when absent or not a number. */
export function readCgroupNumber(file: string): number | null {
  try {
    const value = Number(fs.readFileSync(file, 'utf8').trim());
    return Number.isFinite(value) ? value : null;
  } catch {
    return null;
  }
}

/** `usage_usec` of a v2 cpu.stat; null when the file or the line is absent. */
export function readUsageUsec(cpuStatFile: string): number | null {
  try {
    const match = /^usage_usec (\d+)$/m.exec(fs.readFileSync(cpuStatFile, 'utf8'));
    return match ? Number(match[1]) : null;
  } catch {
    return null;
  }
}

/** The counters of a v1 cgroup: cpuacct.usage (ns) and memory.max_usage_in_bytes. */
export function cgroupUsageV1(cpuacctDir: string, memoryDir: string): CgroupUsage {
  const cpuNs = readCgroupNumber(path.join(cpuacctDir, 'cpuacct.usage'));
  return { cpuMs: cpuNs === null ? null : cpuNs / 1e6, memoryPeakBytes: readCgroupNumber(path.join(memoryDir, 'memory.max_usage_in_bytes')) };
}

/** The counters of a v2 cgroup: cpu.stat usage_usec and memory.peak. */
export function cgroupUsageV2(dir: string): CgroupUsage {
  const usec = readUsageUsec(path.join(dir, 'cpu.stat'));
  return { cpuMs: usec === null ? null : usec / 1000, memoryPeakBytes: readCgroupNumber(path.join(dir, 'memory.peak')) };
}

/** rmdir of an (empty) cgroup directory; true when it is gone now, false when it is busy or not empty. */
export function removeCgroupDir(dir: string): boolean {
  try {
    fs.rmdirSync(dir);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ENOENT';
  }
}
