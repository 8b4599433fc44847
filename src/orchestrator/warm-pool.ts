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
 * Global capacity: `WarmCapacity` caps warm sandboxes across all pools: their count, their count per tenant, and the
 * memory they use. A pool that must grow while a cap is reached evicts the least recently used idle sandbox (of the
 * same tenant first when the tenant is at its cap, so one tenant cannot push everybody else's sandboxes out); when
 * none is idle it cannot grow and its waiters wait for a release (or their deadline: 429). A busy sandbox is never
 * evicted: only idle ones are candidates.
 *
 * Memory counts what a sandbox uses, not its limit: a sandbox is charged an estimate when it is started (the pool's
 * `memoryMb`) and, after each call, the peak memory its cgroup reported (`release`'s `memoryUsedMb`). An idle python
 * interpreter uses a few MiB of its 256 MB limit; counting limits capped a 24 GiB machine at 64 warm sandboxes.
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
  /** Memory one sandbox counts against the global capacity until a call measured what it uses. */
  memoryMb: number;
  capacity: WarmCapacity;
  /** Whose sandboxes these are, for the per-tenant cap of the capacity. Default ''. */
  tenant?: string;
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
  /**
   * Gives the sandbox back; `healthy: false` destroys it. `durationMs` feeds the duration estimate; `memoryUsedMb`
   * (the sandbox's measured memory, when known) becomes what it counts against the capacity's memory budget.
   */
  release(healthy: boolean, durationMs: number, memoryUsedMb?: number): void;
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
  /** What it counts against the capacity's memory budget (the estimate, then what it was measured to use). */
  chargeMb: number;
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

  /** A sandbox for one call; `signal` takes a waiting call out of the queue when its caller gives up. */
  acquire(signal?: AbortSignal): Promise<Lease<T>> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.closed || this.retired) {
      return Promise.reject(new KindlingError('SHUTTING_DOWN', `the warm pool of ${this.options.key} is closed; retry`, { retryAfterSeconds: 1 }));
    }
    const now = this.clock.monotonicMs();
    if (this.waiters.length === 0) {
      const item = this.takeIdle();
      if (item !== null) return Promise.resolve(this.lease(item, now, now));
    }
    // Queued means waiting for a slot of maxConcurrency: the callers that sandboxes starting now will serve, and one
    // more while the pool may still grow, are not counted, or a function with maxQueued 0 could never start cold.
    // (One, not every free slot: whether the warm capacity lets a start happen is known only when it is tried.)
    const queued = this.waiters.length - this.creating.length - (this.total < this.options.maxConcurrency ? 1 : 0);
    if (queued >= this.options.maxQueued) {
      return Promise.reject(this.overloaded(`${this.waiters.length} invocations are already waiting`));
    }
    return new Promise<Lease<T>>((resolve, reject) => {
      const leave = (): void => {
        const index = this.waiters.indexOf(waiter);
        if (index >= 0) this.waiters.splice(index, 1);
      };
      const onAbort = (): void => {
        leave();
        clearTimeout(waiter.timer);
        reject(signal!.reason);
      };
      const waiter: Waiter<T> = {
        resolve: (lease) => {
          signal?.removeEventListener('abort', onAbort);
          resolve(lease);
        },
        reject: (error) => {
          signal?.removeEventListener('abort', onAbort);
          reject(error);
        },
        enqueuedAtMs: now,
        timer: setTimeout(() => {
          leave();
          signal?.removeEventListener('abort', onAbort);
          reject(this.overloaded(`no sandbox became free within ${this.options.queueTimeoutMs} ms`));
        }, this.options.queueTimeoutMs),
      };
      signal?.addEventListener('abort', onAbort, { once: true });
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

  get tenant(): string {
    return this.options.tenant ?? '';
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
      release: (healthy, durationMs, memoryUsedMb) => {
        if (released) return;
        released = true;
        this.release(item, healthy, durationMs, memoryUsedMb);
      },
    };
  }

  private release(item: Item<T>, healthy: boolean, durationMs: number, memoryUsedMb?: number): void {
    // Still busy here, so the capacity cannot pick this sandbox if the new charge makes it evict.
    if (memoryUsedMb !== undefined && Number.isFinite(memoryUsedMb) && memoryUsedMb >= 0 && !item.gone) {
      const before = item.chargeMb;
      item.chargeMb = memoryUsedMb;
      this.options.capacity.recharge(this, before, memoryUsedMb);
    }
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
    // A pool waiting for room (a cap reached while every sandbox was busy) can now evict this one.
    this.options.capacity.idleAvailable();
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
        const item: Item<T> = { sandbox, uses: 0, createdAtMs: now, lastUsedAtMs: now, busySinceMs: null, idleTimer: null, gone: false, fresh: forWaiter, chargeMb: this.options.memoryMb };
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
    this.options.capacity.release(this, item.chargeMb);
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

/** Why an idle warm sandbox was evicted (a metric label): the cap it made room under. */
export type EvictionReason = 'count' | 'memory' | 'tenant' | 'pressure';

export interface WarmCapacityLimits {
  /** Warm sandboxes of all pools at most. */
  maxSandboxes: number;
  /** Memory warm sandboxes use (estimated, then measured), in MiB, at most. */
  maxMemoryMb: number;
  /** Warm sandboxes of one tenant at most. Default: maxSandboxes (no cap of its own). */
  maxPerTenant?: number;
  /**
   * The host's available memory in MiB (MemAvailable), read whenever a sandbox is to be started. Below
   * `minAvailableMemoryMb`, one idle sandbox is evicted per start ("pressure"), whatever the budget says.
   */
  availableMemoryMb?: () => number;
  minAvailableMemoryMb?: number;
  /** Called for each eviction (metrics). */
  onEvict?: (reason: EvictionReason) => void;
}

/**
 * The global caps on warm sandboxes (count, count per tenant, memory used, host memory pressure) with LRU eviction of
 * idle ones across pools.
 */
export class WarmCapacity {
  private readonly pools = new Set<WarmPool<Poolable>>();
  private count = 0;
  private memoryMb = 0;
  private readonly perTenant = new Map<string, number>();
  /**
   * Pools refused room (a cap reached, nothing idle to evict): the only ones told when room may have appeared, so a
   * warm call's release does not walk every pool of the server.
   */
  private readonly starved = new Set<WarmPool<Poolable>>();
  private wakeQueued = false;
  private readonly evicted: Record<EvictionReason, number> = { count: 0, memory: 0, tenant: 0, pressure: 0 };

  constructor(private readonly limits: WarmCapacityLimits) {}

  get stats(): { sandboxes: number; memoryMb: number; maxSandboxes: number; maxMemoryMb: number; maxPerTenant: number; evictions: Record<EvictionReason, number> } {
    return {
      sandboxes: this.count,
      memoryMb: Math.round(this.memoryMb * 100) / 100,
      maxSandboxes: this.limits.maxSandboxes,
      maxMemoryMb: this.limits.maxMemoryMb,
      maxPerTenant: this.maxPerTenant,
      evictions: { ...this.evicted },
    };
  }

  /** Warm sandboxes a tenant holds now (started, starting). */
  tenantSandboxes(tenant: string): number {
    return this.perTenant.get(tenant) ?? 0;
  }

  private get maxPerTenant(): number {
    return this.limits.maxPerTenant ?? this.limits.maxSandboxes;
  }

  register<T extends Poolable>(pool: WarmPool<T>): void {
    this.pools.add(pool as unknown as WarmPool<Poolable>);
  }

  unregister<T extends Poolable>(pool: WarmPool<T>): void {
    this.pools.delete(pool as unknown as WarmPool<Poolable>);
    this.starved.delete(pool as unknown as WarmPool<Poolable>);
  }

  /**
   * Takes room for one sandbox of `pool`, charged `memoryMb`, evicting least recently used idle sandboxes if needed:
   * of the pool's tenant while the tenant is at its cap, of any pool for the global count and memory. False: no
   * room and nothing idle to evict (the caller waits for a release).
   */
  reserve<T extends Poolable>(pool: WarmPool<T>, memoryMb: number): boolean {
    const granted = this.tryReserve(pool, memoryMb);
    if (!granted) this.starved.add(pool as unknown as WarmPool<Poolable>);
    return granted;
  }

  private tryReserve<T extends Poolable>(pool: WarmPool<T>, memoryMb: number): boolean {
    const tenant = pool.tenant;
    // A tenant cap at or above the total never binds first: the global count (reason "count") does.
    while (this.maxPerTenant < this.limits.maxSandboxes && this.tenantSandboxes(tenant) + 1 > this.maxPerTenant) {
      if (!this.evictOne('tenant', tenant)) return false;
    }
    while (this.count + 1 > this.limits.maxSandboxes) {
      if (!this.evictOne('count')) return false;
    }
    while (this.memoryMb + memoryMb > this.limits.maxMemoryMb) {
      if (!this.evictOne('memory')) return false;
    }
    // An eviction frees its memory only once the sandbox is gone (asynchronously): one per start, never a loop on a
    // reading that cannot have changed yet. With nothing idle the start goes ahead (the sandbox's own limit holds).
    const available = this.limits.availableMemoryMb;
    if (available !== undefined && available() < (this.limits.minAvailableMemoryMb ?? 0)) this.evictOne('pressure');
    this.count++;
    this.memoryMb += memoryMb;
    this.perTenant.set(tenant, this.tenantSandboxes(tenant) + 1);
    return true;
  }

  /** A sandbox of `pool` was measured: its charge goes from `fromMb` to `toMb`; over the budget, idle ones go. */
  recharge<T extends Poolable>(_pool: WarmPool<T>, fromMb: number, toMb: number): void {
    this.memoryMb += toMb - fromMb;
    while (this.memoryMb > this.limits.maxMemoryMb) {
      if (!this.evictOne('memory')) break;
    }
  }

  release<T extends Poolable>(pool: WarmPool<T>, memoryMb: number): void {
    this.count--;
    this.memoryMb -= memoryMb;
    const tenant = pool.tenant;
    const left = this.tenantSandboxes(tenant) - 1;
    if (left > 0) this.perTenant.set(tenant, left);
    else this.perTenant.delete(tenant);
    this.wakeStarved();
  }

  /**
   * A sandbox became idle: pools whose growth was refused (no room, nothing idle to evict) retry now, after
   * the current call stack.
   */
  idleAvailable(): void {
    this.wakeStarved();
  }

  /** After the current call stack, starved pools try again; one that still finds no room registers again. */
  private wakeStarved(): void {
    if (this.starved.size === 0 || this.wakeQueued) return;
    this.wakeQueued = true;
    queueMicrotask(() => {
      this.wakeQueued = false;
      const starved = [...this.starved];
      for (const pool of starved) {
        this.starved.delete(pool);
        pool.capacityFreed();
      }
    });
  }

  /** Evicts the least recently used idle sandbox (of `tenant`'s pools when given); false when none is idle. */
  private evictOne(reason: EvictionReason, tenant?: string): boolean {
    let victim: WarmPool<Poolable> | null = null;
    let oldest = Infinity;
    for (const candidate of this.pools) {
      if (tenant !== undefined && candidate.tenant !== tenant) continue;
      const at = candidate.lruIdleAtMs();
      if (at !== null && at < oldest) {
        oldest = at;
        victim = candidate;
      }
    }
    if (victim === null || !victim.evictLru()) return false;
    this.evicted[reason]++;
    this.limits.onEvict?.(reason);
    return true;
  }
}
