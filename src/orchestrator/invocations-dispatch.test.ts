/**
 * A property-style test of the async dispatcher: many tenants with concurrency quotas, slots held by other work of the
 * same tenants (sync executions), requeues (tenant at its quota, function at its limit) and runs that end in a random
 * order, over a real SQLite store, with fake timers. Whatever the interleaving: every accepted invocation ends, exactly
 * once, with its own output; no tenant ever runs more than its quota; the dispatcher never runs more than its
 * concurrency.
 *
 * Only setTimeout is faked, not Date: a timer here may fire while the wall clock has not moved, as a real timer may
 * fire a little before Date.now() reaches the deadline it was set for (libuv starts timers on the loop's cached time).
 * A dispatcher that compared the wall clock with a deadline when its timer fired lost its wake-up (issue 13).
 */
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it, mock } from 'node:test';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { KindlingError } from '../core/errors.js';
import { seededRandom } from '../core/seeded-random.js';
import { SqliteStore } from '../store/sqlite.js';
import type { TenantScope } from './execution-service.js';
import type { FunctionService, InvocationResult, InvokeOptions } from './function-service.js';
import { InvocationService } from './invocations.js';
import { LogBus } from './log-bus.js';


interface Run {
  tenant: string;
  payload: string;
  finish: (exitCode: number) => void;
}

const TENANTS = ['t0', 't1', 't2', 't3', 't4'];
const CONCURRENCY = 4;

/** The world of one seed: tenants with quotas, slots they hold, the runs under way, what ran. */
function world(rand: () => number) {
  const quota = new Map(TENANTS.map((t) => [t, 1 + Math.floor(rand() * 3)]));
  const inUse = new Map(TENANTS.map((t) => [t, 0]));
  const started = new Map<string, number>();
  const runs: Run[] = [];
  const violations: string[] = [];
  /** A slot of the tenant's quota, as TenantRegistry.acquireSlot gives it: 429 at the quota. */
  const acquire = (tenant: string): (() => void) => {
    const used = inUse.get(tenant)!;
    if (used >= quota.get(tenant)!) throw new KindlingError('TENANT_CONCURRENCY_LIMIT', `tenant ${tenant} at its quota`);
    inUse.set(tenant, used + 1);
    let released = false;
    return () => {
      if (released) violations.push(`a slot of ${tenant} released twice`);
      released = true;
      inUse.set(tenant, inUse.get(tenant)! - 1);
    };
  };
  const scopeOf = (tenant: string): TenantScope => ({ name: tenant, caps: {}, acquire: () => acquire(tenant) });
  const functionService = {
    resolve: (tenant: string, name: string) => ({ version: { tenant, name, version: 1, spec: {}, createdAtMs: 0 }, style: 'handler' }),
    invoke: (tenant: string, _name: string, payload: Buffer, options: InvokeOptions): Promise<InvocationResult> => {
      // As FunctionService.invoke: the tenant's slot first, then the function's own limit (sometimes full).
      // The scopes made above take their slots synchronously (one server).
      const release = (options.scope?.acquire?.() as (() => void) | undefined) ?? (() => violations.push('invoked without a tenant scope'));
      if (rand() < 0.1) {
        release();
        return Promise.reject(new KindlingError('TOO_MANY_REQUESTS', 'the function is at its concurrency limit'));
      }
      const id = payload.toString();
      started.set(id, (started.get(id) ?? 0) + 1);
      return new Promise((resolve) => {
        runs.push({
          tenant,
          payload: id,
          finish: (exitCode) => {
            release();
            resolve({ invocationId: id, tenant, functionName: 'f', version: 1, exitCode, body: payload, stderr: Buffer.alloc(0), durationMs: 1, coldStart: false, timedOut: false, executor: 'sandbox' });
          },
        });
      });
    },
  } as unknown as FunctionService;
  return { quota, inUse, started, runs, violations, acquire, scopeOf, functionService };
}

/** Lets the dispatcher's turns (setImmediate, promises) run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 6; i++) await nextTurn();
}

describe('InvocationService dispatcher with tenant quotas (property)', () => {
  beforeEach(() => mock.timers.enable({ apis: ['setTimeout'] }));
  afterEach(() => mock.timers.reset());

  for (const seed of [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]) {
    it(`seed ${seed}: every accepted invocation ends once, no tenant above its quota, none above the concurrency`, async () => {
      const rand = seededRandom(seed);
      const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)]!;
      const w = world(rand);
      const store = new SqliteStore(':memory:');
      const service = new InvocationService({ store, functionService: w.functionService, logBus: new LogBus(), concurrency: CONCURRENCY, scopeOf: w.scopeOf });
      service.start();
      /** Slots held by other work of a tenant (its sync executions), released at random. */
      const held: (() => void)[] = [];
      const accepted = new Map<string, string>();
      const check = (): void => {
        for (const tenant of TENANTS) assert.ok(w.inUse.get(tenant)! <= w.quota.get(tenant)!, `${tenant} above its quota`);
        assert.ok(w.runs.length <= CONCURRENCY, `${w.runs.length} runs at once, concurrency ${CONCURRENCY}`);
        assert.deepEqual(w.violations, []);
      };
      try {
        let next = 0;
        for (let step = 0; step < 400; step++) {
          const roll = rand();
          if (roll < 0.3) {
            const tenant = pick(TENANTS);
            const payload = `${tenant}:${next++}`;
            const { view } = await service.enqueue({ functionName: 'f', payload: Buffer.from(payload), tenant });
            accepted.set(view.id, payload);
          } else if (roll < 0.42) {
            try {
              held.push(w.acquire(pick(TENANTS)));
            } catch {
              // That tenant is at its quota already.
            }
          } else if (roll < 0.52 && held.length > 0) {
            held.splice(Math.floor(rand() * held.length), 1)[0]!();
          } else if (roll < 0.8 && w.runs.length > 0) {
            w.runs.splice(Math.floor(rand() * w.runs.length), 1)[0]!.finish(rand() < 0.8 ? 0 : 1);
          } else {
            mock.timers.tick(Math.floor(rand() * 250));
          }
          await settle();
          check();
        }
        // Drain: the other work ends; runs end as they start; time passes. Every accepted invocation must end.
        for (const release of held.splice(0)) release();
        const ended = (): boolean => [...accepted.keys()].every((id) => ['succeeded', 'failed'].includes(store.getInvocation(id)!.status));
        for (let round = 0; round < 500 && !ended(); round++) {
          for (const run of w.runs.splice(0)) run.finish(0);
          mock.timers.tick(250);
          await settle();
          check();
        }
        const stuck = [...accepted.keys()].filter((id) => !['succeeded', 'failed'].includes(store.getInvocation(id)!.status));
        assert.deepEqual(stuck.map((id) => `${accepted.get(id)} ${store.getInvocation(id)!.status}`), [], 'accepted invocations that never ended');
        for (const [id, payload] of accepted) {
          assert.equal(w.started.get(payload), 1, `${payload} ran exactly once`);
          assert.equal(store.getInvocationOutput(id)?.stdout.toString(), payload, 'its own output');
        }
        assert.ok(accepted.size > 50, `the run accepted ${accepted.size} invocations`);
        for (const tenant of TENANTS) assert.equal(w.inUse.get(tenant), 0, `${tenant}'s slots all released`);
        await service.whenIdle();
      } finally {
        await service.close(0);
        store.close();
      }
    });
  }
});
