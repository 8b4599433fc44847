import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import Database from 'better-sqlite3';
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

/** Rows of the store's tables, read through a connection of its own (what the file holds). */
function rows(file: string): { calls: number; events: number } {
  const db = new Database(file, { readonly: true });
  try {
    const count = (table: string): number => (db.prepare(`SELECT COUNT(*) AS n FROM ${table}`).get() as { n: number }).n;
    return { calls: count('operator_calls'), events: count('operator_assignment_events') };
  } finally {
    db.close();
  }
}

const fileBytes = (file: string): number => [file, `${file}-wal`].reduce((sum, f) => sum + (existsSync(f) ? statSync(f).size : 0), 0);

test('a long run keeps the store bounded: done calls older than the kept read positions are pruned; a restart still skips finished calls and keeps open ones', () => {
  const { store, file } = open();
  const RESULT = `0x${'ab'.repeat(2048)}` as const; // a 2 KiB result per call: what makes an unpruned file grow
  const call = (n: bigint) => ({ callId: n, jobIndex: 0, caller: OP, inputs: `0x${'cd'.repeat(256)}` as const, blockNumber: n, blockHash: hashOf(n) });
  const assigned = (n: bigint) => ({ callId: n, kind: 'assigned' as const, operator: OP, deadline: 100n, reason: 0, blockNumber: n, blockHash: hashOf(n), logIndex: 0 });
  const released = (callId: bigint, n: bigint) => ({ callId, kind: 'released' as const, operator: OP, deadline: 0n, reason: 0, blockNumber: n, blockHash: hashOf(n), logIndex: 1 });
  // One call per block, answered three blocks later; call 5 stays unanswered (another operator's) and call 7 keeps a
  // result waiting to be sent: neither may be pruned however old.
  let sizeAtHalf = 0;
  const BLOCKS = 1600n;
  for (let n = 1n; n <= BLOCKS; n++) {
    const answered = n - 3n;
    const events = [assigned(n), ...(answered >= 1n && answered !== 5n && answered !== 7n ? [released(answered, n)] : [])];
    store.commitRange({ number: n, hash: hashOf(n) }, [call(n)], events, Number(n));
    if (answered >= 1n && answered !== 5n) {
      store.transition(answered, ['seen'], 'running', { nowMs: Number(n) });
      store.transition(answered, ['running'], 'submitted', { result: RESULT, nowMs: Number(n) });
      if (answered !== 7n) store.transition(answered, ['submitted'], 'done', { nowMs: Number(n) });
    }
    if (n === BLOCKS / 2n) sizeAtHalf = fileBytes(file);
  }
  const kept = rows(file);
  // 512 kept positions (one per block here) bound the done calls; plus the two open ones and the last three.
  assert.ok(kept.calls <= 512 + 2 + 3, `calls kept: ${kept.calls}`);
  assert.ok(kept.events <= 2 * (512 + 2 + 3), `assignment events kept: ${kept.events}`);
  assert.ok(fileBytes(file) <= sizeAtHalf * 1.25 + 256 * 1024, `the file grew from ${sizeAtHalf} to ${fileBytes(file)} bytes over the second half`);
  store.close();

  // Restart: the cursor is where it was; old finished calls are gone and not read again, open ones are kept with their state.
  const reopened = new CursorStore(file, 'test');
  assert.deepEqual(reopened.cursor(), { number: BLOCKS, hash: hashOf(BLOCKS) });
  assert.equal(reopened.call(10n), null);
  assert.equal(reopened.call(5n)?.state, 'seen');
  assert.deepEqual([reopened.call(7n)?.state, reopened.call(7n)?.result], ['submitted', RESULT]);
  assert.equal(reopened.assignmentOf(5n)?.operator, OP);
  assert.equal(reopened.call(BLOCKS - 10n)?.state, 'done');
  assert.deepEqual(reopened.callsIn('seen').map((c) => c.callId), [5n, BLOCKS - 2n, BLOCKS - 1n, BLOCKS]);
  // A recent finished call read again (a shallow reread) is not new: it is not run a second time.
  assert.deepEqual(reopened.commitRange({ number: BLOCKS, hash: hashOf(BLOCKS) }, [call(BLOCKS - 10n)], [], 0), []);
  reopened.close();
});
