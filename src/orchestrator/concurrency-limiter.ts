import { KindlingError } from '../core/errors.js';

export interface ConcurrencyLimiterOptions {
  /** Executions running at once. */
  maxConcurrent: number;
  /** Requests allowed to wait for a slot; beyond this they get 429 at once. */
  maxQueued: number;
  /** How long a request may wait for a slot before it gets 429. */
  queueTimeoutMs: number;
  /**
   * What a slot is, as the 429's message names it (default "execution slot"): the caller is told which limit it met,
   * so that it knows which option or quota to raise.
   */
  slotName?: string;
  /** Which serve option or spec field sets maxConcurrent, named in the 429's message (optional). */
  limitName?: string;
}

interface Waiter {
  resolve: (release: () => void) => void;
  reject: (error: unknown) => void;
  timer: NodeJS.Timeout;
  onAbort?: () => void;
  signal?: AbortSignal;
}

/** A counting semaphore with a bounded FIFO queue: overload turns into quick 429s, never into an unbounded pile. */
export class ConcurrencyLimiter {
  private running = 0;
  private readonly queue: Waiter[] = [];

  constructor(private readonly options: ConcurrencyLimiterOptions) {}

  get stats(): { running: number; queued: number; maxConcurrent: number; maxQueued: number } {
    return { running: this.running, queued: this.queue.length, maxConcurrent: this.options.maxConcurrent, maxQueued: this.options.maxQueued };
  }

  /**
   * Throws the 429 that acquire() would give at once (no free slot and a full queue), without taking anything: lets a
   * caller refuse work before it commits to it (a deploy answered 202 must not learn of a full queue afterwards).
   */
  checkRoom(): void {
    if (this.running < this.options.maxConcurrent && this.queue.length === 0) return;
    if (this.queue.length >= this.options.maxQueued) throw this.overloaded(`the queue for a free ${this.slotName} is full`);
  }

  /** Resolves with a release function once a slot is free. Call release exactly once (extra calls are ignored). */
  acquire(signal?: AbortSignal): Promise<() => void> {
    // A caller already gone takes nothing (its abort listener would never fire: it would hold a queue place).
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.running < this.options.maxConcurrent && this.queue.length === 0) {
      this.running++;
      return Promise.resolve(this.releaser());
    }
    if (this.queue.length >= this.options.maxQueued) {
      return Promise.reject(this.overloaded(`the queue for a free ${this.slotName} is full`));
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          this.remove(waiter);
          reject(this.overloaded(`no ${this.slotName} became free within ${this.options.queueTimeoutMs} ms`));
        }, this.options.queueTimeoutMs),
      };
      if (signal) {
        waiter.signal = signal;
        waiter.onAbort = () => {
          this.remove(waiter);
          reject(signal.reason);
        };
        signal.addEventListener('abort', waiter.onAbort, { once: true });
      }
      this.queue.push(waiter);
    });
  }

  private get slotName(): string {
    return this.options.slotName ?? 'execution slot';
  }

  private overloaded(why: string): KindlingError {
    const limit = this.options.limitName === undefined ? '' : `, set by ${this.options.limitName}`;
    return new KindlingError(
      'TOO_MANY_REQUESTS',
      `${why} (${this.options.maxConcurrent} running${limit}, ${this.options.maxQueued} queued at most); retry after the Retry-After delay`,
      { retryAfterSeconds: 1 },
    );
  }

  private remove(waiter: Waiter): void {
    const index = this.queue.indexOf(waiter);
    if (index >= 0) this.queue.splice(index, 1);
    clearTimeout(waiter.timer);
    if (waiter.onAbort) waiter.signal?.removeEventListener('abort', waiter.onAbort);
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.queue.shift();
      if (next) {
        clearTimeout(next.timer);
        if (next.onAbort) next.signal?.removeEventListener('abort', next.onAbort);
        next.resolve(this.releaser());
      } else {
        this.running--;
      }
    };
  }
}
