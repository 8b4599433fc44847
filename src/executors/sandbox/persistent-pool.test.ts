import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { RunSpec } from '../../core/types.js';
import type { PersistentSandbox } from '../executor.js';
import { DEFAULT_BTRFS_HELPER_PATH } from './btrfs-helper.js';
import { SandboxExecutor } from './index.js';
import { btrfsStorageProblem } from './storage-btrfs.js';
import { skipOrFail } from '../test-support.js';
import { waitFor } from '../../../test/helpers/wait.js';

const imagesDir = process.env.KINDLING_IMAGES_DIR ?? '/var/lib/kindling/images';
const stateDir = mkdtempSync(join(tmpdir(), 'kindling-pool-test-'));
// bwrap binds below it as the sandbox uid.
chmodSync(stateDir, 0o711);
const owner = `pool-${process.pid}`;
let executor: SandboxExecutor;
let skipReason = '';


async function run(sandbox: PersistentSandbox, command: string[]): Promise<{ exitCode: number; stdout: string; stderr: string }> {
  const running = await sandbox.exec({ command, env: {}, workdir: '/work', stdin: false });
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  running.stdout.on('data', (chunk: Buffer) => out.push(chunk));
  running.stderr.on('data', (chunk: Buffer) => err.push(chunk));
  const { exitCode } = await running.wait();
  return { exitCode, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() };
}

const spec = (id: string, env: Record<string, string>, memoryMb: number, diskMb: number): RunSpec => ({
  id,
  image: 'kindling/base',
  command: [],
  env,
  workdir: '/work',
  limits: { memoryMb, cpus: 1, pids: 64, diskMb, timeoutMs: 300_000, openFiles: 256, outputBytes: 1 << 20 },
  network: 'none',
  stdin: false,
  files: [],
  labels: {},
});

/** The memory limit of the cgroup of the host process whose command line holds `marker` (cgroup v1 or v2). */
function memoryLimitOf(marker: string): string | null {
  for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    try {
      if (!readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ').includes(marker)) continue;
      const lines = readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n');
      const v1 = lines.find((line) => /^\d+:memory:/.test(line));
      if (v1 !== undefined) return readFileSync(join('/sys/fs/cgroup/memory', v1.split(':')[2]!, 'memory.limit_in_bytes'), 'utf8').trim();
      return readFileSync(join('/sys/fs/cgroup', lines.find((line) => line.startsWith('0::'))!.slice(3), 'memory.max'), 'utf8').trim();
    } catch {
      // gone
    }
  }
  return null;
}

before(async () => {
  if (process.getuid?.() !== 0) skipReason = 'the sandbox executor needs root';
  else skipReason = btrfsStorageProblem({ helperPath: DEFAULT_BTRFS_HELPER_PATH }) ?? '';
  executor = new SandboxExecutor({ imagesDir, stateDir, ownerId: owner, instanceId: 'test', prewarmPerShape: 1 });
  if (skipReason === '') {
    const status = await executor.probe();
    if (!status.ready) skipReason = `sandbox not ready: ${status.reason}`;
  }
  if (skipReason !== '') skipOrFail('sandbox', skipReason);
});

after(async () => {
  await executor.close();
  await rm(stateDir, { recursive: true, force: true });
});

describe('persistent sandboxes: the pool of ready ones (btrfs storage, prewarm > 0)', () => {
  it('a create takes a ready sandbox and makes it its own: id, env, memory limit, disk size; never one used before', async (t) => {
    if (skipReason !== '') return t.skip(skipReason);
    const disks = join(stateDir, 'sandbox-storage', owner, 'fs', 'disks');
    const made: PersistentSandbox[] = [];
    try {
      // The first create of a shape finds none ready (a cold start) and has the pool filled behind it.
      made.push(await executor.createPersistentSandbox(spec('sbx_first', { WHO: 'first' }, 128, 64), { storage: { fromSnapshot: null } }));
      assert.deepEqual(executor.persistentPoolStats, { hits: 0, misses: 1, ready: executor.persistentPoolStats!.ready });
      await run(made[0]!, ['sh', '-c', 'echo used > /work/mine; echo used > /tmp/mine']);
      await waitFor(() => executor.persistentPoolStats!.ready === 1, { what: 'a sandbox is ready in the pool' });

      const second = await executor.createPersistentSandbox(spec('sbx_second', { WHO: 'second' }, 48, 8), { storage: { fromSnapshot: null } });
      made.push(second);
      assert.equal(executor.persistentPoolStats!.hits, 1, 'served from the pool');
      assert.equal(second.id, 'sbx_second');
      assert.deepEqual(readdirSync(disks).filter((name) => !name.startsWith('pool_')).sort(), ['sbx_first', 'sbx_second']);
      // Its env is the taker's; nothing of another sandbox's files is there.
      assert.equal((await run(second, ['sh', '-c', 'echo "$WHO"; ls -A /work /tmp'])).stdout, 'second\n/tmp:\n\n/work:\n');
      // Its limits are the taker's: memory (the cgroup) and disk (the qgroup).
      const marker = `sleep 31${Math.floor(Math.random() * 1000) + 1000}`;
      await run(second, ['sh', '-c', `${marker} >/dev/null 2>&1 &`]);
      await waitFor(() => memoryLimitOf(marker) !== null, { what: 'the background process is up' });
      assert.equal(memoryLimitOf(marker), String(48 * 1024 * 1024));
      const full = await run(second, ['sh', '-c', 'head -c 20000000 /dev/zero > big']);
      assert.notEqual(full.exitCode, 0);
      assert.match(full.stderr, /Disk quota exceeded/);

      // The pool refills; the next taker gets a fresh one, not the second's.
      await waitFor(() => executor.persistentPoolStats!.ready === 1, { what: 'the pool is refilled' });
      const third = await executor.createPersistentSandbox(spec('sbx_third', {}, 64, 16), { storage: { fromSnapshot: null } });
      made.push(third);
      assert.equal(executor.persistentPoolStats!.hits, 2);
      assert.equal((await run(third, ['ls', '-A', '/work'])).stdout, '');
      // A restart on kept files or a fork never comes from the pool.
      await made[0]!.destroy();
      const restarted = await executor.createPersistentSandbox(spec('sbx_first', {}, 64, 64), { storage: { fromSnapshot: null } });
      made[0] = restarted;
      assert.equal((await run(restarted, ['cat', '/work/mine'])).stdout, 'used\n');
      assert.equal(executor.persistentPoolStats!.hits, 2);
    } finally {
      for (const sandbox of made) await sandbox.destroy();
    }
    for (const id of ['sbx_first', 'sbx_second', 'sbx_third']) await executor.sandboxStorage.removeDisk(id);
    await executor.close();
    assert.ok(!existsSync(disks) || readdirSync(disks).length === 0, 'the pooled sandboxes\' disks are removed at close');
    // The loop device goes once the file system is unmounted (the kernel releases it asynchronously).
    await waitFor(() => !execFileSync('losetup', ['-a'], { encoding: 'utf8' }).includes(stateDir), { what: 'the loop device is released' });
  });
});
