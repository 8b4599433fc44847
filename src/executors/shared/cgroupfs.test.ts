import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { CounterFiles, openUsageV1, openUsageV2 } from './cgroupfs.js';

const dir = mkdtempSync(path.join(tmpdir(), 'kindling-cgroupfs-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('CounterFiles: counters read through files kept open', () => {
  it('reads the current content at every call, null for a missing file, nothing after close()', () => {
    const file = path.join(dir, 'cpuacct.usage');
    writeFileSync(file, '5000000\n');
    const files = new CounterFiles();
    assert.equal(files.number(file), 5_000_000);
    writeFileSync(file, '7000000\n');
    assert.equal(files.number(file), 7_000_000, 'the new value, read from the start of the same open file');
    assert.equal(files.number(path.join(dir, 'absent')), null);
    writeFileSync(path.join(dir, 'text'), 'max\n');
    assert.equal(files.number(path.join(dir, 'text')), null, 'not a number');
    files.close();
    assert.equal(files.number(file), null);
  });

  it('v1 and v2 readers parse their files', () => {
    const v1Dir = mkdtempSync(path.join(dir, 'v1-'));
    writeFileSync(path.join(v1Dir, 'cpuacct.usage'), '2500000\n');
    writeFileSync(path.join(v1Dir, 'memory.max_usage_in_bytes'), '1048576\n');
    const one = openUsageV1(v1Dir, v1Dir);
    assert.deepEqual(one.read(), { cpuMs: 2.5, memoryPeakBytes: 1_048_576 });
    one.close();
    const v2Dir = mkdtempSync(path.join(dir, 'v2-'));
    writeFileSync(path.join(v2Dir, 'cpu.stat'), 'usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n');
    const two = openUsageV2(v2Dir);
    assert.deepEqual(two.read(), { cpuMs: 1.5, memoryPeakBytes: null }, 'no memory.peak on this kernel: null');
    two.close();
  });

  it("a real cgroup's CPU counter grows between two reads of the same open file", (t) => {
    const file = ['/sys/fs/cgroup/cpuacct/cpuacct.usage', '/sys/fs/cgroup/cpu.stat'].find((candidate) => existsSync(candidate));
    if (file === undefined) {
      t.skip('no cgroup CPU counter readable here (/sys/fs/cgroup/cpuacct/cpuacct.usage or /sys/fs/cgroup/cpu.stat)');
      return;
    }
    const files = new CounterFiles();
    const value = (): number => (file.endsWith('cpu.stat') ? Number(/^usage_usec (\d+)$/m.exec(files.text(file) ?? '')?.[1]) : files.number(file)!);
    const before = value();
    const until = Date.now() + 50;
    let spin = 0;
    while (Date.now() < until) spin++;
    assert.ok(spin > 0);
    assert.ok(value() > before, 'the counter moved: the kernel renders the file anew for each read from its start');
    files.close();
  });
});
