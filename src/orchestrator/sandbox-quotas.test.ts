/**
 * Sandbox quotas: the arithmetic (checkSandboxQuotas), the footprint SandboxAccounting counts (live, kept disks,
 * snapshots, what is being made), and SandboxService refusing before anything is made (a fake executor).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { after, describe, it } from 'node:test';
import { KindlingError } from '../core/errors.js';
import type { RunSpec } from '../core/types.js';
import type { Executor, PersistentSandbox, SandboxCommand } from '../executors/executor.js';
import type { SandboxRecord } from '../store/sandboxes-sqlite.js';
import { SqliteSandboxStore } from '../store/sandboxes-sqlite.js';
import { SandboxAccounting } from './sandbox-accounting.js';
import { checkSandboxQuotas, EMPTY_FOOTPRINT, NO_SANDBOX_QUOTAS, type SandboxQuotas } from './sandbox-quotas.js';
import { SandboxService } from './sandboxes.js';

const refused = (code: string, quota: string, limit: number) => (error: unknown) => {
  assert.ok(error instanceof KindlingError, String(error));
  assert.equal(error.code, code);
  assert.equal((error.details as { quota: string }).quota, quota);
  assert.equal((error.details as { limit: number }).limit, limit);
  assert.match(error.message, new RegExp(`quota ${quota} \\(${limit}\\)`));
  assert.match(error.message, /PATCH \/v1\/tenants\//);
  return true;
};

describe('checkSandboxQuotas', () => {
  const quotas: SandboxQuotas = { maxSandboxes: 2, maxPausedSandboxes: 1, maxSandboxMemoryMb: 1024, maxSandboxDiskMb: 2048, maxSnapshotBytes: 1000 };

  it('lets in what fits exactly, refuses one more with the quota, limit and used in the error', () => {
    const footprint = { running: 1, paused: 0, memoryMb: 512, diskMb: 1024, snapshotBytes: 400 };
    checkSandboxQuotas('t', quotas, footprint, { running: 1, memoryMb: 512, diskMb: 1024, snapshotBytes: 600 });
    assert.throws(() => checkSandboxQuotas('t', quotas, { ...footprint, running: 2 }, { running: 1 }), refused('TENANT_SANDBOX_LIMIT', 'maxSandboxes', 2));
    assert.throws(() => checkSandboxQuotas('t', quotas, { ...footprint, paused: 1 }, { paused: 1 }), refused('TENANT_SANDBOX_LIMIT', 'maxPausedSandboxes', 1));
    assert.throws(() => checkSandboxQuotas('t', quotas, footprint, { running: 1, memoryMb: 513 }), refused('TENANT_SANDBOX_LIMIT', 'maxSandboxMemoryMb', 1024));
    assert.throws(() => checkSandboxQuotas('t', quotas, footprint, { diskMb: 1025 }), refused('TENANT_STORAGE_LIMIT', 'maxSandboxDiskMb', 2048));
    assert.throws(() => checkSandboxQuotas('t', quotas, footprint, { snapshotBytes: 601 }), refused('TENANT_STORAGE_LIMIT', 'maxSnapshotBytes', 1000));
    try {
      checkSandboxQuotas('t', quotas, footprint, { memoryMb: 600 });
    } catch (error) {
      assert.deepEqual((error as KindlingError).details, { quota: 'maxSandboxMemoryMb', limit: 1024, used: 512, requested: 600 });
      assert.equal((error as KindlingError).retryAfterSeconds, 5);
    }
  });

  it('checks only what is added (over a quota already, removing or not touching it passes); null is no cap', () => {
    const over = { running: 5, paused: 5, memoryMb: 9999, diskMb: 9999, snapshotBytes: 9999 };
    checkSandboxQuotas('t', quotas, over, {});
    checkSandboxQuotas('t', quotas, over, { running: 0, paused: -1 });
    checkSandboxQuotas('t', NO_SANDBOX_QUOTAS, over, { running: 100, memoryMb: 1e6, diskMb: 1e6, snapshotBytes: 1e12 });
    assert.throws(() => checkSandboxQuotas('t', { ...NO_SANDBOX_QUOTAS, maxSandboxes: 0 }, EMPTY_FOOTPRINT, { running: 1 }), refused('TENANT_SANDBOX_LIMIT', 'maxSandboxes', 0));
  });
});

const record = (id: string, tenant: string, state: SandboxRecord['state'], memoryMb: number, diskMb: number, kept: boolean): SandboxRecord =>
  ({ id, tenant, state, limits: { memoryMb, cpus: 1, pids: 64, diskMb }, storage: kept ? { fromSnapshot: null } : null }) as SandboxRecord;

describe('SandboxAccounting', () => {
  it('counts running, paused, live memory, kept disks (stopped included), snapshot bytes and what is being made', () => {
    const live = [record('a', 't', 'running', 256, 100, true), record('b', 't', 'paused', 512, 200, true), record('x', 'u', 'running', 1024, 1, true)];
    const stored = [...live, record('c', 't', 'stopped', 2048, 300, true), record('d', 't', 'stopped', 64, 400, false)];
    const accounting = new SandboxAccounting({
      store: { list: (tenant: string) => stored.filter((r) => r.tenant === tenant), listSnapshots: (tenant: string | null) => (tenant === 't' ? [{ bytes: 10 }, { bytes: 5 }] : []) } as never,
      live: () => live.map((r) => ({ record: r, sandbox: { usage: () => null } })),
      quotasOf: () => ({ ...NO_SANDBOX_QUOTAS, maxSandboxes: 2, maxSandboxMemoryMb: 1000 }),
    });
    assert.deepEqual(accounting.footprint('t'), { running: 1, paused: 1, memoryMb: 768, diskMb: 600, snapshotBytes: 15 });
    const release = accounting.reserve('t', { running: 1, memoryMb: 200, diskMb: 50 });
    assert.deepEqual(accounting.footprint('t'), { running: 2, paused: 1, memoryMb: 968, diskMb: 650, snapshotBytes: 15 });
    assert.throws(() => accounting.reserve('t', { running: 1 }), refused('TENANT_SANDBOX_LIMIT', 'maxSandboxes', 2));
    assert.throws(() => accounting.check('t', { memoryMb: 33 }), refused('TENANT_SANDBOX_LIMIT', 'maxSandboxMemoryMb', 1000));
    release();
    release();
    assert.deepEqual(accounting.footprint('t'), { running: 1, paused: 1, memoryMb: 768, diskMb: 600, snapshotBytes: 15 });
    assert.deepEqual([...accounting.footprints()], [
      ['t', { running: 1, paused: 1, memoryMb: 768 }],
      ['u', { running: 1, paused: 0, memoryMb: 1024 }],
    ]);
  });
});

class FakeSandbox implements PersistentSandbox {
  readonly capabilities = { pause: true, memorySnapshot: false, hibernate: false };
  alive = true;
  constructor(readonly id: string) {}
  private end!: () => void;
  readonly disposed = new Promise<void>((resolve) => (this.end = resolve));
  async exec(): Promise<SandboxCommand> {
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    stdout.end();
    stderr.end();
    return { stdin: null, stdout, stderr, wait: async () => ({ exitCode: 0, signal: null }), kill: () => {} };
  }
  async pause(): Promise<void> {}
  async resume(): Promise<void> {}
  usage(): { cpuMs: number; memoryPeakBytes: null } {
    return { cpuMs: 7, memoryPeakBytes: null };
  }
  async destroy(): Promise<void> {
    this.alive = false;
    this.end();
  }
  async snapshot(): Promise<{ bytes: number }> {
    return { bytes: 600 };
  }
}

const dir = mkdtempSync(join(tmpdir(), 'kindling-sandbox-quotas-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('SandboxService with tenant quotas', () => {
  it('refuses create, resume and pause past the quotas before the executor makes anything, and meters the lifecycle', async () => {
    let made = 0;
    const executor = {
      name: 'docker',
      hasImage: () => true,
      createPersistentSandbox: async (_spec: RunSpec) => {
        made++;
        return new FakeSandbox(_spec.id);
      },
    } as unknown as Executor;
    const quotas: SandboxQuotas = { maxSandboxes: 1, maxPausedSandboxes: 1, maxSandboxMemoryMb: 768, maxSandboxDiskMb: null, maxSnapshotBytes: null };
    const events: string[] = [];
    const stopped = new Set<string>();
    const store = new SqliteSandboxStore(join(dir, 'a.sqlite'));
    const service = new SandboxService({
      executors: new Map([['docker', executor]]) as never,
      defaultExecutor: 'docker',
      store,
      quotasOf: (tenant) => (tenant === 't' ? quotas : NO_SANDBOX_QUOTAS),
      meter: {
        started: (sandbox) => events.push(`started ${sandbox.memoryMb} ${sandbox.cpuMs()}`),
        paused: () => events.push('paused'),
        resumed: () => events.push('resumed'),
        // Called before the destroy and again once it ended (the real meter writes once): counted once here.
        stopped: (id) => {
          if (!stopped.has(id)) events.push('stopped');
          stopped.add(id);
        },
      },
    });
    try {
      const one = await service.create('t', { image: 'kindling/base', memoryMb: 512 });
      await assert.rejects(service.create('t', { image: 'kindling/base', memoryMb: 128 }), refused('TENANT_SANDBOX_LIMIT', 'maxSandboxes', 1));
      await service.pause('t', one.id);
      // One paused (512 MB held): a second may run, but not with more memory than is left.
      await assert.rejects(service.create('t', { image: 'kindling/base', memoryMb: 512 }), refused('TENANT_SANDBOX_LIMIT', 'maxSandboxMemoryMb', 768));
      const two = await service.create('t', { image: 'kindling/base', memoryMb: 256 });
      await assert.rejects(service.resume('t', one.id), refused('TENANT_SANDBOX_LIMIT', 'maxSandboxes', 1));
      await assert.rejects(service.run('t', one.id, { command: ['true'] }), refused('TENANT_SANDBOX_LIMIT', 'maxSandboxes', 1));
      await assert.rejects(service.pause('t', two.id), refused('TENANT_SANDBOX_LIMIT', 'maxPausedSandboxes', 1));
      assert.equal(service.get('t', one.id).state, 'paused');
      assert.equal(made, 2);
      // Another tenant is not held by t's quotas.
      await service.create('u', { image: 'kindling/base', memoryMb: 4096 });
      await service.delete('t', two.id);
      await service.resume('t', one.id);
      await service.delete('t', one.id);
      assert.deepEqual(events, ['started 512 7', 'paused', 'started 256 7', 'started 4096 7', 'stopped', 'resumed', 'stopped']);
    } finally {
      await service.close();
      store.close();
    }
  });
});

describe('SandboxService with storage quotas', () => {
  it('maxSandboxDiskMb counts stopped sandboxes\' disks; maxSnapshotBytes refuses before, and removes a copy that did not fit', async () => {
    const removedSnapshots: string[] = [];
    const removedDisks: string[] = [];
    const executor = {
      name: 'sandbox',
      hasImage: () => true,
      createPersistentSandbox: async (spec: RunSpec) => new FakeSandbox(spec.id),
      sandboxStorage: {
        removeDisk: async (id: string) => void removedDisks.push(id),
        removeSnapshot: async (id: string) => void removedSnapshots.push(id),
        reap: async () => 0,
      },
    } as unknown as Executor;
    const quotas: SandboxQuotas = { maxSandboxes: null, maxPausedSandboxes: null, maxSandboxMemoryMb: null, maxSandboxDiskMb: 100, maxSnapshotBytes: 1000 };
    const store = new SqliteSandboxStore(join(dir, 'b.sqlite'));
    const service = new SandboxService({ executors: new Map([['sandbox', executor]]) as never, defaultExecutor: 'sandbox', store, quotasOf: () => quotas });
    try {
      const one = await service.create('t', { image: 'kindling/base', diskMb: 60 });
      await assert.rejects(service.create('t', { image: 'kindling/base', diskMb: 41 }), refused('TENANT_STORAGE_LIMIT', 'maxSandboxDiskMb', 100));
      const snap = await service.snapshot('t', one.id);
      assert.equal(snap.bytes, 600);
      // 600 + 600 > 1000: the copy is made, found too big, removed; nothing is listed.
      await assert.rejects(service.snapshot('t', one.id), refused('TENANT_STORAGE_LIMIT', 'maxSnapshotBytes', 1000));
      assert.equal(removedSnapshots.length, 1);
      assert.deepEqual(service.listSnapshots('t').map((s) => s.id), [snap.id]);
      // A stopped sandbox keeps its disk: still counted until deleted.
      await service.close();
      const again = new SandboxService({ executors: new Map([['sandbox', executor]]) as never, defaultExecutor: 'sandbox', store, quotasOf: () => quotas });
      try {
        again.recover();
        assert.equal(again.get('t', one.id).state, 'stopped');
        await assert.rejects(again.create('t', { image: 'kindling/base', diskMb: 41 }), refused('TENANT_STORAGE_LIMIT', 'maxSandboxDiskMb', 100));
        await again.delete('t', one.id);
        const two = await again.create('t', { image: 'kindling/base', diskMb: 100 });
        // No byte of snapshot room left: refused before the copy is made (nothing to remove).
        quotas.maxSnapshotBytes = 600;
        await assert.rejects(again.snapshot('t', two.id), refused('TENANT_STORAGE_LIMIT', 'maxSnapshotBytes', 600));
        assert.equal(removedSnapshots.length, 1);
      } finally {
        await again.close();
      }
      assert.deepEqual(removedDisks, [one.id]);
    } finally {
      store.close();
    }
  });
});
