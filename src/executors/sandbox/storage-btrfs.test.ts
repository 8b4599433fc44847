import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { noopLogger } from '../shared/logger.js';
import { DEFAULT_BTRFS_HELPER_PATH } from './btrfs-helper.js';
import { mountsUnder } from './private-mounts.js';
import { BtrfsSandboxStorage, btrfsStorageProblem } from './storage-btrfs.js';
import { skipOrFail } from '../test-support.js';

const problem = process.getuid?.() !== 0 ? 'not root' : btrfsStorageProblem({ helperPath: DEFAULT_BTRFS_HELPER_PATH });
const UID = 65534;

/** Runs `script` as the sandbox uid (no capabilities), in `cwd`; returns its exit status and stderr. */
function asSandbox(cwd: string, script: string): { status: number | null; stderr: string } {
  const r = spawnSync('/usr/bin/setpriv', ['--reuid', String(UID), '--regid', String(UID), '--clear-groups', '--', '/bin/sh', '-c', script], { cwd, encoding: 'utf8' });
  return { status: r.status, stderr: r.stderr };
}

/** Bytes the btrfs file system at `dir` has allocated to data (what a copy of the files would grow). */
function dataUsed(dir: string): number {
  const out = execFileSync('/usr/bin/btrfs', ['filesystem', 'df', '-b', dir], { encoding: 'utf8' });
  return Number(/^Data.*used=(\d+)/m.exec(out)?.[1]);
}

describe('persistent sandboxes\' storage on btrfs', { skip: problem === null ? false : skipOrFail('sandbox', `btrfs storage: ${problem}`) }, () => {
  let dir = '';
  let storage: BtrfsSandboxStorage;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kindling-btrfs-'));
    storage = new BtrfsSandboxStorage({ dir, uid: UID, gid: UID, log: noopLogger, imageBytes: 4 * 1024 ** 3 });
  });

  after(async () => {
    await storage.closePool();
    assert.deepEqual(mountsUnder(dir), [], 'the file system is unmounted at close');
    assert.equal(execFileSync('losetup', ['-a'], { encoding: 'utf8' }).includes(dir), false, 'its loop device is released');
    await rm(dir, { recursive: true, force: true });
  });

  it('limits a sandbox\'s disk in the kernel (EDQUOT in the writer), snapshots and forks without copying, keeps snapshots immutable', async () => {
    const parent = await storage.attach('sbx_parent', 32, null);
    assert.equal(fs.statSync(parent.work).uid, UID);
    assert.equal(fs.statSync(parent.tmp).mode & 0o7777, 0o1777);
    // Over the limit: the writer's own error; the bytes under it stay.
    const full = asSandbox(parent.work, 'head -c 40000000 /dev/zero > big');
    assert.notEqual(full.status, 0);
    assert.match(full.stderr, /Disk quota exceeded/);
    assert.equal(asSandbox(parent.work, 'rm big && head -c 20971520 /dev/urandom > data && echo v1 > state && echo t > /dev/null && mkdir -p ../tmp/x && echo tmp > ../tmp/x/f').status, 0);
    // A nested subvolume would escape the limit: the sandbox's seccomp filter refuses the ioctl (seccomp.test.ts).

    // Written out first: a snapshot flushes what is still in the page cache, which is not a copy.
    execFileSync('/usr/bin/sync', ['-f', parent.work]);
    const before = dataUsed(storage.fsDir);
    const bytes = await storage.snapshot(parent, 'snap_one');
    assert.ok(bytes >= 20971520, `bytes ${bytes}`);
    const forks = await Promise.all(['sbx_f1', 'sbx_f2', 'sbx_f3'].map((id) => storage.attach(id, 32, 'snap_one')));
    // A snapshot and three forks of 20 MiB of files: far less than one copy of the data is allocated.
    const grown = dataUsed(storage.fsDir) - before;
    assert.ok(grown < 4 * 1024 * 1024, `grew ${grown} bytes`);

    // Forks see the snapshot's work dir, not its /tmp, and not each other's or the parent's later writes.
    assert.equal(asSandbox(parent.work, 'echo v2 > state').status, 0);
    assert.equal(asSandbox(forks[0]!.work, 'echo f1 > state').status, 0);
    assert.deepEqual(forks.map((f) => fs.readFileSync(join(f.work, 'state'), 'utf8')), ['f1\n', 'v1\n', 'v1\n']);
    assert.equal(fs.readFileSync(join(parent.work, 'state'), 'utf8'), 'v2\n');
    assert.deepEqual(fs.readdirSync(forks[1]!.tmp), []);
    assert.equal(fs.statSync(forks[1]!.tmp).mode & 0o7777, 0o1777);
    // Each fork has the parent's limit (the snapshot's files count in it).
    assert.match(asSandbox(forks[2]!.work, 'head -c 20000000 /dev/zero > more').stderr, /Disk quota exceeded/);

    // Immutable: not even root writes into a snapshot.
    const layer = join(storage.layerPath('snap_one'), 'work');
    assert.equal(fs.readFileSync(join(layer, 'state'), 'utf8'), 'v1\n');
    assert.throws(() => fs.writeFileSync(join(layer, 'state'), 'changed'), /EROFS/);

    // Attaching an existing disk keeps its files (a restart); removing it and the snapshot leaves nothing.
    const again = await storage.attach('sbx_parent', 32, null);
    assert.equal(fs.readFileSync(join(again.work, 'state'), 'utf8'), 'v2\n');
    await assert.rejects(storage.attach('sbx_nope', 32, 'snap_missing'), (error: { code?: string }) => error.code === 'SNAPSHOT_NOT_FOUND');
    for (const id of ['sbx_parent', 'sbx_f1', 'sbx_f2', 'sbx_f3']) await storage.removeDisk(id);
    await storage.removeSnapshot('snap_one');
    assert.deepEqual(fs.readdirSync(storage.disksDir), []);
    assert.deepEqual(fs.readdirSync(storage.snapshotsDir), []);
  });

  it('a new instance (a server restarted after kill -9) finds the file system mounted; reaping removes what is not kept', async () => {
    await storage.attach('sbx_kept', 16, null);
    await storage.attach('sbx_gone', 16, null);
    const kept = await storage.attach('sbx_kept', 16, null);
    await storage.snapshot(kept, 'snap_kept');
    await storage.snapshot(kept, 'snap_gone');
    // The predecessor's helper is not asked again: a new storage object on the same dir, as after a restart.
    const next = new BtrfsSandboxStorage({ dir, uid: UID, gid: UID, log: noopLogger });
    try {
      assert.equal(await next.reap(new Set(['sbx_kept']), new Set(['snap_kept'])), 2);
      assert.deepEqual(fs.readdirSync(next.disksDir), ['sbx_kept']);
      assert.deepEqual(fs.readdirSync(next.snapshotsDir), ['snap_kept']);
      await next.removeDisk('sbx_kept');
      await next.removeSnapshot('snap_kept');
    } finally {
      // `next` unmounts at its close; `storage` mounts again on its next use.
      await next.closePool();
    }
    assert.deepEqual(mountsUnder(dir), []);
  });
});
