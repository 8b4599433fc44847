import type { ExecutorName } from '../core/types.js';
import { DockerExecutor } from './docker/index.js';
import type { Executor } from './executor.js';
import type { Logger } from './shared/logger.js';
import { MicroVmExecutor } from './microvm/index.js';
import { SandboxExecutor } from './sandbox/index.js';
import { GvisorExecutor } from './gvisor/index.js';
import type { EgressPolicy } from '../network/policy.js';

/** What every executor may need from the server; each takes the parts it uses. */
/** Server-level settings of the microvm executor (KINDLING_MICROVM_ASSETS_DIR, KINDLING_MICROVM_DRIVER). */
export interface MicroVmSettings {
  assetsDir?: string;
  driver?: 'qemu' | 'firecracker';
  /** Shape snapshots kept at most (the executor's snapshotMaxCount). */
  maxSnapshots?: number;
}

export interface ExecutorContext {
  stateDir: string;
  imagesDir: string;
  ownerId: string;
  instanceId: string;
  dockerSocketPath: string;
  microvm?: MicroVmSettings;
  /** Sandboxes each executor keeps started ahead of demand per shape (see ExecutorBaseOptions); unset: each one's default. */
  prewarmPerShape?: number;
  /** Docker: creating + starting one container may take this long (see DockerExecutorOptions.createTimeoutMs). */
  dockerCreateTimeoutMs?: number;
  /** The policy of network "egress" (sandbox and docker); without it egress is unsupported. */
  egressPolicy?: EgressPolicy;
  logger: Logger;
}

/** Makes the executor of that name, or null when this build does not have it (said in the log). */
export async function createExecutor(name: ExecutorName, context: ExecutorContext): Promise<Executor | null> {
  // One meaning for every executor; left out, each keeps its own default (DEFAULT_PREWARM_PER_SHAPE).
  const prewarm = context.prewarmPerShape === undefined ? {} : { prewarmPerShape: context.prewarmPerShape };
  switch (name) {
    case 'docker':
      return new DockerExecutor({
        socketPath: context.dockerSocketPath,
        stateDir: context.stateDir,
        ownerId: context.ownerId,
        instanceId: context.instanceId,
        ...prewarm,
        ...(context.dockerCreateTimeoutMs === undefined ? {} : { createTimeoutMs: context.dockerCreateTimeoutMs }),
        ...(context.egressPolicy === undefined ? {} : { egressPolicy: context.egressPolicy }),
        logger: context.logger,
      });
    case 'sandbox':
      return new SandboxExecutor({
        imagesDir: context.imagesDir,
        stateDir: context.stateDir,
        ownerId: context.ownerId,
        instanceId: context.instanceId,
        ...prewarm,
        ...(context.egressPolicy === undefined ? {} : { egressPolicy: context.egressPolicy }),
        logger: context.logger,
      });
    case 'microvm':
      // QEMU by default (KVM when usable, TCG otherwise); the firecracker driver needs /dev/kvm (see microvm/).
      return new MicroVmExecutor({
        driver: context.microvm?.driver ?? 'qemu',
        ...(context.microvm?.assetsDir ? { assetsDir: context.microvm.assetsDir } : {}),
        ...(context.microvm?.maxSnapshots === undefined ? {} : { snapshotMaxCount: context.microvm.maxSnapshots }),
        imagesDir: context.imagesDir,
        stateDir: context.stateDir,
        ownerId: context.ownerId,
        instanceId: context.instanceId,
        ...prewarm,
        logger: context.logger,
      });
    case 'gvisor':
      // runsc (gVisor) on the ptrace platform: no KVM needed; network "none" only.
      return new GvisorExecutor({
        imagesDir: context.imagesDir,
        stateDir: context.stateDir,
        ownerId: context.ownerId,
        instanceId: context.instanceId,
        logger: context.logger,
      });
    default:
      context.logger.warn({ executor: name }, 'this executor is not available in this build');
      return null;
  }
}
