/**
 * Snapshot restores on QEMU (TCG here): every VM restored from one snapshot gets fresh randomness from the host before
 * user code runs, so two clones never print the same `head -c16 /dev/urandom`; ageOut() removes a stale snapshot
 * while the executor runs (the next run makes it anew); reap() removes VM dirs and stale snapshots. Uses the assets in $KINDLING_MICROVM_ASSETS_DIR (default /var/lib/kindling/microvm), which must be built
 * from this tree (the agent must know the SEED message).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm, utimes } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { runToCompletion, testSpec } from '../conformance.js';
import { skipOrFail } from '../test-support.js';
import { DEFAULT_MICROVM_ASSETS_DIR } from './assets.js';
import { MicroVmExecutor } from './index.js';

const assetsDir = process.env.KINDLING_MICROVM_ASSETS_DIR ?? DEFAULT_MICROVM_ASSETS_DIR;
const imagesDir = process.env.KINDLING_IMAGES_DIR ?? '/var/lib/kindling/images';
let stateDir: string | null = null;
after(async () => {
  if (stateDir) await rm(stateDir, { recursive: true, force: true });
});

describe('microvm (qemu) snapshot restores', () => {
  it('two VMs restored from one snapshot produce different /dev/urandom bytes; reap() cleans up', { timeout: 600_000 }, async (t) => {
    if (spawnSync('qemu-system-x86_64', ['--version']).status !== 0) return t.skip(skipOrFail('microvm', 'qemu-system-x86_64 is not installed'));
    stateDir = await mkdtemp(path.join(tmpdir(), 'kindling-microvm-restore-'));
    const warnings: string[] = [];
    const logger = { info() {}, debug() {}, error() {}, warn: (_: unknown, message?: string) => void warnings.push(String(message)) };
    const executor = new MicroVmExecutor({ driver: 'qemu', imagesDir, assetsDir, stateDir, ownerId: `restore-test-${process.pid}`, instanceId: 'test', prewarmPerShape: 0, logger });
    try {
      const status = await executor.probe();
      if (!status.ready) return t.skip(skipOrFail('microvm', `microvm executor not ready: ${status.reason}`));
      const spec = () => testSpec({ command: ['sh', '-c', 'head -c16 /dev/urandom | od -An -tx1 | tr -d " \\n"'] });
      const first = await runToCompletion(executor, spec()); // boots once to write the snapshot, then restores
      const second = await runToCompletion(executor, spec());
      assert.equal(first.exitCode, 0, first.stderr.toString());
      assert.equal(second.exitCode, 0, second.stderr.toString());
      const [a, b] = [first.stdout.toString(), second.stdout.toString()];
      assert.match(a, /^[0-9a-f]{32}$/);
      assert.match(b, /^[0-9a-f]{32}$/);
      assert.notEqual(a, b, 'two restored clones must not share RNG state');
      assert.deepEqual(warnings, [], 'the guest helper reseeded the CRNG (RNDRESEEDCRNG), not just mixed bytes in');
      t.diagnostic(`clone 1: ${a}, clone 2: ${b}; restore+run ${Math.round(second.wallMs)} ms`);

      // While the server runs: a snapshot not restored from for longer than the max age goes, and the next run of its
      // shape makes it anew instead of restoring from a file that is gone.
      const snapshots = path.join(stateDir, 'microvm', 'snapshots');
      const [written] = readdirSync(snapshots);
      assert.ok(written);
      const longAgo = new Date(Date.now() - 3 * 86_400_000);
      await utimes(path.join(snapshots, written), longAgo, longAgo);
      assert.equal(await executor.ageOut(), 1);
      assert.deepEqual(readdirSync(snapshots), []);
      const third = await runToCompletion(executor, spec());
      assert.equal(third.exitCode, 0, third.stderr.toString());
      assert.match(third.stdout.toString(), /^[0-9a-f]{32}$/);

      const files = readdirSync(snapshots);
      assert.equal(files.length, 1, 'the snapshot was written again');
      // A cached snapshot removed behind the executor's back (another pass of the ageing, an operator): the next run
      // boots instead of failing its restore.
      rmSync(path.join(snapshots, files[0] as string));
      const fourth = await runToCompletion(executor, spec());
      assert.equal(fourth.exitCode, 0, fourth.stderr.toString());
      assert.match(fourth.stdout.toString(), /^[0-9a-f]{32}$/);

      // reap(): nothing of ours is left in vms/; a snapshot unused for longer than the max age goes.
      await executor.close();
      const stale = path.join(snapshots, 'stale.vmstate');
      writeFileSync(stale, 'x');
      const old = new Date(Date.now() - 3 * 86_400_000);
      await utimes(stale, old, old);
      const fresh = new MicroVmExecutor({ driver: 'qemu', imagesDir, assetsDir, stateDir, ownerId: `restore-test-${process.pid}`, instanceId: 'test2', prewarmPerShape: 0 });
      const report = await fresh.reap();
      assert.ok(report.removed >= 1);
      assert.deepEqual(readdirSync(snapshots), []);
      assert.ok(!existsSync(path.join(stateDir, 'microvm', 'vms')) || readdirSync(path.join(stateDir, 'microvm', 'vms')).length === 0);
      await fresh.destroy();
    } finally {
      await executor.destroy();
    }
  });
});
