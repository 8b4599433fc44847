/**
 * makeFifos and its long-lived maker: real FIFOs on the host, the maker's error passed on, concurrent requests, and a
 * maker killed between requests replaced by the next one.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { FifoMaker, makeFifos } from './fifo.js';
import { processAlive } from './process.js';

const root = mkdtempSync(join(tmpdir(), 'kindling-fifo-test-'));
after(() => rmSync(root, { recursive: true, force: true }));

describe('makeFifos', () => {
  it('makes FIFOs with the mode and group asked, many requests at once', async () => {
    const batches = Array.from({ length: 10 }, (_, b) => Array.from({ length: 3 }, (_, i) => join(root, `b${b}-${i} with space`)));
    await Promise.all(batches.map((paths) => makeFifos(paths, { mode: 0o660, gid: 0 })));
    for (const path of batches.flat()) {
      const stat = statSync(path);
      assert.ok(stat.isFIFO(), `${path} is a FIFO`);
      assert.equal(stat.mode & 0o777, 0o660);
      assert.equal(stat.gid, 0);
    }
  });

  it("passes mkfifo's error on (a missing directory, a name that exists)", async () => {
    await assert.rejects(makeFifos([join(root, 'no-such-dir', 'f')], { mode: 0o600, gid: 0 }), /mkfifo failed: .*No such file or directory/);
    const path = join(root, 'twice');
    await makeFifos([path], { mode: 0o600, gid: 0 });
    await assert.rejects(makeFifos([path], { mode: 0o600, gid: 0 }), /mkfifo failed: .*File exists/);
  });
});

describe('FifoMaker', () => {
  it('starts another maker when the last one was killed, and one maker serves many requests', async () => {
    const maker = new FifoMaker();
    await maker.make([join(root, 'm1')]);
    const first = maker.pid;
    assert.ok(first !== null && processAlive(first));
    await maker.make([join(root, 'm2')]);
    assert.equal(maker.pid, first, 'the same maker served the second request');
    process.kill(first, 'SIGKILL');
    await maker.make([join(root, 'm3')]);
    assert.ok(statSync(join(root, 'm3')).isFIFO());
    await maker.make([join(root, 'm4')]);
    assert.ok(maker.pid !== null && maker.pid !== first, 'a new maker runs');
    assert.ok(statSync(join(root, 'm4')).isFIFO());
  });

  it('replaces a maker that does not answer (stopped) and still makes the FIFOs', async () => {
    const maker = new FifoMaker(300);
    await maker.make([join(root, 's1')]);
    const stopped = maker.pid!;
    process.kill(stopped, 'SIGSTOP');
    try {
      const started = performance.now();
      await maker.make([join(root, 's2')]);
      assert.ok(performance.now() - started >= 250, 'the request waited for the answer first');
      assert.ok(statSync(join(root, 's2')).isFIFO());
      await maker.make([join(root, 's3')]);
      assert.ok(maker.pid !== null && maker.pid !== stopped, 'a new maker runs');
    } finally {
      try {
        process.kill(stopped, 'SIGKILL');
      } catch {
        // replaced and killed already
      }
    }
  });
});
