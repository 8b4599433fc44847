/**
 * The microvm sandbox storage on the host's real tools (mkfs.ext4, qemu-img), no VM: a fresh disk is an ext4 labelled
 * kindling-data with work/ (nobody's) and tmp/ (1777); a restart gets the same file; a disk from a snapshot is an
 * overlay on it; hibernation records need their memory file; reap() and the remove calls leave only what is kept.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { isKindlingError } from '../../core/errors.js';
import { noopLogger } from '../shared/logger.js';
import { skipOrFail } from '../test-support.js';
import { MicroVmSandboxStorage } from './sandbox-storage.js';

const dirs: string[] = [];
after(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

const missingTool = (): string | null => {
  if (spawnSync('qemu-img', ['--version']).status !== 0) return 'qemu-img is not installed (Debian: qemu-utils)';
  if (!existsSync('/usr/sbin/mkfs.ext4') || !existsSync('/usr/sbin/debugfs')) return 'e2fsprogs (mkfs.ext4, debugfs) is not installed';
  return null;
};

async function storage(): Promise<{ store: MicroVmSandboxStorage; dir: string }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'kindling-microvm-storage-'));
  dirs.push(dir);
  return { store: new MicroVmSandboxStorage({ dir, qemuImgBinary: 'qemu-img', log: noopLogger }), dir };
}

const info = (file: string): { 'virtual-size': number; 'backing-filename'?: string; format: string } =>
  JSON.parse(execFileSync('qemu-img', ['info', '-U', '--output=json', file], { encoding: 'utf8' })) as { 'virtual-size': number; 'backing-filename'?: string; format: string };

describe('microvm sandbox storage', () => {
  it('makes a qcow2 data disk with an ext4 (label, work/ and tmp/), reuses it, and overlays snapshots', async (t) => {
    const missing = missingTool();
    if (missing) return t.skip(skipOrFail('microvm', missing));
    const { store, dir } = await storage();
    const disk = await store.attach('sbx-a', 64, null);
    assert.equal(info(disk).format, 'qcow2');
    assert.equal(info(disk)['virtual-size'], 64 << 20);
    assert.ok(statSync(disk).size < 8 << 20, 'sparse: the qcow2 holds the file system metadata only');
    const raw = path.join(dir, 'check.raw');
    execFileSync('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', disk, raw]);
    assert.match(execFileSync('/usr/sbin/dumpe2fs', ['-h', raw], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }), /Filesystem volume name:\s+kindling-data/);
    const listing = execFileSync('/usr/sbin/debugfs', ['-R', 'ls -l /', raw], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    assert.match(listing, /40755 \(2\)\s+65534\s+65534\s+\d+\s+\S+\s+\S+\s+work/);
    assert.match(listing, /41777 \(2\)\s+0\s+0\s+\d+\s+\S+\s+\S+\s+tmp/);
    // A restart: the same file, untouched.
    const mtime = statSync(disk).mtimeMs;
    assert.equal(await store.attach('sbx-a', 64, null), disk);
    assert.equal(statSync(disk).mtimeMs, mtime);

    const bytes = await store.snapshot(disk, 'snap-1');
    const snapshot = store.snapshotPath('snap-1');
    assert.equal(statSync(snapshot).size, bytes);
    assert.equal(statSync(snapshot).mode & 0o777, 0o444);
    const forkDisk = await store.attach('sbx-b', 64, 'snap-1');
    assert.equal(info(forkDisk)['backing-filename'], snapshot);
    assert.ok(statSync(forkDisk).size < 1 << 20, 'an overlay, not a copy');
    await assert.rejects(store.attach('sbx-c', 64, 'no-such-snapshot'), (error: unknown) => isKindlingError(error) && error.code === 'SNAPSHOT_NOT_FOUND');
    await assert.rejects(store.attach('../escape', 64, null), (error: unknown) => isKindlingError(error) && error.code === 'VALIDATION_FAILED');
  });

  it('keeps a hibernation only with its memory file; reap() and remove calls leave only what is kept', async (t) => {
    const missing = missingTool();
    if (missing) return t.skip(skipOrFail('microvm', missing));
    const { store, dir } = await storage();
    await store.attach('keep', 16, null);
    await store.attach('gone', 16, null);
    const record = { image: 'kindling/base', vcpus: 1, memoryMb: 416, streamsUsed: 7, savedAt: new Date().toISOString() };
    await store.saveHibernation('keep', record);
    assert.equal(await store.hibernation('keep'), null, 'no memory file: nothing to restore');
    writeFileSync(store.memoryPath('keep'), 'state');
    assert.deepEqual(await store.hibernation('keep'), record);
    await store.snapshot(store.diskPath('keep'), 'snap-keep');
    await store.snapshot(store.diskPath('keep'), 'snap-gone');
    writeFileSync(path.join(dir, 'disks', 'keep.qcow2.1234.partial'), '');

    assert.equal(await store.reap(new Set(['keep']), new Set(['snap-keep'])), 2);
    assert.deepEqual(readdirSync(path.join(dir, 'disks')).sort(), ['keep.json', 'keep.qcow2', 'keep.vmstate']);
    assert.deepEqual(readdirSync(path.join(dir, 'snapshots')), ['snap-keep.qcow2']);

    await store.dropHibernation('keep');
    assert.equal(await store.hibernation('keep'), null);
    await store.removeDisk('keep');
    await store.removeSnapshot('snap-keep');
    assert.deepEqual(readdirSync(path.join(dir, 'disks')), []);
    assert.deepEqual(readdirSync(path.join(dir, 'snapshots')), []);
  });

  it("keeps a snapshot's memory half only once complete (0444, with its record); a failed save leaves none; removal and reap() take all of it", async (t) => {
    const missing = missingTool();
    if (missing) return t.skip(skipOrFail('microvm', missing));
    const { store, dir } = await storage();
    await store.attach('src', 16, null);
    await store.snapshot(store.diskPath('src'), 'snap-mem');
    assert.equal(await store.snapshotMemory('snap-mem'), null, 'a snapshot of the files only has no memory half');
    const record = { image: 'kindling/base', vcpus: 1, memoryMb: 416, streamsUsed: 9, machine: 'abc', limits: { memoryMb: 256, cpus: 1, pids: 128, diskMb: 16 } };

    // The save fails half-way: no memory file, no record, no partial file.
    await assert.rejects(
      store.saveSnapshotMemory('snap-mem', record, async (file) => {
        writeFileSync(file, 'half');
        throw new Error('migration failed');
      }),
      /migration failed/,
    );
    assert.equal(await store.snapshotMemory('snap-mem'), null);
    assert.deepEqual(readdirSync(path.join(dir, 'snapshots')), ['snap-mem.qcow2']);

    const bytes = await store.saveSnapshotMemory('snap-mem', record, async (file) => writeFileSync(file, 'the vm state'));
    assert.equal(bytes, 'the vm state'.length);
    const saved = await store.snapshotMemory('snap-mem');
    assert.deepEqual({ ...saved, savedAt: undefined }, { ...record, savedAt: undefined });
    assert.equal(statSync(store.snapshotMemoryPath('snap-mem')).mode & 0o777, 0o444, "a snapshot's memory is never written again");
    assert.deepEqual(readdirSync(path.join(dir, 'snapshots')).sort(), ['snap-mem.json', 'snap-mem.qcow2', 'snap-mem.vmstate']);

    // reap() keeps all three for a kept snapshot, takes all three of one that is not.
    assert.equal(await store.reap(new Set(['src']), new Set(['snap-mem'])), 0);
    assert.equal(readdirSync(path.join(dir, 'snapshots')).length, 3);
    assert.equal(await store.reap(new Set(['src']), new Set()), 1);
    assert.deepEqual(readdirSync(path.join(dir, 'snapshots')), []);

    await store.snapshot(store.diskPath('src'), 'snap-2');
    await store.saveSnapshotMemory('snap-2', record, async (file) => writeFileSync(file, 'state'));
    await store.removeSnapshot('snap-2');
    assert.deepEqual(readdirSync(path.join(dir, 'snapshots')), []);
    assert.equal(await store.snapshotMemory('snap-2'), null);
  });
});
