import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { CursorStore } from './cursor-store.js';
import { FakeChain } from './test-support.js';
import { Watcher } from './watcher.js';

const dirs: string[] = [];
after(async () => {
  for (const dir of dirs) await rm(dir, { recursive: true, force: true });
});

async function storeFile(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'kindling-watcher-'));
  dirs.push(dir);
  return join(dir, 'operator.db');
}

async function pollUntilCaughtUp(watcher: Watcher): Promise<{ newCalls: bigint[]; droppedCalls: bigint[] }> {
  const all = { newCalls: [] as bigint[], droppedCalls: [] as bigint[] };
  for (;;) {
    const result = await watcher.poll();
    all.newCalls.push(...result.newCalls);
    all.droppedCalls.push(...result.droppedCalls);
    if (result.caughtUp) return all;
  }
}

describe('Watcher', () => {
  it('reads only blocks at the confirmation depth, in bounded ranges, and never the same call twice', async () => {
    const chain = new FakeChain();
    const store = new CursorStore(await storeFile(), 'test');
    const watcher = new Watcher({ chain, store, confirmations: 2, maxBlockRange: 3n });
    for (let i = 0n; i < 10n; i++) chain.mine([{ callId: i }]);
    const first = await watcher.poll();
    assert.equal(first.caughtUp, false, 'a range of at most 3 blocks per read');
    // Blocks 0..2 (block n + 1 holds call n).
    assert.deepEqual(first.newCalls, [0n, 1n]);
    const rest = await pollUntilCaughtUp(watcher);
    // Head 10, 2 confirmations: blocks up to 8 hold calls 0..7.
    assert.deepEqual(rest.newCalls, [2n, 3n, 4n, 5n, 6n, 7n]);
    assert.equal(store.cursor()?.number, 8n);
    assert.deepEqual((await pollUntilCaughtUp(watcher)).newCalls, []);
    chain.mine();
    assert.deepEqual((await pollUntilCaughtUp(watcher)).newCalls, [8n]);
    store.close();
  });

  it('resumes from the persisted cursor after a restart', async () => {
    const file = await storeFile();
    const chain = new FakeChain();
    let store = new CursorStore(file, 'test');
    chain.mine([{ callId: 0n }]);
    chain.mine([{ callId: 1n }]);
    assert.deepEqual((await pollUntilCaughtUp(new Watcher({ chain, store, confirmations: 0 }))).newCalls, [0n, 1n]);
    store.transition(0n, ['seen'], 'done', { nowMs: 0 });
    store.close();
    chain.mine([{ callId: 2n }]);
    store = new CursorStore(file, 'test');
    assert.deepEqual((await pollUntilCaughtUp(new Watcher({ chain, store, confirmations: 0 }))).newCalls, [2n]);
    assert.equal(store.call(0n)?.state, 'done');
    // Another scope (another chain or service) in the same file starts from the beginning.
    const other = new CursorStore(file, 'other');
    assert.equal(other.cursor(), null);
    other.close();
    store.close();
  });

  it('a reorg drops calls of orphaned blocks that were not submitted, keeps submitted ones, and reads a reappearing call again', async () => {
    const chain = new FakeChain();
    const store = new CursorStore(await storeFile(), 'test');
    const watcher = new Watcher({ chain, store, confirmations: 0 });
    chain.mine([{ callId: 0n }], [{ callId: 0n, kind: 'assigned', operator: '0x00000000000000000000000000000000000000b1', deadline: 100n, reason: 0 }]);
    const fork = chain.mine([{ callId: 1n }]);
    chain.mine([{ callId: 2n }], [{ callId: 2n, kind: 'assigned', operator: '0x00000000000000000000000000000000000000b1', deadline: 100n, reason: 0 }]);
    chain.mine([{ callId: 3n }]);
    await pollUntilCaughtUp(watcher);
    store.transition(1n, ['seen'], 'submitted', { result: '0xaa', nowMs: 0 });
    store.transition(2n, ['seen'], 'running', { nowMs: 0 });
    chain.reorgTo(fork - 1n);
    chain.mine();
    chain.mine([{ callId: 2n }]);
    const after = await pollUntilCaughtUp(watcher);
    assert.deepEqual(after.droppedCalls.sort(), [2n, 3n], 'seen and running calls of the orphaned blocks are dropped');
    assert.equal(store.call(3n), null);
    assert.equal(store.call(1n)?.state, 'submitted', 'a submitted result is kept (sent again once the call is back)');
    assert.deepEqual(after.newCalls, [2n], 'call 2 reappeared in a new block and is read again');
    assert.equal(store.call(2n)?.state, 'seen');
    assert.equal(store.call(2n)?.blockHash, chain.blocks[Number(fork) + 1]!.hash);
    assert.deepEqual(store.assignments().map((a) => a.callId), [0n], 'assignment events of orphaned blocks are forgotten');
    assert.equal(store.call(0n)?.state, 'seen', 'calls below the common ancestor are untouched');
    store.close();
  });

  it('a call id that reappears after a reorg as another job with the same inputs is a new job, not the old result', async () => {
    const chain = new FakeChain();
    const store = new CursorStore(await storeFile(), 'test');
    const watcher = new Watcher({ chain, store, confirmations: 0 });
    // Job 7 (stop) then, on the other branch, job 8 (pause) of the same instance: the same ABI encoding.
    const fork = chain.mine([{ callId: 0n, jobIndex: 7, inputs: '0x0abc' }]);
    await pollUntilCaughtUp(watcher);
    store.transition(0n, ['seen'], 'submitted', { result: '0xaa', nowMs: 0 });
    chain.reorgTo(fork - 1n);
    chain.mine();
    chain.mine([{ callId: 0n, jobIndex: 8, inputs: '0x0abc' }]);
    const after = await pollUntilCaughtUp(watcher);
    assert.deepEqual(after.newCalls, [0n]);
    assert.equal(store.call(0n)?.jobIndex, 8);
    assert.equal(store.call(0n)?.state, 'seen', "job 7's result is not posted for job 8");
    store.close();
  });

  it('a reorg deeper than every kept position reads again from the start block', async () => {
    const chain = new FakeChain();
    const store = new CursorStore(await storeFile(), 'test');
    const watcher = new Watcher({ chain, store, confirmations: 0 });
    chain.mine([{ callId: 0n }]);
    await pollUntilCaughtUp(watcher);
    chain.reorgTo(0n);
    chain.mine([{ callId: 0n, inputs: '0x02' }]);
    const after = await pollUntilCaughtUp(watcher);
    assert.deepEqual(after.droppedCalls, [0n]);
    assert.deepEqual(after.newCalls, [0n]);
    assert.equal(store.call(0n)?.inputs, '0x02');
    store.close();
  });
});
