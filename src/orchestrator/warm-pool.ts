/**
 * Warm pools of long-lived sandboxes, one pool per function version (think undici's Pool): a factory, a FIFO of
 * waiters with a bound and a deadline, idle TTL, max uses, max age, stats, retire/close. A sandbox serves exactly one
 * version of one function for its whole life (the pool's key); it serves one invocation at a time.
 *
 * Growth policy (when to cold start): a waiter queues first; then, for the W waiters in line, the pool looks at when
 * the sandboxes it already has are expected to be free: sandboxes being created are ready in (cold start estimate -
 * time spent so far); a busy sandbox is free in (average invocation duration - time it has run so far), or, once it
 * has run longer than the average, in as long again as it has run (long calls tend to be longer than average). If the
 * W-th soonest of those times is at most the cold start estimate, nobody is started: the waiter will be served sooner
 * by a sandbox about to be free than by a cold start. Otherwise one sandbox is started (up to maxConcurrency, and if
 * the global capacity admits it) and the check repeats. A timer re-checks at the expected free time, so a call that
 * runs longer than expected still leads to a cold start. Both estimates are measured (EWMA): the cold start from
 * every sandbox creation of this pool, the duration from every invocation. Before any invocation finished, the
 * duration is unknown and counts as infinite (a cold start is started).
 *
 * Global capacity: `WarmCapacity` caps warm sandboxes (count and memory) across all pools. A pool that must grow while
 * the cap is reached evicts the least recently used idle sandbox of any pool; when none is idle it cannot grow and its
 * waiters wait for a release (or their deadline: 429).
 */
import { systemClock, type Clock } from '../core/clock.js';
import { KindlingError } from '../core/errors.js';

export interface Poolable {
  readonly alive: boolean;
  readonly startMs: number;
  readonly disposed: Promise<void>;
  destroy(): Promise<void>;
}

export interface WarmPoolOptions<T extends Poolable> {
  /** Function name + version (and tenant, later): what the pool's sandboxes may serve. */
  key: string;
  create: () => Promise<T>;
  /** Sandboxes started at once and kept through idle periods. */
  minWarm: number;
  /** Sandboxes (= invocations running at once) at most. */
  maxConcurrency: number;
  /** Waiters at most; beyond: 429 at once. */
  maxQueued: number;
  /** How long a waiter may wait for a sandbox before it gets 429. */
  queueTimeoutMs: number;
  /** An idle sandbox beyond minWarm is destroyed after this long unused (scale to zero). */
  idleTtlMs: number;
  /** A sandbox is recycled after this many invocations. */
  maxUses: number;
  /** A sandbox is recycled when it is released after being alive this long. */
  maxAgeMs: number;
  /** Memory one sandbox counts against the global capacity. */
  memoryMb: number;
  capacity: WarmCapacity;
  /** First cold start estimate, before one was measured. Default 200. */
  coldStartEstimateMs?: number;
  clock?: Clock;
  /** Creation failures that no waiter saw. */
  onError?: (error: unknown) => void;
  /** Called once a retired pool holds nothing. */
  onEmpty?: () => void;
}

export interface Lease<T> {
  sandbox: T;
  /** True when the caller waited for a sandbox to be created for it. */
  coldStart: boolean;
  /** Time spent waiting for a sandbox, in ms. */
  waitedMs: number;
  /** Gives the sandbox back; `healthy: false` destroys it. `durationMs` feeds the duration estimate. */
  release(healthy: boolean, durationMs: number): void;
}

export interface WarmPoolStats {
  idle: number;
  busy: number;
  creating: number;
  waiting: number;
  total: number;
  coldStartEstimateMs: number;
  durationEstimateMs: number | null;
}

interface Item<T> {
  sandbox: T;
  uses: number;
  createdAtMs: number;
  lastUsedAtMs: number;
  busySinceMs: number | null;
  idleTimer: NodeJS.Timeout | null;
  gone: boolean;
  /** Created for a waiter and not used yet: its first use is a cold start. */
  fresh: boolean;
}

interface Waiter<T> {
  resolve: (lease: Lease<T>) => void;
  reject: (error: unknown) => void;
  timer: NodeJS.Timeout;
  enqueuedAtMs: number;
}

const EWMA_WEIGHT = 0.2;

export class WarmPool<T extends Poolable> {
  private readonly idle: Item<T>[] = [];
  private readonly busy = new Set<Item<T>>();
  /** Sandboxes being created; `done` settles once the creation's outcome was handled. */
  private readonly creating: { startedAtMs: number; forWaiter: boolean; done: Promise<void> }[] = [];
  private readonly waiters: Waiter<T>[] = [];
  private readonly clock: Clock;
  private coldStartMs: number;
  private durationMs: number | null = null;
  private recheck: NodeJS.Timeout | null = null;
  private retired = false;
  private closed = false;
  private readonly disposals = new Set<Promise<void>>();

  constructor(readonly options: WarmPoolOptions<T>) {
    this.clock = options.clock ?? systemClock;
    this.coldStartMs = options.coldStartEstimateMs ?? 200;
    options.capacity.register(this);
    this.ensureMin();
  }

  get stats(): WarmPoolStats {
    return {
      idle: this.idle.length,
      busy: this.busy.size,
      creating: this.creating.length,
      waiting: this.waiters.length,
      total: this.total,
      coldStartEstimateMs: Math.round(this.coldStartMs * 100) / 100,
      durationEstimateMs: this.durationMs === null ? null : Math.round(this.durationMs * 100) / 100,
    };
  }

  private get total(): number {
    return this.idle.length + this.busy.size + this.creating.length;
  }

  acquire(): Promise<Lease<T>> {
    if (this.closed || this.retired) {
      return Promise.reject(new KindlingError('SHUTTING_DOWN', `the warm pool of ${this.options.key} is closed; retry`, { retryAfterSeconds: 1 }));
    }
    const now = this.clock.monotonicMs();
    if (this.waiters.length === 0) {
      const item = this.takeIdle();
      if (item !== null) return Promise.resolve(this.lease(item, now, now));
    }
    if (this.waiters.length >= this.options.maxQueued) {
      return Promise.reject(this.overloaded(`${this.waiters.length} invocations are already waiting`));
    }
    return new Promise<Lease<T>>((resolve, reject) => {
      const waiter: Waiter<T> = {
        resolve,
        reject,
        enqueuedAtMs: now,
        timer: setTimeout(() => {
          const index = this.waiters.indexOf(waiter);
          if (index >= 0) this.waiters.splice(index, 1);
          reject(this.overloaded(`no sandbox became free within ${this.options.queueTimeoutMs} ms`));
        }, this.options.queueTimeoutMs),
      };
      this.waiters.push(waiter);
      this.schedule();
    });
  }

  /** No new invocations; queued ones are still served; sandboxes go as they become idle. */
  retire(): void {
    if (this.retired) return;
    this.retired = true;
    for (const item of this.idle.splice(0)) this.destroyItem(item);
    this.checkEmpty();
  }

  /** Rejects waiters, destroys every sandbox (busy ones are killed) and waits until all are gone. Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    this.retired = true;
    if (this.recheck !== null) clearTimeout(this.recheck);
    for (const waiter of this.waiters.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.reject(new KindlingError('SHUTTING_DOWN', `the warm pool of ${this.options.key} closed`, { retryAfterSeconds: 1 }));
    }
    for (const item of [...this.idle.splice(0), ...this.busy]) this.destroyItem(item);
    // A creation that ends now destroys its sandbox (closed), which adds a disposal: wait until neither is left.
    while (this.creating.length > 0 || this.disposals.size > 0) {
      await Promise.all([...this.creating.map((slot) => slot.done), ...this.disposals]);
    }
    this.options.capacity.unregister(this);
  }

  /** For WarmCapacity: the least recently used idle sandbox's last use, or null when none is idle. */
  lruIdleAtMs(): number | null {
    let oldest: number | null = null;
    for (const item of this.idle) if (oldest === null || item.lastUsedAtMs < oldest) oldest = item.lastUsedAtMs;
    return oldest;
  }

  /** For WarmCapacity: destroys the least recently used idle sandbox; false when none is idle. */
  evictLru(): boolean {
    let index = -1;
    for (let i = 0; i < this.idle.length; i++) if (index < 0 || this.idle[i]!.lastUsedAtMs < this.idle[index]!.lastUsedAtMs) index = i;
    if (index < 0) return false;
    const [item] = this.idle.splice(index, 1);
    this.destroyItem(item!);
    return true;
  }

  /** For WarmCapacity: capacity was freed elsewhere; grow if waiters need it. */
  capacityFreed(): void {
    if (this.waiters.length > 0 || this.total < this.options.minWarm) {
      this.schedule();
      this.ensureMin();
    }
  }

  get hasWaiters(): boolean {
    return this.waiters.length > 0;
  }

  /* ------------------------------------------------------------------------------------------------------------ */

  private overloaded(why: string): KindlingError {
    return new KindlingError(
      'TOO_MANY_REQUESTS',
      `function ${this.options.key} is at its concurrency limit: ${why} (${this.options.maxConcurrency} running, ${this.options.maxQueued} queued at most); retry after the Retry-After delay`,
      { retryAfterSeconds: 1 },
    );
  }

  private takeIdle(): Item<T> | null {
    // Most recently used first: the others can reach their idle TTL and go.
    while (this.idle.length > 0) {
      const item = this.idle.pop()!;
      if (item.idleTimer !== null) clearTimeout(item.idleTimer);
      item.idleTimer = null;
      if (item.sandbox.alive) return item;
      this.destroyItem(item);
    }
    return null;
  }

  private lease(item: Item<T>, enqueuedAtMs: number, now: number): Lease<T> {
    item.busySinceMs = now;
    this.busy.add(item);
    const coldStart = item.fresh;
    item.fresh = false;
    let released = false;
    return {
      sandbox: item.sandbox,
      coldStart,
      waitedMs: Math.round((now - enqueuedAtMs) * 100) / 100,
      release: (healthy, durationMs) => {
        if (released) return;
        released = true;
        this.release(item, healthy, durationMs);
      },
    };
  }

  private release(item: Item<T>, healthy: boolean, durationMs: number): void {
    this.busy.delete(item);
    item.busySinceMs = null;
    item.uses++;
    const now = this.clock.monotonicMs();
    item.lastUsedAtMs = now;
    if (healthy && Number.isFinite(durationMs)) this.durationMs = this.durationMs === null ? durationMs : this.durationMs + EWMA_WEIGHT * (durationMs - this.durationMs);
    const recycle = !healthy || !item.sandbox.alive || item.uses >= this.options.maxUses || now - item.createdAtMs >= this.options.maxAgeMs || this.closed;
    if (recycle) {
      this.destroyItem(item);
      this.schedule();
      this.ensureMin();
      return;
    }
    const waiter = this.waiters.shift();
    if (waiter !== undefined) {
      clearTimeout(waiter.timer);
      waiter.resolve(this.lease(item, waiter.enqueuedAtMs, now));
      return;
    }
    if (this.retired) {
      this.destroyItem(item);
      return;
    }
    this.toIdle(item);
  }

  private toIdle(item: Item<T>): void {
    item.idleTimer = setTimeout(() => {
      item.idleTimer = null;
      const index = this.idle.indexOf(item);
      if (index < 0) return;
      if (this.total <= this.options.minWarm) {
        this.toIdleAgain(item, index);
        return;
      }
      this.idle.splice(index, 1);
      this.destroyItem(item);
    }, this.options.idleTtlMs);
    item.idleTimer.unref?.();
    this.idle.push(item);
  }

  private toIdleAgain(item: Item<T>, index: number): void {
    this.idle.splice(index, 1);
    this.toIdle(item);
  }

  /** Hands idle sandboxes to waiters, then starts sandboxes per the growth policy (see the file comment). */
  private schedule(): void {
    if (this.closed) return;
    const now = this.clock.monotonicMs();
    while (this.waiters.length > 0) {
      const item = this.takeIdle();
      if (item === null) break;
      const waiter = this.waiters.shift()!;
      clearTimeout(waiter.timer);
      waiter.resolve(this.lease(item, waiter.enqueuedAtMs, now));
    }
    let nextCheckMs: number | null = null;
    while (this.waiters.length > 0) {
      const freeIn = [
        // Clamped: a sandbox started during this call has a start time after `now`.
        ...this.creating.map((c) => Math.min(this.coldStartMs, Math.max(0, this.coldStartMs - (now - c.startedAtMs)))),
        ...[...this.busy].map((item) => this.expectedRemainingMs(item, now)),
      ].sort((a, b) => a - b);
      const servedIn = freeIn[this.waiters.length - 1] ?? Infinity;
      if (servedIn <= this.coldStartMs) {
        nextCheckMs = servedIn;
        break;
      }
      if (this.total >= this.options.maxConcurrency) break;
      if (!this.options.capacity.reserve(this, this.options.memoryMb)) break;
      this.startOne(true);
    }
    if (this.recheck !== null) clearTimeout(this.recheck);
    this.recheck = null;
    if (nextCheckMs !== null && this.waiters.length > 0) {
      this.recheck = setTimeout(() => {
        this.recheck = null;
        this.schedule();
      }, Math.max(1, Math.ceil(nextCheckMs) + 1));
    }
  }

  private expectedRemainingMs(item: Item<T>, now: number): number {
    if (this.durationMs === null) return Infinity;
    const elapsed = now - (item.busySinceMs ?? now);
    return elapsed < this.durationMs ? this.durationMs - elapsed : elapsed;
  }

  private ensureMin(): void {
    if (this.retired || this.closed) return;
    while (this.total < this.options.minWarm && this.options.capacity.reserve(this, this.options.memoryMb)) this.startOne(false);
  }

  /** Starts one sandbox; capacity was reserved by the caller. */
  private startOne(forWaiter: boolean): void {
    const slot = { startedAtMs: this.clock.monotonicMs(), forWaiter, done: Promise.resolve() };
    this.creating.push(slot);
    slot.done = this.options.create().then(
      (sandbox) => {
        this.creating.splice(this.creating.indexOf(slot), 1);
        this.coldStartMs += EWMA_WEIGHT * (sandbox.startMs - this.coldStartMs);
        const now = this.clock.monotonicMs();
        const item: Item<T> = { sandbox, uses: 0, createdAtMs: now, lastUsedAtMs: now, busySinceMs: null, idleTimer: null, gone: false, fresh: forWaiter };
        void sandbox.disposed.then(() => this.onGone(item));
        if (this.closed) {
          this.destroyItem(item);
          return;
        }
        const waiter = this.waiters.shift();
        if (waiter !== undefined) {
          clearTimeout(waiter.timer);
          // A sandbox made for nobody (minWarm) and taken by a waiter is still warm for it: it did not wait for it.
          waiter.resolve(this.lease(item, waiter.enqueuedAtMs, now));
        } else if (this.retired) {
          this.destroyItem(item);
        } else {
          item.fresh = false;
          this.toIdle(item);
        }
      },
      (error: unknown) => {
        this.creating.splice(this.creating.indexOf(slot), 1);
        this.options.capacity.release(this, this.options.memoryMb);
        const waiter = forWaiter ? this.waiters.shift() : undefined;
        if (waiter !== undefined) {
          clearTimeout(waiter.timer);
          waiter.reject(error);
        } else {
          this.options.onError?.(error);
        }
        this.checkEmpty();
      },
    );
  }

  private destroyItem(item: Item<T>): void {
    if (item.gone) return;
    item.gone = true;
    if (item.idleTimer !== null) clearTimeout(item.idleTimer);
    const index = this.idle.indexOf(item);
    if (index >= 0) this.idle.splice(index, 1);
    this.busy.delete(item);
    this.options.capacity.release(this, this.options.memoryMb);
    const disposal = item.sandbox.destroy().catch((error: unknown) => this.options.onError?.(error));
    this.disposals.add(disposal);
    void disposal.finally(() => {
      this.disposals.delete(disposal);
      this.checkEmpty();
    });
  }

  /** The sandbox died on its own (crash, OOM, killed): forget it and make up for it. */
  private onGone(item: Item<T>): void {
    if (item.gone) return;
    const wasBusy = this.busy.has(item);
    this.destroyItem(item);
    // A busy one is released by its invocation, which sees the crash as its result.
    if (wasBusy) this.busy.add(item);
    this.schedule();
    this.ensureMin();
  }

  private checkEmpty(): void {
    if (this.retired && !this.closed && this.total === 0 && this.waiters.length === 0 && this.disposals.size === 0) {
      this.options.onEmpty?.();
    }
  }
}

/** The global cap on warm sandboxes (count and memory) with LRU eviction of idle ones across pools. */
export class WarmCapacity {
  private readonly pools = new Set<WarmPool<Poolable>>();
  private count = 0;
  private memoryMb = 0;

  constructor(private readonly limits: { maxSandboxes: number; maxMemoryMb: number }) {}

  get stats(): { sandboxes: number; memoryMb: number; maxSandboxes: number; maxMemoryMb: number } {
    return { sandboxes: this.count, memoryMb: this.memoryMb, ...this.limits };
  }

  register<T extends Poolable>(pool: WarmPool<T>): void {
    this.pools.add(pool as unknown as WarmPool<Poolable>);
  }

  unregister<T extends Poolable>(pool: WarmPool<T>): void {
    this.pools.delete(pool as unknown as WarmPool<Poolable>);
  }

  /** Takes room for one sandbox, evicting least recently used idle sandboxes of any pool if needed. */
  reserve<T extends Poolable>(_pool: WarmPool<T>, memoryMb: number): boolean {
    while (this.count + 1 > this.limits.maxSandboxes || this.memoryMb + memoryMb > this.limits.maxMemoryMb) {
      let victim: WarmPool<Poolable> | null = null;
      let oldest = Infinity;
      for (const candidate of this.pools) {
        const at = candidate.lruIdleAtMs();
        if (at !== null && at < oldest) {
          oldest = at;
          victim = candidate;
        }
      }
      if (victim === null || !victim.evictLru()) return false;
    }
    this.count++;
    this.memoryMb += memoryMb;
    return true;
  }

  release<T extends Poolable>(_pool: WarmPool<T>, memoryMb: number): void {
    this.count--;
    this.memoryMb -= memoryMb;
    // Others may be waiting for room; let them grow after the current call stack.
    queueMicrotask(() => {
      for (const pool of this.pools) if (pool.hasWaiters) pool.capacityFreed();
    });
  }
}
