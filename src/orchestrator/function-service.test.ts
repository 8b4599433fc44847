import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KindlingError } from '../core/errors.js';
import { SqliteStore } from '../store/sqlite.js';
import type { ExecutionService } from './execution-service.js';
import { BundleStore } from './bundles.js';
import { FunctionService, type HandlerInvoker, type PackageImages } from './function-service.js';
import type { DependencyBuilder } from './builds.js';
import { SqliteBuildStore } from '../store/builds-sqlite.js';

/** Warm pools on the sandbox executor only (as a server whose other executor keeps no warm sandboxes). */
const sandboxOnlyHandlers = {
  supports: (executor: string) => executor === 'sandbox',
  deployed: () => undefined,
  deleted: async () => undefined,
  invoke: () => Promise.reject(new Error('not reached')),
  close: async () => undefined,
} as unknown as HandlerInvoker;

const HANDLER = { runtime: 'node', code: 'export const h = (b) => b;', handler: 'h' } as const;

describe('FunctionService: handler functions on an executor without warm sandboxes', () => {
  it('a deploy is refused with 400 HANDLERS_UNSUPPORTED (not a retryable 503), naming what to change', async () => {
    const store = new SqliteStore(':memory:');
    const executionService = { prepare: async () => undefined } as unknown as ExecutionService;
    const service = new FunctionService({ store, executionService, defaultExecutor: 'sandbox', handlers: sandboxOnlyHandlers });
    try {
      const refused = await service.deploy('default', 'f', { ...HANDLER, executor: 'microvm' }).then(
        () => null,
        (error: unknown) => error,
      );
      assert.ok(refused instanceof KindlingError, String(refused));
      assert.equal(refused.code, 'HANDLERS_UNSUPPORTED');
      assert.equal(refused.statusCode, 400);
      assert.equal(refused.retryable, false);
      assert.match(refused.message, /microvm executor.*another "executor", or as a command/);
      assert.equal(store.getFunction('default', 'f'), null, 'nothing was stored');
      // Where warm sandboxes exist, the same function deploys.
      assert.equal((await service.deploy('default', 'f', HANDLER)).created, true);
    } finally {
      await service.close();
      store.close();
    }
  });

  it('a deployed handler function whose executor lost its warm sandboxes (a restart with another configuration) answers the same 400', async () => {
    const store = new SqliteStore(':memory:');
    const executionService = { prepare: async () => undefined } as unknown as ExecutionService;
    const before = new FunctionService({ store, executionService, defaultExecutor: 'sandbox', handlers: sandboxOnlyHandlers });
    await before.deploy('default', 'f', HANDLER);
    await before.close();
    // The next server runs without any executor that keeps warm sandboxes.
    const after = new FunctionService({ store, executionService, defaultExecutor: 'sandbox' });
    try {
      await assert.rejects(after.invoke('default', 'f', Buffer.from('x'), {}), (error: unknown) => error instanceof KindlingError && error.code === 'HANDLERS_UNSUPPORTED' && !error.retryable);
    } finally {
      await after.close();
      store.close();
    }
  });
});

describe('FunctionService: bundles', () => {
  it('binds a bundle, its layer and a program compiled at deploy on every executor (the program under /run in a microVM)', () => {
    const store = new SqliteStore(':memory:');
    const service = new FunctionService({
      store,
      executionService: {} as ExecutionService,
      defaultExecutor: 'sandbox',
      bundles: new BundleStore({ dir: '/srv/bundles' }),
      layers: new BundleStore({ dir: '/srv/layers' }),
    });
    try {
      const bundle = { sha256: 'a'.repeat(64), bytes: 10240, entries: 2 };
      const npm = { runtime: 'node' as const, command: ['node', 'index.js'], bundle, layer: { sha256: 'b'.repeat(64), bytes: 1, reused: false, buildMs: 1 } };
      for (const executor of ['sandbox', 'docker', 'gvisor', 'microvm'] as const) {
        assert.deepEqual(
          service.bindsOf(npm, executor).map((bind) => bind.target),
          ['/work', '/work/node_modules'],
          executor,
        );
      }
      const go = { runtime: 'go' as const, bundle, layer: { sha256: 'c'.repeat(64), kind: 'compile' as const, bytes: 1, reused: false, buildMs: 1 } };
      assert.deepEqual(service.bindsOf(go, 'sandbox').map((bind) => bind.target), ['/work', '/kindling-bin']);
      // A microVM's root is its image's read-only disk: the program is mounted on the guest's /run tmpfs there.
      assert.deepEqual(service.bindsOf(go, 'microvm').map((bind) => bind.target), ['/work', '/run/kindling-bin']);
    } finally {
      store.close();
    }
  });
});

describe('FunctionService: go and rust code compiled at deploy', () => {
  const LAYER = { sha256: 'c'.repeat(64), bytes: 2_000_000, reused: false, buildMs: 900, kind: 'compile' as const };
  const setUp = (defaultExecutor: 'sandbox' | 'gvisor' | 'microvm') => {
    const store = new SqliteStore(':memory:');
    const requests: { request: Record<string, unknown>; roBinds?: { source: string; target: string }[] }[] = [];
    const executionService = {
      prepare: async () => undefined,
      isDraining: false,
      executeRaw: async (request: Record<string, unknown>, options: { roBinds?: { source: string; target: string }[] }) => {
        requests.push({ request, ...(options.roBinds ? { roBinds: options.roBinds } : {}) });
        return { result: { id: 'exe_1', exitCode: 0, durationMs: 1, coldStart: true, timedOut: false, oomKilled: false, truncated: false, executor: defaultExecutor }, stdout: Buffer.from('ok'), stderr: Buffer.alloc(0) };
      },
    } as unknown as ExecutionService;
    const compiled: { source: unknown; runtime: string }[] = [];
    const builder = {
      checkRoom: () => undefined,
      needsBuild: async () => null,
      release: () => undefined,
      compiledFor: async (source: unknown, runtime: string) => {
        compiled.push({ source, runtime });
        return { layer: LAYER, log: '' };
      },
    } as unknown as DependencyBuilder;
    const layers = new BundleStore({ dir: '/nonexistent/layers' });
    const service = new FunctionService({ store, executionService, defaultExecutor, builder, layers });
    return { store, service, requests, compiled, layers };
  };

  it('on an executor that binds files the program is compiled once at deploy and a call execs it from /kindling-bin', async () => {
    const { store, service, requests, compiled, layers } = setUp('sandbox');
    try {
      const { view } = await service.deploy('default', 'g', { runtime: 'go', code: 'package main\nfunc main() {}\n' });
      assert.deepEqual(view.layer, LAYER);
      assert.deepEqual(compiled, [{ source: { code: 'package main\nfunc main() {}\n' }, runtime: 'go' }]);
      await service.invoke('default', 'g', Buffer.from('x'));
      assert.deepEqual(requests[0]!.request.command, ['/kindling-bin/main']);
      assert.equal(requests[0]!.request.image, 'kindling/go');
      assert.equal(requests[0]!.request.code, undefined, 'no code to compile per call');
      assert.deepEqual(requests[0]!.roBinds, [{ source: layers.pathOf(LAYER.sha256), target: '/kindling-bin' }]);
      // Rust the same way; bash (interpreted) is not compiled.
      await service.deploy('default', 'r', { runtime: 'rust', code: 'fn main() {}' });
      await service.deploy('default', 'b', { runtime: 'bash', code: 'echo' });
      assert.deepEqual(compiled.map((c) => c.runtime), ['go', 'rust']);
    } finally {
      await service.close();
      store.close();
    }
  });

  it('on gvisor the program is bound in as on the sandbox executor', async () => {
    const { store, service, requests, compiled, layers } = setUp('gvisor');
    try {
      const { view } = await service.deploy('default', 'g', { runtime: 'go', code: 'package main\nfunc main() {}\n' });
      assert.deepEqual(view.layer, LAYER);
      assert.equal(compiled.length, 1);
      await service.invoke('default', 'g', Buffer.from('x'));
      assert.deepEqual(requests[0]!.request.command, ['/kindling-bin/main']);
      assert.deepEqual(requests[0]!.roBinds, [{ source: layers.pathOf(LAYER.sha256), target: '/kindling-bin' }]);
    } finally {
      await service.close();
      store.close();
    }
  });

  it("on microvm the program is compiled at deploy and bound as a disk at /run/kindling-bin (the VM's root is read-only)", async () => {
    const { store, service, requests, compiled, layers } = setUp('microvm');
    try {
      const { view } = await service.deploy('default', 'g', { runtime: 'go', code: 'package main\nfunc main() {}\n' });
      assert.deepEqual(view.layer, LAYER);
      assert.equal(compiled.length, 1);
      await service.invoke('default', 'g', Buffer.from('x'));
      assert.deepEqual(requests[0]!.request.command, ['/run/kindling-bin/main']);
      assert.equal(requests[0]!.request.code, undefined, 'no code to compile per call');
      assert.deepEqual(requests[0]!.roBinds, [{ source: layers.pathOf(LAYER.sha256), target: '/run/kindling-bin' }]);
    } finally {
      await service.close();
      store.close();
    }
  });
});

it('a go handler compiled for the sandbox executor, invoked where gvisor became the default, is refused with 400 (its program cannot be bound there)', async () => {
  const store = new SqliteStore(':memory:');
  const everywhere = { ...sandboxOnlyHandlers, supports: () => true } as unknown as HandlerInvoker;
  const service = new FunctionService({ store, executionService: { prepare: async () => undefined } as unknown as ExecutionService, defaultExecutor: 'gvisor', handlers: everywhere });
  try {
    store.putFunction('default', 'h', { runtime: 'go', code: 'package main\n', handler: 'Handle', layer: { sha256: 'd'.repeat(64), bytes: 1, reused: false, buildMs: 1, kind: 'compile' } }, 1, { keep: 3, alsoKeep: [] });
    await assert.rejects(service.invoke('default', 'h', Buffer.from('x')), (error: unknown) => error instanceof KindlingError && error.code === 'HANDLERS_UNSUPPORTED' && error.statusCode === 400 && /redeploy/.test(error.message));
  } finally {
    await service.close();
    store.close();
  }
});

describe('FunctionService: Debian packages (apt)', () => {
  const setUp = (failWith?: KindlingError) => {
    const store = new SqliteStore(':memory:');
    const requests: Record<string, unknown>[] = [];
    const executionService = {
      prepare: async () => undefined,
      isDraining: false,
      executeRaw: async (request: Record<string, unknown>) => {
        requests.push(request);
        return { result: { id: 'exe_1', exitCode: 0, durationMs: 1, coldStart: true, timedOut: false, oomKilled: false, truncated: false, executor: 'sandbox' }, stdout: Buffer.from('ok'), stderr: Buffer.alloc(0) };
      },
    } as unknown as ExecutionService;
    const asked: { tenant: string; from: string; packages: readonly string[] }[] = [];
    let pinned = 0;
    let collected = 0;
    const packageImages: PackageImages = {
      imageForPackages: async (tenant, from, packages, onLog) => {
        asked.push({ tenant, from, packages });
        onLog('installing\n');
        if (failWith !== undefined) throw failWith;
        pinned++;
        return { image: `kindling/u.${tenant}.pkgs-x`, reused: false, buildMs: 5, sizeBytes: 1, release: () => void pinned-- };
      },
      collectFunctionImages: async () => void collected++,
    };
    const builds = new SqliteBuildStore(':memory:');
    const service = new FunctionService({ store, executionService, defaultExecutor: 'sandbox', packageImages, builds });
    return { store, service, requests, asked, pinned: () => pinned, collected: () => collected };
  };

  it('a deploy gets the image for its packages (built from its runtime\'s) before its version is stored, and its calls run there', async () => {
    const { store, service, requests, asked, pinned } = setUp();
    try {
      const { view } = await service.deploy('acme', 'p', { runtime: 'python', code: 'import six', apt: ['python3-six', 'python3-six'] });
      assert.deepEqual(view.apt, ['python3-six'], 'duplicates dropped');
      assert.equal(view.aptImage, 'kindling/u.acme.pkgs-x');
      assert.deepEqual(asked, [{ tenant: 'acme', from: 'kindling/python3.13', packages: ['python3-six'] }]);
      assert.equal(pinned(), 0, 'released once the version is stored');
      assert.equal(service.builds('acme', 'p')[0]?.kind, 'apt');
      await service.invoke('acme', 'p', Buffer.from('x'));
      assert.equal(requests[0]!.image, 'kindling/u.acme.pkgs-x');
      assert.equal(requests[0]!.runtime, 'python3.13');
      // A client cannot name the image itself: only the build sets it.
      const { view: plain } = await service.deploy('acme', 'q', { runtime: 'python', code: '1', aptImage: 'kindling/u.other.pkgs-y' });
      assert.equal(plain.aptImage, undefined);
    } finally {
      await service.close();
      store.close();
    }
  });

  it('a failed image build stores nothing: 422 BUILD_FAILED, the previous version serves, the image is released and unused images collected', async () => {
    const { store, service, pinned, collected } = setUp(new KindlingError('BUILD_FAILED', 'E: Unable to locate package nope'));
    try {
      await service.deploy('acme', 'p', { runtime: 'python', code: 'print(1)' });
      await assert.rejects(service.deploy('acme', 'p', { runtime: 'python', code: 'print(2)', apt: ['nope'] }), (error: unknown) => error instanceof KindlingError && error.code === 'BUILD_FAILED' && /Unable to locate package nope/.test(error.message));
      assert.equal(store.getFunction('acme', 'p')?.latestVersion, 1);
      assert.equal(service.builds('acme', 'p')[0]?.status, 'failed');
      assert.equal(pinned(), 0);
      await service.bundlesCollected();
      assert.ok(collected() >= 1, 'unused images collected after the failed build');
    } finally {
      await service.close();
      store.close();
    }
  });

  it('apt needs a runtime and no image of the caller\'s, and a server that builds such images; each refused with a 400 before any build', async () => {
    const { store, service, asked } = setUp();
    const bare = new FunctionService({ store, executionService: { prepare: async () => undefined } as unknown as ExecutionService, defaultExecutor: 'sandbox' });
    try {
      const code = (error: unknown): string => (error instanceof KindlingError ? `${error.statusCode} ${error.code}` : String(error));
      assert.equal(await service.deploy('a', 'f', { image: 'kindling/base', command: ['true'], apt: ['jq'] }).then(() => 'ok', code), '400 VALIDATION_FAILED');
      assert.equal(await service.deploy('a', 'f', { runtime: 'python', code: '1', image: 'kindling/python3.13', apt: ['jq'] }).then(() => 'ok', code), '400 CONFLICTING_FIELDS');
      assert.equal(await service.deploy('a', 'f', { runtime: 'python', code: '1', apt: ['--allow-unauthenticated'] }).then(() => 'ok', code), '400 VALIDATION_FAILED');
      assert.equal(await service.deploy('a', 'f', { runtime: 'python', code: '1', apt: 'jq' as unknown as string[] }).then(() => 'ok', code), '400 VALIDATION_FAILED');
      assert.equal(await bare.deploy('a', 'f', { runtime: 'python', code: '1', apt: ['jq'] }).then(() => 'ok', code), '400 VALIDATION_FAILED');
      assert.deepEqual(asked, []);
      // An empty list is no packages: no build.
      const { view } = await service.deploy('a', 'f', { runtime: 'python', code: '1', apt: [] });
      assert.equal(view.apt, undefined);
      assert.deepEqual(asked, []);
    } finally {
      await bare.close();
      await service.close();
      store.close();
    }
  });
});

describe('FunctionService: a cluster node that runs a call itself after its router admitted it', () => {
  it("does not take the function's maxConcurrency slot twice (a command function with maxConcurrency 1 runs)", async () => {
    const store = new SqliteStore(':memory:');
    const ran: string[] = [];
    const executionService = {
      prepare: async () => undefined,
      executeRaw: async () => {
        ran.push('here');
        return { result: { id: 'x1', exitCode: 0, durationMs: 1, coldStart: false, timedOut: false, oomKilled: false, truncated: false, executor: 'sandbox' }, stdout: Buffer.from('ok'), stderr: Buffer.alloc(0) };
      },
    } as unknown as ExecutionService;
    // The router of an `all` node that placed the call on itself: it takes the slot, then runs it here.
    const remote = {
      route: (_v: unknown, _e: unknown, _b: unknown, _o: unknown, runHere: () => Promise<unknown>, admit: () => Promise<() => void>) =>
        (async () => {
          const release = await admit();
          try {
            return await runHere();
          } finally {
            release();
          }
        })(),
      runsHere: () => true,
      deleted: () => undefined,
    } as unknown as ConstructorParameters<typeof FunctionService>[0]['remote'];
    const service = new FunctionService({ store, executionService, defaultExecutor: 'sandbox', ...(remote ? { remote } : {}) });
    try {
      await service.deploy('default', 'single', { image: 'kindling/base', command: ['cat'], maxConcurrency: 1, maxQueued: 0 });
      const result = await service.invoke('default', 'single', Buffer.from('in'));
      assert.equal(result.body.toString(), 'ok');
      assert.deepEqual(ran, ['here']);
    } finally {
      await service.close();
      store.close();
    }
  });
});

describe("FunctionService: the tenant's concurrency slot is taken after the function's", () => {
  /** Command runs that wait at a gate the test opens; a tenant scope with a quota of `quota` slots. */
  function setup(quota: number) {
    const store = new SqliteStore(':memory:');
    const gates: { name: string; open: () => void }[] = [];
    const executionService = {
      prepare: async () => undefined,
      executeRaw: (_request: unknown, context: { functionName: string }) =>
        new Promise((resolve) => {
          gates.push({ name: context.functionName, open: () => resolve({ result: { id: 'x', exitCode: 0, durationMs: 1, coldStart: false, timedOut: false, oomKilled: false, truncated: false, executor: 'sandbox' }, stdout: Buffer.from(context.functionName), stderr: Buffer.alloc(0) }) });
        }),
    } as unknown as ExecutionService;
    const tenant = { running: 0, peak: 0 };
    const scope = {
      name: 'default',
      caps: {},
      checkSlot: () => {
        if (tenant.running >= quota) throw new KindlingError('TENANT_CONCURRENCY_LIMIT', 'the tenant runs all it may');
      },
      acquire: () => {
        if (tenant.running >= quota) throw new KindlingError('TENANT_CONCURRENCY_LIMIT', 'the tenant runs all it may');
        tenant.running++;
        tenant.peak = Math.max(tenant.peak, tenant.running);
        let released = false;
        return () => {
          if (!released) tenant.running--;
          released = true;
        };
      },
    };
    const service = new FunctionService({ store, executionService, defaultExecutor: 'sandbox' });
    const until = async (done: () => boolean): Promise<void> => {
      for (let i = 0; i < 200 && !done(); i++) await new Promise((resolve) => setImmediate(resolve));
      assert.ok(done(), 'never happened');
    };
    return { store, gates, tenant, scope, service, until };
  }

  it("a call waiting for a slot of its function holds none of the tenant's quota: the tenant's other functions run", async () => {
    const { store, gates, tenant, scope, service, until } = setup(2);
    try {
      await service.deploy('default', 'single', { image: 'kindling/base', command: ['cat'], maxConcurrency: 1 });
      await service.deploy('default', 'other', { image: 'kindling/base', command: ['cat'] });
      const first = service.invoke('default', 'single', Buffer.from('a'), { scope });
      await until(() => gates.length === 1);
      const second = service.invoke('default', 'single', Buffer.from('b'), { scope });
      // The second waits in the function's queue without a slot of the tenant's quota of 2...
      for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
      assert.deepEqual([gates.length, tenant.running], [1, 1]);
      // ...so another function of the tenant runs (before, the waiting call held the tenant's second slot: a 429).
      const other = service.invoke('default', 'other', Buffer.from('c'), { scope });
      await until(() => gates.length === 2);
      assert.equal(gates[1]!.name, 'other');
      gates[0]!.open();
      // The first ends, the second gets the function's slot, then the tenant's (freed by the first).
      await until(() => gates.length === 3);
      gates[1]!.open();
      gates[2]!.open();
      const bodies = (await Promise.all([first, second, other])).map((result) => result.body.toString());
      assert.deepEqual(bodies, ['single', 'single', 'other']);
      assert.deepEqual([tenant.running, tenant.peak], [0, 2]);
    } finally {
      await service.close();
      store.close();
    }
  });

  it('a tenant that runs all it may is refused at once: its call does not wait in the function\'s queue first', async () => {
    const { store, gates, scope, service, until } = setup(1);
    try {
      await service.deploy('default', 'single', { image: 'kindling/base', command: ['cat'], maxConcurrency: 1 });
      const first = service.invoke('default', 'single', Buffer.from('a'), { scope });
      await until(() => gates.length === 1);
      // Without the check it would queue for the function (up to 30 s), then be refused by the tenant's quota.
      await assert.rejects(service.invoke('default', 'single', Buffer.from('b'), { scope }), (error: KindlingError) => error.code === 'TENANT_CONCURRENCY_LIMIT');
      gates[0]!.open();
      await first;
    } finally {
      await service.close();
      store.close();
    }
  });

  it("a call refused by the tenant's quota gives its function's slot back", async () => {
    const { store, gates, tenant, scope, service, until } = setup(1);
    try {
      await service.deploy('default', 'single', { image: 'kindling/base', command: ['cat'], maxConcurrency: 1, maxQueued: 0 });
      await service.deploy('default', 'other', { image: 'kindling/base', command: ['cat'] });
      const other = service.invoke('default', 'other', Buffer.from('c'), { scope });
      await until(() => gates.length === 1);
      // (A slot taken between the check and the acquire, as by a call on another gateway: here, no check.)
      const { checkSlot: _unchecked, ...racing } = scope;
      await assert.rejects(service.invoke('default', 'single', Buffer.from('a'), { scope: racing }), (error: KindlingError) => error.code === 'TENANT_CONCURRENCY_LIMIT');
      gates[0]!.open();
      await other;
      // Had the refused call kept the function's only slot (no queue), this one would be a 429 TOO_MANY_REQUESTS.
      const single = service.invoke('default', 'single', Buffer.from('a'), { scope });
      await until(() => gates.length === 2);
      gates[1]!.open();
      assert.equal((await single).body.toString(), 'single');
      assert.equal(tenant.running, 0);
    } finally {
      await service.close();
      store.close();
    }
  });
});
