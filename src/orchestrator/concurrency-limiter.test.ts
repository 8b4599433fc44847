import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KindlingError } from '../core/errors.js';
import { ConcurrencyLimiter } from './concurrency-limiter.js';

test('runs up to maxConcurrent, queues up to maxQueued in order, rejects the rest with 429', async () => {
  const limiter = new ConcurrencyLimiter({ maxConcurrent: 2, maxQueued: 1, queueTimeoutMs: 10_000 });
  const first = await limiter.acquire();
  const second = await limiter.acquire();
  const order: string[] = [];
  const third = limiter.acquire().then((release) => {
    order.push('third');
    return release;
  });
  await assert.rejects(limiter.acquire(), (error: unknown) => error instanceof KindlingError && error.code === 'TOO_MANY_REQUESTS' && error.retryAfterSeconds === 1);
  assert.deepEqual(limiter.stats, { running: 2, queued: 1, maxConcurrent: 2, maxQueued: 1 });
  first();
  first(); // a second release is ignored
  const releaseThird = await third;
  assert.deepEqual(order, ['third']);
  assert.equal(limiter.stats.running, 2);
  second();
  releaseThird();
  assert.equal(limiter.stats.running, 0);
});

test('a queued request gives up after queueTimeoutMs and when its signal aborts', async () => {
  const limiter = new ConcurrencyLimiter({ maxConcurrent: 1, maxQueued: 5, queueTimeoutMs: 30 });
  const release = await limiter.acquire();
  await assert.rejects(limiter.acquire(), /no execution slot became free within 30 ms/);
  const abort = new AbortController();
  const waiting = limiter.acquire(abort.signal);
  abort.abort(new Error('client went away'));
  await assert.rejects(waiting, /client went away/);
  assert.equal(limiter.stats.queued, 0);
  release();
  assert.equal(limiter.stats.running, 0);
});

test('the 429 names the limit that was met and what sets it', async () => {
  const limiter = new ConcurrencyLimiter({ maxConcurrent: 1, maxQueued: 0, queueTimeoutMs: 30, slotName: 'warm sandbox start', limitName: '--max-concurrent-warm-starts' });
  const release = await limiter.acquire();
  await assert.rejects(limiter.acquire(), (error: Error) => {
    assert.match(error.message, /^the queue for a free warm sandbox start is full \(1 running, set by --max-concurrent-warm-starts, 0 queued at most\)/);
    return true;
  });
  release();
});

test('checkRoom throws the 429 acquire would give at once, and takes nothing', async () => {
  const limiter = new ConcurrencyLimiter({ maxConcurrent: 1, maxQueued: 1, queueTimeoutMs: 10_000, slotName: 'build slot', limitName: '--max-concurrent-builds' });
  limiter.checkRoom(); // a free slot
  const release = await limiter.acquire();
  limiter.checkRoom(); // no slot, but room in the queue
  const queued = limiter.acquire();
  assert.throws(() => limiter.checkRoom(), (error: unknown) => error instanceof KindlingError && error.code === 'TOO_MANY_REQUESTS' && /queue for a free build slot is full.*--max-concurrent-builds/.test(error.message));
  assert.deepEqual(limiter.stats, { running: 1, queued: 1, maxConcurrent: 1, maxQueued: 1 });
  release();
  (await queued)();
  limiter.checkRoom();
  assert.equal(limiter.stats.running, 0);
});

test('a caller whose signal was aborted before it asked takes neither a slot nor a queue place', async () => {
  const limiter = new ConcurrencyLimiter({ maxConcurrent: 1, maxQueued: 1, queueTimeoutMs: 10_000 });
  const release = await limiter.acquire();
  await assert.rejects(limiter.acquire(AbortSignal.abort(new Error('gone'))), /gone/);
  assert.deepEqual(limiter.stats, { running: 1, queued: 0, maxConcurrent: 1, maxQueued: 1 });
  release();
  await assert.rejects(new ConcurrencyLimiter({ maxConcurrent: 1, maxQueued: 0, queueTimeoutMs: 10 }).acquire(AbortSignal.abort(new Error('early'))), /early/);
});
