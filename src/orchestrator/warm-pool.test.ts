/**
 * WarmPool with fake time: setTimeout and Date are mocked (node:test's MockTimers) and the pool's clock reads the mocked
 * Date, so idle TTLs, queue deadlines, cold start delays and call durations are exact steps of `advance`, never real
 * sleeps against tight margins.
 */
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it, mock } from 'node:test';
import { setImmediate as nextTurn } from 'node:timers/promises';
import type { Clock } from '../core/clock.js';
import { KindlingError } from '../core/errors.js';
import { WarmCapacity, WarmPool, type Poolable, type WarmPoolOptions } from './warm-pool.js';

class FakeSandbox implements Poolable {
  alive = true;
  readonly disposed: Promise<void>;
  private resolveDisposed!: () => void;
  constructor(readonly startMs: number) {
    this.disposed = new Promise((resolve) => (this.resolveDisposed = resolve));
  }
  async destroy(): Promise<void> {
    this.alive = false;
    this.resolveDisposed();
  }
}

/** The pool's clock: the mocked Date, so it moves exactly with `advance`. */
const fakeClock: Clock = { nowMs: () => Date.now(), monotonicMs: () => Date.now() };

/** Lets promise continuations and immediates run (real setImmediate: only setTimeout and Date are mocked). */
async function settle(): Promise<void> {
  for (let i = 0; i < 4; i++) await nextTurn();
}

/** Moves fake time forward one millisecond at a time, letting what each step wakes run before the next. */
async function advance(ms: number): Promise<void> {
  for (let i = 0; i < ms; i++) {
    mock.timers.tick(1);
    await settle();
  }
}

const delay = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function pool(overrides: Partial<WarmPoolOptions<FakeSandbox>> = {}, createDelayMs = 20): { pool: WarmPool<FakeSandbox>; created: FakeSandbox[] } {
  const created: FakeSandbox[] = [];
  const p = new WarmPool<FakeSandbox>({
    key: 'f@1',
    create: async () => {
      await delay(createDelayMs);
      const sandbox = new FakeSandbox(createDelayMs);
      created.push(sandbox);
      return sandbox;
    },
    minWarm: 0,
    maxConcurrency: 4,
    maxQueued: 100,
    queueTimeoutMs: 5000,
    idleTtlMs: 60_000,
    maxUses: 1000,
    maxAgeMs: 60_000,
    memoryMb: 100,
    capacity: new WarmCapacity({ maxSandboxes: 100, maxMemoryMb: 100_000 }),
    coldStartEstimateMs: createDelayMs,
    clock: fakeClock,
    ...overrides,
  });
  return { pool: p, created };
}

/** Resolves `promise` while fake time moves on (at most `ms`). */
async function within<T>(promise: Promise<T>, ms: number): Promise<T> {
  let done = false;
  const tracked = promise.finally(() => (done = true));
  tracked.catch(() => undefined);
  for (let i = 0; i < ms && !done; i++) await advance(1);
  return tracked;
}

describe('WarmPool', () => {
  beforeEach(() => mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 }));
  afterEach(() => mock.timers.reset());

  it('reuses a released sandbox (warm) and starts one on demand (cold)', async () => {
    const { pool: p, created } = pool();
    const first = await within(p.acquire(), 100);
    assert.equal(first.coldStart, true);
    first.release(true, 1);
    const second = await p.acquire();
    assert.equal(second.coldStart, false);
    assert.equal(second.sandbox, first.sandbox);
    second.release(true, 1);
    assert.equal(created.length, 1);
    await p.close();
    assert.equal(created[0]!.alive, false);
  });

  it('does not cold start when a busy sandbox will be free sooner than a cold start takes', async () => {
    const { pool: p, created } = pool({}, 200);
    // Teach it that calls take ~5 ms.
    const lease = await within(p.acquire(), 300);
    lease.release(true, 5);
    const busy = await p.acquire();
    const waiting = p.acquire();
    await advance(5);
    busy.release(true, 5);
    const served = await within(waiting, 10);
    assert.equal(served.coldStart, false);
    served.release(true, 5);
    assert.equal(created.length, 1, 'no second sandbox was started');
    assert.equal(p.stats.creating, 0);
    await p.close();
  });

  it('cold starts when the busy sandbox runs much longer than calls usually take', async () => {
    const { pool: p, created } = pool({}, 200);
    const lease = await within(p.acquire(), 300);
    lease.release(true, 5);
    const busy = await p.acquire();
    const waiting = p.acquire();
    // Expected free in 5 ms; past that, in as long again as it has run: sooner than a 200 ms cold start until it has
    // run 200 ms. The re-checks at the expected times (each about twice the last) then start one.
    await advance(150);
    assert.equal(p.stats.creating, 0, 'no cold start while the busy one is expected sooner');
    await advance(150);
    assert.equal(p.stats.creating, 1, 'a cold start began once the busy one overran');
    const served = await within(waiting, 300);
    assert.equal(served.coldStart, true);
    assert.equal(created.length, 2);
    busy.release(true, 5);
    served.release(true, 5);
    await p.close();
  });

  it('grows up to maxConcurrency for slow calls, never beyond, and serves everybody', async () => {
    const { pool: p, created } = pool({ maxConcurrency: 3 });
    let peak = 0;
    const all = Promise.all(
      Array.from({ length: 30 }, async () => {
        const lease = await p.acquire();
        peak = Math.max(peak, p.stats.total);
        await delay(10);
        lease.release(true, 10);
        return lease.coldStart;
      }),
    );
    const results = await within(all, 1000);
    assert.equal(results.length, 30);
    assert.ok(created.length <= 3 && peak <= 3, `created ${created.length}, peak ${peak}`);
    await p.close();
  });

  it('answers 429 beyond the queue bound and after the queue deadline (not before)', async () => {
    const { pool: p } = pool({ maxConcurrency: 1, maxQueued: 1, queueTimeoutMs: 50 });
    const held = await within(p.acquire(), 100);
    let outcome = 'waiting';
    const queued = p.acquire();
    queued.then(
      () => (outcome = 'served'),
      () => (outcome = 'refused'),
    );
    await assert.rejects(p.acquire(), (error: KindlingError) => error.code === 'TOO_MANY_REQUESTS');
    await advance(49);
    assert.equal(outcome, 'waiting', 'still within its 50 ms deadline');
    await advance(1);
    assert.equal(outcome, 'refused');
    await assert.rejects(queued, (error: KindlingError) => error.code === 'TOO_MANY_REQUESTS' && /within 50 ms/.test(error.message));
    held.release(true, 1);
    await p.close();
  });

  it('maxQueued 0: a call that a free slot serves starts cold; one more while the slot is taken is refused at once', async () => {
    const { pool: p, created } = pool({ maxConcurrency: 1, maxQueued: 0 });
    const first = p.acquire();
    await assert.rejects(p.acquire(), (error: KindlingError) => error.code === 'TOO_MANY_REQUESTS');
    const lease = await within(first, 100);
    assert.equal(created.length, 1);
    await assert.rejects(p.acquire(), (error: KindlingError) => error.code === 'TOO_MANY_REQUESTS' && /0 invocations are already waiting/.test(error.message));
    lease.release(true, 1);
    (await within(p.acquire(), 100)).release(true, 1);
    await p.close();
  });

  it('maxQueued 0 with no room in the warm capacity: one caller waits for room, the next is refused at once', async () => {
    const capacity = new WarmCapacity({ maxSandboxes: 1, maxMemoryMb: 100_000 });
    const { pool: other } = pool({ capacity });
    const held = await within(other.acquire(), 100);
    const { pool: p } = pool({ capacity, maxConcurrency: 10, maxQueued: 0, queueTimeoutMs: 10_000 });
    const waiting = p.acquire();
    await assert.rejects(p.acquire(), (error: KindlingError) => error.code === 'TOO_MANY_REQUESTS' && /1 invocations are already waiting/.test(error.message));
    // The room comes back when the other pool's sandbox goes: the waiting caller is served.
    held.release(false, 1);
    (await within(waiting, 200)).release(true, 1);
    await p.close();
    await other.close();
  });

  it('a caller that gives up while it waits leaves the queue at once and frees its place', async () => {
    const { pool: p } = pool({ maxConcurrency: 1, maxQueued: 1, queueTimeoutMs: 10_000 });
    const held = await within(p.acquire(), 100);
    const gaveUp = new AbortController();
    const waiting = p.acquire(gaveUp.signal);
    await settle();
    assert.equal(p.stats.waiting, 1);
    gaveUp.abort(new KindlingError('CLIENT_DISCONNECTED', 'gone'));
    await assert.rejects(waiting, (error: KindlingError) => error.code === 'CLIENT_DISCONNECTED');
    assert.equal(p.stats.waiting, 0, 'its place in the queue is free');
    // The place is there for the next caller, who gets the sandbox when it is released.
    const next = p.acquire();
    held.release(true, 1);
    (await within(next, 100)).release(true, 1);
    await assert.rejects(p.acquire(AbortSignal.abort(new Error('before'))), /before/);
    await p.close();
  });

  it('destroys idle sandboxes after the idle TTL (not before), down to minWarm, and recycles after maxUses', async () => {
    const { pool: p, created } = pool({ idleTtlMs: 30, maxUses: 2 });
    const a = await within(p.acquire(), 100);
    a.release(true, 1);
    const b = await p.acquire();
    b.release(true, 1); // second use: recycled
    assert.equal(created[0]!.alive, false);
    const c = await within(p.acquire(), 100);
    c.release(true, 1);
    await advance(29);
    assert.equal(p.stats.idle, 1, 'kept until its idle TTL');
    await advance(1);
    assert.equal(p.stats.total, 0);
    assert.equal(created[1]!.alive, false);
    await p.close();

    const { pool: kept } = pool({ idleTtlMs: 20, minWarm: 1 });
    await advance(20);
    assert.equal(kept.stats.idle, 1, 'minWarm was started');
    await advance(100);
    assert.equal(kept.stats.idle, 1, 'minWarm survives the idle TTL');
    await kept.close();
  });

  it('evicts the least recently used idle sandbox of another pool at the global cap', async () => {
    const capacity = new WarmCapacity({ maxSandboxes: 2, maxMemoryMb: 100_000 });
    const { pool: a, created: aCreated } = pool({ capacity, key: 'a@1' });
    const { pool: b, created: bCreated } = pool({ capacity, key: 'b@1' });
    const [a1, a2] = await within(Promise.all([a.acquire(), a.acquire()]), 100);
    a1!.release(true, 1);
    await advance(2);
    a2!.release(true, 1);
    const b1 = await within(b.acquire(), 100);
    assert.equal(b1.coldStart, true);
    assert.equal(aCreated.filter((s) => s.alive).length, 1);
    assert.equal(a1!.sandbox.alive, false, 'the least recently used one went');
    assert.equal(capacity.stats.sandboxes, 2);
    b1.release(true, 1);
    await Promise.all([a.close(), b.close()]);
    assert.equal(capacity.stats.sandboxes, 0);
    assert.equal(bCreated.length, 1);
  });

  it('close() waits for a creation under way and destroys what it makes', async () => {
    const { pool: p, created } = pool({ minWarm: 1 }, 50);
    assert.equal(p.stats.creating, 1);
    let closed = false;
    const closing = p.close().then(() => (closed = true));
    await advance(10);
    assert.equal(closed, false, 'not before the creation ended');
    await within(closing, 100);
    assert.equal(created.length, 1);
    assert.equal(created[0]!.alive, false);
  });

  it('rejects waiters with the creation error and replaces sandboxes that die', async () => {
    let fail = true;
    const created: FakeSandbox[] = [];
    const p = new WarmPool<FakeSandbox>({
      ...pool().pool.options,
      create: async () => {
        if (fail) throw new Error('no image');
        const sandbox = new FakeSandbox(1);
        created.push(sandbox);
        return sandbox;
      },
      minWarm: 1,
    });
    await settle();
    await assert.rejects(p.acquire(), /no image/);
    fail = false;
    const lease = await p.acquire();
    lease.release(true, 1);
    await lease.sandbox.destroy(); // dies while idle
    await settle();
    assert.equal(p.stats.idle, 1, 'minWarm is made up for');
    assert.notEqual(created.at(-1), lease.sandbox);
    await p.close();
  });
});

describe('WarmCapacity', () => {
  beforeEach(() => mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 }));
  afterEach(() => mock.timers.reset());

  /** Warms one idle sandbox in each pool, in the order given (the first is the least recently used). */
  async function warmInTurn(...pools: WarmPool<FakeSandbox>[]): Promise<FakeSandbox[]> {
    const sandboxes: FakeSandbox[] = [];
    for (const p of pools) {
      const lease = await within(p.acquire(), 100);
      lease.release(true, 1);
      sandboxes.push(lease.sandbox);
      await advance(2);
    }
    return sandboxes;
  }

  it('a tenant at its cap evicts its own least recently used idle sandbox, not an older one of another tenant', async () => {
    const reasons: string[] = [];
    const capacity = new WarmCapacity({ maxSandboxes: 10, maxMemoryMb: 100_000, maxPerTenant: 2, onEvict: (reason) => reasons.push(reason) });
    const other = pool({ capacity, key: 'b/x@1', tenant: 'b' }).pool;
    const [a1, a2, a3] = [1, 2, 3].map((n) => pool({ capacity, key: `a/f${n}@1`, tenant: 'a' }).pool) as [WarmPool<FakeSandbox>, WarmPool<FakeSandbox>, WarmPool<FakeSandbox>];
    const [oldest, first, second] = await warmInTurn(other, a1, a2);
    const [third] = await warmInTurn(a3);
    assert.equal(oldest!.alive, true, "the other tenant's sandbox stays although it is the least recently used");
    assert.equal(first!.alive, false, "the tenant's own least recently used sandbox went");
    assert.deepEqual([second!.alive, third!.alive], [true, true]);
    assert.deepEqual(reasons, ['tenant']);
    assert.deepEqual([capacity.tenantSandboxes('a'), capacity.tenantSandboxes('b'), capacity.stats.sandboxes], [2, 1, 3]);
    assert.equal(capacity.stats.evictions.tenant, 1);
    await Promise.all([other, a1, a2, a3].map((p) => p.close()));
    assert.deepEqual([capacity.tenantSandboxes('a'), capacity.stats.sandboxes], [0, 0]);
  });

  it('counts the memory a sandbox was measured to use, not its estimate, and evicts the LRU idle one when over budget', async () => {
    const reasons: string[] = [];
    const capacity = new WarmCapacity({ maxSandboxes: 100, maxMemoryMb: 100, onEvict: (reason) => reasons.push(reason) });
    const pools = [1, 2, 3].map((n) => pool({ capacity, key: `f${n}@1`, memoryMb: 10 }).pool);
    const [s1, s2, s3] = await warmInTurn(...pools);
    assert.equal(capacity.stats.memoryMb, 30, 'each is charged the estimate until measured');
    // A call measured 45 MB in the third one's sandbox: 10 + 10 + 45 fit.
    const lease = await pools[2]!.acquire();
    lease.release(true, 1, 45);
    assert.equal(capacity.stats.memoryMb, 65);
    // Another measured 80 MB: 10 + 10 + 80 = 100 still fits; 90 does not and the LRU idle one (not the measured one) goes.
    const again = await pools[2]!.acquire();
    again.release(true, 1, 90);
    assert.deepEqual([s1!.alive, s2!.alive, s3!.alive], [false, true, true]);
    assert.equal(capacity.stats.memoryMb, 100);
    assert.deepEqual(reasons, ['memory']);
    // Many small ones fit where limits would not have: 10 sandboxes with a 256 MB limit each, measured at 5 MB.
    const small = new WarmCapacity({ maxSandboxes: 100, maxMemoryMb: 100 });
    const many = Array.from({ length: 10 }, (_, n) => pool({ capacity: small, key: `s${n}@1`, memoryMb: 8 }).pool);
    for (const p of many) {
      const leased = await within(p.acquire(), 100);
      leased.release(true, 1, 5);
    }
    assert.deepEqual([small.stats.sandboxes, small.stats.memoryMb], [10, 50]);
    await Promise.all([...pools, ...many].map((p) => p.close()));
    assert.deepEqual([capacity.stats.memoryMb, small.stats.memoryMb], [0, 0]);
  });

  it('never evicts a busy sandbox: a pool at the cap waits, and gets room once the other call ends', async () => {
    const reasons: string[] = [];
    const capacity = new WarmCapacity({ maxSandboxes: 1, maxMemoryMb: 100_000, onEvict: (reason) => reasons.push(reason) });
    const a = pool({ capacity, key: 'a@1' }).pool;
    const b = pool({ capacity, key: 'b@1' }).pool;
    const busy = await within(a.acquire(), 100);
    let served = false;
    const waiting = b.acquire().then((lease) => {
      served = true;
      return lease;
    });
    await advance(200);
    assert.equal(served, false, 'no room while the only sandbox is busy');
    assert.equal(busy.sandbox.alive, true, 'the in-flight call keeps its sandbox');
    assert.deepEqual(reasons, []);
    busy.release(true, 1);
    const lease = await within(waiting, 200);
    assert.equal(lease.coldStart, true);
    assert.equal(busy.sandbox.alive, false, 'evicted once idle');
    assert.deepEqual(reasons, ['count']);
    lease.release(true, 1);
    await Promise.all([a.close(), b.close()]);
  });

  it('evicts one idle sandbox per start while the host is short of memory (pressure), and still starts', async () => {
    let availableMb = 10_000;
    const reasons: string[] = [];
    const capacity = new WarmCapacity({ maxSandboxes: 100, maxMemoryMb: 100_000, availableMemoryMb: () => availableMb, minAvailableMemoryMb: 500, onEvict: (reason) => reasons.push(reason) });
    const pools = [1, 2, 3, 4].map((n) => pool({ capacity, key: `f${n}@1` }).pool);
    const [s1, s2] = await warmInTurn(pools[0]!, pools[1]!);
    availableMb = 100;
    const [s3] = await warmInTurn(pools[2]!);
    assert.deepEqual([s1!.alive, s2!.alive, s3!.alive], [false, true, true]);
    assert.deepEqual(reasons, ['pressure']);
    availableMb = 10_000;
    await warmInTurn(pools[3]!);
    assert.deepEqual(reasons, ['pressure']);
    await Promise.all(pools.map((p) => p.close()));
  });
});
