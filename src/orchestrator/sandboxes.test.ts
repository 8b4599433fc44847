/**
 * The sandbox service with a fake executor: validation before anything is made, tenant isolation, the per-tenant cap,
 * an executor without the capability, idle auto-pause, max lifetime, and records of a previous run marked stopped.
 * (The real thing, on bubblewrap, is in test/sandboxes.test.ts.)
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { after, describe, it } from 'node:test';
import { KindlingError } from '../core/errors.js';
import type { RunSpec } from '../core/types.js';
import type { Executor, PersistentSandbox, SandboxCommand, SandboxCommandRequest } from '../executors/executor.js';
import { SqliteSandboxStore } from '../store/sandboxes-sqlite.js';
import { SandboxService } from './sandboxes.js';

class FakeSandbox implements PersistentSandbox {
  readonly capabilities = { pause: true, memorySnapshot: false, hibernate: false };
  alive = true;
  paused = false;
  readonly commands: SandboxCommandRequest[] = [];
  private end!: () => void;
  readonly disposed = new Promise<void>((resolve) => (this.end = resolve));
  constructor(readonly id: string) {}
  async exec(request: SandboxCommandRequest): Promise<SandboxCommand> {
    if (this.paused) throw new Error('exec on a frozen sandbox');
    this.commands.push(request);
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    stdout.end(`ran ${request.command.join(' ')}`);
    stderr.end();
    return { stdin: null, stdout, stderr, wait: async () => ({ exitCode: 0, signal: null }), kill: () => {} };
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

function fakeExecutor(made: FakeSandbox[], withCapability = true): Executor {
  const executor: Executor = {
    name: withCapability ? 'sandbox' : 'docker',
    probe: async () => ({ name: 'sandbox', ready: true, reason: 'fake' }),
    hasImage: (image) => image === 'kindling/base',
    refreshImages: async () => ['kindling/base'],
    start: () => Promise.reject(new Error('not used')),
    reap: async () => ({ removed: 0 }),
    close: async () => {},
    destroy: async () => {},
  };
  if (withCapability) {
    executor.createPersistentSandbox = async (spec: RunSpec) => {
      const sandbox = new FakeSandbox(spec.id);
      made.push(sandbox);
      return sandbox;
    };
  }
  return executor;
}

const dir = mkdtempSync(join(tmpdir(), 'kindling-sandboxes-unit-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let files = 0;

function service(options: { maxPerTenant?: number; withDocker?: boolean } = {}): { service: SandboxService; made: FakeSandbox[]; store: SqliteSandboxStore } {
  const made: FakeSandbox[] = [];
  const store = new SqliteSandboxStore(join(dir, `db-${files++}.sqlite`));
  const executors = new Map([['sandbox', fakeExecutor(made)] as const]);
  if (options.withDocker) executors.set('docker' as never, fakeExecutor(made, false) as never);
  return { service: new SandboxService({ executors: executors as never, defaultExecutor: 'sandbox', store, ...(options.maxPerTenant === undefined ? {} : { maxPerTenant: options.maxPerTenant }) }), made, store };
}

const code = (expected: string) => (error: unknown) => error instanceof KindlingError && error.code === expected;

describe('SandboxService', () => {
  it('refuses bad requests before anything is made', async () => {
    const { service: s, made } = service({ withDocker: true });
    await assert.rejects(s.create('a', { runtime: 'bash', image: 'kindling/base' }), code('CONFLICTING_FIELDS'));
    await assert.rejects(s.create('a', { runtime: 'cobol' }), code('UNKNOWN_RUNTIME'));
    await assert.rejects(s.create('a', { image: 'kindling/nope' }), code('UNKNOWN_IMAGE'));
    await assert.rejects(s.create('a', { image: 'kindling/base', memoryMb: 1 }), code('LIMIT_OUT_OF_RANGE'));
    await assert.rejects(s.create('a', { image: 'kindling/base', maxLifetimeMs: 10 }), code('LIMIT_OUT_OF_RANGE'));
    await assert.rejects(s.create('a', { image: 'kindling/base', idleTimeoutMs: 7_200_000, maxLifetimeMs: 3_600_000 }), code('LIMIT_OUT_OF_RANGE'));
    await assert.rejects(s.create('a', { image: 'kindling/base', executor: 'docker' }), (error: unknown) => code('SANDBOXES_UNSUPPORTED')(error) && /docker executor cannot host/.test((error as Error).message));
    await assert.rejects(s.create('a', { image: 'kindling/base', executor: 'microvm' }), code('UNKNOWN_EXECUTOR'));
    assert.equal(made.length, 0);
  });

  it('isolates tenants, caps live sandboxes per tenant, and validates paths before running anything', async () => {
    const { service: s, made } = service({ maxPerTenant: 2 });
    const one = await s.create('a', { image: 'kindling/base' });
    await s.create('a', { image: 'kindling/base' });
    await assert.rejects(s.create('a', { image: 'kindling/base' }), code('TENANT_SANDBOX_LIMIT'));
    await s.create('b', { image: 'kindling/base' });
    assert.throws(() => s.get('b', one.id), code('SANDBOX_NOT_FOUND'));
    await assert.rejects(s.run('b', one.id, { command: ['true'] }), code('SANDBOX_NOT_FOUND'));
    assert.equal(s.list('b').length, 1);
    for (const bad of ['../x', '/work/../etc/passwd', 'a/../../b', 'x\0y', 'x'.repeat(5000)]) {
      await assert.rejects(s.readFile('a', one.id, bad), code('SANDBOX_PATH_INVALID'), bad.slice(0, 20));
    }
    assert.equal(made[0]!.commands.length, 0, 'nothing ran for a refused path');
    const result = await s.run('a', one.id, { command: ['echo', 'hi'], workdir: 'sub' });
    assert.equal(result.stdout, 'ran echo hi');
    assert.equal(made[0]!.commands[0]!.workdir, '/work/sub');
    await s.delete('a', one.id);
    assert.equal(made[0]!.alive, false);
    assert.throws(() => s.get('a', one.id), code('SANDBOX_NOT_FOUND'));
    await s.create('a', { image: 'kindling/base' });
    await s.close();
  });

  it('pauses an idle sandbox, resumes it for a command unless told not to, and stops it at its max lifetime', async () => {
    const { service: s, made } = service();
    const idle = await s.create('a', { image: 'kindling/base', idleTimeoutMs: 1000 });
    const until = async (check: () => boolean): Promise<void> => {
      for (let i = 0; i < 400 && !check(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
      assert.ok(check());
    };
    await until(() => s.get('a', idle.id).state === 'paused');
    assert.equal(made[0]!.paused, true);
    await assert.rejects(s.run('a', idle.id, { command: ['true'], autoResume: false }), code('SANDBOX_PAUSED'));
    await s.run('a', idle.id, { command: ['true'] });
    assert.equal(s.get('a', idle.id).state, 'running');
    const short = await s.create('a', { image: 'kindling/base', maxLifetimeMs: 1000 });
    await until(() => s.get('a', short.id).state === 'stopped');
    assert.match(s.get('a', short.id).stopReason ?? '', /maxLifetimeMs/);
    await assert.rejects(s.run('a', short.id, { command: ['true'] }), code('SANDBOX_NOT_RUNNING'));
    await s.close();
  });

  it('marks the records of a previous run stopped at start-up', async () => {
    const { service: s, store } = service();
    const made = await s.create('a', { image: 'kindling/base' });
    // A crash: the records stay as they were.
    const next = new SandboxService({ executors: new Map(), defaultExecutor: 'sandbox', store });
    assert.equal(next.recover(), 1);
    assert.equal(next.get('a', made.id).state, 'stopped');
    assert.match(next.get('a', made.id).stopReason ?? '', /server restarted/);
    await assert.rejects(next.run('a', made.id, { command: ['true'] }), code('SANDBOX_NOT_RUNNING'));
    await s.close();
  });
});
