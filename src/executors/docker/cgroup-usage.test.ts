import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
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

/** The real cgroupfs of this host in the layout the docker executor uses with the engine's cgroupfs driver. */
function hostLayout(): { mount: string; version: 1 | 2; driver: 'cgroupfs' } | null {
  if (process.getuid?.() !== 0) return null;
  if (existsSync('/sys/fs/cgroup/cgroup.controllers')) return { mount: '/sys/fs/cgroup', version: 2, driver: 'cgroupfs' };
  return existsSync('/sys/fs/cgroup/memory') ? { mount: '/sys/fs/cgroup', version: 1, driver: 'cgroupfs' } : null;
}

describe('docker slot cgroups on the host', () => {
  const layout = hostLayout();
  it('killAndRemove kills what outlived its container (a runc init left by a killed engine) and removes the slot', { skip: layout === null ? 'needs root and a cgroupfs at /sys/fs/cgroup' : false }, async () => {
    const owner = `test${process.pid}`;
    const slot = new SlotCgroup(layout!, owner, 'slot-orphan');
    // The engine's layout: the container's own cgroup inside the slot, a process in it in every hierarchy.
    const dirs =
      layout!.version === 2
        ? [join(layout!.mount, DOCKER_CGROUP_ROOT, owner, 'slot-orphan', 'c0ffee')]
        : ['pids', 'memory', 'cpuacct'].map((controller) => join(layout!.mount, controller, DOCKER_CGROUP_ROOT, owner, 'slot-orphan', 'c0ffee'));
    const child = spawn('sleep', ['600'], { stdio: 'ignore' });
    const exited = new Promise<NodeJS.Signals | null>((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
    try {
      for (const dir of dirs) {
        mkdirSync(dir, { recursive: true });
        writeFileSync(join(dir, 'cgroup.procs'), String(child.pid));
      }
      assert.deepEqual(slot.pids(), [child.pid]);
      assert.equal(slot.remove(), false, 'a slot with a process in it cannot be removed');
      assert.equal(await slot.killAndRemove(), true);
      assert.equal(await exited, 'SIGKILL');
      for (const dir of dirs) assert.equal(existsSync(dirname(dir)), false, `${dirname(dir)} is removed`);
      assert.deepEqual(listSlotCgroups(layout!, owner), []);
    } finally {
      child.kill('SIGKILL');
      await new SlotCgroup(layout!, owner, 'slot-orphan').killAndRemove();
    }
  });
});
