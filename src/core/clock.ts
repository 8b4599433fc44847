/** Time source injected everywhere time matters, so that unit tests can use a fake one. */
export interface Clock {
  nowMs(): number;
  /** Monotonic milliseconds with sub-ms resolution, for durations. */
  monotonicMs(): number;
}

export const systemClock: Clock = {
  nowMs: () => Date.now(),
  monotonicMs: () => performance.now(),
};
