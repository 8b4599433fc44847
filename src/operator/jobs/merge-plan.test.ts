import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseListing, planMerge, type BranchListing } from './merge-plan.js';

const a: BranchListing = { id: 'a', paths: ['common.txt', 'only-a.txt', 'dir', 'dir/x'], newestMtimeMs: 2000 };
const b: BranchListing = { id: 'b', paths: ['common.txt', 'only-b.txt', 'dir', 'dir/x', 'dir/y', 'sub', 'sub/deep', 'sub/deep/f'], newestMtimeMs: 1000 };

test('union extracts every branch in list order (the later one wins a shared path)', () => {
  assert.deepEqual(planMerge('union', [a, b]), { extract: ['a', 'b'], remove: [] });
});

test('intersection keeps the last branch minus what any other lacks, removing top-most paths only', () => {
  assert.deepEqual(planMerge('intersection', [a, b]), { extract: ['b'], remove: ['dir/y', 'only-b.txt', 'sub'] });
  assert.deepEqual(planMerge('intersection', [b, a]), { extract: ['a'], remove: ['only-a.txt'] });
  assert.deepEqual(planMerge('intersection', [a]), { extract: ['a'], remove: [] });
});

test('latest takes the whole tree of the branch with the newest file, a tie going to the later one', () => {
  assert.deepEqual(planMerge('latest', [a, b]), { extract: ['a'], remove: [] });
  assert.deepEqual(planMerge('latest', [b, a]), { extract: ['a'], remove: [] });
  assert.deepEqual(planMerge('latest', [{ ...a, newestMtimeMs: 1000 }, b]), { extract: ['b'], remove: [] });
  const empty = { id: 'e', paths: [], newestMtimeMs: -Infinity };
  assert.deepEqual(planMerge('latest', [b, empty]), { extract: ['b'], remove: [] });
});

test('a directory named like a prefix of another path is not taken for its parent', () => {
  const x: BranchListing = { id: 'x', paths: ['a'], newestMtimeMs: 0 };
  const y: BranchListing = { id: 'y', paths: ['a', 'a-b', 'a-b/c', 'ab'], newestMtimeMs: 0 };
  assert.deepEqual(planMerge('intersection', [x, y]).remove, ['a-b', 'ab']);
});

test('find output (NUL-separated, names with spaces and newlines) parses into paths and the newest time', () => {
  const listing = parseListing('s', '1700000000.5 a b.txt\x001700000002.25 dir\x001700000001.0 dir/line\nbreak\x00');
  assert.deepEqual(listing.paths, ['a b.txt', 'dir', 'dir/line\nbreak']);
  assert.equal(listing.newestMtimeMs, 1700000002250);
  assert.equal(parseListing('e', '').newestMtimeMs, -Infinity);
});
