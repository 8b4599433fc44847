import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { KindlingError } from '../core/errors.js';
import { SqliteStore } from '../store/sqlite.js';
import type { NewInvocation } from '../store/store.js';
import type { FunctionService } from './function-service.js';
import { InvocationService } from './invocations.js';
import { LogBus } from './log-bus.js';

/** A store that counts its insert transactions, and a function service that knows `f` only (never started: no runs). */
function setup(): { service: InvocationService; store: SqliteStore; batches: number[] } {
  const store = new SqliteStore(':memory:');
  const batches: number[] = [];
  const insertInvocations = store.insertInvocations.bind(store);
  store.insertInvocations = (inputs: readonly NewInvocation[]) => {
    batches.push(inputs.length);
    return insertInvocations(inputs);
  };
  const functionService = {
    resolve: (tenant: string, name: string) => {
      if (name !== 'f') throw new KindlingError('FUNCTION_NOT_FOUND', `no function ${name}`);
      return { version: { tenant, name, version: 3, spec: {}, createdAtMs: 0 }, style: 'handler' };
    },
  } as unknown as FunctionService;
  return { service: new InvocationService({ store, functionService, logBus: new LogBus() }), store, batches };
}

describe('InvocationService.enqueue', () => {
  it('commits the enqueues of one event-loop turn in one transaction, and answers each only after it', async () => {
    const { service, store, batches } = setup();
    try {
      const pending = Array.from({ length: 5 }, (_, i) => service.enqueue({ functionName: 'f', payload: Buffer.from(`p${i}`) }));
      assert.deepEqual(batches, [], 'nothing is written before the end of the turn');
      const answers = await Promise.all(pending);
      assert.deepEqual(batches, [5]);
      for (const [i, { view, created }] of answers.entries()) {
        assert.equal(created, true);
        assert.equal(view.status, 'queued');
        assert.equal(view.version, 3);
        assert.deepEqual(store.getInvocationPayload(view.id), Buffer.from(`p${i}`), 'committed before the answer');
      }
      // Each answer is sent after its commit: here, every promise of a turn resolves after that turn's transaction.
      const order: string[] = [];
      const later = service.enqueue({ functionName: 'f', payload: Buffer.alloc(0) }).then(({ view }) => order.push(store.getInvocation(view.id) ? 'answered after commit' : 'answered before commit'));
      await later;
      assert.deepEqual(order, ['answered after commit']);
      assert.deepEqual(batches, [5, 1]);
    } finally {
      await service.close();
      store.close();
    }
  });

  it('dedupes an idempotency key used twice in the same turn, and rejects bad requests without a write', async () => {
    const { service, store, batches } = setup();
    try {
      const [a, b] = await Promise.all([
        service.enqueue({ functionName: 'f', payload: Buffer.from('a'), idempotencyKey: 'k' }),
        service.enqueue({ functionName: 'f', payload: Buffer.from('b'), idempotencyKey: 'k' }),
      ]);
      assert.equal(a.created, true);
      assert.equal(b.created, false);
      assert.equal(b.view.id, a.view.id);
      await assert.rejects(service.enqueue({ functionName: 'nope', payload: Buffer.alloc(0) }), /no function nope/);
      await assert.rejects(service.enqueue({ functionName: 'f', payload: Buffer.alloc(0), idempotencyKey: ' ' }), /Idempotency-Key/);
      assert.deepEqual(batches, [2]);
    } finally {
      await service.close();
      store.close();
    }
  });

  it('when the batch fails, tries each on its own: only the row that fails is refused', async () => {
    const { service, store } = setup();
    const insertInvocation = store.insertInvocation.bind(store);
    store.insertInvocation = (input: NewInvocation) => {
      if (input.payload.toString() === 'bad') throw new Error('disk says no');
      return insertInvocation(input);
    };
    try {
      const results = await Promise.allSettled(['one', 'bad', 'two'].map((body) => service.enqueue({ functionName: 'f', payload: Buffer.from(body) })));
      assert.deepEqual(
        results.map((r) => r.status),
        ['fulfilled', 'rejected', 'fulfilled'],
      );
      assert.match(String((results[1] as PromiseRejectedResult).reason), /disk says no/);
      assert.equal(store.listInvocations({ limit: 10 }).length, 2);
    } finally {
      await service.close();
      store.close();
    }
  });

  it('commits what was accepted before close() and refuses what comes after', async () => {
    const { service, store } = setup();
    const accepted = service.enqueue({ functionName: 'f', payload: Buffer.from('x') });
    await service.close();
    const { view } = await accepted;
    assert.equal(store.getInvocation(view.id)?.status, 'queued');
    await assert.rejects(service.enqueue({ functionName: 'f', payload: Buffer.alloc(0) }), (error: unknown) => error instanceof KindlingError && error.code === 'SHUTTING_DOWN');
    store.close();
  });
});
