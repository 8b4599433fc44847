/**
 * Hibernation, PATCH (setTimeout) and list filters of the sandbox service, with fake executors: one whose sandboxes
 * have the `hibernate` capability (processes saved, brought back with `restore: 'hibernated'`), one with files only
 * (a disk per sandbox: processes end, files kept), and one with neither (hibernate refused). The real thing on
 * bubblewrap (files-only path) is in test/sandbox-hibernate.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex, PassThrough } from 'node:stream';
import { after, describe, it } from 'node:test';
import { KindlingError } from '../core/errors.js';
import type { RunSpec } from '../core/types.js';
import type { Executor, PersistentSandbox, PersistentSandboxOptions, SandboxCommand, SandboxCommandRequest } from '../executors/executor.js';
import { SqliteSandboxStore } from '../store/sandboxes-sqlite.js';
import { NO_SANDBOX_QUOTAS, type SandboxQuotas } from './sandbox-quotas.js';
import { SandboxService } from './sandboxes.js';
import { waitFor } from '../../test/helpers/wait.js';

/** `busy-hibernate`: has the capability but refuses like gvisor does while an API command's pipes are open. */
type Kind = 'hibernate' | 'busy-hibernate' | 'files' | 'none';

class FakeSandbox implements PersistentSandbox {
  readonly capabilities;
  alive = true;
  paused = false;
  hibernated = false;
  readonly commands: string[] = [];
  private end!: () => void;
  readonly disposed = new Promise<void>((resolve) => (this.end = resolve));
  hibernate?: () => Promise<{ bytes: number }>;
  constructor(
    readonly id: string,
    kind: Kind,
    readonly restored: boolean,
  ) {
    const saves = kind === 'hibernate' || kind === 'busy-hibernate';
    this.capabilities = { pause: true, memorySnapshot: saves, hibernate: saves };
    if (kind === 'busy-hibernate') {
      this.hibernate = () => Promise.reject(new KindlingError('SANDBOX_COMMANDS_RUNNING', 'a command started through the API still runs'));
    } else if (kind === 'hibernate') {
      this.hibernate = async () => {
        this.hibernated = true;
        this.alive = false;
        this.end();
        return { bytes: 4096 };
      };
    }
  }
  async exec(request: SandboxCommandRequest): Promise<SandboxCommand> {
    if (this.paused || !this.alive) throw new Error('exec on a frozen or dead sandbox');
    this.commands.push(request.command.join(' '));
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    stdout.end(this.restored ? 'restored' : 'fresh');
    stderr.end();
    return { stdin: null, stdout, stderr, wait: async () => ({ exitCode: 0, signal: null }), kill: () => {} };
  }
  async connectPort(): Promise<Duplex> {
    if (!this.alive) throw new Error('connect to a dead sandbox');
    return new PassThrough();
  }
  async pause(): Promise<void> {
    this.paused = true;
  }
  async resume(): Promise<void> {
    this.paused = false;
  }
  usage(): null {
    return null;
  }
  async destroy(): Promise<void> {
    this.alive = false;
    this.end();
  }
}

interface Harness {
  service: SandboxService;
  store: SqliteSandboxStore;
  made: FakeSandbox[];
  restores: PersistentSandboxOptions[];
  removed: string[];
  /** Next restore answers SANDBOX_STATE_LOST when set. */
  loseState: { next: boolean };
}

const dir = mkdtempSync(join(tmpdir(), 'kindling-sandbox-hibernate-unit-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let files = 0;

function harness(kind: Kind, quotas: SandboxQuotas = { ...NO_SANDBOX_QUOTAS, maxSandboxes: 10, maxPausedSandboxes: 10 }, store = new SqliteSandboxStore(join(dir, `db-${files++}.sqlite`))): Harness {
  const made: FakeSandbox[] = [];
  const restores: PersistentSandboxOptions[] = [];
  const removed: string[] = [];
  const loseState = { next: false };
  const executor: Executor = {
    name: 'sandbox',
    probe: async () => ({ name: 'sandbox', ready: true, reason: 'fake' }),
    hasImage: (image) => image === 'kindling/base',
    refreshImages: async () => ['kindling/base'],
    start: () => Promise.reject(new Error('not used')),
    reap: async () => ({ removed: 0 }),
    close: async () => {},
    destroy: async () => {},
    createPersistentSandbox: async (spec: RunSpec, options: PersistentSandboxOptions = {}) => {
      if (options.restore === 'hibernated') {
        restores.push(options);
        if (loseState.next) {
          loseState.next = false;
          throw new KindlingError('SANDBOX_STATE_LOST', 'the saved image is gone');
        }
      }
      const sandbox = new FakeSandbox(spec.id, kind, options.restore === 'hibernated');
      made.push(sandbox);
      return sandbox;
    },
  };
  if (kind !== 'none') (executor as { sandboxStorage?: Executor['sandboxStorage'] }).sandboxStorage = { removeDisk: async (id) => void removed.push(id), removeSnapshot: async () => {}, reap: async () => 0 };
  const service = new SandboxService({ executors: new Map([['sandbox', executor]]) as never, defaultExecutor: 'sandbox', store, quotasOf: () => quotas });
  return { service, store, made, restores, removed, loseState };
}

const code = (expected: string) => (error: unknown) => error instanceof KindlingError && error.code === expected;

const until = (check: () => boolean): Promise<void> => waitFor(check, { what: 'the sandbox state' });

describe('SandboxService hibernation', () => {
  it('saves the processes where the executor can, and restores them on the next command', async () => {
    const h = harness('hibernate');
    const sb = await h.service.create('a', { image: 'kindling/base' });
    const view = await h.service.hibernate('a', sb.id);
    assert.equal(view.state, 'hibernated');
    assert.deepEqual({ processesKept: view.hibernation?.processesKept, bytes: view.hibernation?.bytes }, { processesKept: true, bytes: 4096 });
    assert.equal(h.made[0]!.hibernated, true);
    assert.equal(h.made[0]!.alive, false);
    // Idempotent, and a pause of a hibernated sandbox leaves it so.
    assert.equal((await h.service.hibernate('a', sb.id)).state, 'hibernated');
    assert.equal((await h.service.pause('a', sb.id)).state, 'hibernated');
    assert.deepEqual(h.service.list('a', { state: 'hibernated' }).map((s) => s.id), [sb.id]);
    // autoResume false: the same 409 as a paused sandbox, saying hibernated.
    await assert.rejects(h.service.run('a', sb.id, { command: ['true'], autoResume: false }), (error: unknown) => code('SANDBOX_PAUSED')(error) && /hibernated/.test((error as Error).message));
    assert.equal(h.restores.length, 0);
    const result = await h.service.run('a', sb.id, { command: ['echo'] });
    assert.equal(result.stdout, 'restored');
    assert.equal(h.restores.length, 1);
    const after = h.service.get('a', sb.id);
    assert.equal(after.state, 'running');
    assert.equal(after.hibernation, null);
    await h.service.close();
  });

  it('a lost saved image leaves the sandbox stopped with its files, and the next command starts a new process tree', async () => {
    const h = harness('hibernate');
    const sb = await h.service.create('a', { image: 'kindling/base' });
    await h.service.hibernate('a', sb.id);
    h.loseState.next = true;
    await assert.rejects(h.service.resume('a', sb.id), code('SANDBOX_STATE_LOST'));
    const view = h.service.get('a', sb.id);
    assert.equal(view.state, 'stopped');
    assert.equal(view.storage.persistent, true);
    assert.match(view.stopReason ?? '', /could not be restored/);
    const result = await h.service.run('a', sb.id, { command: ['echo'] });
    assert.equal(result.stdout, 'fresh');
    assert.equal(h.restores.length, 1, 'no second restore was tried');
    await h.service.close();
  });

  it('without the capability keeps the files, ends the processes and says so; refuses where files would be lost', async () => {
    const h = harness('files');
    const sb = await h.service.create('a', { image: 'kindling/base' });
    await h.service.pause('a', sb.id);
    const view = await h.service.hibernate('a', sb.id);
    assert.equal(view.state, 'hibernated');
    assert.equal(view.hibernation?.processesKept, false);
    assert.match(view.stopReason ?? '', /processes ended/);
    assert.equal(h.made[0]!.alive, false);
    const result = await h.service.run('a', sb.id, { command: ['echo'] });
    assert.equal(result.stdout, 'fresh');
    assert.equal(h.restores.length, 0, 'no restore of processes that were not saved');
    await h.service.delete('a', sb.id);
    assert.deepEqual(h.removed, [sb.id]);

    const none = harness('none');
    const lost = await none.service.create('a', { image: 'kindling/base' });
    await assert.rejects(none.service.hibernate('a', lost.id), (error: unknown) => code('SANDBOXES_UNSUPPORTED')(error) && /pause it instead/.test((error as Error).message));
    assert.equal(none.service.get('a', lost.id).state, 'running');
    await h.service.close();
    await none.service.close();
  });

  it('a port of a sandbox hibernated with its processes wakes it; one hibernated with files only answers not running', async () => {
    const h = harness('hibernate');
    const sb = await h.service.create('a', { image: 'kindling/base' });
    await h.service.hibernate('a', sb.id);
    const port = await h.service.openPort('a', sb.id, 8000);
    port.stream.destroy();
    port.release();
    assert.equal(h.restores.length, 1);
    assert.equal(h.service.get('a', sb.id).state, 'running');

    const files = harness('files');
    const kept = await files.service.create('a', { image: 'kindling/base' });
    await files.service.hibernate('a', kept.id);
    await assert.rejects(files.service.openPort('a', kept.id, 8000), code('SANDBOX_NOT_RUNNING'));
    assert.equal(files.made.length, 1, 'not started again for a port nothing listens on');
    await h.service.close();
    await files.service.close();
  });

  it('stays hibernated across a server restart', async () => {
    const h = harness('hibernate');
    const sb = await h.service.create('a', { image: 'kindling/base' });
    const other = await h.service.create('a', { image: 'kindling/base' });
    await h.service.hibernate('a', sb.id);
    // A crash: the next server recovers from the same store.
    const next = harness('hibernate', undefined, h.store);
    assert.equal(next.service.recover(), 1, 'only the running one is marked stopped');
    assert.equal(next.service.get('a', sb.id).state, 'hibernated');
    assert.equal(next.service.get('a', other.id).state, 'stopped');
    assert.equal((await next.service.run('a', sb.id, { command: ['echo'] })).stdout, 'restored');
    await next.service.close();
    await h.service.close();
  });

  it('idle auto-pause past maxPausedSandboxes hibernates instead of pausing', async () => {
    const h = harness('hibernate', { ...NO_SANDBOX_QUOTAS, maxSandboxes: 10, maxPausedSandboxes: 1 });
    const first = await h.service.create('a', { image: 'kindling/base', idleTimeoutMs: 1000 });
    await until(() => h.service.get('a', first.id).state === 'paused');
    const second = await h.service.create('a', { image: 'kindling/base', idleTimeoutMs: 1000 });
    await until(() => h.service.get('a', second.id).state !== 'running');
    assert.equal(h.service.get('a', second.id).state, 'hibernated');
    assert.equal(h.service.get('a', first.id).state, 'paused');
    await h.service.close();
  });

  it('idle auto-pause pauses when the executor refuses to hibernate now, instead of leaving the sandbox running', async () => {
    const h = harness('busy-hibernate', { ...NO_SANDBOX_QUOTAS, maxSandboxes: 10, maxPausedSandboxes: 1 });
    const first = await h.service.create('a', { image: 'kindling/base', idleTimeoutMs: 1000 });
    await until(() => h.service.get('a', first.id).state === 'paused');
    const second = await h.service.create('a', { image: 'kindling/base', idleTimeoutMs: 1000 });
    await until(() => h.service.get('a', second.id).state !== 'running');
    assert.equal(h.service.get('a', second.id).state, 'paused');
    assert.equal(h.made[1]!.paused, true, 'the executor froze it');
    await h.service.close();
  });
});

describe('SandboxService timeout and list filters', () => {
  it('moves the max lifetime from now (setTimeout), bounded by the cap, and changes the idle timeout', async () => {
    const h = harness('files');
    const sb = await h.service.create('a', { image: 'kindling/base', maxLifetimeMs: 60_000 });
    const before = Date.now();
    const view = h.service.update('a', sb.id, { timeoutMs: 2000, idleTimeoutMs: 1500 });
    assert.equal(view.idleTimeoutMs, 1500);
    assert.ok(Math.abs(Date.parse(view.expiresAt) - (before + 2000)) < 1000, `expiresAt ${view.expiresAt} is about 2 s from now`);
    assert.throws(() => h.service.update('a', sb.id, { timeoutMs: 25 * 3600_000 }), code('LIMIT_OUT_OF_RANGE'));
    assert.throws(() => h.service.update('a', sb.id, { timeoutMs: 10 }), code('LIMIT_OUT_OF_RANGE'));
    assert.throws(() => h.service.update('a', sb.id, { idleTimeoutMs: 120_000 }), code('LIMIT_OUT_OF_RANGE'), 'idle past the lifetime');
    assert.throws(() => h.service.update('b', sb.id, { timeoutMs: 2000 }), code('SANDBOX_NOT_FOUND'));
    await until(() => h.service.get('a', sb.id).state === 'stopped');
    assert.match(h.service.get('a', sb.id).stopReason ?? '', /maxLifetimeMs/);
    await h.service.close();
  });

  it('filters the list by state and by every metadata pair given', async () => {
    const h = harness('files');
    const one = await h.service.create('a', { image: 'kindling/base', metadata: { owner: 'x', team: 'red' } });
    const two = await h.service.create('a', { image: 'kindling/base', metadata: { owner: 'x', team: 'blue' } });
    await h.service.create('b', { image: 'kindling/base', metadata: { owner: 'x', team: 'red' } });
    await h.service.pause('a', two.id);
    const ids = (filter: Parameters<SandboxService['list']>[1]): string[] => h.service.list('a', filter).map((s) => s.id).sort();
    assert.deepEqual(ids({ metadata: { owner: 'x' } }), [one.id, two.id].sort());
    assert.deepEqual(ids({ metadata: { owner: 'x', team: 'red' } }), [one.id]);
    assert.deepEqual(ids({ metadata: { team: 'green' } }), []);
    assert.deepEqual(ids({ metadata: { toString: '' } }), [], 'only own keys match');
    assert.deepEqual(ids({ state: 'paused', metadata: { owner: 'x' } }), [two.id]);
    assert.deepEqual(ids({ state: 'running' }), [one.id]);
    assert.throws(() => h.service.list('a', { metadata: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, 'v'])) }), code('VALIDATION_FAILED'));
    await h.service.close();
  });
});
