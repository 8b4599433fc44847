import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Clock } from '../core/clock.js';
import { TokenBucket } from './token-bucket.js';

function fakeClock(): Clock & { advance(ms: number): void } {
  let now = 1000;
  return { nowMs: () => now, monotonicMs: () => now, advance: (ms) => (now += ms) };
}

test('a full bucket lets a burst through, then refuses with the time until the next token', () => {
  const clock = fakeClock();
  const bucket = new TokenBucket(2, 3, clock);
  assert.deepEqual([bucket.take(), bucket.take(), bucket.take()], [0, 0, 0]);
  assert.equal(bucket.take(), 500, '2 tokens/s: the next one comes in 500 ms');
  clock.advance(200);
  assert.equal(bucket.take(), 300, 'part of the token has been earned');
});

test('the bucket refills with time, never beyond the burst', () => {
  const clock = fakeClock();
  const bucket = new TokenBucket(10, 5, clock);
  for (let i = 0; i < 5; i++) assert.equal(bucket.take(), 0);
  assert.ok(bucket.take() > 0);
  clock.advance(100);
  assert.equal(bucket.take(), 0, 'one token after 100 ms at 10/s');
  assert.ok(bucket.take() > 0);
  clock.advance(60_000);
  assert.equal(bucket.available, 5, 'capped at the burst after a long pause');
  for (let i = 0; i < 5; i++) assert.equal(bucket.take(), 0);
  assert.ok(bucket.take() > 0);
});

test('reconfigure keeps the earned tokens within the new burst and applies the new rate', () => {
  const clock = fakeClock();
  const bucket = new TokenBucket(1, 10, clock);
  bucket.reconfigure(100, 2);
  assert.equal(bucket.available, 2);
  bucket.take();
  bucket.take();
  assert.equal(bucket.take(), 10, '100/s: 10 ms to the next token');
  clock.advance(10);
  assert.equal(bucket.take(), 0);
});

test('a zero rate never refills', () => {
  const clock = fakeClock();
  const bucket = new TokenBucket(0, 1, clock);
  assert.equal(bucket.take(), 0);
  clock.advance(1e9);
  assert.equal(bucket.take(), Number.POSITIVE_INFINITY);
});
