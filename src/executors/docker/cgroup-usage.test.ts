import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { DOCKER_CGROUP_ROOT, SlotCgroup, listSlotCgroups } from './cgroup-usage.js';

describe('docker slot cgroups', () => {
  it('removing a slot also removes the empty cgroup the engine left inside it (a killed dockerd), in every hierarchy', () => {
    // A v1 layout in a temp dir: plain directories behave as empty cgroups do for rmdir.
    const mount = mkdtempSync(join(tmpdir(), 'kindling-cgroupfs-'));
    try {
      const layout = { mount, version: 1 as const, driver: 'cgroupfs' as const };
      for (const controller of ['cpuacct', 'memory']) mkdirSync(join(mount, controller, DOCKER_CGROUP_ROOT, 'owner1', 'slot-a', 'c0ffee'), { recursive: true });
      mkdirSync(join(mount, 'memory', DOCKER_CGROUP_ROOT, 'owner1', 'slot-b'), { recursive: true });
      assert.deepEqual(listSlotCgroups(layout, 'owner1').sort(), ['slot-a', 'slot-b']);
      new SlotCgroup(layout, 'owner1', 'slot-a').remove();
      assert.equal(existsSync(join(mount, 'cpuacct', DOCKER_CGROUP_ROOT, 'owner1', 'slot-a')), false);
      assert.equal(existsSync(join(mount, 'memory', DOCKER_CGROUP_ROOT, 'owner1', 'slot-a')), false);
      assert.deepEqual(listSlotCgroups(layout, 'owner1'), ['slot-b'], 'other slots stay');
      // A cgroup that still holds something (here: a file, as a cgroup with processes refuses rmdir) stays.
      mkdirSync(join(mount, 'memory', DOCKER_CGROUP_ROOT, 'owner1', 'slot-b', 'busy'), { recursive: true });
      writeFileSync(join(mount, 'memory', DOCKER_CGROUP_ROOT, 'owner1', 'slot-b', 'busy', 'tasks'), '123\n');
      new SlotCgroup(layout, 'owner1', 'slot-b').remove();
      assert.deepEqual(listSlotCgroups(layout, 'owner1'), ['slot-b'], 'a busy one is left for the next reap');
    } finally {
      rmSync(mount, { recursive: true, force: true });
    }
  });
});
