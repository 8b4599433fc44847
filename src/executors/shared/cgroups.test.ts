/**
 * Integration tests of the cgroup drivers against the real cgroupfs (root only). On a hybrid host (v1 controllers plus
 * an empty cgroup2 at /sys/fs/cgroup/unified) the v2 driver's create/join/kill/remove path runs there too.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { after, describe, it } from 'node:test';
import { createCgroupDriver, detectCgroupVersion, type CgroupDriver } from './cgroups.js';
import { waitFor } from '../../../test/helpers/wait.js';
import { skipOrFail } from '../test-support.js';

const isRoot = process.getuid?.() === 0;
const owner = `test-cg-${process.pid}`;
const drivers: CgroupDriver[] = [];

after(() => {
  for (const d of drivers) d.removeOwnerDirs();
});

/** Starts `sh` that joins the cgroup, then leaves a detached double-forked sleeper and a plain one behind. */
function startTree(procsFiles: readonly string[], marker: string): Promise<number> {
  const joins = procsFiles.map((f) => `echo $$ > '${f}'`).join(' && ');
  const child = spawn('/bin/sh', ['-c', `${joins} && (setsid sleep ${marker} &) && exec sleep ${marker}`], {
    stdio: 'ignore',
    detached: true,
  });
  child.unref();
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('spawn', () => resolve(child.pid!));
  });
}

/** Host processes that are `sleep <marker>` (not the shells whose script merely mentions it). */
function hostProcessesWith(marker: string): number {
  let n = 0;
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8') === `sleep\0${marker}\0`) n++;
    } catch {
      // exited
    }
  }
  return n;
}

/** Waits until `check()` holds: the processes' state, with a backstop far above any load (not a margin). */
function until(check: () => boolean): Promise<void> {
  return waitFor(check, { what: 'the expected host processes' });
}

/** `required`: the driver is one a sandbox host must have (a skip fails where KINDLING_TEST_REQUIRE names sandbox);
 *  otherwise the case may not apply to this host (the hybrid layout on a pure v2 host). */
function exercise(label: string, make: () => CgroupDriver | string, required: boolean): void {
  const missing = (reason: string): string => (required ? skipOrFail('sandbox', reason) : reason);
  describe(label, () => {
    it('creates a cgroup with limits, kills a tree with a detached double fork, removes it', async (t) => {
      const driver = make();
      if (typeof driver === 'string') return t.skip(missing(driver));
      drivers.push(driver);
      const cg = driver.create('tree', { memoryBytes: 64 << 20, cpus: 0.5, pidsMax: 20 });
      const dir = cg.dirs[0]!;
      if (driver.version === 1) {
        const mem = cg.dirs.find((d) => d.includes('/memory/'))!;
        const cpu = cg.dirs.find((d) => d.includes('/cpu/'))!;
        const pids = cg.dirs.find((d) => d.includes('/pids/'))!;
        assert.equal(readFileSync(`${mem}/memory.limit_in_bytes`, 'utf8').trim(), String(64 << 20));
        assert.equal(readFileSync(`${cpu}/cpu.cfs_quota_us`, 'utf8').trim(), '50000');
        assert.equal(readFileSync(`${pids}/pids.max`, 'utf8').trim(), '20');
      } else if (existsSync(`${dir}/memory.max`)) {
        assert.equal(readFileSync(`${dir}/memory.max`, 'utf8').trim(), String(64 << 20));
        assert.equal(readFileSync(`${dir}/cpu.max`, 'utf8').trim(), '50000 100000');
        assert.equal(readFileSync(`${dir}/pids.max`, 'utf8').trim(), '20');
      }
      assert.deepEqual(driver.list(), ['tree']);

      const marker = `31${process.pid}.25`;
      try {
        await startTree(cg.procsFiles, marker);
        await until(() => hostProcessesWith(marker) === 2);
        assert.ok(cg.pids().length >= 2);
        await cg.kill();
        assert.deepEqual(cg.pids(), []);
        await until(() => hostProcessesWith(marker) === 0);
        assert.equal(cg.oomKills(), 0);
      } finally {
        await cg.remove();
      }
      await cg.remove(); // twice is fine
      assert.ok(cg.dirs.length > 0, 'the cgroup made directories to check');
      for (const d of cg.dirs) assert.equal(existsSync(d), false, `${d} still exists`);
      assert.deepEqual(driver.list(), []);
    });

    it('v1: keeps an empty cgroup of the owner frozen while its directories exist, so freezes do not flip the kernel\'s freezer key; never listed', (t) => {
      const driver = make();
      if (typeof driver === 'string') return t.skip(missing(driver));
      if (driver.version !== 1) return t.skip('the freezer pin is a v1 matter (v2 freezes without a global key)');
      drivers.push(driver);
      const pin = `${driver.ownerDirs.find((d) => d.includes('/freezer/'))}/.freeze-pin`;
      const cg = driver.create('pinned');
      assert.equal(readFileSync(`${pin}/freezer.state`, 'utf8').trim(), 'FROZEN');
      assert.equal(readFileSync(`${pin}/cgroup.procs`, 'utf8'), '', 'the pin holds no process');
      assert.deepEqual(driver.list(), ['pinned']);
      return cg.remove().then(() => {
        driver.removeOwnerDirs();
        assert.equal(existsSync(pin), false, 'removed with the owner directories');
        for (const d of driver.ownerDirs) assert.equal(existsSync(d), false, `${d} still exists`);
      });
    });

    it('removes what it made when a limit cannot be written (the original error wins)', (t) => {
      const driver = make();
      if (typeof driver === 'string') return t.skip(missing(driver));
      drivers.push(driver);
      if (driver.version === 2 && !existsSync(`${driver.ownerDirs[0]}/cgroup.subtree_control`)) return t.skip('no v2 owner dir');
      const enabled = driver.version === 1 || readFileSync(`${driver.ownerDirs[0]}/cgroup.subtree_control`, 'utf8').includes('pids');
      if (!enabled) return t.skip('pids controller not enabled on this v2 hierarchy, nothing would fail');
      assert.throws(() => driver.create('broken', { memoryBytes: 64 << 20, cpus: 1, pidsMax: -7 }), /EINVAL|invalid/i);
      assert.deepEqual(driver.list(), []);
    });

    it('freezes a busy process (no CPU while frozen), thaws it, and removes a frozen cgroup', async (t) => {
      const driver = make();
      if (typeof driver === 'string') return t.skip(driver);
      drivers.push(driver);
      const cg = driver.create('frozen', { memoryBytes: 32 << 20, cpus: 1, pidsMax: 10 });
      const joins = cg.procsFiles.map((f) => `echo $$ > '${f}'`).join(' && ');
      const child = spawn('/bin/sh', ['-c', `${joins} && while :; do :; done`], { stdio: 'ignore', detached: true });
      child.unref();
      const ticks = (): number => {
        const stat = readFileSync(`/proc/${child.pid}/stat`, 'utf8');
        const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        return Number(fields[11]) + Number(fields[12]);
      };
      try {
        await until(() => cg.pids().includes(child.pid!) && ticks() > 5);
        await cg.freeze(true);
        const frozenAt = ticks();
        const since = Date.now();
        // A whole scheduler interval of wall time (observed, not slept blindly): the counter must not move.
        await until(() => Date.now() - since >= 300);
        assert.equal(ticks(), frozenAt, 'a frozen process used CPU');
        await cg.freeze(false);
        await until(() => ticks() > frozenAt);
        await cg.freeze(true);
      } finally {
        await cg.remove();
      }
      assert.deepEqual(driver.list(), []);
    });

    it('reaps a leftover by name with open()', async (t) => {
      const driver = make();
      if (typeof driver === 'string') return t.skip(missing(driver));
      drivers.push(driver);
      const cg = driver.create('leftover', { memoryBytes: 32 << 20, cpus: 1, pidsMax: 10 });
      const marker = `32${process.pid}.25`;
      try {
        await startTree(cg.procsFiles, marker);
        await until(() => hostProcessesWith(marker) === 2);
        const again = driver.open('leftover');
        await again.remove();
      } finally {
        await cg.remove();
      }
      assert.deepEqual(driver.list(), []);
      await until(() => hostProcessesWith(marker) === 0);
    });
  });
}

exercise(`detected cgroup driver (v${detectCgroupVersion()})`, () => {
  if (!isRoot) return 'needs root to create cgroups';
  const d = createCgroupDriver({ ownerId: owner });
  return d.check() ?? d;
}, true);

exercise('cgroup v2 driver on the hybrid unified hierarchy', () => {
  if (!isRoot) return 'needs root to create cgroups';
  if (detectCgroupVersion() === 2) return 'pure cgroup v2 host: covered by the detected driver above';
  if (!existsSync('/sys/fs/cgroup/unified/cgroup.procs')) return 'no cgroup2 mounted at /sys/fs/cgroup/unified';
  const d = createCgroupDriver({ ownerId: owner, mount: '/sys/fs/cgroup/unified', version: 2, allowMissingControllers: true });
  return d.check() ?? d;
}, false);
