import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { PrewarmPool } from './prewarm-pool.js';

function fakePool(sizePerKey: number, maxItems = 10) {
  let now = 0;
  let counter = 0;
  const destroyed: string[] = [];
  const pool = new PrewarmPool<string>({
    create: async (key) => `${key}#${++counter}`,
    destroy: async (item) => void destroyed.push(item),
    sizePerKey,
    maxItems,
    idleTtlMs: 1000,
    now: () => now,
  });
  return { pool, destroyed, advance: (ms: number) => (now += ms) };
}

test('a shape warms only after replenish (a successful start); then takes hit, each item handed out once', async () => {
  const { pool } = fakePool(2);
  assert.equal(pool.take('a'), null);
  await sleep(1);
  assert.equal(pool.stats().idle, 0, 'a miss alone must not warm the shape');
  pool.replenish('a');
  await sleep(1);
  assert.deepEqual(pool.stats(), { idle: 2, creating: 0, keys: 1, hits: 0, misses: 1 });
  const first = pool.take('a');
  const second = pool.take('a');
  assert.ok(first && second && first !== second);
  assert.equal(pool.stats().hits, 2);
  await pool.close();
});

test('a hot shape evicts idle items of the least recently used one when the pool is full', async () => {
  const { pool, destroyed, advance } = fakePool(3, 4);
  pool.replenish('a');
  await sleep(1);
  advance(10);
  pool.replenish('b');
  await sleep(1);
  assert.equal(pool.stats().idle, 4);
  assert.equal(destroyed.length, 2, 'b took the room of two idle a items');
  assert.ok(destroyed.every((item) => item.startsWith('a#')));
  await pool.close();
});

test('respects maxItems across shapes, drops cold shapes after the idle TTL, destroys all on close', async () => {
  const { pool, destroyed, advance } = fakePool(2, 4);
  pool.replenish('a');
  pool.replenish('b');
  await sleep(1);
  assert.equal(pool.stats().idle, 4);
  advance(2000);
  pool.replenish('b');
  pool.sweep();
  assert.ok(destroyed.every((item) => item.startsWith('a#')) && destroyed.length === 2, destroyed.join());
  await pool.close();
  assert.equal(pool.stats().idle, 0);
  assert.equal(pool.take('b'), null);
});

test('size 0 disables prewarming', () => {
  const { pool } = fakePool(0);
  assert.equal(pool.take('a'), null);
  pool.replenish('a');
  assert.equal(pool.stats().creating, 0);
  void pool.close();
});

test('a creation that hangs past createTimeoutMs is given up, reported and replaced; its late item is destroyed', async () => {
  const errors: string[] = [];
  const destroyed: string[] = [];
  const hung: ((item: string) => void)[] = [];
  let created = 0;
  const pool = new PrewarmPool<string>({
    // The first creation hangs until the test lets it finish; the others finish at once.
    create: (key) => (++created === 1 ? new Promise<string>((resolve) => hung.push(resolve)) : Promise.resolve(`${key}#${created}`)),
    destroy: async (item) => void destroyed.push(item),
    sizePerKey: 1,
    maxItems: 4,
    idleTtlMs: 60_000,
    createTimeoutMs: 30,
    onError: (error) => void errors.push((error as Error).message),
  });
  pool.replenish('a');
  await sleep(5);
  assert.deepEqual(pool.stats().creating, 1);
  assert.equal(pool.take('a'), null, 'nothing ready while the creation hangs');
  await sleep(60);
  assert.equal(errors.length, 1);
  assert.match(errors[0]!, /over 30 ms/);
  assert.equal(pool.stats().idle, 1, 'a replacement was made');
  assert.equal(pool.take('a'), 'a#2');
  // close() does not wait for the hung creation; when it finishes late, its item is destroyed, not pooled.
  await pool.close();
  hung[0]!('a#1');
  await sleep(1);
  assert.deepEqual(destroyed, ['a#1']);
});
