import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { SqliteUsageStore } from '../store/usage-sqlite.js';
import type { UsageRecord } from '../store/usage.js';
import { SandboxMeter, type StoredSandboxItem } from './sandbox-meter.js';

const dir = mkdtempSync(join(tmpdir(), 'kindling-sandbox-meter-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function setup(storage: StoredSandboxItem[] = []) {
  let now = 1_000_000;
  let cpu: number | null = 0;
  const records: UsageRecord[] = [];
  const meter = new SandboxMeter({ record: (r: UsageRecord) => records.push(r), summarize: () => [], recent: () => [], close: () => {} }, { now: () => now, storage: () => storage });
  return {
    meter,
    records,
    advance: (ms: number) => (now += ms),
    setCpu: (ms: number | null) => (cpu = ms),
    sandbox: { id: 'sb_1', tenant: 't', executor: 'sandbox', memoryMb: 512, cpuMs: () => cpu },
  };
}

describe('SandboxMeter', () => {
  it('bills running time (GB-seconds from memoryMb) and cgroup CPU deltas at each tick, pause and stop; paused time is free', () => {
    const { meter, records, advance, setCpu, sandbox } = setup();
    meter.started(sandbox);
    advance(10_000);
    setCpu(300);
    meter.tick();
    advance(5_000);
    setCpu(450);
    meter.paused('sb_1');
    advance(60_000);
    meter.tick(); // paused: nothing to bill
    meter.resumed('sb_1'); // nothing ran while frozen
    advance(2_000);
    setCpu(500);
    meter.stopped('sb_1');
    meter.stopped('sb_1'); // a second stop writes nothing
    advance(1_000);
    meter.tick();
    const rows = records.map((r) => [r.status, r.function, r.tenant, r.durationMs, r.cpuMs, r.memoryMb]);
    assert.deepEqual(rows, [
      ['sandbox', 'sb_1', 't', 10_000, 300, 512],
      ['sandbox', 'sb_1', 't', 5_000, 150, 512],
      ['sandbox', 'sb_1', 't', 2_000, 50, 512],
    ]);
    assert.equal(new Set(records.map((r) => r.id)).size, 3);
  });

  it('keeps billing time when the cgroup cannot be read (cpuMs null) and never bills a counter that went back', () => {
    const { meter, records, advance, setCpu, sandbox } = setup();
    meter.started(sandbox);
    setCpu(null);
    advance(1_000);
    meter.tick();
    setCpu(100);
    advance(1_000);
    meter.tick();
    setCpu(40);
    advance(1_000);
    meter.stopped('sb_1');
    assert.deepEqual(records.map((r) => [r.durationMs, r.cpuMs]), [[1_000, null], [1_000, 100], [1_000, 0]]);
  });

  it('writes stored GB-hours of disks and snapshots for the interval since the last tick; the store sums them per key', async () => {
    const storage = [
      { tenant: 't', key: 'sb_1', executor: 'sandbox', mb: 2048 },
      { tenant: 't', key: 'snap_1', executor: 'sandbox', mb: 512 },
      { tenant: 'u', key: 'sb_2', executor: 'sandbox', mb: 0 },
    ];
    const { meter, records, advance, sandbox } = setup(storage);
    advance(30 * 60_000);
    meter.tick();
    advance(30 * 60_000);
    meter.tick();
    assert.deepEqual(records.map((r) => [r.status, r.function, r.storageGbHours]), [
      ['storage', 'sb_1', 1],
      ['storage', 'snap_1', 0.25],
      ['storage', 'sb_1', 1],
      ['storage', 'snap_1', 0.25],
    ]);
    // Through the SQLite store: sandbox and storage records are no invocations; per key and totals add up.
    meter.started(sandbox);
    advance(4_000);
    meter.stopped('sb_1');
    const store = new SqliteUsageStore(join(dir, 'usage.db'));
    try {
      for (const record of records) store.record(record);
      const rows = store.summarize({ fromMs: 0, toMs: Number.MAX_SAFE_INTEGER, groupBy: 'function' });
      assert.deepEqual(rows.map((r) => [r.tenant, r.key, r.invocations, r.gbSeconds, r.storageGbHours]), [
        ['t', 'sb_1', 0, 2, 2],
        ['t', 'snap_1', 0, 0, 0.5],
      ]);
      assert.deepEqual(store.recent({ limit: 10 }), []);
    } finally {
      store.close();
    }
  });

  it('a usage table of an older data dir gets the storage column on open; its old rows sum to 0 GB-hours', () => {
    const file = join(dir, 'old.db');
    const old = new Database(file);
    old.exec(`CREATE TABLE usage_records (id TEXT PRIMARY KEY, tenant TEXT NOT NULL DEFAULT 'default', function TEXT NOT NULL, executor TEXT NOT NULL,
      day TEXT NOT NULL, at_ms INTEGER NOT NULL, status TEXT NOT NULL, cold INTEGER NOT NULL, duration_ms REAL NOT NULL, cpu_ms REAL,
      memory_peak_bytes INTEGER, memory_mb INTEGER NOT NULL, bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL, trace_id TEXT)`);
    old.prepare("INSERT INTO usage_records VALUES ('inv_1', 't', 'f', 'sandbox', '1970-01-01', 5, 'succeeded', 0, 1000, 3, NULL, 1024, 1, 2, NULL)").run();
    old.close();
    const store = new SqliteUsageStore(file);
    try {
      store.record({ id: 'use_1', tenant: 't', function: 'snap_1', executor: 'sandbox', atMs: 6, status: 'storage', coldStart: false, durationMs: 0, cpuMs: null, memoryPeakBytes: null, memoryMb: 0, bytesIn: 0, bytesOut: 0, traceId: null, storageGbHours: 1.5 });
      const rows = store.summarize({ fromMs: 0, toMs: 100, groupBy: 'day' });
      assert.deepEqual(rows.map((r) => [r.key, r.invocations, r.cpuMs, r.gbSeconds, r.storageGbHours]), [['1970-01-01', 1, 3, 1, 1.5]]);
      assert.deepEqual(store.recent({ limit: 5 }).map((r) => r.id), ['inv_1']);
    } finally {
      store.close();
    }
  });
});
