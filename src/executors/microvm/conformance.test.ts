import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import { runConformanceSuite } from '../conformance.js';
import { MicroVmExecutor } from './index.js';

let stateDir: string | null = null;
after(async () => {
  if (stateDir) await rm(stateDir, { recursive: true, force: true });
});

runConformanceSuite('microvm (qemu)', async () => {
  if (spawnSync('qemu-system-x86_64', ['--version']).status !== 0) return 'qemu-system-x86_64 is not installed (Debian: qemu-system-x86)';
  const imagesDir = process.env.KINDLING_IMAGES_DIR ?? '/var/lib/kindling/images';
  stateDir = await mkdtemp(join(tmpdir(), 'kindling-microvm-conformance-'));
  const assetsDir = process.env.KINDLING_MICROVM_ASSETS_DIR; // default: /var/lib/kindling/microvm
  const executor = new MicroVmExecutor({ driver: 'qemu', imagesDir, ...(assetsDir ? { assetsDir } : {}), stateDir, ownerId: `conformance-microvm-${process.pid}`, instanceId: 'test', prewarmPerShape: 1 });
  const status = await executor.probe();
  if (!status.ready) {
    await executor.destroy();
    return `microvm executor not ready: ${status.reason}`;
  }
  for (const image of ['kindling/base', 'kindling/python']) {
    if (!executor.hasImage(image)) {
      await executor.destroy();
      return `image ${image} has no rootfs.ext4 in ${imagesDir}; run "kindling images build --microvm"`;
    }
  }
  const dir = stateDir;
  const create = async (ownerId: string): Promise<MicroVmExecutor> => {
    const made = new MicroVmExecutor({ driver: 'qemu', imagesDir, ...(assetsDir ? { assetsDir } : {}), stateDir: dir, ownerId, instanceId: 'test', prewarmPerShape: 0 });
    await made.refreshImages();
    return made;
  };
  // Four VMs at once, not 20: under TCG (no KVM) every VM is a full software-emulated machine on 2 cores.
  return { executor, images: { base: 'kindling/base', python: 'kindling/python' }, parallel: { count: 4 }, create };
});
