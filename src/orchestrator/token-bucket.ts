import { systemClock, type Clock } from '../core/clock.js';

/**
 * A token bucket that refills continuously: `ratePerSecond` tokens a second up to `burst`. One request takes one
 * token; without one it is told how long until the next token (the Retry-After of a 429). O(1), no timers.
 */
export class TokenBucket {
  private tokens: number;
  private updatedMs: number;

  constructor(
    private ratePerSecond: number,
    private burst: number,
    private readonly clock: Clock = systemClock,
  ) {
    this.tokens = burst;
    this.updatedMs = clock.monotonicMs();
  }

  /** Changes rate and burst (a quota update) keeping the tokens already earned, capped by the new burst. */
  reconfigure(ratePerSecond: number, burst: number): void {
    this.refill();
    this.ratePerSecond = ratePerSecond;
    this.burst = burst;
    this.tokens = Math.min(this.tokens, burst);
  }

  /** Takes a token: 0 when it passes, otherwise the milliseconds until one token is there (nothing is taken). */
  take(): number {
    this.refill();
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    if (this.ratePerSecond <= 0) return Number.POSITIVE_INFINITY;
    return Math.ceil(((1 - this.tokens) / this.ratePerSecond) * 1000);
  }

  /** Tokens available now (tests, GET /v1/tenant). */
  get available(): number {
    this.refill();
    return this.tokens;
  }

  private refill(): void {
    const now = this.clock.monotonicMs();
    const elapsedMs = now - this.updatedMs;
    this.updatedMs = now;
    if (elapsedMs > 0) this.tokens = Math.min(this.burst, this.tokens + (elapsedMs / 1000) * this.ratePerSecond);
  }
}
