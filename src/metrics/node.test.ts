import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { Metrics } from './metrics.js';
import { checkNodeName, filesystemSpace } from './node.js';

describe('node label and data dir space', () => {
  it('takes a host-like node name and refuses an empty, overlong or multi-line one', () => {
    assert.equal(checkNodeName('worker-1.example'), 'worker-1.example');
    assert.throws(() => checkNodeName(''), /must not be empty/);
    assert.throws(() => checkNodeName('x'.repeat(254)), /254 characters long; at most 253/);
    assert.throws(() => checkNodeName('a\nb'), /control characters/);
  });

  it('labels every metric, the process defaults too, with the node name', async () => {
    const metrics = new Metrics({ nodeName: 'n-1', queue: () => ({ running: 0, queued: 3 }) });
    const lines = (await metrics.registry.metrics()).split('\n').filter((line) => line !== '' && !line.startsWith('#'));
    assert.ok(lines.length > 20);
    for (const line of lines) assert.match(line, /\{(.*,)?node="n-1"\} /, line);
    assert.ok(lines.includes('kindling_queue_depth{node="n-1"} 3'));
    assert.ok(lines.some((line) => line.startsWith('kindling_process_resident_memory_bytes{node="n-1"}')));
  });

  it("reads the data dir's filesystem on scrape, as df does", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kindling-space-'));
    try {
      const space = await filesystemSpace(dir);
      assert.ok(space !== null && space.sizeBytes > 0 && space.freeBytes >= 0 && space.freeBytes <= space.sizeBytes, JSON.stringify(space));
      // df's 1K-blocks and Available of the same filesystem, read around the statfs (other writers: a loose bound).
      const [sizeKb, availableKb] = execFileSync('df', ['-k', '--output=size,avail', dir], { encoding: 'utf8' }).trim().split('\n')[1]!.trim().split(/\s+/).map(Number);
      assert.equal(space.sizeBytes, sizeKb! * 1024);
      assert.ok(Math.abs(space.freeBytes - availableKb! * 1024) < 256 * 1024 * 1024, `statfs ${space.freeBytes}, df ${availableKb! * 1024}`);
      assert.equal(await filesystemSpace(join(dir, 'gone')), null);

      const metrics = new Metrics({ collectProcess: false, dataDirSpace: () => filesystemSpace(dir) });
      const text = await metrics.registry.metrics();
      assert.match(text, new RegExp(`^kindling_data_dir_size_bytes ${space.sizeBytes}$`, 'm'));
      assert.match(text, /^kindling_data_dir_free_bytes \d+$/m);
      const unreadable = new Metrics({ collectProcess: false, dataDirSpace: () => filesystemSpace(join(dir, 'gone')) });
      assert.match(await unreadable.registry.metrics(), /^kindling_data_dir_free_bytes Nan$/m);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
