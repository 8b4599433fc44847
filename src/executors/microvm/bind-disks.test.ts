import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { BindDisks } from './bind-disks.js';

const work = mkdtempSync(path.join(tmpdir(), 'kindling-bind-disks-'));
after(() => rmSync(work, { recursive: true, force: true }));

/** The listing of `dir` inside an ext4 image (debugfs reads it without mounting). */
const listing = (file: string, dir: string): string => execFileSync('/usr/sbin/debugfs', ['-R', `ls -l ${dir}`, file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
const label = (file: string): string => execFileSync('/usr/sbin/dumpe2fs', ['-h', file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).match(/^Filesystem volume name:\s+(\S+)/m)?.[1] ?? '';

describe('BindDisks: read-only ext4 disks of host directories for microVMs', () => {
  it("copies the directory's files, makes the nested bind's mount point, labels the disk, and makes it once", async () => {
    const bundle = path.join(work, 'bundle');
    const layer = path.join(work, 'layer');
    mkdirSync(path.join(bundle, 'src'), { recursive: true });
    writeFileSync(path.join(bundle, 'src', 'index.js'), 'console.log(1)\n');
    writeFileSync(path.join(bundle, 'big.bin'), Buffer.alloc(3 * 1048576, 7));
    mkdirSync(path.join(layer, 'ms'), { recursive: true });
    writeFileSync(path.join(layer, 'ms', 'index.js'), 'module.exports = 1\n');
    const disks = new BindDisks({ dir: path.join(work, 'disks') });
    const binds = [
      { source: bundle, target: '/work' },
      { source: layer, target: '/work/node_modules' },
    ];
    const [outer, inner] = await disks.disksFor(binds);
    assert.ok(outer && inner);
    assert.equal(outer.target, '/work');
    assert.equal(inner.target, '/work/node_modules');
    assert.match(outer.label, /^kb-[0-9a-f]{13}$/);
    assert.ok(outer.label.length <= 16, 'an ext4 label has at most 16 characters');
    assert.notEqual(outer.label, inner.label);
    assert.equal(label(outer.file), outer.label);
    const root = listing(outer.file, '/');
    assert.match(root, / src\n/);
    assert.match(root, / big\.bin\n/);
    assert.match(root, /40755 .* node_modules\n/, 'the mount point of the nested bind');
    assert.match(listing(inner.file, '/ms'), / index\.js\n/);
    assert.doesNotMatch(listing(inner.file, '/'), /node_modules/, 'the layer has no nested bind');
    assert.equal(statSync(outer.file).mode & 0o777, 0o444);

    // Again (another run of the same function): the same files, not made anew.
    const inode = statSync(outer.file).ino;
    const again = await disks.disksFor(binds);
    assert.deepEqual(again, [outer, inner]);
    assert.equal(statSync(outer.file).ino, inode);
    // The same layer under another bundle is the same disk; the bundle alone (no nested bind) is another.
    const otherBundle = path.join(work, 'other-bundle');
    mkdirSync(otherBundle);
    writeFileSync(path.join(otherBundle, 'index.js'), 'console.log(2)\n');
    const [, shared] = await disks.disksFor([{ source: otherBundle, target: '/work' }, { source: layer, target: '/work/node_modules' }]);
    assert.equal(shared?.file, inner.file);
    const [alone] = await disks.disksFor([{ source: bundle, target: '/work' }]);
    assert.notEqual(alone?.file, outer.file);
    assert.doesNotMatch(listing(alone!.file, '/'), /node_modules/);
  });

  it('asking for a disk marks it used (mtime); a disk removed since is made anew', async () => {
    const dir = path.join(work, 'reuse');
    mkdirSync(dir);
    writeFileSync(path.join(dir, 'a.txt'), 'a\n');
    const disks = new BindDisks({ dir: path.join(work, 'disks-3') });
    const [first] = await disks.disksFor([{ source: dir, target: '/work' }]);
    assert.ok(first);
    const old = new Date(Date.now() - 3 * 86_400_000);
    utimesSync(first.file, old, old);
    const [again] = await disks.disksFor([{ source: dir, target: '/work' }]);
    assert.equal(again?.file, first.file);
    assert.ok(Date.now() - statSync(first.file).mtimeMs < 60_000, 'touched as used');
    rmSync(first.file, { force: true });
    const [remade] = await disks.disksFor([{ source: dir, target: '/work' }]);
    assert.equal(remade?.file, first.file);
    assert.match(listing(first.file, '/'), / a\.txt\n/);
  });

  it('a directory that cannot be read fails with its path', async () => {
    const disks = new BindDisks({ dir: path.join(work, 'disks-2') });
    await assert.rejects(disks.disksFor([{ source: path.join(work, 'absent'), target: '/work' }]), /could not make a disk of .*absent/);
  });
});
