import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import { runConformanceSuite } from '../conformance.js';
import { SandboxExecutor } from './index.js';

let stateDir: string | null = null;
after(() => {
  if (stateDir) rmSync(stateDir, { recursive: true, force: true });
});

runConformanceSuite('sandbox', async () => {
  if (process.getuid?.() !== 0) return 'the sandbox executor needs root (it creates cgroups)';
  const imagesDir = process.env.KINDLING_IMAGES_DIR ?? '/var/lib/kindling/images';
  stateDir = mkdtempSync(join(tmpdir(), 'kindling-sandbox-conformance-'));
  chmodSync(stateDir, 0o755); // the sandbox uid reaches /.kindling run dirs through it
  const executor = new SandboxExecutor({ imagesDir, stateDir, ownerId: `conformance-sandbox-${process.pid}`, instanceId: 'test' });
  const status = await executor.probe();
  if (!status.ready) {
    await executor.destroy();
    return `sandbox executor not ready: ${status.reason}`;
  }
  for (const image of ['kindling/base', 'kindling/python']) {
    if (!executor.hasImage(image)) {
      await executor.destroy();
      return `image ${image} has no rootfs in ${imagesDir}; run "kindling images build"`;
    }
  }
  const create = async (ownerId: string): Promise<SandboxExecutor> => {
    const made = new SandboxExecutor({ imagesDir, stateDir: stateDir!, ownerId, instanceId: 'test', prewarmPerShape: 0 });
    await made.refreshImages();
    return made;
  };
  return { executor, images: { base: 'kindling/base', python: 'kindling/python' }, create };
});
