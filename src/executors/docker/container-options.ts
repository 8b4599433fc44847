import type { ContainerCreateOptions } from 'dockerode';
import type { ResourceLimits, RunSpec } from '../../core/types.js';
import { AGENT_MOUNT } from '../../../agent/files.js';
import { LABEL_MANAGED } from '../executor.js';
import { KINDLING_SECCOMP_OPT } from './seccomp-profile.js';
import { SANDBOX_CORE_LIMIT } from '../shared/syscall-policy.js';

/** Where the per-execution directory (code files and stdio FIFOs) appears inside a container. */
export const GUEST_RUN_DIR = '/.kindling';
export const GUEST_IO_DIR = `${GUEST_RUN_DIR}/.io`;
/** Unprivileged uid/gid every container runs as (Debian's `nobody`). */
export const CONTAINER_UID = 65534;
export const CONTAINER_GID = 65534;
export const CONTAINER_USER = `${CONTAINER_UID}:${CONTAINER_GID}`;

export interface SlotShape {
  image: string;
  workdir: string;
  limits: Pick<ResourceLimits, 'memoryMb' | 'cpus' | 'pids' | 'diskMb' | 'openFiles'>;
}

/** The engine needs an explicit tag; `kindling/python` means `kindling/python:latest`. */
export function normalizeImageRef(image: string): string {
  const lastSegment = image.slice(image.lastIndexOf('/') + 1);
  return lastSegment.includes(':') || image.includes('@') ? image : `${image}:latest`;
}

/**
 * Create options for a hardened container that starts a shell waiting on a FIFO for its launch script. The shape
 * (image, workdir, limits) is fixed at create time; the command, env and stdio come later through the run dir.
 */
export function containerCreateOptions(options: {
  shape: SlotShape;
  hostRunDir: string;
  /** Host dir bound read-only at /.kindling-agent (warm sandboxes only). */
  agentDir?: string;
  labels: Record<string, string>;
  /** network "egress": the Docker network to join (a bridge filtered by the egress policy); default none. */
  network?: string;
  /** A parent cgroup of this container's own (cgroupfs driver), whose counters outlive the container: see cgroup-usage.ts. */
  cgroupParent?: string;
  /**
   * Host dirs bound read-write at these targets instead of a tmpfs there (a persistent sandbox's disk: its /work and
   * /tmp, see docker/persistent.ts). Their size limit is the disk's, enforced by the kernel.
   */
  rwBinds?: { source: string; target: string }[];
  /** Host dirs bound read-only at these targets instead of a tmpfs there (a function's bundle at its work dir). */
  roBinds?: { source: string; target: string }[];
}): ContainerCreateOptions {
  const { shape } = options;
  const memoryBytes = shape.limits.memoryMb * 1024 * 1024;
  const size = `size=${shape.limits.diskMb}m`;
  const tmpfs: Record<string, string> = { '/tmp': `rw,exec,nosuid,nodev,${size},mode=1777` };
  // The work dir belongs to the sandbox user (the engine would copy the image dir's root ownership otherwise).
  const [uid, gid] = CONTAINER_USER.split(':');
  if (shape.workdir !== '/tmp' && !shape.workdir.startsWith('/tmp/')) {
    tmpfs[shape.workdir] = `rw,exec,nosuid,nodev,${size},mode=0755,uid=${uid},gid=${gid}`;
  }
  const rwBinds = options.rwBinds ?? [];
  const roBinds = options.roBinds ?? [];
  for (const bind of [...rwBinds, ...roBinds]) delete tmpfs[bind.target];
  return {
    Image: normalizeImageRef(shape.image),
    Cmd: ['/bin/sh', `${GUEST_IO_DIR}/launch`],
    Entrypoint: [],
    Env: [],
    WorkingDir: '/',
    User: CONTAINER_USER,
    Labels: { ...options.labels, [LABEL_MANAGED]: 'true' },
    NetworkDisabled: options.network === undefined,
    StopTimeout: 1,
    HostConfig: {
      NetworkMode: options.network ?? 'none',
      ...(options.cgroupParent === undefined ? {} : { CgroupParent: options.cgroupParent }),
      // Egress is IPv4 through the filtered bridge only: no IPv6 link-local path to the host.
      ...(options.network === undefined ? {} : { Sysctls: { 'net.ipv6.conf.all.disable_ipv6': '1', 'net.ipv6.conf.default.disable_ipv6': '1' } }),
      Memory: memoryBytes,
      // Equal to Memory: no swap, so a memory bomb is OOM-killed instead of thrashing.
      MemorySwap: memoryBytes,
      NanoCpus: Math.round(shape.limits.cpus * 1e9),
      PidsLimit: shape.limits.pids,
      ReadonlyRootfs: true,
      CapDrop: ['ALL'],
      SecurityOpt: ['no-new-privileges', KINDLING_SECCOMP_OPT],
      Tmpfs: tmpfs,
      Binds: [
        `${options.hostRunDir}:${GUEST_RUN_DIR}:ro`,
        // A warm sandbox's agent socket dir (read-only: connecting to a socket needs no write access to the mount).
        ...(options.agentDir === undefined ? [] : [`${options.agentDir}:${AGENT_MOUNT}:ro`]),
        ...rwBinds.map((bind) => `${bind.source}:${bind.target}:rw`),
        ...roBinds.map((bind) => `${bind.source}:${bind.target}:ro`),
      ],
      LogConfig: { Type: 'none', Config: {} },
      // Open files (limits.openFiles): soft and hard, so the process cannot raise it. RLIMIT_CORE: the value at which
      // the kernel neither writes a core file nor starts the host's core_pattern helper (see SANDBOX_CORE_LIMIT).
      Ulimits: [
        { Name: 'nofile', Soft: shape.limits.openFiles, Hard: shape.limits.openFiles },
        { Name: 'core', Soft: SANDBOX_CORE_LIMIT, Hard: SANDBOX_CORE_LIMIT },
      ],
      IpcMode: 'private',
      // A tiny init as PID 1, so the user's process gets default signal handling (PID 1 ignores SIGTERM otherwise)
      // and zombies are reaped.
      Init: true,
    },
  };
}

/** The shape of a container: what a prewarmed one must match to serve an execution (image, work dir, limits). */
export function shapeOf(spec: RunSpec): SlotShape {
  const { memoryMb, cpus, pids, diskMb, openFiles } = spec.limits;
  return { image: spec.image, workdir: spec.workdir, limits: { memoryMb, cpus, pids, diskMb, openFiles } };
}

export const shapeKeyOf = (shape: SlotShape): string => JSON.stringify(shape);
