import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KindlingError } from '../core/errors.js';
import { SqliteStore } from '../store/sqlite.js';
import type { ExecutionService } from './execution-service.js';
import { BundleStore } from './bundles.js';
import { FunctionService, type HandlerInvoker } from './function-service.js';

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
  it('a bundle function whose default executor became one that cannot bind bundles answers 400 BUNDLES_UNSUPPORTED, without running', async () => {
    const store = new SqliteStore(':memory:');
    let ran = 0;
    const executionService = {
      prepare: async () => undefined,
      executeRaw: async () => {
        ran++;
        throw new Error('not reached');
      },
    } as unknown as ExecutionService;
    // Stored as a deploy on a sandbox-default server would store it (no executor named).
    store.putFunction('default', 'b', { runtime: 'bash', command: ['bash', 'run.sh'], bundle: { sha256: 'a'.repeat(64), bytes: 10240, entries: 2 } }, 1);
    const service = new FunctionService({ store, executionService, defaultExecutor: 'microvm', bundles: new BundleStore({ dir: '/nonexistent/bundles' }) });
    try {
      await assert.rejects(service.invoke('default', 'b', Buffer.from('x'), {}), (error: unknown) => error instanceof KindlingError && error.code === 'BUNDLES_UNSUPPORTED' && /microvm/.test(error.message));
      assert.equal(ran, 0);
    } finally {
      await service.close();
      store.close();
    }
  });
});
