import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { CursorStore } from './cursor-store.js';

const dirs: string[] = [];
after(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function open(): { store: CursorStore; file: string } {
  const dir = mkdtempSync(join(tmpdir(), 'kindling-cursor-'));
  dirs.push(dir);
  const file = join(dir, 'operator.db');
  return { store: new CursorStore(file, 'test'), file };
}

const OP = '0x00000000000000000000000000000000000000b1' as const;
const hashOf = (n: bigint): `0x${string}` => `0x${n.toString(16).padStart(64, '0')}`;

test('a call the manager failed because its instance holder is gone (release reason 2) is done, not waiting for a reassignment', () => {
  const { store } = open();
  const block = (n: bigint) => ({ number: n, hash: hashOf(n) });
  store.commitRange(block(1n), [{ callId: 0n, jobIndex: 8, caller: OP, inputs: '0x01', blockNumber: 1n, blockHash: hashOf(1n) }], [
    { callId: 0n, kind: 'assigned', operator: OP, deadline: 100n, reason: 0, blockNumber: 1n, blockHash: hashOf(1n), logIndex: 0 },
  ], 0);
  store.commitRange(block(2n), [], [{ callId: 0n, kind: 'released', operator: OP, deadline: 0n, reason: 2, blockNumber: 2n, blockHash: hashOf(2n), logIndex: 0 }], 0);
  assert.deepEqual(store.assignmentOf(0n), { callId: 0n, operator: OP, deadline: 0n, done: true, released: false });
  store.close();
});
