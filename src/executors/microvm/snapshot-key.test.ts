/**
 * The name of a microVM shape's snapshot (snapshotKey): the same files give the same name; a bind disk made again
 * (another inode: what ageOut() followed by a new request does) or grown, a rewritten root image, another memory size
 * or accelerator each give another name, so a guest is never restored from a snapshot of disks it no longer has.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, renameSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { isKindlingError } from '../../core/errors.js';
import type { RunSpec } from '../../core/types.js';
import { checkForkOfMemorySnapshot, snapshotKey } from './index.js';

const dir = mkdtempSync(join(tmpdir(), 'kindling-snapshot-key-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function setup(): { key: (overrides?: { memoryMb?: number; accel?: string }) => string; disk: string; root: string } {
  const caseDir = mkdtempSync(join(dir, 'case-'));
  const root = join(caseDir, 'root.ext4');
  const disk = join(caseDir, 'bind.ext4');
  writeFileSync(root, 'root image');
  writeFileSync(disk, 'bind disk');
  const key = (overrides: { memoryMb?: number; accel?: string } = {}): string =>
    snapshotKey({
      driver: 'qemu',
      shape: { rootImage: root, vcpus: 1, memoryMb: overrides.memoryMb ?? 416, binds: [{ file: disk, label: 'kb-test', target: '/work' }] },
      accel: overrides.accel ?? 'tcg',
      assetsHash: 'assets-1',
    });
  return { key, disk, root };
}

test('the same files give the same name', () => {
  const { key } = setup();
  assert.equal(key(), key());
  assert.match(key(), /^[0-9a-f]{16}$/);
});

test('a bind disk made again under the same path (another inode, same size and content) gives another name', () => {
  const { key, disk } = setup();
  const before = key();
  const remade = `${disk}.new`;
  writeFileSync(remade, 'bind disk');
  renameSync(remade, disk);
  assert.notEqual(key(), before);
});

test('a bind disk that grew, a rewritten root image, another memory size or accelerator: another name', () => {
  const { key, disk, root } = setup();
  const before = key();
  writeFileSync(disk, 'bind disk, longer now');
  const afterDisk = key();
  assert.notEqual(afterDisk, before);
  utimesSync(root, new Date(), new Date(Date.now() + 60_000));
  const afterRoot = key();
  assert.notEqual(afterRoot, afterDisk);
  assert.notEqual(key({ memoryMb: 672 }), afterRoot);
  assert.notEqual(key({ accel: 'kvm' }), afterRoot);
});

test("a sandbox from a memory snapshot must have the snapshot's image and limits: others are refused, naming them", () => {
  const limits = { timeoutMs: 60_000, memoryMb: 256, cpus: 1, pids: 128, outputBytes: 1 << 20, diskMb: 64, openFiles: 1024 };
  const spec = (changes: Partial<typeof limits> = {}): RunSpec => ({ id: 'sb', image: 'kindling/base', command: [], env: {}, workdir: '/work', network: 'none', stdin: false, files: [], labels: {}, limits: { ...limits, ...changes } }) as RunSpec;
  const saved = { image: 'kindling/base', vcpus: 1, memoryMb: 416, streamsUsed: 3, savedAt: '', limits: { memoryMb: 256, cpus: 1, pids: 128, diskMb: 64 } };
  checkForkOfMemorySnapshot(spec(), 'kindling/base', 'snap', saved);
  // The lifetime and output cap are the new sandbox's own.
  checkForkOfMemorySnapshot(spec({ timeoutMs: 5_000, outputBytes: 10 }), 'kindling/base', 'snap', saved);
  const refused = (run: () => void, fields: string[]): void =>
    assert.throws(run, (error: unknown) => isKindlingError(error) && error.code === 'CONFLICTING_FIELDS' && JSON.stringify((error.details as { fields: string[] }).fields) === JSON.stringify(fields));
  refused(() => checkForkOfMemorySnapshot(spec({ memoryMb: 512 }), 'kindling/base', 'snap', saved), ['memoryMb']);
  refused(() => checkForkOfMemorySnapshot(spec({ cpus: 2, pids: 64, diskMb: 128 }), 'kindling/base', 'snap', saved), ['cpus', 'pids', 'diskMb']);
  refused(() => checkForkOfMemorySnapshot(spec(), 'kindling/python', 'snap', saved), ['image']);
  // A record from before limits were saved: only the image is checked.
  checkForkOfMemorySnapshot(spec({ memoryMb: 512 }), 'kindling/base', 'snap', { ...saved, limits: undefined });
});
