import { mkdtempSync, rmSync } from 'node:fs';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import { runConformanceSuite } from '../conformance.js';
import { GvisorExecutor } from './index.js';

let stateDir: string | null = null;
after(() => {
  if (stateDir) rmSync(stateDir, { recursive: true, force: true });
});

runConformanceSuite('gvisor', async () => {
  if (process.getuid?.() !== 0) return 'the gvisor executor needs root (runsc and its cgroups)';
  if (!existsSync('/usr/bin/runsc')) return 'runsc is not installed (apt-get install runsc; scripts/setup.sh does)';
  const imagesDir = process.env.KINDLING_IMAGES_DIR ?? '/var/lib/kindling/images';
  stateDir = mkdtempSync(join(tmpdir(), 'kindling-gvisor-conformance-'));
  const executor = new GvisorExecutor({ imagesDir, stateDir, ownerId: `conformance-gvisor-${process.pid}`, instanceId: 'test' });
  const status = await executor.probe();
  if (!status.ready) {
    await executor.destroy();
    return `gvisor executor not ready: ${status.reason}`;
  }
  for (const image of ['kindling/base', 'kindling/python']) {
    if (!executor.hasImage(image)) {
      await executor.destroy();
      return `image ${image} has no rootfs in ${imagesDir}; run "kindling images build"`;
    }
  }
  const create = async (ownerId: string): Promise<GvisorExecutor> => {
    const made = new GvisorExecutor({ imagesDir, stateDir: stateDir!, ownerId, instanceId: 'test' });
    await made.refreshImages();
    return made;
  };
  return {
    executor,
    images: { base: 'kindling/base', python: 'kindling/python' },
    // Each start is a whole gVisor kernel (~300 ms of CPU, ~30 MiB): 20 at once on 2 shared cores is minutes.
    parallel: { count: 8 },
    cannot: {
      pidsLimit:
        "runsc (Debian's 2022 build) keeps no process count inside the sandbox and fails to start with RLIMIT_NPROC; the host cgroup's pids.max bounds the sentry's threads (pids * 4 + 256) as a backstop only",
    },
    create,
  };
});
