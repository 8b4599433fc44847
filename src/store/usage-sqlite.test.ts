import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { SqliteUsageStore } from './usage-sqlite.js';
import type { UsageRecord } from './usage.js';

const dir = mkdtempSync(join(tmpdir(), 'kindling-usage-test-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Polls `done` until it holds (the store writes within its flush window), failing after 5 s. */
async function until(done: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!done()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

const record = (id: string, atMs: number): UsageRecord => ({
  id,
  tenant: 'default',
  function: 'f',
  executor: 'sandbox',
  atMs,
  status: 'succeeded',
  coldStart: false,
  durationMs: 2,
  cpuMs: 1,
  memoryPeakBytes: null,
  memoryMb: 128,
  bytesIn: 1,
  bytesOut: 2,
  traceId: null,
});

describe('SqliteUsageStore', () => {
  it('writes the records of a short window in one transaction, a full batch at once; reads and close() write what waits first', async () => {
    const file = join(dir, 'a.db');
    const store = new SqliteUsageStore(file);
    const other = new Database(file, { readonly: true });
    const stored = (): number => (other.prepare('SELECT COUNT(*) AS n FROM usage_records').get() as { n: number }).n;
    try {
      for (let i = 0; i < 5; i++) store.record(record(`inv_${i}`, 1000 + i));
      assert.equal(stored(), 0, 'not yet written');
      await until(() => stored() === 5, 'the five records to be written');
      store.record(record('inv_5', 2000));
      assert.deepEqual(
        store.recent({ limit: 2 }).map((r) => r.id),
        ['inv_5', 'inv_4'],
        'a read sees a record of its own turn',
      );
      store.record(record('inv_6', 3000));
      assert.equal(store.summarize({ fromMs: 0, toMs: 10_000, groupBy: 'function' })[0]?.invocations, 7);
      // A full batch (256) is written at once, without waiting for the window.
      for (let i = 0; i < 256; i++) store.record(record(`batch_${i}`, 3500));
      assert.equal(stored(), 7 + 256, 'a full batch is written at once');
      store.record(record('inv_7', 4000));
      store.close();
      assert.equal(stored(), 8 + 256, 'close() wrote the last one');
    } finally {
      other.close();
      store.close();
    }
  });

  it('reports a record it could not write instead of throwing at the caller, and keeps the others of its batch', async () => {
    const errors: [string, number][] = [];
    const store = new SqliteUsageStore(join(dir, 'b.db'), { onError: (error, records) => errors.push([String(error), records]) });
    try {
      store.record(record('inv_1', 1));
      store.record({ ...record('inv_2', 2), function: null as unknown as string });
      store.record(record('inv_3', 3));
      await until(() => errors.length > 0, 'the bad record to be reported');
      assert.equal(errors.length, 1);
      assert.match(errors[0]![0], /NOT NULL/);
      assert.equal(errors[0]![1], 1);
      assert.deepEqual(
        store.recent({ limit: 10 }).map((r) => r.id),
        ['inv_3', 'inv_1'],
        'only the bad record is lost',
      );
    } finally {
      store.close();
    }
  });

  it('bills idle records in cpuMs but never counts them as invocations or lists them', () => {
    const store = new SqliteUsageStore(join(dir, 'c.db'));
    try {
      store.record(record('inv_1', 1));
      store.record({ ...record('idle_1', 2), status: 'idle', durationMs: 0, cpuMs: 250, bytesIn: 0, bytesOut: 0 });
      const [row] = store.summarize({ fromMs: 0, toMs: 10, groupBy: 'function' });
      assert.equal(row?.invocations, 1);
      assert.equal(row?.cpuMs, 251);
      assert.deepEqual(
        store.recent({ limit: 10 }).map((r) => r.id),
        ['inv_1'],
      );
    } finally {
      store.close();
    }
  });

  it('keeps every field of a record, and its UTC day, also across midnight', () => {
    const file = join(dir, 'fields.db');
    const store = new SqliteUsageStore(file);
    const beforeMidnight = Date.UTC(2026, 11, 4, 23, 59, 59, 999);
    const full: UsageRecord = {
      id: 'inv_full',
      tenant: 'acme',
      function: 'resize',
      executor: 'docker',
      atMs: beforeMidnight,
      status: 'timeout',
      coldStart: true,
      durationMs: 12.5,
      cpuMs: 3.25,
      memoryPeakBytes: 7_340_032,
      memoryMb: 512,
      bytesIn: 11,
      bytesOut: 22,
      traceId: '4bf92f3577b34da6a3ce929d0e0e4736',
    };
    try {
      store.record(full);
      store.record({ ...record('inv_next_day', beforeMidnight + 1), tenant: 'acme', storageGbHours: 0.5 });
      assert.deepEqual(store.recent({ tenant: 'acme', limit: 2 }).reverse(), [full, { ...record('inv_next_day', beforeMidnight + 1), tenant: 'acme' }]);
      const days = store.summarize({ fromMs: 0, toMs: beforeMidnight + 10, tenant: 'acme', groupBy: 'day' });
      assert.deepEqual(days.map((row) => [row.key, row.invocations, row.storageGbHours]), [['2026-12-04', 1, 0], ['2026-12-05', 1, 0.5]]);
    } finally {
      store.close();
    }
  });
});
