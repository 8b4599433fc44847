/**
 * Keeps a few fresh, never-used sandboxes started ahead of demand, per shape (image + limits), so that a one-off
 * execution does not pay the engine's start-up. Each item is handed out once and never returned: isolation stays
 * one sandbox per execution. A shape becomes "hot" when it is asked for and cools down after `idleTtlMs` without use.
 */
export interface PrewarmPoolOptions<T> {
  create(key: string): Promise<T>;
  destroy(item: T): Promise<void>;
  /** Whether a waiting item is still usable (e.g. its container has not died). */
  isAlive?(item: T): boolean;
  /** Idle items kept per hot shape. 0 disables the pool. */
  sizePerKey: number;
  /** Upper bound of idle items across all shapes. */
  maxItems: number;
  idleTtlMs: number;
  /**
   * A creation that has not finished after this long (a stuck engine, a start that hangs) is given up: counted as an
   * error, no longer awaited (not even by close()), and a new one is started in its place; the item it makes if it ever
   * finishes is destroyed on arrival. Default: no limit.
   */
  createTimeoutMs?: number;
  onError?(error: unknown, key: string): void;
  now?: () => number;
}

interface KeyState<T> {
  idle: T[];
  creating: number;
  lastUsedMs: number;
}

export interface PrewarmPoolStats {
  idle: number;
  creating: number;
  keys: number;
  hits: number;
  misses: number;
  /** Creations that failed or were given up (createTimeoutMs) since the pool was made. */
  failed: number;
}

export class PrewarmPool<T> {
  private readonly keys = new Map<string, KeyState<T>>();
  private readonly options: PrewarmPoolOptions<T>;
  private readonly now: () => number;
  private closed = false;
  private readonly inFlight = new Set<Promise<void>>();
  private hits = 0;
  private misses = 0;
  private failed = 0;
  private readonly sweepTimer: NodeJS.Timeout | null;

  constructor(options: PrewarmPoolOptions<T>) {
    this.options = options;
    this.now = options.now ?? Date.now;
    this.sweepTimer =
      options.sizePerKey > 0 ? setInterval(() => this.sweep(), Math.max(1000, options.idleTtlMs / 4)) : null;
    this.sweepTimer?.unref();
  }

  /**
   * Returns a ready item for `key` when one waits, else null. It does not warm the shape: call `replenish(key)` once
   * the item (or a cold one) has started successfully, so that a request that fails (a bad limit, a missing image)
   * never fills the pool with sandboxes nobody can use.
   */
  take(key: string): T | null {
    if (this.closed || this.options.sizePerKey === 0) return null;
    const state = this.keys.get(key);
    if (!state) {
      this.misses++;
      return null;
    }
    state.lastUsedMs = this.now();
    let item: T | null = null;
    while (state.idle.length > 0) {
      const candidate = state.idle.shift() as T;
      if (this.options.isAlive === undefined || this.options.isAlive(candidate)) {
        item = candidate;
        break;
      }
      void this.options.destroy(candidate).catch(() => undefined);
    }
    if (item === null) this.misses++;
    else this.hits++;
    return item;
  }

  /** Marks the shape hot (used just now, successfully) and starts creating items up to its size. */
  replenish(key: string): void {
    if (this.closed || this.options.sizePerKey === 0) return;
    let state = this.keys.get(key);
    if (!state) {
      state = { idle: [], creating: 0, lastUsedMs: this.now() };
      this.keys.set(key, state);
    }
    state.lastUsedMs = this.now();
    this.refill(key, state);
  }

  /** Frees room for a hot shape by destroying an idle item of the least recently used other shape. */
  private evictColdest(except: string): boolean {
    let coldest: [string, KeyState<T>] | null = null;
    for (const entry of this.keys) {
      if (entry[0] === except || entry[1].idle.length === 0) continue;
      if (!coldest || entry[1].lastUsedMs < coldest[1].lastUsedMs) coldest = entry;
    }
    if (!coldest) return false;
    const item = coldest[1].idle.shift() as T;
    void this.options.destroy(item).catch(() => undefined);
    return true;
  }

  stats(): PrewarmPoolStats {
    let idle = 0;
    let creating = 0;
    for (const state of this.keys.values()) {
      idle += state.idle.length;
      creating += state.creating;
    }
    return { idle, creating, keys: this.keys.size, hits: this.hits, misses: this.misses, failed: this.failed };
  }

  private totalItems(): number {
    const { idle, creating } = this.stats();
    return idle + creating;
  }

  private refill(key: string, state: KeyState<T>): void {
    while (!this.closed && state.idle.length + state.creating < this.options.sizePerKey) {
      if (this.totalItems() >= this.options.maxItems && !this.evictColdest(key)) break;
      state.creating++;
      let settled = false;
      let abandoned = false;
      let timer: NodeJS.Timeout | undefined;
      const creation = this.options.create(key).then(
        (item) => {
          settled = true;
          clearTimeout(timer);
          if (abandoned || this.closed || this.keys.get(key) !== state) {
            if (!abandoned) state.creating--;
            return this.options.destroy(item).catch(() => undefined);
          }
          state.creating--;
          state.idle.push(item);
          return undefined;
        },
        (error: unknown) => {
          settled = true;
          clearTimeout(timer);
          if (abandoned) return;
          state.creating--;
          this.failed++;
          // No retry loop: the next take() of this shape tries again.
          this.options.onError?.(error, key);
        },
      );
      this.inFlight.add(creation);
      void creation.finally(() => this.inFlight.delete(creation));
      const timeoutMs = this.options.createTimeoutMs;
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          if (settled) return;
          abandoned = true;
          state.creating--;
          this.failed++;
          this.inFlight.delete(creation);
          this.options.onError?.(new Error(`creating a prewarmed item took over ${timeoutMs} ms; given up and replaced`), key);
          // Its place is free again: start a replacement (a shape dropped meanwhile is not refilled).
          if (this.keys.get(key) === state) this.refill(key, state);
        }, timeoutMs);
        timer.unref();
      }
    }
  }

  /** Destroys every idle item that is no longer alive (e.g. its engine died) instead of waiting for a take(). */
  dropDead(): number {
    if (this.options.isAlive === undefined) return 0;
    let dropped = 0;
    for (const state of this.keys.values()) {
      const alive = state.idle.filter((item) => this.options.isAlive!(item));
      for (const item of state.idle) if (!alive.includes(item)) void this.options.destroy(item).catch(() => undefined);
      dropped += state.idle.length - alive.length;
      state.idle = alive;
    }
    return dropped;
  }

  /** Drops shapes that nobody asked for within the idle TTL. */
  sweep(): void {
    const cutoff = this.now() - this.options.idleTtlMs;
    for (const [key, state] of this.keys) {
      if (state.lastUsedMs >= cutoff) continue;
      this.keys.delete(key);
      for (const item of state.idle) void this.options.destroy(item).catch(() => undefined);
    }
  }

  /** Destroys every idle item; later creations finishing are destroyed on arrival. Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    const items: T[] = [];
    for (const state of this.keys.values()) items.push(...state.idle.splice(0));
    this.keys.clear();
    await Promise.allSettled(items.map((item) => this.options.destroy(item)));
    // Creations still under way destroy their item on arrival (see refill); wait for them so nothing outlives close().
    await Promise.allSettled([...this.inFlight]);
  }
}
