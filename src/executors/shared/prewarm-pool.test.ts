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

test('the first take misses and warms the shape; the next takes hit, each item handed out once', async () => {
  const { pool } = fakePool(2);
  assert.equal(pool.take('a'), null);
  await sleep(1);
  assert.deepEqual(pool.stats(), { idle: 2, creating: 0, keys: 1, hits: 0, misses: 1 });
  const first = pool.take('a');
  const second = pool.take('a');
  assert.ok(first && second && first !== second);
  assert.equal(pool.stats().hits, 2);
  await pool.close();
});

test('respects maxItems across shapes, drops cold shapes after the idle TTL, destroys all on close', async () => {
  const { pool, destroyed, advance } = fakePool(3, 4);
  pool.take('a');
  pool.take('b');
  await sleep(1);
  assert.equal(pool.stats().idle, 4);
  advance(2000);
  pool.take('b');
  pool.sweep();
  assert.ok(destroyed.every((item) => item.startsWith('a#')) && destroyed.length === 3, destroyed.join());
  await pool.close();
  assert.equal(pool.stats().idle, 0);
  assert.equal(pool.take('b'), null);
});

test('size 0 disables prewarming', () => {
  const { pool } = fakePool(0);
  assert.equal(pool.take('a'), null);
  assert.equal(pool.stats().creating, 0);
  void pool.close();
});
