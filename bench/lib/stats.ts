/** Summary statistics over latency samples (milliseconds unless the caller says otherwise). */
export interface Summary {
  n: number;
  median: number;
  p95: number;
  min: number;
  max: number;
  mean: number;
}

/** Linear-interpolated quantile of sorted values (q in [0, 1]); NaN for an empty list. */
export function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const position = (sorted.length - 1) * q;
  const lower = Math.floor(position);
  const upper = Math.ceil(position);
  const low = sorted[lower] as number;
  const high = sorted[upper] as number;
  return low + (high - low) * (position - lower);
}

export function summarize(samples: readonly number[]): Summary {
  const sorted = [...samples].sort((a, b) => a - b);
  const n = sorted.length;
  return {
    n,
    median: quantile(sorted, 0.5),
    p95: quantile(sorted, 0.95),
    min: n > 0 ? (sorted[0] as number) : Number.NaN,
    max: n > 0 ? (sorted[n - 1] as number) : Number.NaN,
    mean: n > 0 ? sorted.reduce((sum, value) => sum + value, 0) / n : Number.NaN,
  };
}

export const median = (samples: readonly number[]): number => summarize(samples).median;

/** Milliseconds with a sensible precision: 0.1 ms below 100 ms, whole ms below 10 s, else seconds. */
export function fmtMs(ms: number): string {
  if (!Number.isFinite(ms)) return 'n/a';
  if (Math.abs(ms) < 100) return `${ms.toFixed(1)} ms`;
  if (Math.abs(ms) < 10_000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

export const fmtSummary = (s: Summary): string => `median ${fmtMs(s.median)} / p95 ${fmtMs(s.p95)}`;

export function fmtRatio(ratio: number): string {
  return Number.isFinite(ratio) ? `${ratio.toFixed(2)}x` : 'n/a';
}

/**
 * One round of a paired measurement: both sides once, the order swapped every round, so that neither always runs on
 * a machine (caches, CPU frequency, page cache) warmed by the other.
 */
export async function inAlternateOrder(round: number, first: () => Promise<unknown>, second: () => Promise<unknown>): Promise<void> {
  if (round % 2 === 0) {
    await first();
    await second();
  } else {
    await second();
    await first();
  }
}
