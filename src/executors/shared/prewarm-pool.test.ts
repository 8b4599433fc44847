import assert from 'node:assert/strict';
import { mock, test } from 'node:test';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { PrewarmPool } from './prewarm-pool.js';

/** Waits (event-loop turns, not time) until `done()` holds. */
async function until(done: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000 && !done(); i++) await nextTurn();
  assert.ok(done(), `never happened: ${what}`);
}

/** Lets what was started run to its end (creations that resolve at once, destructions). */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await nextTurn();
}

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
  await settle();
  assert.equal(pool.stats().idle, 0, 'a miss alone must not warm the shape');
  assert.equal(pool.stats().creating, 0);
  pool.replenish('a');
  await until(() => pool.stats().idle === 2, 'two warm items');
  assert.deepEqual(pool.stats(), { idle: 2, creating: 0, keys: 1, hits: 0, misses: 1, failed: 0 });
  const first = pool.take('a');
  const second = pool.take('a');
  assert.ok(first && second && first !== second);
  assert.equal(pool.stats().hits, 2);
  await pool.close();
});

test('a hot shape evicts idle items of the least recently used one when the pool is full', async () => {
  const { pool, destroyed, advance } = fakePool(3, 4);
  pool.replenish('a');
  await until(() => pool.stats().idle === 3, 'a warm');
  advance(10);
  pool.replenish('b');
  await until(() => pool.stats().creating === 0 && destroyed.length === 2, 'b warm');
  assert.equal(pool.stats().idle, 4);
  assert.equal(destroyed.length, 2, 'b took the room of two idle a items');
  assert.ok(destroyed.every((item) => item.startsWith('a#')));
  await pool.close();
});

test('respects maxItems across shapes, drops cold shapes after the idle TTL, destroys all on close', async () => {
  const { pool, destroyed, advance } = fakePool(2, 4);
  pool.replenish('a');
  pool.replenish('b');
  await until(() => pool.stats().creating === 0, 'a and b warm');
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

test('a creation that hangs past createTimeoutMs is given up, reported and replaced; its late item is destroyed', async (t) => {
  const errors: string[] = [];
  const destroyed: string[] = [];
  const hung: ((item: string) => void)[] = [];
  let created = 0;
  mock.timers.enable({ apis: ['setTimeout'] });
  t.after(() => mock.timers.reset());
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
  await settle();
  assert.deepEqual(pool.stats().creating, 1);
  assert.equal(pool.take('a'), null, 'nothing ready while the creation hangs');
  mock.timers.tick(29);
  await settle();
  assert.equal(errors.length, 0, 'not given up before createTimeoutMs');
  mock.timers.tick(1);
  await until(() => pool.stats().idle === 1, 'the replacement');
  assert.equal(errors.length, 1);
  assert.match(errors[0]!, /over 30 ms/);
  assert.equal(pool.stats().idle, 1, 'a replacement was made');
  assert.equal(pool.stats().failed, 1, 'the given-up creation is counted as failed');
  assert.equal(pool.take('a'), 'a#2');
  // close() does not wait for the hung creation; when it finishes late, its item is destroyed, not pooled.
  await pool.close();
  hung[0]!('a#1');
  await until(() => destroyed.length === 1, 'the late item destroyed');
  assert.deepEqual(destroyed, ['a#1']);
});

test('counts creations that fail; a failed one is not retried until the shape is used again', async () => {
  let created = 0;
  const pool = new PrewarmPool<string>({
    create: async (key) => {
      if (++created === 1) throw new Error('engine hiccup');
      return `${key}#${created}`;
    },
    destroy: async () => undefined,
    sizePerKey: 1,
    maxItems: 4,
    idleTtlMs: 60_000,
  });
  pool.replenish('a');
  await until(() => pool.stats().failed === 1, 'the failure counted');
  assert.equal(pool.stats().idle, 0);
  pool.replenish('a');
  await until(() => pool.stats().idle === 1, 'the next creation');
  assert.equal(pool.stats().failed, 1);
  await pool.close();
});
