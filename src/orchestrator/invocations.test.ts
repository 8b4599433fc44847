import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { KindlingError } from '../core/errors.js';
import { SqliteStore } from '../store/sqlite.js';
import type { NewInvocation } from '../store/store.js';
import type { FunctionService, InvocationResult, InvokeOptions } from './function-service.js';
import { InvocationService } from './invocations.js';
import { LogBus } from './log-bus.js';

/** What one transaction of the store did. */
interface Turn {
  inserts: number;
  finishes: number;
  claims: number;
}

/** A fake run: resolves when the test opens its gate. */
interface Gate {
  id: string;
  payload: string;
  open: (exitCode?: number) => void;
}

/**
 * A store that records what each transaction did, and a function service that knows `f` only; its invocations wait
 * at a gate the test opens (`gates`), and echo their payload.
 */
function setup(options: { concurrency?: number } = {}): { service: InvocationService; store: SqliteStore; inserts: () => number[]; turns: Turn[]; gates: Gate[]; bus: LogBus } {
  const store = new SqliteStore(':memory:');
  const turns: Turn[] = [];
  let current: Turn | null = null;
  const count = <A extends unknown[], R>(fn: (...args: A) => R, field: keyof Turn): ((...args: A) => R) => {
    return (...args: A) => {
      const result = fn(...args);
      if (current !== null && (field !== 'claims' || result !== null)) current[field]++;
      return result;
    };
  };
  store.insertInvocation = count(store.insertInvocation.bind(store), 'inserts');
  store.finishInvocation = count(store.finishInvocation.bind(store), 'finishes');
  store.claimNextInvocation = count(store.claimNextInvocation.bind(store), 'claims');
  const transaction = store.transaction.bind(store);
  store.transaction = <T>(fn: () => T): T => {
    current = { inserts: 0, finishes: 0, claims: 0 };
    try {
      const result = transaction(fn);
      turns.push(current);
      return result;
    } finally {
      current = null;
    }
  };
  const gates: Gate[] = [];
  const functionService = {
    resolve: (tenant: string, name: string) => {
      if (name !== 'f') throw new KindlingError('FUNCTION_NOT_FOUND', `no function ${name}`);
      return { version: { tenant, name, version: 3, spec: {}, createdAtMs: 0 }, style: 'handler' };
    },
    invoke: (tenant: string, name: string, payload: Buffer, invokeOptions: InvokeOptions): Promise<InvocationResult> =>
      new Promise((resolve) => {
        gates.push({
          id: `${name}@${invokeOptions.version}`,
          payload: payload.toString(),
          open: (exitCode = 0) => resolve({ invocationId: 'x', tenant, functionName: name, version: 3, exitCode, body: payload, stderr: Buffer.alloc(0), durationMs: 1, coldStart: false, timedOut: false, executor: 'sandbox' }),
        });
      }),
  } as unknown as FunctionService;
  const bus = new LogBus();
  const service = new InvocationService({ store, functionService, logBus: bus, ...(options.concurrency === undefined ? {} : { concurrency: options.concurrency }) });
  return { service, store, inserts: () => turns.map((t) => t.inserts).filter((n) => n > 0), turns, gates, bus };
}

/** Waits (event-loop turns) until `done()` holds. */
async function until(done: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !done(); i++) await nextTurn();
  assert.ok(done(), 'never happened');
}

describe('InvocationService.enqueue', () => {
  it('commits the enqueues of one event-loop turn in one transaction, and answers each only after it', async () => {
    const { service, store, inserts } = setup();
    try {
      const pending = Array.from({ length: 5 }, (_, i) => service.enqueue({ functionName: 'f', payload: Buffer.from(`p${i}`) }));
      assert.deepEqual(inserts(), [], 'nothing is written before the end of the turn');
      const answers = await Promise.all(pending);
      assert.deepEqual(inserts(), [5]);
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
      assert.deepEqual(inserts(), [5, 1]);
    } finally {
      await service.close();
      store.close();
    }
  });

  it('dedupes an idempotency key used twice in the same turn, and rejects bad requests without a write', async () => {
    const { service, store, inserts } = setup();
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
      assert.deepEqual(inserts(), [2]);
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

describe('InvocationService dispatcher', () => {
  it('runs at most `concurrency` at once, FIFO; an outcome, the freed slot and its next claim share one transaction', async () => {
    const { service, store, turns, gates } = setup({ concurrency: 2 });
    service.start();
    try {
      const views = [];
      for (let i = 0; i < 5; i++) views.push((await service.enqueue({ functionName: 'f', payload: Buffer.from(`p${i}`) })).view);
      await until(() => gates.length === 2);
      assert.deepEqual(gates.map((g) => g.payload), ['p0', 'p1'], 'the oldest first');
      assert.deepEqual(store.listInvocations({ status: 'running', limit: 10 }).map((r) => r.id).sort(), [views[0]!.id, views[1]!.id].sort(), 'claimed (committed) before they run');
      // Both end in the same turn: one transaction stores both outcomes and claims the next two.
      turns.length = 0;
      for (const gate of gates.splice(0)) gate.open();
      await until(() => gates.length === 2);
      assert.deepEqual(turns, [{ inserts: 0, finishes: 2, claims: 2 }]);
      assert.deepEqual(gates.map((g) => g.payload), ['p2', 'p3']);
      assert.equal(service.stats.running, 2);
      gates.splice(0).forEach((gate, i) => gate.open(i));
      await until(() => gates.length === 1);
      assert.equal(gates[0]!.payload, 'p4');
      gates.splice(0)[0]!.open();
      await service.whenIdle();
      assert.equal(service.stats.running, 0);
      assert.deepEqual(
        views.map((v) => [store.getInvocation(v.id)?.status, store.getInvocationOutput(v.id)?.stdout.toString()]),
        [['succeeded', 'p0'], ['succeeded', 'p1'], ['succeeded', 'p2'], ['failed', 'p3'], ['succeeded', 'p4']],
      );
    } finally {
      await service.close();
      store.close();
    }
  });

  it('announces an outcome (log end, the next run) only after it is committed', async () => {
    const { service, store, gates, bus } = setup({ concurrency: 1 });
    const seen: string[] = [];
    bus.subscribe((message) => {
      if (message.kind === 'end') seen.push(`${message.status}:${store.getInvocation(message.invocationId)?.status}`);
    });
    service.start();
    try {
      const a = (await service.enqueue({ functionName: 'f', payload: Buffer.from('a') })).view;
      await service.enqueue({ functionName: 'f', payload: Buffer.from('b') });
      await until(() => gates.length === 1);
      gates.splice(0)[0]!.open();
      await until(() => gates.length === 1);
      assert.equal(store.getInvocation(a.id)?.status, 'succeeded', 'stored before the next one runs');
      gates.splice(0)[0]!.open();
      await service.whenIdle();
      assert.deepEqual(seen, ['succeeded:succeeded', 'succeeded:succeeded']);
    } finally {
      await service.close();
      store.close();
    }
  });

  it('when the turn\'s transaction fails, stores each outcome and claims on its own', async () => {
    const { service, store, gates } = setup({ concurrency: 1 });
    service.start();
    try {
      const a = (await service.enqueue({ functionName: 'f', payload: Buffer.from('a') })).view;
      const b = (await service.enqueue({ functionName: 'f', payload: Buffer.from('b') })).view;
      await until(() => gates.length === 1);
      const transaction = store.transaction;
      store.transaction = () => {
        store.transaction = transaction;
        throw new Error('the batch failed');
      };
      gates.splice(0)[0]!.open();
      await until(() => gates.length === 1);
      assert.equal(store.getInvocation(a.id)?.status, 'succeeded');
      gates.splice(0)[0]!.open();
      await service.whenIdle();
      assert.equal(store.getInvocation(b.id)?.status, 'succeeded');
    } finally {
      await service.close();
      store.close();
    }
  });

  it('close() waits for the running ones and stores their outcomes before it resolves', async () => {
    const { service, store, gates } = setup({ concurrency: 2 });
    service.start();
    const a = (await service.enqueue({ functionName: 'f', payload: Buffer.from('a') })).view;
    await until(() => gates.length === 1);
    const closed = service.close();
    gates.splice(0)[0]!.open();
    assert.equal(await closed, true);
    assert.equal(store.getInvocation(a.id)?.status, 'succeeded');
    store.close();
  });
});

describe('InvocationService: a run lost with its cluster worker', () => {
  /** `f` fails with WORKER_LOST while `lost` says so, then echoes its payload; `starts` counts its runs. */
  function lossy(maxDeliveries?: number, lostError: () => Error = () => new KindlingError('WORKER_LOST', 'worker wk-a said nothing for 5000 ms; the invocation may have run')) {
    const store = new SqliteStore(':memory:');
    const state = { lostRuns: 0, starts: 0 };
    const functionService = {
      resolve: (tenant: string, name: string) => ({ version: { tenant, name, version: 1, spec: {}, createdAtMs: 0 }, style: 'handler' }),
      invoke: async (tenant: string, name: string, payload: Buffer): Promise<InvocationResult> => {
        state.starts++;
        if (state.lostRuns > 0) {
          state.lostRuns--;
          throw lostError();
        }
        return { invocationId: 'x', tenant, functionName: name, version: 1, exitCode: 0, body: payload, stderr: Buffer.alloc(0), durationMs: 1, coldStart: false, timedOut: false, executor: 'sandbox' };
      },
    } as unknown as FunctionService;
    const service = new InvocationService({ store, functionService, logBus: new LogBus(), ...(maxDeliveries === undefined ? {} : { maxDeliveries }) });
    return { store, state, service, functionService };
  }

  it('is delivered again, and its view counts the attempts', async () => {
    const { store, state, service } = lossy();
    state.lostRuns = 2;
    service.start();
    const { view } = await service.enqueue({ functionName: 'f', payload: Buffer.from('again') });
    await until(() => store.getInvocation(view.id)?.status === 'succeeded');
    const done = service.get(view.id);
    assert.deepEqual([done.attempts, state.starts, service.output(view.id).stdout.toString()], [3, 3, 'again']);
    assert.equal((await service.enqueue({ functionName: 'f', payload: Buffer.from('once') })).view.attempts, 0);
    await service.close();
    store.close();
  });

  it('is failed with the reason once it was started maxDeliveries times, and is not started again', async () => {
    const { store, state, service } = lossy(2);
    state.lostRuns = 5;
    service.start();
    const { view } = await service.enqueue({ functionName: 'f', payload: Buffer.from('x') });
    await until(() => store.getInvocation(view.id)?.status === 'failed');
    const failed = service.get(view.id);
    assert.equal(failed.attempts, 2);
    assert.match(failed.error ?? '', /WORKER_LOST|worker wk-a said nothing/);
    assert.match(failed.error ?? '', /started 2 times, the most --async-max-deliveries allows/);
    for (let i = 0; i < 20; i++) await nextTurn();
    assert.equal(state.starts, 2);
    await service.close();
    store.close();
  });

  it('a run cut by the gateway (its stop, its lost NATS link) after it was sent counts too; one never sent does not', async () => {
    for (const code of ['SHUTTING_DOWN', 'CLUSTER_UNAVAILABLE'] as const) {
      const sent = lossy(2, () => new KindlingError(code, 'the gateway stopped before the worker answered', { details: { sent: true } }));
      sent.state.lostRuns = 5;
      sent.service.start();
      const { view } = await sent.service.enqueue({ functionName: 'f', payload: Buffer.from('x') });
      await until(() => sent.store.getInvocation(view.id)?.status === 'failed');
      assert.deepEqual([sent.service.get(view.id).attempts, sent.state.starts], [2, 2], code);
      await sent.service.close();
      sent.store.close();
    }
    // Refused before it was sent (no NATS link now): not an attempt, run again until it succeeds.
    const unsent = lossy(2, () => new KindlingError('CLUSTER_UNAVAILABLE', 'this gateway has no NATS connection now'));
    unsent.state.lostRuns = 3;
    unsent.service.start();
    const { view } = await unsent.service.enqueue({ functionName: 'f', payload: Buffer.from('y') });
    await waitUntil(() => unsent.store.getInvocation(view.id)?.status === 'succeeded');
    assert.deepEqual([unsent.service.get(view.id).attempts, unsent.state.starts], [1, 4]);
    await unsent.service.close();
    unsent.store.close();
  });

  it('left running by a stopped cluster gateway: queued again at its start (their attempt counted) below maxDeliveries, failed at it; a single server fails them all', async () => {
    for (const redeliverInterrupted of [true, false]) {
      const { store, state, service: before, functionService } = lossy(2);
      // Two invocations accepted, then claimed (running) when the gateway died: one on its first start, one on its last.
      const first = (await before.enqueue({ functionName: 'f', payload: Buffer.from('first') })).view;
      const last = (await before.enqueue({ functionName: 'f', payload: Buffer.from('last') })).view;
      await before.close();
      store.claimNextInvocation(1);
      store.claimNextInvocation(1);
      store.requeueInvocation(last.id, { countAttempt: true });
      store.claimNextInvocation(1);
      assert.deepEqual([store.getInvocation(first.id)?.attempts, store.getInvocation(last.id)?.attempts], [1, 2]);
      const after = new InvocationService({ store, functionService, logBus: new LogBus(), maxDeliveries: 2, redeliverInterrupted });
      after.start();
      if (redeliverInterrupted) {
        await until(() => store.getInvocation(first.id)?.status === 'succeeded');
        assert.equal(after.get(first.id).attempts, 2);
        assert.equal(after.output(first.id).stdout.toString(), 'first');
      } else {
        assert.equal(store.getInvocation(first.id)?.status, 'failed');
      }
      assert.deepEqual([store.getInvocation(last.id)?.status, store.getInvocation(last.id)?.error], ['failed', 'server stopped during the run']);
      assert.equal(state.starts, redeliverInterrupted ? 1 : 0, 'the first service never ran them; the second ran the one it queued again');
      await after.close();
      store.close();
    }
  });
});

/** Waits (real time, for the dispatcher's pauses) until `done()` holds. */
async function waitUntil(done: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !done(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
  assert.ok(done(), 'never happened');
}
