/**
 * A container's CPU time and peak memory, read by the server from the host's cgroupfs (never from inside the
 * container: whatever the user's process can write, it can forge).
 *
 * With the engine's cgroupfs driver every container is created under a parent cgroup of its own
 * (`HostConfig.CgroupParent` = `/kindling-docker/<owner>/<slot>`). The kernel charges a cgroup's CPU and memory to its
 * ancestors too, and a parent keeps those counters after the container's own cgroup is removed when it stops: so the
 * end of an execution can be read after the exit, exactly, and between calls of a warm container at any moment. The
 * server removes the parent once the container is gone (and `reap` removes those of earlier runs).
 *
 * With the systemd driver the engine names the cgroup itself (`system.slice/docker-<id>.scope`), which is gone as soon
 * as the container stops: counters are read live there, and the last reading before the end stands for the end.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ResourceUsage } from '../executor.js';
import { cgroupUsageV1, cgroupUsageV2, removeCgroupDir } from '../shared/cgroupfs.js';

export const DOCKER_CGROUP_ROOT = 'kindling-docker';

export interface DockerCgroupLayout {
  /** Where cgroupfs is mounted on the host (default /sys/fs/cgroup). */
  mount: string;
  version: 1 | 2;
  driver: 'cgroupfs' | 'systemd';
}

/** The counters of one cgroup path (relative to the hierarchy root), v1 or v2; null when it does not exist. */
export function readCgroupUsage(layout: DockerCgroupLayout, relative: string): ResourceUsage | null {
  const usage =
    layout.version === 1
      ? cgroupUsageV1(path.join(layout.mount, 'cpuacct', relative), path.join(layout.mount, 'memory', relative))
      : cgroupUsageV2(path.join(layout.mount, relative));
  return usage.cpuMs === null ? null : { cpuMs: usage.cpuMs, memoryPeakBytes: usage.memoryPeakBytes };
}

/** The directories of one cgroup path in every hierarchy (v1: one per mounted controller; v2: one). */
function dirsOf(layout: DockerCgroupLayout, relative: string): string[] {
  if (layout.version === 2) return [path.join(layout.mount, relative)];
  let controllers: string[] = [];
  try {
    // Co-mounted controllers appear as symlinks (cpu -> cpu,cpuacct): only real directories, each once.
    controllers = fs.readdirSync(layout.mount, { withFileTypes: true }).filter((entry) => entry.isDirectory()).map((entry) => entry.name);
  } catch {
    return [];
  }
  return controllers.map((controller) => path.join(layout.mount, controller, relative));
}

/** rmdir, quietly: absent is fine, busy (a container still in it) is left for the next reap. */
/**
 * rmdir of a cgroup and the cgroups below it, deepest first, quietly. The engine makes the container's own cgroup
 * inside the slot; it normally removes it when the container goes, but not when the engine or its shim died under the
 * container (a killed dockerd): the empty child would keep the slot from going forever. One with processes stays.
 */
function rmdirTreeQuiet(dir: string, depth = 0): boolean {
  if (depth < 4) {
    let entries: fs.Dirent[] = [];
    try {
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch {
      // absent or unreadable: rmdir below says which
    }
    for (const entry of entries) if (entry.isDirectory()) rmdirTreeQuiet(path.join(dir, entry.name), depth + 1);
  }
  return removeCgroupDir(dir);
}

/** The per-container parent cgroup of one slot, or (systemd driver) a live view of the engine's own cgroup. */
export class SlotCgroup {
  /** The counter values when the current execution began (a prewarmed container idled before it). */
  private baseCpuMs = 0;
  /** systemd driver: the last live reading, standing for the end once the container's cgroup is gone. */
  private last: ResourceUsage | null = null;

  constructor(
    private readonly layout: DockerCgroupLayout,
    private readonly ownerId: string,
    readonly slotName: string,
    private containerId: string | null = null,
  ) {}

  /** `HostConfig.CgroupParent` for the container, or undefined when the engine names the cgroup (systemd). */
  get parent(): string | undefined {
    return this.layout.driver === 'cgroupfs' ? `/${DOCKER_CGROUP_ROOT}/${this.ownerId}/${this.slotName}` : undefined;
  }

  attach(containerId: string): void {
    this.containerId = containerId;
  }

  private get relative(): string | null {
    if (this.layout.driver === 'cgroupfs') return `${DOCKER_CGROUP_ROOT}/${this.ownerId}/${this.slotName}`;
    if (this.containerId === null) return null;
    return `system.slice/docker-${this.containerId}.scope`;
  }

  private raw(): ResourceUsage | null {
    const relative = this.relative;
    const usage = relative === null ? null : readCgroupUsage(this.layout, relative);
    if (usage !== null) this.last = usage;
    return usage ?? (this.layout.driver === 'systemd' ? this.last : null);
  }

  /**
   * Starts the books of an execution: CPU is counted from here; v1's peak memory is reset (what the container's
   * shell used while it waited in the prewarm pool is not the execution's).
   */
  begin(): void {
    this.baseCpuMs = this.raw()?.cpuMs ?? 0;
    const relative = this.relative;
    if (this.layout.version === 1 && relative !== null) {
      try {
        fs.writeFileSync(path.join(this.layout.mount, 'memory', relative, 'memory.max_usage_in_bytes'), '0');
      } catch {
        // not resettable here: the peak then includes the idle shell (a few hundred KiB)
      }
    }
  }

  /** CPU since `begin()` and the peak memory; null when the counters cannot be read. */
  usage(): ResourceUsage | null {
    const now = this.raw();
    if (now === null || now.cpuMs === null) return null;
    return { cpuMs: Math.round(Math.max(0, now.cpuMs - this.baseCpuMs) * 100) / 100, memoryPeakBytes: now.memoryPeakBytes };
  }

  /**
   * Host pids of every process in the container (its cgroup and the cgroups below it), for killing a part of it from
   * the host; empty when the cgroup is gone.
   */
  pids(): number[] {
    const relative = this.relative;
    if (relative === null) return [];
    // v1: every process is in every hierarchy; the pids one is read when mounted, else all of them.
    const roots =
      this.layout.version === 2
        ? [path.join(this.layout.mount, relative)]
        : fs.existsSync(path.join(this.layout.mount, 'pids'))
          ? [path.join(this.layout.mount, 'pids', relative)]
          : dirsOf(this.layout, relative);
    const found = new Set<number>();
    const walk = (dir: string, depth: number): void => {
      try {
        for (const line of fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n')) {
          // A process outside this server's pid namespace (the server in a container, the engine's containers not)
          // reads as 0: never signalled (kill(0) would hit the server's own process group), nor pid 1 or the server.
          const pid = Number(line);
          if (Number.isInteger(pid) && pid > 1 && pid !== process.pid) found.add(pid);
        }
        if (depth < 4) for (const entry of fs.readdirSync(dir, { withFileTypes: true })) if (entry.isDirectory()) walk(path.join(dir, entry.name), depth + 1);
      } catch {
        // gone meanwhile
      }
    };
    for (const root of roots) walk(root, 0);
    return [...found];
  }

  /** Removes the parent cgroup (after the container is removed); false when some of it is still there (busy). */
  remove(): boolean {
    if (this.layout.driver !== 'cgroupfs') return true;
    let removed = true;
    for (const dir of dirsOf(this.layout, `${DOCKER_CGROUP_ROOT}/${this.ownerId}/${this.slotName}`)) removed = rmdirTreeQuiet(dir) && removed;
    removeOwnerDirs(this.layout, this.ownerId);
    return removed;
  }

  /**
   * Removes the parent cgroup of a container the engine no longer has, killing what is still in it first. Processes
   * outlive their container when the engine dies at the wrong moment: a `runc init` created but never started (the
   * engine was killed between create and start) waits on its fifo forever, and a container whose shim died keeps
   * running with nobody to stop it. Only this slot's cgroups are touched, so nothing else can be hit. A killed process
   * leaves its cgroup a moment later: removal is retried until `deadlineMs` (never blocking the event loop).
   */
  async killAndRemove(deadlineMs = 2_000): Promise<boolean> {
    if (this.layout.driver !== 'cgroupfs') return true;
    const until = Date.now() + deadlineMs;
    for (;;) {
      for (const pid of this.pids()) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
      }
      if (this.remove()) return true;
      if (Date.now() >= until) return false;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
}

/** The owner's and the shared root's directories, when empty. */
export function removeOwnerDirs(layout: DockerCgroupLayout, ownerId: string): void {
  if (layout.driver !== 'cgroupfs') return;
  for (const dir of dirsOf(layout, `${DOCKER_CGROUP_ROOT}/${ownerId}`)) if (removeCgroupDir(dir)) removeCgroupDir(path.dirname(dir));
}

/** Slot parent cgroups of this owner that exist now (for the reaper). */
export function listSlotCgroups(layout: DockerCgroupLayout, ownerId: string): string[] {
  if (layout.driver !== 'cgroupfs') return [];
  const names = new Set<string>();
  for (const dir of dirsOf(layout, `${DOCKER_CGROUP_ROOT}/${ownerId}`)) {
    try {
      for (const entry of fs.readdirSync(dir, { withFileTypes: true })) if (entry.isDirectory()) names.add(entry.name);
    } catch {
      // this controller has none
    }
  }
  return [...names];
}
