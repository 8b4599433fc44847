import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
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

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function pool(overrides: Partial<WarmPoolOptions<FakeSandbox>> = {}, createDelayMs = 20): { pool: WarmPool<FakeSandbox>; created: FakeSandbox[] } {
  const created: FakeSandbox[] = [];
  const p = new WarmPool<FakeSandbox>({
    key: 'f@1',
    create: async () => {
      await sleep(createDelayMs);
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
    ...overrides,
  });
  return { pool: p, created };
}

describe('WarmPool', () => {
  it('reuses a released sandbox (warm) and starts one on demand (cold)', async () => {
    const { pool: p, created } = pool();
    const first = await p.acquire();
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
    const lease = await p.acquire();
    lease.release(true, 5);
    const busy = await p.acquire();
    const waiting = p.acquire();
    await sleep(5);
    busy.release(true, 5);
    const served = await waiting;
    assert.equal(served.coldStart, false);
    served.release(true, 5);
    assert.equal(created.length, 1, 'no second sandbox was started');
    await p.close();
  });

  it('grows up to maxConcurrency for slow calls, never beyond, and serves everybody', async () => {
    const { pool: p, created } = pool({ maxConcurrency: 3 });
    let peak = 0;
    const results = await Promise.all(
      Array.from({ length: 30 }, async () => {
        const lease = await p.acquire();
        peak = Math.max(peak, p.stats.total);
        await sleep(10);
        lease.release(true, 10);
        return lease.coldStart;
      }),
    );
    assert.equal(results.length, 30);
    assert.ok(created.length <= 3 && peak <= 3, `created ${created.length}, peak ${peak}`);
    await p.close();
  });

  it('answers 429 beyond the queue bound and after the queue deadline', async () => {
    const { pool: p } = pool({ maxConcurrency: 1, maxQueued: 1, queueTimeoutMs: 50 });
    const held = await p.acquire();
    const queued = p.acquire();
    await assert.rejects(p.acquire(), (error: KindlingError) => error.code === 'TOO_MANY_REQUESTS');
    await assert.rejects(queued, (error: KindlingError) => error.code === 'TOO_MANY_REQUESTS' && /within 50 ms/.test(error.message));
    held.release(true, 1);
    await p.close();
  });

  it('destroys idle sandboxes after the idle TTL (down to minWarm) and recycles after maxUses', async () => {
    const { pool: p, created } = pool({ idleTtlMs: 30, maxUses: 2 });
    const a = await p.acquire();
    a.release(true, 1);
    const b = await p.acquire();
    b.release(true, 1); // second use: recycled
    assert.equal(created[0]!.alive, false);
    const c = await p.acquire();
    c.release(true, 1);
    await sleep(80);
    assert.equal(p.stats.total, 0);
    assert.equal(created[1]!.alive, false);
    await p.close();

    const { pool: kept } = pool({ idleTtlMs: 20, minWarm: 1 });
    await sleep(80);
    assert.equal(kept.stats.idle, 1, 'minWarm survives the idle TTL');
    await kept.close();
  });

  it('evicts the least recently used idle sandbox of another pool at the global cap', async () => {
    const capacity = new WarmCapacity({ maxSandboxes: 2, maxMemoryMb: 100_000 });
    const { pool: a, created: aCreated } = pool({ capacity, key: 'a@1' });
    const { pool: b, created: bCreated } = pool({ capacity, key: 'b@1' });
    const a1 = await a.acquire();
    const a2 = await a.acquire();
    a1.release(true, 1);
    await sleep(2);
    a2.release(true, 1);
    const b1 = await b.acquire();
    assert.equal(b1.coldStart, true);
    assert.equal(aCreated.filter((s) => s.alive).length, 1);
    assert.equal(aCreated[0]!.alive, false, 'the least recently used one went');
    assert.equal(capacity.stats.sandboxes, 2);
    b1.release(true, 1);
    await Promise.all([a.close(), b.close()]);
    assert.equal(capacity.stats.sandboxes, 0);
    assert.equal(bCreated.length, 1);
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
    await sleep(5);
    await assert.rejects(p.acquire(), /no image/);
    fail = false;
    const lease = await p.acquire();
    lease.release(true, 1);
    await lease.sandbox.destroy(); // dies while idle
    await sleep(5);
    assert.equal(p.stats.idle, 1, 'minWarm is made up for');
    assert.notEqual(created.at(-1), lease.sandbox);
    await p.close();
  });
});
