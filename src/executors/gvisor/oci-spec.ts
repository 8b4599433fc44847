/**
 * The OCI runtime spec (config.json) of one gVisor sandbox: a pure function of what the executor decided, so that the
 * one-off executions, the persistent sandboxes and their restores all describe a sandbox the same way.
 *
 * The image's rootfs is the root, read-only (shared by every sandbox of that image, never written); writable space
 * is tmpfs inside gVisor's own kernel (one-offs, /tmp of persistent sandboxes) or host directories bound in through
 * gVisor's file proxy (the gofer) for files that must outlive the sandbox. The process runs as an unprivileged uid
 * with no capabilities and no-new-privileges; the network is `none` (runsc's `--network=none`: loopback only).
 */
import type { RunSpec } from '../../core/types.js';

export interface OciMount {
  destination: string;
  type: string;
  source: string;
  options: string[];
}

export interface OciSpecInput {
  rootfs: string;
  args: string[];
  env: Record<string, string>;
  cwd: string;
  uid: number;
  gid: number;
  hostname: string;
  limits: RunSpec['limits'];
  /** Mounts beyond /proc, /dev and /sys (tmpfs work dirs, the input files, a persistent sandbox's disk). */
  mounts: OciMount[];
  /** The sandbox's cgroup, made by the executor beforehand (runsc then uses it as it is and never removes it). */
  cgroupsPath: string;
  annotations: Record<string, string>;
}

const NO_CAPS = { bounding: [], effective: [], inheritable: [], permitted: [], ambient: [] };

export function ociSpec(input: OciSpecInput): Record<string, unknown> {
  return {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: input.uid, gid: input.gid },
      args: input.args,
      env: Object.entries(input.env).map(([name, value]) => `${name}=${value}`),
      cwd: input.cwd,
      capabilities: NO_CAPS,
      noNewPrivileges: true,
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: input.limits.openFiles, soft: input.limits.openFiles }],
    },
    root: { path: input.rootfs, readonly: true },
    hostname: input.hostname,
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc', options: [] },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
      ...input.mounts,
    ],
    annotations: input.annotations,
    linux: {
      // Also read by gVisor's kernel (the memory it reports); the host cgroup made beforehand is what enforces them.
      resources: {
        memory: { limit: input.limits.memoryMb * 1024 * 1024 },
        cpu: { quota: Math.round(input.limits.cpus * 100_000), period: 100_000 },
        pids: { limit: input.limits.pids },
      },
      cgroupsPath: input.cgroupsPath,
      namespaces: [{ type: 'pid' }, { type: 'network' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }],
    },
  };
}

/** A tmpfs inside gVisor's kernel (its memory counts against the sandbox's cgroup). */
export function tmpfsMount(destination: string, sizeMb: number): OciMount {
  return { destination, type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'mode=1777', `size=${sizeMb}m`] };
}

/** A host directory bound in through the gofer. */
export function bindMount(source: string, destination: string, readonly: boolean): OciMount {
  return { destination, type: 'bind', source, options: ['rbind', readonly ? 'ro' : 'rw', 'nosuid', 'nodev'] };
}
