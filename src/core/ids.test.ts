import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { newId, randomHex } from './ids.js';

describe('ids', () => {
  it('newId: prefix, sortable timestamp, 16 hex digits of randomness', () => {
    assert.match(newId('inv', 1_700_000_000_000), /^inv_0loyw3v28[0-9a-f]{16}$/);
    assert.ok(newId('x', 1) < newId('x', 2), 'sorted by time');
  });

  it('randomHex: the length asked for, across refills of its pool, never the same twice', () => {
    const seen = new Set<string>();
    // 20,000 ids of 8 bytes go through the 4 KiB pool ~40 times (and across its end with odd sizes below).
    for (let i = 0; i < 20_000; i++) {
      const value = randomHex(8);
      assert.match(value, /^[0-9a-f]{16}$/);
      seen.add(value);
    }
    assert.equal(seen.size, 20_000);
    for (const bytes of [1, 3, 16, 33, 4096]) assert.equal(randomHex(bytes).length, bytes * 2);
  });
});
