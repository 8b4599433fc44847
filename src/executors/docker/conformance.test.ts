import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import { runConformanceSuite } from '../conformance.js';
import { DockerExecutor } from './index.js';

let stateDir: string | null = null;
after(async () => {
  if (stateDir) await rm(stateDir, { recursive: true, force: true });
});

runConformanceSuite('docker', async () => {
  stateDir = await mkdtemp(join(tmpdir(), 'kindling-docker-conformance-'));
  // Owner per process: another run of this suite on the machine (another worktree) reaps only its own containers.
  const executor = new DockerExecutor({ stateDir, ownerId: `conformance-docker-${process.pid}`, instanceId: 'test', prewarmPerShape: 2 });
  const status = await executor.probe();
  if (!status.ready) {
    await executor.destroy();
    return `Docker executor not ready: ${status.reason}`;
  }
  for (const image of ['kindling/base', 'kindling/python']) {
    if (!executor.hasImage(image)) {
      await executor.destroy();
      return `image ${image} is missing; run "kindling images build"`;
    }
  }
  const dir = stateDir;
  // A state dir per owner, as a server has: an executor's reap removes the run dirs in its state dir that are not its
  // own, and must not take those of the suite's executor (its prewarmed containers) with them.
  const create = async (ownerId: string): Promise<DockerExecutor> => {
    const made = new DockerExecutor({ stateDir: join(dir, 'owners', ownerId), ownerId, instanceId: 'test', prewarmPerShape: 0 });
    await made.refreshImages();
    return made;
  };
  return { executor, images: { base: 'kindling/base', python: 'kindling/python' }, create };
});
